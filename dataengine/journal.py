"""The LLM response journal: nothing paid twice, even mid-step.

A step may make several calls (an answer, then its evaluation). A worker that dies
after the first returned and before the step's checkpoint used to pay for it again on resume. Now
every response a run's step receives is recorded (``llm_responses``) before the step goes on with it,
keyed by run, step and a fingerprint of the request; a step run again reuses a recorded response
instead of asking again, and a request that differs (a new model, a changed prompt or schema) is
asked anew.

Cost: the writes of a process go through one thread that commits whatever is waiting in one
statement (group commit, ``dataengine.recorder``), so many calls in flight share a round trip, and
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

from dataengine import recorder
from dataengine.db import session_scope
from models.base import ACTIVE_STATUSES
from models.journal import LLMResponse

TABLE = LLMResponse.__table__.name


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


#: The journal's insert, batched with the ledger's by the process's writer thread (``dataengine.recorder``).
INSERT_SQL = f"""
    INSERT INTO {TABLE} (run_id, step_index, fingerprint, job, model, response, prompt_tokens,
                         completion_tokens, cost_usd)
    SELECT x.run_id, x.step_index, x.fingerprint, x.job, x.model, x.response, x.prompt_tokens,
           x.completion_tokens, x.cost_usd
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(run_id uuid, step_index integer, fingerprint text,
         job text, model text, response jsonb, prompt_tokens integer, completion_tokens integer,
         cost_usd numeric)
    ON CONFLICT DO NOTHING
"""  # noqa: S608  the table name is the model's own


def _rows(entries: list[Entry]) -> str:
    return json.dumps([{**entry.__dict__, "cost_usd": str(entry.cost_usd)} for entry in entries], default=str)


recorder.register(Entry, INSERT_SQL, _rows)


def record(entry: Entry) -> None:
    """Record a response, returning once it is committed (or after ``recorder.RECORD_WAIT_S``)."""
    recorder.put_and_wait(entry)


def journaled_steps(run_id: uuid.UUID, from_index: int) -> frozenset[int]:
    """The steps at or after ``from_index`` that have recorded responses (a step that was in flight
    when the run was last interrupted): only their calls look in the journal."""
    with session_scope() as session:
        found = session.execute(text(f"SELECT DISTINCT step_index FROM {TABLE} WHERE run_id = :id "  # noqa: S608  the model's own table
                                     "AND step_index >= :start"), {"id": run_id, "start": from_index})
        return frozenset(found.scalars())


def recorded(run_id: str, step_index: int, fp: str) -> Entry | None:
    """What this request was answered, and what it cost, at this step of this run, if it was."""
    with session_scope() as session:
        row = session.execute(text(f"SELECT job, model, response, prompt_tokens, completion_tokens, cost_usd "  # noqa: S608  the model's own table
                                   f"FROM {TABLE} WHERE run_id = :r AND step_index = :s AND fingerprint = :f"),
                              {"r": run_id, "s": step_index, "f": fp}).one_or_none()
    if row is None:
        return None
    return Entry(run_id, step_index, fp, row.job, row.model, row.response, row.prompt_tokens, row.completion_tokens,
                 row.cost_usd)


def prune(*, older_than: timedelta, run_tables: dict[str, str]) -> int:
    """Delete journal rows older than ``older_than`` of runs no longer active (``run_tables``: job key ->
    its run table); returns how many went."""
    active = ", ".join(f"'{s}'" for s in ACTIVE_STATUSES)
    deleted = 0
    with session_scope() as session:
        for job, table in run_tables.items():
            deleted += session.execute(text(f"""
                DELETE FROM {TABLE} j WHERE j.job = :job AND j.created_at < now() - CAST(:age AS interval)
                  AND NOT EXISTS (SELECT 1 FROM {table} r WHERE r.id = j.run_id AND r.status IN ({active}))
            """), {"job": job, "age": older_than}).rowcount  # noqa: S608  names of the engine's own tables
    return deleted
