"""Echo, the engine tests' job, from the public API alone: a step upper-cases its text and writes a chunk row per
word; ``fail:...`` fails for good, ``later:...`` for now, ``hang`` takes ``HANG_S``; results have server defaults."""

import time
import uuid

from pydantic import BaseModel, Field
from sqlalchemy import Column, Integer, String, Table, Text, Uuid, func, insert, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from dataengine import Job, NewRun, RunMixin, StepMixin, StepOutcome, StepResultMixin, new_base

HANG_S, Base = 3.0, new_base()
CHUNKS = Table("echo_chunks", Base.metadata, Column("run_id", Uuid, primary_key=True), Column("chunk", Text),
               Column("query_index", Integer, primary_key=True), Column("n", Integer, primary_key=True))

class EchoRun(RunMixin, Base):
    __tablename__ = "echo_runs"
    label: Mapped[str] = mapped_column(String(100))

class EchoStep(StepMixin, Base):
    __tablename__, __run_table__ = "echo_steps", "echo_runs"
    text: Mapped[str] = mapped_column(Text)

class EchoResult(StepResultMixin, Base):
    __tablename__, __run_table__ = "echo_results", "echo_runs"
    echoed: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(20), server_default="pending")
    meta: Mapped[dict[str, object]] = mapped_column(JSONB, server_default=text("""'{"source": "echo"}'"""))

class EchoSpec(BaseModel):
    label: str = "echo"
    texts: list[str] = Field(min_length=1)

class EchoUnavailable(Exception):
    """The echo service is away for now."""

def echo(label: str, index: int, item: str) -> StepOutcome:
    if item.startswith(("fail:", "later:")):
        raise (ValueError if item.startswith("fail:") else EchoUnavailable)(item.partition(":")[2])
    time.sleep(HANG_S if item == "hang" else 0)  # a step that hangs, on purpose
    return StepOutcome({"echoed": item.upper()}, rows=item.upper().split())

def write_chunks(session: Session, run_id: uuid.UUID, done: list[tuple[int, StepOutcome]]) -> None:
    rows = [{"run_id": run_id, "query_index": i, "n": n, "chunk": w} for i, o in done for n, w in enumerate(o.rows)]
    if rows:
        session.execute(insert(CHUNKS), rows)

ECHO = Job(name="Echo", key="echo", step_noun="text", step_plural="texts", run_model=EchoRun, step_model=EchoStep,
    result_model=EchoResult, spec_model=EchoSpec, prepare=lambda row: row.label, execute_step=echo,
    build=lambda spec: NewRun(values={"label": spec.label}, steps=[{"text": t} for t in spec.texts]),
    summarize=lambda s, run_id: {"chunks": s.scalar(select(func.count()).where(CHUNKS.c.run_id == run_id))},
    transient_errors=(EchoUnavailable,), record_step_rows=write_chunks)
