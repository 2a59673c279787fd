"""The runs page's session: the login form turns an API key into a cookie, and the cookie, not the
key, comes back with every request of the page.

**The session cookie** is ``v1.<ref>.<expires>.<mac>``: ``ref`` names the key that logged in (a named
key's row id, or ``env`` for ``DATA_ENGINE_API_KEY``), ``expires`` is a Unix time, and ``mac`` is an
HMAC-SHA256 of ref and expiry, keyed with the key's SHA-256 — server-side material every API process
shares (the ``api_keys`` row, or the environment) and no cookie ever carries. So a cookie made by one
API process is good in all of them, stops working the moment its named key is revoked (no active row,
no MAC key) or the configured key changes (another MAC key), and holds neither the key nor its hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid

from fastapi import HTTPException, Request
from sqlalchemy import func, select, update

from dataengine.db import session_scope
from dataengine.settings import get_settings
from dataengine.web.keys import check_key, digest
from models.apikeys import ApiKey

COOKIE = "dataengine_session"
#: How long a login lasts.
SESSION_TTL_S = 12 * 3600
#: ``ref`` of a session opened with ``DATA_ENGINE_API_KEY`` (a named key's ref is its row id).
ENV_REF = "env"
#: A session cookie's value: version, ref, expiry (Unix seconds) and the HMAC-SHA256, base64url.
TOKEN = re.compile(r"v1\.(?P<ref>env|[0-9a-f-]{36})\.(?P<expires>[0-9]{1,12})\.(?P<mac>[A-Za-z0-9_-]{43})", re.ASCII)
#: Sent by runs.js with every request. A cookie alone does not cancel or retry a run: a form on
#: another site cannot send this header, and a script there would need a CORS grant the API never gives.
PAGE_HEADER = "X-DataEngine-Page"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _mac(ref: str, expires: int, key_hash: str) -> str:
    message = f"dataengine runs session|{ref}|{expires}".encode()
    mac = hmac.new(bytes.fromhex(key_hash), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def session_token(*, ref: str, key_hash: str, now_s: float | None = None) -> str:
    """A session cookie's value for the key ``ref`` whose SHA-256 is ``key_hash``, good for SESSION_TTL_S."""
    expires = int(now_s if now_s is not None else time.time()) + SESSION_TTL_S
    return f"v1.{ref}.{expires}.{_mac(ref, expires, key_hash)}"


def _active_key_hash(ref: str) -> str | None:
    """The SHA-256 of the key a session names, if that key is still accepted (marking a named key used)."""
    if ref == ENV_REF:
        configured = get_settings().api_key
        return digest(configured.get_secret_value()) if configured is not None else None
    try:
        key_id = uuid.UUID(ref)
    except ValueError:
        return None
    with session_scope() as session:
        return session.scalar(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(last_used_at=func.now())
            .returning(ApiKey.key_hash)
        )


def session_valid(request: Request) -> bool:
    """Whether the request carries a live session cookie (and, to change anything, the page's header).

    Blocking (it may read the database): call it from a sync route or dependency.
    """
    parsed = TOKEN.fullmatch(request.cookies.get(COOKIE, ""))
    if parsed is None or int(parsed["expires"]) < time.time():
        return False
    if request.method not in SAFE_METHODS and PAGE_HEADER.lower() not in request.headers:
        return False
    key_hash = _active_key_hash(parsed["ref"])
    expected = _mac(parsed["ref"], int(parsed["expires"]), key_hash) if key_hash is not None else ""
    return key_hash is not None and hmac.compare_digest(parsed["mac"].encode(), expected.encode())


def key_ref(presented: str) -> tuple[str, str] | None:
    """The ``ref`` and SHA-256 of an accepted key (``check_key`` decides), or None."""
    if not check_key(presented):
        return None
    presented_hash = digest(presented)
    configured = get_settings().api_key
    if configured is not None and hmac.compare_digest(presented_hash, digest(configured.get_secret_value())):
        return ENV_REF, presented_hash
    with session_scope() as session:
        key_id = session.scalar(
            select(ApiKey.id).where(ApiKey.key_hash == presented_hash, ApiKey.revoked_at.is_(None))
        )
    return (str(key_id), presented_hash) if key_id is not None else None


def require_session(request: Request) -> None:
    """The page's JSON routes: 401 without a live session."""
    if not session_valid(request):
        raise HTTPException(401, "log in at /runs/login", headers={"WWW-Authenticate": "Cookie"})
