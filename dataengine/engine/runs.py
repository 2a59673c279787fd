"""Claim, lease, checkpoint, finish and requeue: the writer of the lease columns (with the heartbeat's
hand-back of orphans, ``dataengine.engine.liveness``).

A run is leased by a worker process (``lease_owner``): the lease holds while that process's
heartbeat is fresh, or until ``lease_expires_at`` (from the database clock, set by the claim) when
it has none. A checkpoint writes no indexed column, so PostgreSQL can update the row in place (HOT). Every claim bumps ``fencing_token``. Every later write by that worker says
``WHERE fencing_token = :token``: once another worker has claimed the run, the old one's
writes match no row, and it stops.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    TextClause,
    and_,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from dataengine.engine.events import logged
from dataengine.engine.jobs import Job
from dataengine.infra.errors import PAUSED, InvalidRunId, LeaseLost, RunNotFound
from dataengine.infra.metrics import metrics
from dataengine.infra.queries import column_list, identifier, json_rows_sql, statement
from dataengine.infra.settings import get_settings
from dataengine.llm.budgets import dollars
from models.base import ACTIVE_STATUSES, FINAL_STATUSES, RunStatus
from models.events import EventType

#: Units of steps a checkpoint records ahead as in flight at most (charged, not run, if the
#: worker dies): twice the units running, so a checkpoint is needed only every few steps.
AHEAD = 8


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
    """A run the sweeper took back from a lost worker, or that no worker claimed in time."""

    run_id: uuid.UUID
    #: The worker that held the lease, or None for a run no worker had (never claimed, or handed back).
    lost_owner: str | None
    #: The resume point.
    step_index: int
    #: ``(step index, losses)`` of a step that has now killed ``max_losses_per_step`` workers.
    poison: tuple[int, int] | None
    #: Its tier: sent again to that tier's queue.
    priority: str = "normal"


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


def _count_losses(t: Any, *, claimant: str | None = None) -> dict[str, Any]:
    """SET clauses that charge a lost worker to every step it had in flight, and forget those steps
    (the next holder records its own). Nobody is charged when the lease had no owner (a run handed
    back) or when its owner is ``claimant`` taking its own lease back (a retry in the same process)."""
    charged = literal_column(statement("count_losses", runs=identifier(t.name)), JSONB)
    lost = t.c.lease_owner.is_not(None)
    if claimant is not None:
        lost = and_(lost, t.c.lease_owner != claimant)
    return {"step_losses": case((lost, charged), else_=t.c.step_losses),
            "in_flight_steps": literal_column("'{}'::integer[]")}


def poison_step(step_losses: dict[str, int]) -> tuple[int, int] | None:
    """``(index, losses)`` of the first step that killed ``max_losses_per_step`` workers, if any."""
    limit = get_settings().max_losses_per_step
    dead = sorted((int(i), n) for i, n in step_losses.items() if n >= limit)
    return dead[0] if dead else None


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
    free = [t.c.lease_owner.is_(None), lease_lapsed(t)]
    if dead_owner is not None:
        free.append(t.c.lease_owner == dead_owner)
    claim = (
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
            stalled_at=None,
            # A run paused by a daily budget says so until it is claimed again.
            error_message=case((t.c.error_message.like(f"{PAUSED}%"), None), else_=t.c.error_message),
            **_count_losses(t, claimant=worker_id),
        )
        .returning(*t.c)
    )
    row = session.execute(logged(
        claim, job_key=job.key, worker=worker_id,
        event=lambda c: case((c.completed_steps > 0, EventType.resumed.value), else_=EventType.claimed.value),
        detail=f"taken over from {dead_owner}, a process of this machine that died" if dead_owner else None,
    )).one_or_none()
    if row is not None:
        metrics().runs_started.labels(job.key).inc()
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
    session: Session | Connection,
    job: Job,
    claim: Claim,
    results: list[dict[str, Any]],
    next_index: int,
    in_flight: list[int],
    eta_s: int | None,
) -> Checkpointed:
    """Record finished steps and advance the run row in one statement, fenced by the claim's token.

    ``results`` are result-table rows (with ``query_index`` and the step's usage columns);
    ``next_index`` is the first step still without a result; ``in_flight`` the steps this
    worker is about to have running (charged if it dies). The statement is idempotent, so a
    checkpoint whose commit went unanswered may be sent again: a row already recorded adds
    nothing, and tokens and cost are summed from the rows actually inserted. Raises
    ``LeaseLost``, having written nothing, if the run is no longer this claim's.
    """
    rows = [{**row, "run_id": str(claim.run_id), "fencing_token": claim.token} for row in results]
    row = session.execute(
        _checkpoint_sql(job),
        {
            "rows": json.dumps(rows, default=str),
            "id": claim.run_id,
            "token": claim.token,
            "next_index": next_index,
            "in_flight": in_flight,
            "eta_s": eta_s,
        },
    ).one_or_none()
    if row is None:
        raise LeaseLost(run_id=claim.run_id, token=claim.token)
    if results:
        m = metrics()
        m.steps.labels(job.key).inc(len(results))
        latency = m.step_seconds.labels(job.key)
        for result in results:
            latency.observe(result.get("latency_ms", 0) / 1000)
    return Checkpointed(completed_steps=row.completed_steps, cancel_requested=row.cancel_requested)


@cache
def _checkpoint_sql(job: Job) -> TextClause:
    """``checkpoint`` of ``sql/queries.sql`` for the job, built once: the rows arrive as one JSON
    array, so the SQL never changes with the batch size and the server plans it once (a multi-row
    VALUES would not). Only the result table's column list comes from its model."""
    columns = [c for c in job.results.columns if c.name != "created_at"]
    types, values = json_rows_sql(columns)
    job_rows = statement("checkpoint_job_rows", job_sql=job.checkpoint_sql) if job.checkpoint_sql else ""
    return text(statement("checkpoint", job, result_columns=column_list(columns), result_values=values,
                          result_types=types, job_rows=job_rows))


def finish_run(
    *,
    session: Session | Connection,
    job: Job,
    run_id: uuid.UUID,
    status: RunStatus,
    token: int | None = None,
    error: str | None = None,
    summary: dict[str, Any] | None = None,
    worker: str | None = None,
) -> bool:
    """Move an active run to a final status and free its lease; with ``token``, only if still ours.
    A ``summary`` (a completed run's) is written with it; None leaves the column as it is. The event
    (completed, failed, cancelled) names ``worker``, the process that ended it, if any."""
    params = {"id": run_id, "job_key": job.key, "status": status.value, "token": token, "error": error,
              "worker": worker, "summary": None if summary is None else json.dumps(summary, default=str)}
    ended = session.execute(_finish_sql(job), params).scalar_one() == 1
    if ended:
        metrics().runs_finished.labels(job.key, status.value).inc()
    return ended


@cache
def _finish_sql(job: Job) -> TextClause:
    """``finish_run`` of ``sql/queries.sql`` for the job, built once: a run's last write is on every run's path."""
    return text(statement("finish_run", job))


def release_run(*, session: Session, job: Job, claim: Claim, error: str | None,
                event: EventType | None = EventType.handed_back, detail: str | None = None,
                status: RunStatus | None = None, retry_after_s: float | None = None) -> None:
    """Hand the run back unfinished (a retry, a shutdown); the sender re-enqueues it, the sweeper only if
    that is lost. ``event`` says why (a step that failed for now, or a hand-back; None writes none),
    ``detail`` how. A paused run (a daily budget spent) is sent again by the sweeper only, after
    ``retry_after_s``, as ``status``."""
    t, s = job.runs, get_settings()
    values: dict[str, Any] = {
        "lease_owner": None,
        "lease_expires_at": func.now() + _seconds(s.redispatch_after_s if retry_after_s is None else retry_after_s),
        "in_flight_steps": [],  # abandoned on purpose, not lost with a dead worker
        "error_message": error, "eta_s": None, "last_updated_at": func.now(),
    }
    if status is not None:
        values["status"] = status.value
    released = (update(t).where(t.c.id == claim.run_id, t.c.fencing_token == claim.token).values(**values)
                .returning(t.c.id, t.c.fencing_token, t.c.current_query_index))
    if event is None:
        session.execute(released)
        return
    session.execute(logged(released, job_key=job.key, event=event.value, worker=claim.worker_id, detail=detail or error))


def hold_paused(*, session: Session, job: Job, still_paused: Callable[[str | None], bool]) -> int:
    """Keep the runs paused by a daily budget whose recheck is due, and whose budget is still spent
    (``still_paused(workspace_id)``), off the queue a while longer: the sweep that follows in the same
    transaction sends only the others. Returns how many were held."""
    t = job.runs
    due = session.execute(select(t.c.id, t.c.workspace_id).where(
        t.c.status == RunStatus.queued.value, t.c.lease_owner.is_(None), t.c.lease_expires_at < func.now(),
        t.c.error_message.like(f"{PAUSED}%"))).all()
    spent: dict[str | None, bool] = {}
    held = [r.id for r in due if spent.setdefault(r.workspace_id, still_paused(r.workspace_id))]
    if held:
        session.execute(update(t).where(t.c.id.in_(held), t.c.lease_owner.is_(None))
                        .values(lease_expires_at=func.now() + _seconds(get_settings().budget_recheck_s)))
    return len(held)


def request_cancel(*, session: Session, job: Job, run_id: uuid.UUID) -> str:
    """Ask a run to stop: a run no worker holds is cancelled at once, a running one within a second or two
    (its loop abandons the steps in flight and drops their results). Returns its status."""
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


#: Runs an operator may send back to work: they resume from their checkpoint.
RETRYABLE_STATUSES = (RunStatus.failed.value, RunStatus.cancelled.value)


def retry_run(*, session: Session, job: Job, run_id: uuid.UUID, max_cost_usd: Decimal | None = None) -> str | None:
    """Queue a failed or cancelled run again; it resumes at its checkpoint (its recorded steps stay) and
    its step losses are forgiven; ``max_cost_usd`` replaces its budget. Returns ``None`` if it was
    retried, else the status that kept it."""
    t, s = job.runs, get_settings()
    budget = {} if max_cost_usd is None else {"max_cost_usd": max_cost_usd}
    retried = session.execute(logged(
        update(t)
        .where(t.c.id == run_id, t.c.status.in_(RETRYABLE_STATUSES))
        .values(
            status=RunStatus.queued.value, error_message=None, finished_at=None, cancel_requested=False,
            step_losses={}, in_flight_steps=[], eta_s=None, last_updated_at=func.now(), lease_owner=None,
            # Not claimed by then (its message lost), the sweeper sends it again.
            lease_expires_at=func.now() + _seconds(s.redispatch_after_s), **budget,
        )
        .returning(t.c.id, t.c.fencing_token, t.c.current_query_index),
        job_key=job.key, event=EventType.retried.value,
        detail="sent back to work; it resumes at its checkpoint"
        + ("" if max_cost_usd is None else f", with a budget of ${dollars(max_cost_usd)}"),
    )).scalar_one_or_none()
    if retried is not None:
        return None
    status = session.scalar(select(t.c.status).where(t.c.id == run_id))
    if status is None:
        raise RunNotFound(job=job.name, run_id=run_id)
    return status


def lease_lapsed(t: Any) -> Any:
    """The run's lease ran out and its owner (if any) has no fresh heartbeat: nobody works under it."""
    alive = statement("owner_alive", runs=identifier(t.name))
    return and_(t.c.lease_expires_at < func.now(),
                text("NOT " + alive).bindparams(lease=timedelta(seconds=get_settings().lease_s)))


def due_runs(*, job: Job, limit: int, dead: Sequence[str] = ()) -> Select:
    """Active runs held by a dead process (``dead``), whose lease lapsed, or that a producer wrote and
    no worker claimed in time, locked for the sweeper (a concurrent sweeper skips them)."""
    t, s = job.runs, get_settings()
    # Each arm an index scan on its own partial index (a COALESCE of them could use none).
    arms = [
        lease_lapsed(t),
        and_(t.c.lease_expires_at.is_(None), t.c.created_at < func.now() - _seconds(s.redispatch_after_s)),
    ]
    if dead:
        arms.append(t.c.lease_owner.in_(list(dead)))
    return (
        select(t.c.id, t.c.lease_owner)
        .where(t.c.status.in_(ACTIVE_STATUSES), or_(*arms))
        .order_by(t.c.lease_expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def requeue_expired(*, session: Session, job: Job, limit: int = 100, dead: Sequence[str] = ()) -> list[Requeued]:
    """Take back active runs held by a dead process (``dead``) or whose lease lapsed, or that no worker
    claimed in time.

    Each is returned once however many sweepers run: the update moves the expiry forward under a
    row lock, so a concurrent sweeper no longer matches it. The takeback bumps the fencing token,
    so a worker that was only paused can no longer checkpoint or finish. A lost worker
    is charged to each step it had in flight; ``poison`` names a step that has now killed
    ``max_losses_per_step`` of them.
    """
    t, s = job.runs, get_settings()
    due = due_runs(job=job, limit=limit, dead=dead).cte("due")
    rows = session.execute(logged(
        update(t)
        .where(t.c.id == due.c.id)
        .values(
            lease_owner=None,
            # Sent again now; looked at once more if no worker claimed it by then (a worker that took
            # the message may die before its claim).
            lease_expires_at=func.now() + _seconds(s.unclaimed_recheck_s),
            # A run no worker held has nobody to fence off: only a takeback from a holder bumps the token.
            fencing_token=case((t.c.lease_owner.is_(None), t.c.fencing_token), else_=t.c.fencing_token + 1),
            last_updated_at=func.now(),
            **_count_losses(t),
        )
        .returning(t.c.id, due.c.lease_owner, t.c.current_query_index, t.c.step_losses, t.c.fencing_token,
                   t.c.priority),
        job_key=job.key, event=EventType.recovered.value,
        detail=lambda c: case(
            (c.lease_owner.is_(None), literal("no worker had claimed it in time; sent again")),
            else_=literal("taken back from ") + c.lease_owner + literal(", which stopped answering"),
        ),
    )).all()
    if rows:
        metrics().runs_recovered.labels(job.key).inc(len(rows))
    return [Requeued(r.id, r.lease_owner, r.current_query_index, poison_step(r.step_losses), r.priority) for r in rows]


def redispatch_unclaimed(*, session: Session, job: Job) -> int:
    """Make every active run no worker holds due at the next sweep (the broker lost the messages
    that would have brought them to a worker); the sweeper then sends those not still queued."""
    t = job.runs
    result = session.execute(
        update(t)
        .where(t.c.status.in_(ACTIVE_STATUSES), t.c.lease_owner.is_(None))
        .values(lease_expires_at=func.now())
    )
    return result.rowcount


def redispatch_in(*, session: Session, job: Job, run_ids: list[uuid.UUID], seconds: float = 0) -> None:
    """Make taken-back runs no worker has claimed due again in ``seconds``: at the next sweep when their
    message could not be sent, ``redispatch_after_s`` later when it is still queued behind a backlog."""
    t = job.runs
    session.execute(
        update(t)
        .where(t.c.id.in_(run_ids), t.c.lease_owner.is_(None), t.c.status.in_(ACTIVE_STATUSES))
        .values(lease_expires_at=func.now() + _seconds(seconds))
    )


def flag_stalled(*, session: Session, job: Job) -> list[Any]:
    """Flag (``stalled_at``, a ``stalled`` event) the running runs held by a worker that have recorded no
    step for ``stall_factor`` times their usual time per step, and at least ``stall_min_s``; returns
    them (``id``, ``lease_owner``, ``current_query_index``). A run is flagged once until it moves again.
    Scans only runs a worker holds (the active-owner index), not a backlog of queued ones."""
    t, s = job.runs, get_settings()
    quiet = text(statement("stalled", job)).bindparams(stall_min=timedelta(seconds=s.stall_min_s),
                                                       stall_factor=s.stall_factor)
    stalled = (
        update(t)
        .where(
            t.c.status.in_(ACTIVE_STATUSES), t.c.status == RunStatus.running.value, t.c.lease_owner.is_not(None),
            t.c.stalled_at.is_(None), quiet,
        )
        .values(stalled_at=func.now())
        .returning(t.c.id, t.c.fencing_token, t.c.current_query_index, t.c.lease_owner, t.c.last_updated_at)
    )
    flagged = session.execute(logged(
        stalled, job_key=job.key, event=EventType.stalled.value,
        detail=lambda c: func.concat("no step recorded for ", func.round(func.extract("epoch", func.now() - c.last_updated_at)),
                                     " s, though ", c.lease_owner, " still heartbeats"),
    )).all()
    if flagged:
        metrics().runs_stalled.labels(job.key).inc(len(flagged))
    return flagged
