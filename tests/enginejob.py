"""Echo: a tiny job of the engine tests' own, with its own tables, so that engine tests depend
on no real job's schema. Its step echoes the step's text upper-cased; texts steer failures:
``fail:...`` fails for good, ``later:...`` fails for now (a job-specific transient error),
``hang`` never returns in time. Its result table has columns with a string and a JSON server
default that the step leaves out, and each step writes ``echo_chunks`` rows of its own.

The tables are created with ``create_all`` on the test's database (never outside tests).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Integer, MetaData, String, Text, func, insert, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dataengine.jobs import Job, NewRun, StepOutcome
from models.base import NAMING, RunMixin, StepMixin, StepResultMixin

HANG_S = 3.0


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class EchoRun(RunMixin, Base):
    __tablename__ = "echo_runs"

    label: Mapped[str] = mapped_column(String(100), nullable=False)


class EchoStep(StepMixin, Base):
    __tablename__ = "echo_steps"
    __run_table__ = "echo_runs"

    text: Mapped[str] = mapped_column(Text, nullable=False)


class EchoResult(StepResultMixin, Base):
    __tablename__ = "echo_results"
    __run_table__ = "echo_runs"

    echoed: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(20), nullable=False, server_default="pending")
    meta: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("""'{"source": "echo"}'"""))
    error: Mapped[str | None] = mapped_column(Text)


class EchoChunk(Base):
    """The job's own rows, written by ``record_step_rows`` inside the fenced checkpoint."""

    __tablename__ = "echo_chunks"

    run_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    query_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk: Mapped[str] = mapped_column(Text, nullable=False)


class EchoSpec(BaseModel):
    label: str = "echo"
    texts: list[str] = Field(min_length=1)


class EchoUnavailable(Exception):
    """The echo service is away for now (a transient error of this job's own)."""


def echo_step(label: str, index: int, item: str) -> StepOutcome:
    if item.startswith("fail:"):
        raise ValueError(item.removeprefix("fail:"))
    if item.startswith("later:"):
        raise EchoUnavailable(item.removeprefix("later:"))
    if item == "hang":
        time.sleep(HANG_S)  # a step that hangs, on purpose
    return StepOutcome({"echoed": item.upper()}, rows=item.upper().split())


def write_chunks(session: Session, run_id: uuid.UUID, done: list[tuple[int, StepOutcome]]) -> None:
    rows = [
        {"run_id": run_id, "query_index": index, "n": n, "chunk": word}
        for index, outcome in done
        for n, word in enumerate(outcome.rows)
    ]
    if rows:
        session.execute(insert(EchoChunk.__table__), rows)


ECHO = Job(
    name="Echo",
    key="echo",
    step_noun="text",
    step_plural="texts",
    run_model=EchoRun,
    step_model=EchoStep,
    result_model=EchoResult,
    spec_model=EchoSpec,
    build=lambda spec: NewRun(values={"label": spec.label}, steps=[{"text": t} for t in spec.texts]),
    prepare=lambda row: row.label,
    execute_step=echo_step,
    summarize=lambda session, run_id: {"chunks": session.scalar(
        select(func.count()).select_from(EchoChunk.__table__).where(EchoChunk.run_id == run_id))},
    transient_errors=(EchoUnavailable,),
    record_step_rows=write_chunks,
)


def create_tables(url: str) -> None:
    """The Echo tables in the test's database."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
