"""The sweeper: re-enqueues runs whose worker died, fails runs that keep killing their worker.

It runs as a thread in every worker's main process and in beat, so recovery never hinges on
one process; ``runs.requeue_expired`` makes each expiry count once however many sweep.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from dataengine.engine.events import PRUNE_BATCH, prune
from dataengine.engine.jobs import Job, all_jobs
from dataengine.engine.liveness import bury, dead_owners
from dataengine.engine.runs import (
    Requeued,
    finish_run,
    flag_stalled,
    hold_paused,
    redispatch_in,
    redispatch_unclaimed,
    requeue_expired,
)
from dataengine.infra.db import session_scope, statement_scope
from dataengine.infra.dbretry import db_unavailable
from dataengine.infra.metrics import metrics
from dataengine.infra.redis_keys import BROKER_EPOCH_KEY
from dataengine.infra.settings import get_settings
from dataengine.infra.tiers import TIERS, Sender, queue_of
from dataengine.llm import journal, ledger
from dataengine.llm.budgets import daily_pause
from models.base import RunStatus

log = logging.getLogger("dataengine.engine.sweeper")

#: (run ids, taken=False, queues=every tier's) -> those of them whose message is still waiting in one of the
#: broker's ``queues`` (with ``taken``, also those taken by a worker and not acknowledged: the worker app's
#: ``still_queued``).
Waiting = Callable[..., set[str]]
#: () -> whether the broker lost its messages since the last call (``queued.broker_lost_messages``).
BrokerLost = Callable[[], bool]

#: How often a sweeper looks for stalled runs, and prunes old run events.
STALL_CHECK_S = 10.0
PRUNE_EVERY_S = 3600.0
#: A pruning pass deletes batch after batch for this long at most (each batch its own transaction);
#: when it stops with more left, the next pass comes after ``PRUNE_AGAIN_S``, not an hour.
PRUNE_BUDGET_S = 2.0
PRUNE_AGAIN_S = 10.0
#: How often a sweeper rolls the ledger's finished hours up into the totals whole-history cost reports read.
ROLLUP_EVERY_S = 300.0

_sweeping = threading.Lock()
_forks_guarded = False


def _guard_forks() -> None:
    # A worker's main process forks pool processes while the sweeper thread may be mid-sweep,
    # holding an import lock or a connection pool's lock that the child would then wait on for
    # ever. Forks wait for the sweep in progress instead (it takes milliseconds).
    global _forks_guarded
    if not _forks_guarded:
        os.register_at_fork(before=_sweeping.acquire, after_in_parent=_sweeping.release,
                            after_in_child=_sweeping.release)
        _forks_guarded = True


def describe_losses(*, job: Job, run_id: uuid.UUID, losses: int, index: int) -> str:
    """The error message of a run given up after its worker died ``losses`` times with step ``index`` in flight."""
    with session_scope() as session:
        step = next(iter(job.load_steps(session, run_id, index, 1)), None)
    what = f" ({str(step[1])[:120]!r})" if step and step[0] == index else ""
    return (
        f"worker lost {losses} times at {job.step_noun} {index + 1}{what} (index {index}); "
        f"giving up so it is not paid for again"
    )


def sweep_job(*, job: Job, send: Sender, waiting: Waiting | None = None, dead: Sequence[str] = (),
              taken: bool = False) -> list[Requeued]:
    """One sweep of one job's runs; sends a task for each run taken back, after the commit.

    A run no worker held is sent again only if its message is no longer waiting in the broker
    (``waiting``; with ``taken``, nor taken by a worker), so a long backlog is not duplicated: one still
    queued is next looked at after ``redispatch_after_s``, one sent after ``unclaimed_recheck_s`` (the
    worker that takes its message may die before its claim). Each run is sent on its own: one that
    cannot be sent is due again at the next sweep, and the others still go. ``dead`` names
    processes known dead (``liveness.dead_owners``), whose runs are all taken back at once.
    """
    with session_scope() as session:
        hold_paused(session=session, job=job, still_paused=lambda workspace: daily_pause(workspace) is not None)
        requeued = requeue_expired(session=session, job=job, dead=dead)
    unclaimed = {str(r.run_id) for r in requeued if r.lost_owner is None and r.poison is None}
    queued = _still_waiting(waiting, unclaimed, taken) if waiting is not None and unclaimed else set()
    unsent: list[uuid.UUID] = []
    backlogged: list[uuid.UUID] = []
    aged: list[Requeued] = []
    for r in requeued:
        if r.poison is not None:
            index, losses = r.poison
            error = describe_losses(job=job, run_id=r.run_id, losses=losses, index=index)
            with session_scope() as session:
                finish_run(session=session, job=job, run_id=r.run_id, status=RunStatus.failed, error=error)
            log.error("[%s] %s run_id=%s", job.name, error, r.run_id)
        elif str(r.run_id) in queued:
            log.info("[%s] Run not claimed yet, its message is still queued run_id=%s", job.name, r.run_id)
            backlogged.append(r.run_id)
            if r.priority != TIERS[0]:
                aged.append(r)
        elif _sent(send, job, r):
            what = f"whose worker {r.lost_owner} stopped answering" if r.lost_owner else "that no worker claimed"
            log.warning("[%s] Re-enqueued run %s, at %s %d run_id=%s",
                        job.name, what, job.step_noun, r.step_index + 1, r.run_id)
        else:
            unsent.append(r.run_id)
    if aged and waiting is not None and not taken:  # a message a worker has taken is not waiting
        _age(job, aged, send, waiting)
    for run_ids, seconds in ((unsent, 0.0), (backlogged, get_settings().redispatch_after_s)):
        if run_ids:
            with session_scope() as session:
                redispatch_in(session=session, job=job, run_ids=run_ids, seconds=seconds)
    return requeued


def _age(job: Job, aged: list[Requeued], send: Sender, waiting: Waiting) -> None:
    """Runs of a lower tier still queued after ``redispatch_after_s``: sent to the highest tier's queue too,
    so a steady stream of higher-tier runs cannot keep them waiting for ever. The first of a run's two
    messages a worker takes runs it; the other finds it taken (or done) and is dropped."""
    top = queue_of(TIERS[0])
    there = _still_waiting(waiting, {str(r.run_id) for r in aged}, False, queues=(top,))
    for r in aged:
        if str(r.run_id) in there:
            continue
        try:
            send(job.task_name, {"run_id": str(r.run_id)}, top)
        except Exception as exc:
            log.warning("[%s] Could not send run %s to the %s queue (%s); trying again at its next look",
                        job.name, r.run_id, TIERS[0], exc)
            continue
        log.info("[%s] A %s run queued past its wait, sent to the %s queue too run_id=%s",
                 job.name, r.priority, TIERS[0], r.run_id)


def _still_waiting(waiting: Waiting, run_ids: set[str], taken: bool, **where: Any) -> set[str]:
    """Which of ``run_ids`` still have a message in the queues (one pass over each for all of them)."""
    try:
        return waiting(run_ids, taken=taken, **where) if taken else waiting(run_ids, **where)
    except Exception as exc:  # the broker is unreachable: the sends will tell
        log.warning("cannot look for %d runs in the broker: %s", len(run_ids), exc)
        return set()


def _sent(send: Sender, job: Job, r: Requeued) -> bool:
    try:
        send(job.task_name, {"run_id": str(r.run_id)}, queue_of(r.priority))
        return True
    except Exception as exc:
        log.warning("[%s] Could not enqueue run %s (%s); trying again at the next sweep", job.name, r.run_id, exc)
        return False


def sweep(*, send: Sender, waiting: Waiting | None = None, taken: bool = False) -> list[Requeued]:
    """One sweep of every registered job."""
    return [r for job in all_jobs() for r in sweep_job(job=job, send=send, waiting=waiting, taken=taken)]


def take_back_dead(*, send: Sender, jobs: Sequence[Job] | None = None) -> list[Requeued]:
    """Take back every run (of every registered job, or of ``jobs``) of the processes whose heartbeat
    says they died, and delete their heartbeats."""
    with statement_scope() as conn:
        dead = dead_owners(conn)
    if not dead:
        return []
    requeued = [r for job in (all_jobs() if jobs is None else jobs) for r in sweep_job(job=job, send=send, dead=dead)]
    with statement_scope() as conn:
        bury(conn, dead)
    return requeued


def flag_stalled_runs() -> list[tuple[Job, Any]]:
    """Flag every job's runs that still heartbeat but stopped making progress (``runs.flag_stalled``)."""
    flagged = []
    for job in all_jobs():
        with session_scope() as session:
            flagged += [(job, r) for r in flag_stalled(session=session, job=job)]
    for job, r in flagged:
        log.warning("[%s] Run stalled: no %s recorded for %.0fs though %s still heartbeats (at %s %d) run_id=%s",
                    job.name, job.step_noun, time.time() - r.last_updated_at.timestamp(), r.lease_owner,
                    job.step_noun, r.current_query_index + 1, r.id)
    return flagged


def prune_events(*, older_than: timedelta, budget_s: float = PRUNE_BUDGET_S) -> tuple[int, bool]:
    """Delete events older than ``older_than``, a batch per transaction, for ``budget_s`` at most.
    Returns how many went, and whether older ones are left."""
    deadline, total = time.monotonic() + budget_s, 0
    while True:
        with session_scope() as session:
            n = prune(session, older_than=older_than)
        total += n
        if n < PRUNE_BATCH:
            return total, False
        if time.monotonic() >= deadline:
            return total, True


class Sweeper(threading.Thread):
    """Sweeps every ``sweep_interval_s`` until stopped; an error is logged and the next sweep goes on.

    A stale heartbeat means a dead process only if the database was reachable meanwhile: during an
    outage no live worker's beat gets through either. So a sweeper takes runs back only once it has
    itself reached the database promptly and without a break for a moment (:meth:`in_contact`):
    after an outage, a sweep that hung in a pooler's queue, a pause of this process or its start,
    the live workers (whose heartbeats retry every interval) get the time to beat again before
    anything is counted as lost.
    """

    def __init__(self, *, send: Sender, waiting: Waiting | None = None, broker_lost: BrokerLost | None = None,
                 name: str = "dataengine-sweeper") -> None:
        super().__init__(name=name, daemon=True)
        self.send, self.waiting, self.broker_lost = send, waiting, broker_lost
        self.stopped = threading.Event()
        #: Since when this sweeper has reached the database without a break (monotonic), and when last.
        self.contact_since: float | None = None
        self.last_contact = 0.0
        #: The broker was found without its messages and the runs no worker holds are not yet made due.
        self.resend_unclaimed = False
        self._broker_error: str | None = None
        self._next_stall_check = self._next_prune = self._next_rollup = 0.0

    def start(self) -> None:
        """Start sweeping in the background."""
        _guard_forks()
        super().start()

    def run(self) -> None:
        s = get_settings()
        next_sweep = time.monotonic() + s.sweep_interval_s
        # Dead processes are looked for at every heartbeat interval (one small query); the full
        # sweep, for lapsed leases and runs never claimed, every sweep interval.
        while not self.stopped.wait(min(s.heartbeat_interval_s, s.sweep_interval_s)):
            full = time.monotonic() >= next_sweep
            try:
                with _sweeping:
                    self.sweep_once(full=full)
            except Exception as exc:
                if db_unavailable(exc):
                    self.contact_since = None
                log.warning("sweep failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, s.sweep_interval_s)
            if full:
                next_sweep = time.monotonic() + s.sweep_interval_s

    @staticmethod
    def settle_s() -> float:
        """Contact needed before taking runs back: a few heartbeat intervals (live processes retry their
        beat at every one), at least a second, at most a lease."""
        s = get_settings()
        return min(s.lease_s, max(1.0, 4 * s.heartbeat_interval_s)) + s.heartbeat_interval_s

    def in_contact(self) -> bool:
        """Reach the database (one ``SELECT 1``): whether this sweeper has done so promptly and without a
        break for :meth:`settle_s`. A probe slower than half a lease, or a gap that long since the last
        one, starts the count again."""
        s = get_settings()
        started = time.monotonic()
        with statement_scope() as conn:
            conn.execute(text("SELECT 1"))
        now, limit = time.monotonic(), s.lease_s / 2
        if self.contact_since is None or now - started > limit or started - self.last_contact > limit:
            if self.contact_since is not None or self.last_contact:
                log.warning("database answered after %.1fs without contact; runs are taken back only after "
                            "%.1fs more, once live workers beat again", now - self.last_contact, self.settle_s())
            self.contact_since = now
        self.last_contact = now
        return now - self.contact_since >= self.settle_s()

    def sweep_once(self, *, full: bool = True) -> list[Requeued]:
        """Take back the runs of dead processes and, if ``full``, sweep; nothing until this sweeper has
        been in contact with the database for a lease (:meth:`in_contact`)."""
        if not self.in_contact():
            return []
        lost = self._check_broker()
        if full:
            self._look_after_runs()
        requeued = take_back_dead(send=self.send)
        if not (full or lost):
            return requeued
        # After the epoch key was found gone, a message the broker still holds, even one a worker took,
        # was not lost: on a broker first used while producers were already sending, only those
        # whose message is nowhere are sent.
        requeued += sweep(send=self.send, waiting=self.waiting, taken=lost)
        metrics().sweeps.inc()
        return requeued

    def _look_after_runs(self) -> None:
        """Every ``STALL_CHECK_S`` (or half ``stall_min_s``), flag the runs that stalled; every
        ``ROLLUP_EVERY_S``, roll up the cost ledger's finished hours; every ``PRUNE_EVERY_S``, prune old events."""
        now = time.monotonic()
        if now >= self._next_stall_check:
            self._next_stall_check = now + min(STALL_CHECK_S, get_settings().stall_min_s / 2)
            flag_stalled_runs()
        if now >= self._next_rollup:
            self._next_rollup = now + ROLLUP_EVERY_S
            ledger.roll_up()
        if now >= self._next_prune:
            s = get_settings()
            pruned, more = prune_events(older_than=timedelta(days=s.events_retention_days))
            self._next_prune = time.monotonic() + (PRUNE_AGAIN_S if more else PRUNE_EVERY_S)
            answers = journal.prune(older_than=timedelta(days=s.journal_retention_days),
                                    run_tables={job.key: job.runs.name for job in all_jobs()})
            if pruned or answers:
                log.info("pruned %d run events older than %.0f days and %d LLM responses of runs finished "
                         "%.0f days ago", pruned, s.events_retention_days, answers, s.journal_retention_days)

    def _check_broker(self) -> bool:
        """If the broker lost its messages, make every run no worker holds due now (a full sweep then
        sends those whose message is not in the queue); True if it did."""
        if self.broker_lost is None:
            return False
        try:
            if self.broker_lost():
                self.resend_unclaimed = True
            self._broker_error = None
        except Exception as exc:  # the broker is away; it is looked at again at the next beat
            if self._broker_error is None:
                log.warning("cannot check the broker for lost messages (%s: %s)", type(exc).__name__, exc)
            self._broker_error = str(exc)
        if not self.resend_unclaimed:
            return False
        with session_scope() as session:
            due = sum(redispatch_unclaimed(session=session, job=job) for job in all_jobs())
        self.resend_unclaimed = False
        log.warning("the broker came back without its messages (%s was gone): %d runs no worker holds are "
                    "sent again unless still queued", BROKER_EPOCH_KEY, due)
        return True
