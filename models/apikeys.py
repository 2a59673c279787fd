"""API keys of the HTTP API, stored hashed (the key itself is shown once, when it is created), and the
runs page's sessions opened with them."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base

#: Longest name an API key may have.
KEY_NAME_CHARS = 100


class ApiKey(Base):
    """A named key: its SHA-256 (a key is 32 random bytes, so a plain hash is enough) and its first characters."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(KEY_NAME_CHARS), nullable=False, unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    #: The key's first characters, so that an operator can tell keys apart in ``dataengine api-keys list``.
    prefix: Mapped[str] = mapped_column(String(12), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebSession(Base):
    """A login to the runs page (``dataengine.web.sessions``): its cookie carries the id, signed with the
    server's session secret, so the row alone makes no cookie. Logout revokes it; so does revoking its key."""

    __tablename__ = "web_sessions"

    #: Random (uuid4): two logins in the same second get different sessions.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    #: The named key that logged in; NULL for ``DATA_ENGINE_API_KEY``. Sessions go with a deleted key.
    key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    #: Pruned after this (at the next login), and refused from it on.
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
