"""Workspaces: one engine, many customers, each paying the LLM provider with its own key ("bring your own key")
or sharing the engine's."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, Numeric, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.declarative import Base

#: Longest workspace id (the run tables' ``workspace_id`` is as wide).
WORKSPACE_ID_CHARS = 100


class Workspace(Base):
    """A workspace: its provider key (Fernet-encrypted, never stored plain), where and with which models its
    runs call the provider, and its limits. A run names it by ``workspace_id``."""

    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(WORKSPACE_ID_CHARS), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    #: The provider key as a Fernet token under ``DATAENGINE_ENCRYPTION_KEY`` (``dataengine.llm.keyring``);
    #: NULL: none of its own, its runs call with the engine's ``OPENAI_API_KEY`` and share the engine's
    #: limits fairly with the other workspaces on it.
    api_key_encrypted: Mapped[str | None] = mapped_column(Text)
    #: The provider's OpenAI-compatible URL; NULL: the engine's ``OPENAI_BASE_URL``.
    base_url: Mapped[str | None] = mapped_column(String(2000))
    #: The models its runs use when their spec names none: ``{"chat": ..., "eval": ..., "embedding": ...}``.
    models: Mapped[dict[str, str]] = mapped_column(JSONB, nullable=False, server_default="{}")
    #: What its runs may spend per day (UTC), in USD; NULL: no daily budget of its own.
    daily_budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    #: Its provider limits per minute, kept by the whole fleet apart from every other key's:
    #: ``{"rpm": ..., "tpm": ..., "models": {"gpt-4o": {"rpm": ..., "tpm": ...}}}``.
    rate_limits: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    #: When the provider key was last set (``dataengine workspaces set-key``); re-encrypting keeps it.
    key_updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                     server_default=func.now())

    __table_args__ = (CheckConstraint("daily_budget_usd > 0", name="daily_budget_usd"),)
