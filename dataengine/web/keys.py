"""API keys: the one of ``DATA_ENGINE_API_KEY`` (the seeds' variable) and named ones stored hashed.

A key is 32 random bytes, so a plain SHA-256 of it is safe to store; a presented key is hashed and
compared in constant time. The key itself is shown once, by ``dataengine api-keys create``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from dataengine.infra.db import session_scope
from dataengine.infra.errors import DataEngineError
from dataengine.infra.settings import get_settings
from models.apikeys import KEY_NAME_CHARS, ApiKey

KEY_PREFIX = "de_"
#: How ``key_ref`` names ``DATA_ENGINE_API_KEY`` (a named key's ref is its row id).
ENV_REF = "env"
#: Characters of a key kept in the clear, to tell keys apart in a listing.
SHOWN_CHARS = 8


class KeyNameInvalid(DataEngineError):
    """API key name {name!r} is invalid: {why}."""


@dataclass(frozen=True)
class KeyInfo:
    """A named key as listed: never the key itself."""

    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def digest(key: str) -> str:
    """SHA-256 of a key, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(name: str) -> str:
    """A new named key; returns the key itself, which is stored only as its hash."""
    name = name.strip()
    if not name or len(name) > KEY_NAME_CHARS:
        raise KeyNameInvalid(name=name, why=f"it must be 1 to {KEY_NAME_CHARS} characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        with session_scope() as session:
            session.execute(insert(ApiKey).values(name=name, key_hash=digest(key), prefix=key[:SHOWN_CHARS]))
    except IntegrityError:
        raise KeyNameInvalid(name=name, why="a key with that name exists (revoke it, or choose another name)") from None
    return key


def list_keys() -> list[KeyInfo]:
    """Every named key, oldest first."""
    with session_scope() as session:
        rows = session.execute(select(ApiKey).order_by(ApiKey.created_at)).scalars().all()
        return [KeyInfo(r.name, r.prefix, r.created_at, r.last_used_at, r.revoked_at) for r in rows]


def revoke_key(name: str) -> bool:
    """Revoke the named key (from the next request on, its runs-page sessions too); whether there was such an
    active key."""
    with session_scope() as session:
        revoked = session.execute(
            update(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None)).values(revoked_at=func.now())
        )
        return bool(revoked.rowcount)


def keys_configured() -> bool:
    """Whether any key would be accepted (the configured one, or an active named one)."""
    if get_settings().api_key is not None:
        return True
    with session_scope() as session:
        return session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None


def configured_key_hash() -> str | None:
    """SHA-256 of ``DATA_ENGINE_API_KEY``, if it is set."""
    configured = get_settings().api_key
    return digest(configured.get_secret_value()) if configured is not None else None


def key_ref(presented: str | None) -> str | None:
    """Which accepted key ``presented`` is: ENV_REF for the configured one, an active named key's row id
    (marking it used), or None."""
    if not presented:
        return None
    presented_hash, configured = digest(presented), configured_key_hash()
    if configured is not None and hmac.compare_digest(presented_hash, configured):
        return ENV_REF
    with session_scope() as session:
        found = session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == presented_hash, ApiKey.revoked_at.is_(None))
            .values(last_used_at=func.now())
            .returning(ApiKey.id, ApiKey.key_hash)
        ).first()
    return str(found.id) if found is not None and hmac.compare_digest(found.key_hash, presented_hash) else None


def check_key(presented: str | None) -> bool:
    """Whether ``presented`` is the configured key or an active named key (marking it used)."""
    return key_ref(presented) is not None
