"""PropertyAudit tables: ``geo_runs``, the queries of each run, and one result row per query."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, RunMixin, StepMixin, StepResultMixin


class GeoRun(RunMixin, Base):
    """One PropertyAudit: how visible a property is in LLM answers to search-style queries."""

    __tablename__ = "geo_runs"

    property_name: Mapped[str] = mapped_column(String(300), nullable=False)
    property_city: Mapped[str | None] = mapped_column(String(200))
    property_website: Mapped[str | None] = mapped_column(String(500))
    property_aliases: Mapped[list[str]] = mapped_column(JSONB, nullable=False, server_default="[]")
    #: NULL: the ``OPENAI_MODEL`` setting.
    model: Mapped[str | None] = mapped_column(String(100))
    total_queries: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class GeoQuery(StepMixin, Base):
    """A query of a run, as submitted; read in pages from the resume point, never replayed."""

    __tablename__ = "geo_queries"
    __run_table__ = "geo_runs"

    query_text: Mapped[str] = mapped_column(Text, nullable=False)


class GeoQueryResult(StepResultMixin, Base):
    """The recorded outcome of one query: the answer, its evaluation, tokens and latency."""

    __tablename__ = "geo_query_results"
    __run_table__ = "geo_runs"

    query_text: Mapped[str] = mapped_column(Text, nullable=False)
    answer: Mapped[str] = mapped_column(Text, nullable=False)
    evaluation: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    mentioned: Mapped[bool] = mapped_column(Boolean, nullable=False)
    rank: Mapped[int | None] = mapped_column(Integer)
    sentiment: Mapped[str | None] = mapped_column(String(16))
