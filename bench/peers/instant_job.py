"""Instant: a job whose step returns at once, so that a one-step run measures the engine alone.

The bare Celery peer does no LLM call, so neither does this step: it echoes its text. Everything
else is a job like PropertyAudit: its own run, step and result tables, ``instant.submit`` and
``instant.run`` defined by the engine, a summary computed from the result rows. Workers load it
with ``DATAENGINE_JOB_MODULES`` naming ``instant_job`` and ``bench/peers`` on ``PYTHONPATH``; the
benchmark creates its tables (``create_tables``) in its own database.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from sqlalchemy import MetaData, Text, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dataengine.engine.jobs import Job, NewRun, StepOutcome, register
from models.base import NAMING, RunMixin, StepMixin, StepResultMixin


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class InstantRun(RunMixin, Base):
    __tablename__ = "instant_runs"


class InstantStep(StepMixin, Base):
    __tablename__ = "instant_steps"
    __run_table__ = "instant_runs"

    text: Mapped[str] = mapped_column(Text, nullable=False)


class InstantResult(StepResultMixin, Base):
    __tablename__ = "instant_results"
    __run_table__ = "instant_runs"

    echoed: Mapped[str | None] = mapped_column(Text)


class InstantSpec(BaseModel):
    texts: list[str] = Field(min_length=1)


JOB = register(Job(
    name="Instant",
    key="instant",
    step_noun="text",
    step_plural="texts",
    run_model=InstantRun,
    step_model=InstantStep,
    result_model=InstantResult,
    spec_model=InstantSpec,
    build=lambda spec: NewRun(values={}, steps=[{"text": t} for t in spec.texts]),
    prepare=lambda row: None,
    execute_step=lambda context, index, text: StepOutcome({"echoed": text}),
    summarize=lambda session, run_id: {"echoed": session.scalar(
        select(func.count()).select_from(InstantResult.__table__).where(InstantResult.run_id == run_id))},
))


def create_tables(url: str) -> None:
    """The Instant tables in the benchmark's database."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
