"""A run's history (``run_events``): submitted, claimed or resumed, a step failed and retried, handed
back, lease lost, recovered by a sweeper, stalled, retried, and how it ended, each with its time,
worker, fencing token and resume point.

An event is written by the statement that does the thing (a data-modifying CTE: :func:`logged` for
SQLAlchemy statements; the statements of ``sql/queries.sql`` that end or create a run write theirs
themselves), so it costs no round trip and exists exactly when the change does. Checkpoints write none: the history
stays a few rows per run however many steps it has. Events older than
``DATAENGINE_EVENTS_RETENTION_DAYS`` are pruned by the sweepers (:func:`prune`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    String,
    Update,
    insert,
    literal,
    select,
    text,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from dataengine.infra.queries import statement
from models.events import EventType, RunEvent

EVENTS = RunEvent.__table__
#: The columns an event is written with (``id`` and ``at`` come from the server).
COLUMNS = ("run_id", "job", "event", "worker", "fencing_token", "step_index", "detail")
#: Events deleted per statement when pruning, so that no statement holds many row locks for long.
PRUNE_BATCH = 5000
PRUNE = text(statement("events_prune"))


#: A value of an event's column: a constant, or an expression over the columns the statement returned.
Value = str | Callable[[Any], ColumnElement[Any]] | None


def _value(value: Value, done: Any) -> ColumnElement[Any]:
    return value(done.c) if callable(value) else literal(value, String)


def logged(stmt: Update, *, job_key: str, event: Value, worker: str | None = None, detail: Value = None) -> Select:
    """``stmt``, an UPDATE of a run table ``RETURNING`` at least ``id``, ``fencing_token`` and
    ``current_query_index``, with one event per row it changes, written by the same statement.
    ``event`` and ``detail`` are constants or functions of the returned columns (``lambda c: ...``).
    Returns the statement to execute: a SELECT of what ``stmt`` returns."""
    done = stmt.cte("done")
    rows = select(
        done.c.id, literal(job_key, String), _value(event, done), literal(worker, String), done.c.fencing_token,
        done.c.current_query_index, _value(detail, done),
    )
    return select(done).add_cte(insert(EVENTS).from_select(COLUMNS, rows).cte("logged"))


def record(conn: Session | Connection, *, run_id: uuid.UUID, job_key: str, event: EventType,
           worker: str | None = None, token: int | None = None, step_index: int | None = None,
           detail: str | None = None) -> None:
    """An event that changes nothing else (a worker that found its lease gone)."""
    conn.execute(insert(EVENTS).values(run_id=run_id, job=job_key, event=event.value, worker=worker,
                                       fencing_token=token, step_index=step_index, detail=detail))


def history(conn: Session | Connection, run_id: uuid.UUID, *, limit: int = 1000) -> list[dict[str, Any]]:
    """The run's events, oldest first (the last ``limit``)."""
    newest = (select(EVENTS).where(EVENTS.c.run_id == run_id).order_by(EVENTS.c.id.desc()).limit(limit)
              .subquery())
    rows = conn.execute(select(newest).order_by(newest.c.id)).mappings()
    return [dict(r) for r in rows]


def prune(conn: Session | Connection, *, older_than: timedelta) -> int:
    """Delete the oldest ``PRUNE_BATCH`` events older than ``older_than``; returns how many went."""
    return conn.execute(PRUNE, {"older_than": older_than, "batch": PRUNE_BATCH}).rowcount
