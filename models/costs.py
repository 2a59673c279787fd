"""The cost ledger: what every LLM call cost, summed by the hour (``dataengine.llm.ledger``).

One row per hour, job, model, property and workspace: a fleet making thousands of calls a minute
writes a few rows an hour, and ``dataengine costs`` reads a few rows per day it reports.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, DateTime, Index, Integer, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class LLMCost(Base):
    """The calls of one hour for one job, model, property and workspace ('' where there is none: a call
    outside a run, a run without a workspace)."""

    __tablename__ = "llm_costs"
    __table_args__ = (Index("ix_llm_costs_workspace_hour", "workspace_id", "hour"),)

    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    property: Mapped[str] = mapped_column(String(300), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    calls: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    #: Of the prompt tokens, those the provider served from its prompt cache (priced lower).
    cached_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(16, 6), nullable=False, server_default="0")
    #: Calls of a model with no price in ``DATAENGINE_MODEL_PRICES_PER_MTOK``: their cost is unknown,
    #: counted as 0 and flagged wherever costs are shown.
    unpriced_calls: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
