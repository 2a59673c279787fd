"""What the runs page's login form must pass before a key is even looked at, and how its cookie is set.

- **Same origin only.** A login posted by another site's page (login CSRF: the victim's browser
  signed into the attacker's key) is refused by its ``Origin``: it must be this server's own origin or
  that of ``DATAENGINE_PUBLIC_BASE_URL``. A request without one passes only when ``Sec-Fetch-Site``
  is absent too (not a browser, or an old one) or says ``same-origin``.
- **A small body.** The form is a key and a path: it is read as it streams and refused with 413 past
  LOGIN_MAX_BYTES, whatever the API's own limit for run specs (``DATAENGINE_API_MAX_BODY_BYTES``).
- **Secure cookies** when the public base URL is https (a proxy in front may speak plain HTTP to the
  API); without one, when the request itself came over https.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from fastapi import Request

from dataengine.infra.errors import DataEngineError
from dataengine.infra.settings import get_settings

#: The largest login form read, in bytes: a key is 46 characters, the path after login a few dozen.
LOGIN_MAX_BYTES = 4096
DEFAULT_PORTS = {"http": 80, "https": 443}


class LoginFormTooLarge(DataEngineError):
    """The login form is larger than {limit} bytes; it holds an API key and nothing else."""


class LoginCrossSite(DataEngineError):
    """Refused: this login was sent by a page of another site. Open /runs/login on this server (or at
    DATAENGINE_PUBLIC_BASE_URL) and log in there."""


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """scheme, host and port of a URL (the default port made explicit), or None if it has none."""
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number
        return None
    return (scheme, host, port) if scheme and host else None


def check_same_origin(request: Request) -> None:
    """Raise LoginCrossSite unless the login came from this server's own pages (see the module's docstring)."""
    sent = request.headers.get("origin")
    if sent is None:
        if request.headers.get("sec-fetch-site", "same-origin") != "same-origin":
            raise LoginCrossSite()
        return
    public = get_settings().public_base_url
    ours = {_origin(str(request.base_url)), _origin(str(public)) if public is not None else None} - {None}
    if _origin(sent) not in ours:  # "null" (a sandboxed frame, a no-referrer page) has no origin: refused
        raise LoginCrossSite()


async def read_form(request: Request, *, limit: int = LOGIN_MAX_BYTES) -> dict[str, str]:
    """The login form's fields (the first of each name), read as the body streams; LoginFormTooLarge past
    ``limit`` bytes, declared or sent, without reading further."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise LoginFormTooLarge(limit=limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise LoginFormTooLarge(limit=limit)
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


def cookie_secure(request: Request) -> bool:
    """Whether the session cookie is ``Secure``: the public base URL's scheme decides, else the request's."""
    public = get_settings().public_base_url
    return (public.scheme if public is not None else request.url.scheme) == "https"
