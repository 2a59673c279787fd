"""The runs page's sessions: the login form turns an API key into a session, a row of ``web_sessions``,
and a cookie naming it comes back with every request of the page.

**The cookie** is ``v2.<ref>.<sid>.<expires>.<mac>``: ``ref`` names the key that logged in (a named
key's row id, or ``env`` for ``DATA_ENGINE_API_KEY``), ``sid`` is the session's random id, ``expires``
a Unix time, and ``mac`` an HMAC-SHA256 of all three keyed with the first of ``DATAENGINE_SESSION_SECRET``
(every one of them verifies, so the secret can be rotated). The secret is the servers' alone: nothing in
the database (not a key's hash, not a session id) lets anyone sign a cookie, and every API process
configured with it accepts the cookies of the others.

**A request's session is live** when the MAC checks out under one of the secrets, its expiry is still
ahead and no further than the session TTL (the server caps it, whatever a cookie claims), and its row
says it is neither expired nor revoked and its key (a named one) not revoked: one primary-key lookup
per request. A session of ``env`` also signs the configured key's hash, so changing
``DATA_ENGINE_API_KEY`` ends them. Logout revokes the row (a copy of the cookie dies with it); revoking a
key ends its sessions; expired rows are pruned at the next login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid
from datetime import UTC, datetime

from fastapi import HTTPException, Request
from sqlalchemy import delete, func, insert, select, update

from dataengine.infra.db import session_scope
from dataengine.infra.errors import DataEngineError
from dataengine.infra.settings import MAKE_SESSION_SECRET, get_settings
from dataengine.web.keys import ENV_REF, configured_key_hash, key_ref
from models.apikeys import ApiKey, WebSession

COOKIE = "dataengine_session"
#: How long a login lasts.
SESSION_TTL_S = 12 * 3600
#: How far ahead of this process's clock another API process's may run: a cookie it signed just now is
#: not taken for one with an expiry beyond the TTL.
CLOCK_SKEW_S = 60
#: A session cookie's value: version, ref, session id, expiry (Unix seconds) and the HMAC-SHA256, base64url.
TOKEN = re.compile(r"v2\.(?P<ref>env|[0-9a-f-]{36})\.(?P<sid>[0-9a-f]{32})\.(?P<expires>[0-9]{1,12})"
                   r"\.(?P<mac>[A-Za-z0-9_-]{43})", re.ASCII)
#: Sent by runs.js with every request. A cookie alone does not cancel or retry a run: a form on
#: another site cannot send this header, and a script there would need a CORS grant the API never gives.
PAGE_HEADER = "X-DataEngine-Page"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SessionSecretMissing(DataEngineError):
    """The runs page cannot log anyone in: DATAENGINE_SESSION_SECRET is not set (every API process needs
    the same one; make it with {make})."""

    def __init__(self) -> None:
        super().__init__(make=MAKE_SESSION_SECRET)


def _secrets() -> list[bytes]:
    """The session secrets, the signing one first; none when unset."""
    configured = get_settings().session_secret
    return [part.encode() for part in configured.get_secret_value().split(",")] if configured is not None else []


def sign(*, secret: bytes, ref: str, sid: str, expires: int) -> str:
    """A session cookie's value: ``ref``, ``sid`` and ``expires`` with their MAC under ``secret``."""
    # The configured key's hash is signed too (never sent): a new DATA_ENGINE_API_KEY ends its sessions.
    bound = (configured_key_hash() or "none") if ref == ENV_REF else ""
    message = f"dataengine runs session v2|{ref}|{sid}|{expires}|{bound}".encode()
    mac = base64.urlsafe_b64encode(hmac.new(secret, message, hashlib.sha256).digest()).rstrip(b"=").decode()
    return f"v2.{ref}.{sid}.{expires}.{mac}"


def log_in(presented: str) -> str | None:
    """A new session for an accepted key: its row, and the cookie's value; None for a key not accepted.

    Blocking (it writes the database): call it from a thread. Raises SessionSecretMissing without a secret.
    """
    secrets = _secrets()
    if not secrets:
        raise SessionSecretMissing()
    ref = key_ref(presented)
    if ref is None:
        return None
    sid, expires = uuid.uuid4(), int(time.time()) + SESSION_TTL_S
    with session_scope() as session:
        session.execute(delete(WebSession).where(WebSession.expires_at < func.now()))
        session.execute(insert(WebSession).values(
            id=sid, key_id=None if ref == ENV_REF else uuid.UUID(ref), expires_at=datetime.fromtimestamp(expires, UTC)))
    return sign(secret=secrets[0], ref=ref, sid=sid.hex, expires=expires)


def _signed(request: Request) -> re.Match[str] | None:
    """The request's cookie, parsed, if one of the secrets signed it (whatever its expiry)."""
    parsed = TOKEN.fullmatch(request.cookies.get(COOKIE, ""))
    if parsed is None:
        return None
    expected = (sign(secret=s, ref=parsed["ref"], sid=parsed["sid"], expires=int(parsed["expires"])) for s in _secrets())
    return parsed if any(hmac.compare_digest(parsed[0].encode(), e.encode()) for e in expected) else None


def session_valid(request: Request) -> bool:
    """Whether the request carries a live session cookie (and, to change anything, the page's header).

    Blocking (it may read the database): call it from a sync route or dependency.
    """
    if request.method not in SAFE_METHODS and PAGE_HEADER.lower() not in request.headers:
        return False
    parsed = _signed(request)
    now = time.time()
    if parsed is None or not now < int(parsed["expires"]) <= now + SESSION_TTL_S + CLOCK_SKEW_S:
        return False
    query = select(WebSession.id).where(WebSession.id == uuid.UUID(parsed["sid"]), WebSession.revoked_at.is_(None),
                                        WebSession.expires_at > func.now())
    if parsed["ref"] == ENV_REF:
        query = query.where(WebSession.key_id.is_(None))
    else:  # the key's row in the same lookup: revoking the key ends the session
        query = query.join(ApiKey, ApiKey.id == WebSession.key_id).where(
            ApiKey.id == uuid.UUID(parsed["ref"]), ApiKey.revoked_at.is_(None))
    with session_scope() as session:
        return session.scalar(query) is not None


def log_out(request: Request) -> None:
    """Revoke the request's session, if its cookie is genuine: every copy of the cookie stops working.

    Blocking (it writes the database).
    """
    parsed = _signed(request)
    if parsed is not None:
        with session_scope() as session:
            session.execute(update(WebSession).where(WebSession.id == uuid.UUID(parsed["sid"]),
                                                     WebSession.revoked_at.is_(None)).values(revoked_at=func.now()))


def require_session(request: Request) -> None:
    """The page's JSON routes: 401 without a live session."""
    if not session_valid(request):
        raise HTTPException(401, "log in at /runs/login", headers={"WWW-Authenticate": "Cookie"})
