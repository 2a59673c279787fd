"""The LLM response journal: nothing paid twice, even mid-step.

A step may make several calls (an answer, then its evaluation). A worker that dies
after the first returned and before the step's checkpoint used to pay for it again on resume. Now
every response a run's step receives is recorded (``llm_responses``) before the step goes on with it,
keyed by run, step and a fingerprint of the request; a step run again reuses a recorded response
instead of asking again, and a request that differs (a new model, a changed prompt or schema) is
asked anew.

Cost: the writes of a process go through one thread that commits whatever is waiting in one
statement (group commit, ``dataengine.llm.writer``), so many calls in flight share a round trip, and
the checkpoint path does not change. Reads happen only for steps that have journal rows, found once per claim
(:func:`journaled_steps`). Rows of finished runs are pruned after ``DATAENGINE_JOURNAL_RETENTION_DAYS``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from dataengine.infra.db import session_scope
from dataengine.infra.queries import identifier, statement
from dataengine.llm import writer

JOURNALED_STEPS = text(statement("journaled_steps"))
RECORDED = text(statement("journal_recorded"))


def fingerprint(kind: str, model: str, request: Any) -> str:
    """A stable hash of what is asked: the call's kind, the model and the request (messages or
    inputs, and the schema for a structured answer)."""
    body = json.dumps({"kind": kind, "model": model, "request": request}, sort_keys=True, default=str,
                      separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """A response to record."""

    run_id: str
    step_index: int
    fingerprint: str
    job: str
    model: str
    response: Any
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal


#: The journal's insert, batched with the ledger's by the process's writer thread (``dataengine.llm.writer``).
INSERT_SQL = statement("journal_insert")


def _rows(entries: list[Entry]) -> str:
    return json.dumps([{**entry.__dict__, "cost_usd": str(entry.cost_usd)} for entry in entries], default=str)


writer.register(Entry, INSERT_SQL, _rows)


def record(entry: Entry) -> None:
    """Record a response, returning once it is committed (or after ``writer.RECORD_WAIT_S``)."""
    writer.put_and_wait(entry)


def journaled_steps(run_id: uuid.UUID, from_index: int) -> frozenset[int]:
    """The steps at or after ``from_index`` that have recorded responses (a step that was in flight
    when the run was last interrupted): only their calls look in the journal."""
    with session_scope() as session:
        found = session.execute(JOURNALED_STEPS, {"id": run_id, "start": from_index})
        return frozenset(found.scalars())


def recorded(run_id: str, step_index: int, fp: str) -> Entry | None:
    """What this request was answered, and what it cost, at this step of this run, if it was."""
    with session_scope() as session:
        row = session.execute(RECORDED, {"r": run_id, "s": step_index, "f": fp}).one_or_none()
    if row is None:
        return None
    return Entry(run_id, step_index, fp, row.job, row.model, row.response, row.prompt_tokens, row.completion_tokens,
                 row.cost_usd)


def prune(*, older_than: timedelta, run_tables: dict[str, str]) -> int:
    """Delete journal rows older than ``older_than`` of runs no longer active (``run_tables``: job key ->
    its run table); returns how many went."""
    deleted = 0
    with session_scope() as session:
        for job, table in run_tables.items():
            prune_job = text(statement("journal_prune", runs=identifier(table)))
            deleted += session.execute(prune_job, {"job": job, "age": older_than}).rowcount
    return deleted
