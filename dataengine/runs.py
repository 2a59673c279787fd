"""Claim, lease, heartbeat, checkpoint, finish and requeue: the only writer of the lease columns.

A run is leased by a worker (``lease_owner``, ``lease_expires_at`` from the database clock) and
every claim bumps ``fencing_token``. Every later write by that worker says
``WHERE fencing_token = :token``: once another worker has claimed the run, the old one's
writes match no row, and it stops.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import TextClause, case, func, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from dataengine.errors import InvalidRunId, LeaseLost, RunNotFound
from dataengine.jobs import Job
from dataengine.llm import Usage
from dataengine.settings import get_settings
from models.base import ACTIVE_STATUSES, FINAL_STATUSES, RunStatus


@dataclass(frozen=True)
class Claim:
    """This worker holds the run: its fencing token and the run row as claimed."""

    run_id: uuid.UUID
    token: int
    worker_id: str
    row: Any


@dataclass(frozen=True)
class Refusal:
    """The run was not claimed, and why (already finished, held by another worker...)."""

    run_id: uuid.UUID
    status: str
    reason: str
    #: Who holds the lease, when that is why.
    owner: str | None = None


@dataclass(frozen=True)
class Requeued:
    """A run the sweeper took back from a lost worker (or an unclaimed message)."""

    run_id: uuid.UUID
    failed: bool
    losses: int
    step_index: int


def parse_run_id(run_id: object) -> uuid.UUID:
    """The run id as a UUID, or ``InvalidRunId`` for anything else."""
    if isinstance(run_id, uuid.UUID):
        return run_id
    try:
        return uuid.UUID(run_id)  # type: ignore[arg-type]
    except (TypeError, ValueError, AttributeError):
        raise InvalidRunId(run_id=run_id) from None


def _seconds(s: float) -> Any:
    return literal(timedelta(seconds=s))


def _loss_counted(t: Any) -> dict[str, Any]:
    """Column updates that count a lost worker, per step: the count restarts when the run moved on."""
    lost = t.c.lease_owner.is_not(None)
    return {
        "losses_at_step": case(
            (~lost, t.c.losses_at_step),
            (t.c.lost_at_index == t.c.current_query_index, t.c.losses_at_step + 1),
            else_=1,
        ),
        "lost_at_index": case((lost, t.c.current_query_index), else_=t.c.lost_at_index),
    }


def claim_run(
    *,
    session: Session,
    job: Job,
    run_id: uuid.UUID,
    worker_id: str,
    task_id: str | None,
    dead_owner: str | None = None,
) -> Claim | Refusal:
    """Take the lease on a queued or running run whose lease is free or expired, or held by
    ``dead_owner``, a process known to be gone."""
    t, s = job.runs, get_settings()
    free = [t.c.lease_owner.is_(None), t.c.lease_expires_at < func.now()]
    if dead_owner is not None:
        free.append(t.c.lease_owner == dead_owner)
    row = session.execute(
        update(t)
        .where(
            t.c.id == run_id,
            t.c.status.in_(ACTIVE_STATUSES),
            ~t.c.cancel_requested,
            or_(*free),
        )
        .values(
            status=RunStatus.running.value,
            lease_owner=worker_id,
            lease_expires_at=func.now() + _seconds(s.lease_s),
            heartbeat_at=func.now(),
            fencing_token=t.c.fencing_token + 1,
            task_id=task_id,
            started_at=func.coalesce(t.c.started_at, func.now()),
            last_updated_at=func.now(),
            **_loss_counted(t),
        )
        .returning(*t.c)
    ).one_or_none()
    if row is not None:
        return Claim(run_id=run_id, token=row.fencing_token, worker_id=worker_id, row=row)
    return _refusal(session=session, job=job, run_id=run_id)


def _refusal(*, session: Session, job: Job, run_id: uuid.UUID) -> Refusal:
    t = job.runs
    row = session.execute(
        select(t.c.status, t.c.cancel_requested, t.c.lease_owner, t.c.lease_expires_at).where(t.c.id == run_id)
    ).one_or_none()
    if row is None:
        raise RunNotFound(job=job.name, run_id=run_id)
    if row.status in FINAL_STATUSES:
        return Refusal(run_id, row.status, f"run is already {row.status}; nothing to do")
    if row.cancel_requested and finish_run(
        session=session, job=job, run_id=run_id, status=RunStatus.cancelled, error="cancelled before it started"
    ):
        return Refusal(run_id, RunStatus.cancelled.value, "cancellation was requested; run marked cancelled")
    return Refusal(
        run_id,
        row.status,
        f"run is being executed by {row.lease_owner} (lease until {row.lease_expires_at:%H:%M:%S})",
        owner=row.lease_owner,
    )


def count_steps(*, session: Session, job: Job, claim: Claim) -> int:
    """Count and record the steps of a run whose producer left ``total_steps`` out."""
    total = job.count_steps(session, claim.run_id)
    t = job.runs
    session.execute(update(t).where(t.c.id == claim.run_id, t.c.fencing_token == claim.token).values(total_steps=total))
    return total


def renew_lease(*, session: Session, job: Job, claim: Claim) -> bool:
    """Extend the lease (the heartbeat); returns whether cancellation was requested. ``LeaseLost`` if taken over."""
    t = job.runs
    cancel = session.execute(
        update(t)
        .where(t.c.id == claim.run_id, t.c.fencing_token == claim.token)
        .values(lease_expires_at=func.now() + _seconds(get_settings().lease_s), heartbeat_at=func.now())
        .returning(t.c.cancel_requested)
    ).scalar_one_or_none()
    if cancel is None:
        raise LeaseLost(run_id=claim.run_id, token=claim.token)
    return bool(cancel)


def recorded_steps(*, session: Session, job: Job, run_id: uuid.UUID, from_index: int) -> set[int]:
    """Indexes at or after ``from_index`` that already have a result (at most the steps that were in flight)."""
    r = job.results
    return set(session.scalars(select(r.c.query_index).where(r.c.run_id == run_id, r.c.query_index >= from_index)))


@dataclass(frozen=True)
class Checkpointed:
    """The run row after a checkpoint."""

    completed_steps: int
    cancel_requested: bool


def checkpoint(
    *,
    session: Session,
    job: Job,
    claim: Claim,
    results: list[dict[str, Any]],
    next_index: int,
    usage: Usage,
    eta_s: int | None,
) -> Checkpointed:
    """Record finished steps and advance the run row in one statement, fenced by the claim's token.

    ``results`` are result-table rows (with ``query_index``); ``next_index`` is the first
    step still without a result. Raises ``LeaseLost`` (and writes nothing) if the run was
    taken over; the caller's transaction must then roll back.
    """
    rows = [{**row, "run_id": str(claim.run_id), "fencing_token": claim.token} for row in results]
    row = session.execute(
        _checkpoint_sql(job),
        {
            "rows": json.dumps(rows, default=str),
            "id": claim.run_id,
            "token": claim.token,
            "next_index": next_index,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cost_usd": usage.cost_usd,
            "eta_s": eta_s,
            "lease_s": timedelta(seconds=get_settings().lease_s),
        },
    ).one_or_none()
    if row is None:
        raise LeaseLost(run_id=claim.run_id, token=claim.token)
    return Checkpointed(completed_steps=row.completed_steps, cancel_requested=row.cancel_requested)


@cache
def _checkpoint_sql(job: Job) -> TextClause:
    """One statement per job, built once: the rows arrive as one JSON array, so the SQL never
    changes with the batch size and the server plans it once (a multi-row VALUES would not)."""
    t, r = job.runs, job.results
    columns = [c for c in r.columns if c.name != "created_at"]
    names = ", ".join(c.name for c in columns)
    types = ", ".join(f"{c.name} {c.type.compile(dialect=postgresql.dialect())}" for c in columns)
    # A key missing from a row's JSON arrives as NULL: fall back to the column's server default.
    values = ", ".join(
        f"COALESCE({c.name}, {getattr(c.server_default.arg, 'text', c.server_default.arg)})"
        if c.server_default is not None else c.name
        for c in columns
    )
    return text(f"""
        WITH inserted AS (
            INSERT INTO {r.name} ({names})
            SELECT {values} FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({types})
            ON CONFLICT DO NOTHING
            RETURNING 1
        ), added AS (SELECT count(*) AS n FROM inserted)
        UPDATE {t.name} SET
            completed_steps = completed_steps + added.n,
            current_query_index = :next_index,
            progress_pct = LEAST(100, round((completed_steps + added.n) * 100.0 / GREATEST(total_steps, 1), 2)),
            prompt_tokens = prompt_tokens + :prompt_tokens,
            completion_tokens = completion_tokens + :completion_tokens,
            cost_usd = cost_usd + :cost_usd,
            eta_s = :eta_s,
            last_updated_at = now(),
            lease_expires_at = now() + :lease_s
        FROM added
        WHERE id = :id AND fencing_token = :token AND status = 'running'
        RETURNING completed_steps, cancel_requested
    """)


def finish_run(
    *,
    session: Session,
    job: Job,
    run_id: uuid.UUID,
    status: RunStatus,
    token: int | None = None,
    error: str | None = None,
    summary: dict[str, Any] | None = None,
) -> bool:
    """Move an active run to a final status and free its lease; with ``token``, only if still ours."""
    t = job.runs
    conditions = [t.c.id == run_id, t.c.status.in_(ACTIVE_STATUSES)]
    if token is not None:
        conditions.append(t.c.fencing_token == token)
    values: dict[str, Any] = {
        "status": status.value,
        "finished_at": func.now(),
        "last_updated_at": func.now(),
        "lease_owner": None,
        "lease_expires_at": None,
        "eta_s": 0 if status is RunStatus.completed else None,
        "error_message": error,
    }
    if status is RunStatus.completed:
        values["progress_pct"] = 100
    if summary is not None:
        values["summary"] = summary
    return session.execute(update(t).where(*conditions).values(**values)).rowcount == 1


def release_run(*, session: Session, job: Job, claim: Claim, error: str | None) -> None:
    """Hand the run back unfinished (a retry, a shutdown); the sender re-enqueues it, the sweeper only if that is lost."""
    t, s = job.runs, get_settings()
    session.execute(
        update(t)
        .where(t.c.id == claim.run_id, t.c.fencing_token == claim.token)
        .values(
            lease_owner=None,
            lease_expires_at=func.now() + _seconds(s.redispatch_after_s),
            error_message=error,
            eta_s=None,
            last_updated_at=func.now(),
        )
    )


def request_cancel(*, session: Session, job: Job, run_id: uuid.UUID) -> str:
    """Ask a run to stop between steps; a run no worker holds is cancelled at once. Returns its status."""
    t = job.runs
    row = session.execute(
        update(t).where(t.c.id == run_id).values(cancel_requested=True).returning(t.c.status, t.c.lease_owner)
    ).one_or_none()
    if row is None:
        raise RunNotFound(job=job.name, run_id=run_id)
    if row.status in ACTIVE_STATUSES and row.lease_owner is None:
        finish_run(session=session, job=job, run_id=run_id, status=RunStatus.cancelled, error="cancelled by request")
        return RunStatus.cancelled.value
    return row.status


def requeue_expired(*, session: Session, job: Job, limit: int = 100) -> list[Requeued]:
    """Take back active runs whose lease expired (or that no worker picked up in time).

    Each is returned once however many sweepers run: the update moves the expiry forward
    under a row lock, so a concurrent sweeper no longer matches it. A run whose worker was
    lost ``max_losses_per_step`` times at the same step is marked failed instead.
    """
    t, s = job.runs, get_settings()
    due = (
        select(t.c.id)
        .where(
            t.c.status.in_(ACTIVE_STATUSES),
            func.coalesce(t.c.lease_expires_at, t.c.created_at + _seconds(s.redispatch_after_s)) < func.now(),
        )
        .order_by(t.c.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(t)
        .where(t.c.id.in_(due.scalar_subquery()))
        .values(
            lease_owner=None,
            lease_expires_at=func.now() + _seconds(s.redispatch_after_s),
            last_updated_at=func.now(),
            **_loss_counted(t),
        )
        .returning(t.c.id, t.c.losses_at_step, t.c.current_query_index, t.c.lost_at_index)
    ).all()
    out = []
    for row in rows:
        lost_here = row.lost_at_index == row.current_query_index
        failed = lost_here and row.losses_at_step >= s.max_losses_per_step
        out.append(Requeued(row.id, failed, row.losses_at_step if lost_here else 0, row.current_query_index))
    return out


def losses_exhausted(claim: Claim) -> bool:
    """Whether this claim took over from the last worker allowed to die at the run's current step."""
    row = claim.row
    return row.lost_at_index == row.current_query_index and row.losses_at_step >= get_settings().max_losses_per_step

