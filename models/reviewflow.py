"""ReviewFlow tables: ``reviewflow_analysis_runs``, the reviews of each run, and one analysis per review."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Boolean, Date, Integer, Numeric, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, RunMixin, StepMixin, StepResultMixin


class ReviewFlowRun(RunMixin, Base):
    """One ReviewFlow: a batch of a property's reviews analysed one by one, then summed up."""

    __tablename__ = "reviewflow_analysis_runs"

    property_name: Mapped[str] = mapped_column(String(300), nullable=False)
    property_city: Mapped[str | None] = mapped_column(String(200))
    #: NULL: the ``OPENAI_MODEL`` setting.
    model: Mapped[str | None] = mapped_column(String(100))
    total_reviews: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class Review(StepMixin, Base):
    """A review of a run, as submitted."""

    __tablename__ = "reviewflow_reviews"
    __run_table__ = "reviewflow_analysis_runs"

    review_text: Mapped[str] = mapped_column(Text, nullable=False)
    rating: Mapped[int | None] = mapped_column(Integer)
    author: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(100))
    review_date: Mapped[date | None] = mapped_column(Date)
    external_id: Mapped[str | None] = mapped_column(String(200))


class ReviewAnalysisRow(StepResultMixin, Base):
    """The analysis of one review; a review the model could not analyse has ``error`` instead."""

    __tablename__ = "reviewflow_review_analyses"
    __run_table__ = "reviewflow_analysis_runs"

    sentiment_score: Mapped[Decimal | None] = mapped_column(Numeric(4, 3))
    sentiment_label: Mapped[str | None] = mapped_column(String(16))
    topics: Mapped[list[str]] = mapped_column(JSONB, nullable=False, server_default="[]")
    urgency: Mapped[str | None] = mapped_column(String(8))
    needs_reply: Mapped[bool | None] = mapped_column(Boolean)
    suggested_reply: Mapped[str | None] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(16))
    analysis: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
