"""The LLM response journal: every answer a run's step received, kept until the step is checkpointed
and after (``dataengine.llm.journal``), so that a step run again after a crash reuses what was paid for."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Index, Integer, Numeric, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class LLMResponse(Base):
    """One returned LLM response, keyed by run, step and a fingerprint of the request (kind, model,
    messages or inputs, schema): a request that differs in any of them is asked anew."""

    __tablename__ = "llm_responses"
    __table_args__ = (Index("ix_llm_responses_created", "created_at"),)

    run_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    step_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The run's job (its key), for pruning the journal of finished runs.
    job: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    #: What the call returned, as the engine uses it (an answer's text, a parsed object, vectors).
    response: Mapped[Any] = mapped_column(JSONB, nullable=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(14, 6), nullable=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
