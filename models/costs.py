"""The cost ledger: what every LLM call cost, summed by the hour (``dataengine.llm.ledger``).

One row per hour, job, model, property and workspace: a fleet making thousands of calls a minute
writes a few rows an hour, and ``dataengine costs`` reads a few rows per day it reports.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, DateTime, Index, Integer, Numeric, String, desc
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class CostSums:
    """Calls, tokens and cost summed: an hour's in the ledger, or a whole history's in its totals (which
    need the wider types declared here; the ledger's hourly rows keep their narrower ones)."""

    calls: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    #: Of the prompt tokens, those the provider served from its prompt cache (priced lower).
    cached_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 6), nullable=False, server_default="0")
    #: Calls of a model with no price in ``DATAENGINE_MODEL_PRICES_PER_MTOK``: their cost is unknown,
    #: counted as 0 and flagged wherever costs are shown.
    unpriced_calls: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")


class LLMCost(CostSums, Base):
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
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(16, 6), nullable=False, server_default="0")
    unpriced_calls: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class LLMCostTotal(CostSums, Base):
    """The ledger's hours rolled up for good, by one grouping of a cost report (``grouping``: day, kind,
    model, property, workspace) and ``key`` (the day, the job...), over every workspace (``scope`` 'all')
    and for each (``scope`` 'ws:' and its id). A whole-history report reads these and the hours not yet
    rolled up (``LLMCostRollup``), never the whole ledger."""

    __tablename__ = "llm_cost_totals"
    # A page by cost, the largest first and ties by key, read from the index in its order.
    __table_args__ = (Index("ix_llm_cost_totals_by_cost", "grouping", "scope", desc("cost_usd"), "key"),)

    grouping: Mapped[str] = mapped_column(String(16), primary_key=True)
    scope: Mapped[str] = mapped_column(String(110), primary_key=True)
    key: Mapped[str] = mapped_column(String(300), primary_key=True)


class LLMCostRollup(Base):
    """One row: the ledger's hours before ``rolled_until`` are in ``llm_cost_totals``. The sweepers move
    it on to an hour ago (a spend is written in the hour its transaction began)."""

    __tablename__ = "llm_cost_rollup"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rolled_until: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
