"""The run loop every job shares: claim, resume, run steps a few at a time, checkpoint, finish.

Steps run on the process's step threads, each run keeping its fair share of them in flight
(``dataengine.engine.stepbudget``); results are checkpointed from the loop's own thread, in the order
they finish, each batch in one transaction that also records the steps about to start and a few
after them, so a worker that dies is charged to the steps it may have had in flight; being
fenced, that write also proves the lease is still this worker's before any step starts (steps
recorded ahead start within a heartbeat interval of such a proof). The process's heartbeat
(``dataengine.engine.heartbeats``) keeps the lease alive and notices cancellation or a takeover; a cancelled
run abandons its steps in flight, as it does a step past ``step_timeout_s``, and ends without them.
Database outages are waited out (``db_retry_limit_s``): every write is fenced and idempotent,
so retrying is safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import select

from dataengine.engine.events import record
from dataengine.engine.heartbeats import Lease
from dataengine.engine.jobs import STEP_PAGE_SIZE, Job, StepOutcome
from dataengine.engine.runs import (
    AHEAD,
    Claim,
    Refusal,
    checkpoint,
    claim_run,
    count_steps,
    finish_run,
    parse_run_id,
    poison_step,
    recorded_steps,
    release_run,
)
from dataengine.engine.stepbudget import budget
from dataengine.engine.sweeper import describe_losses
from dataengine.infra.db import session_scope, statement_scope, statement_session
from dataengine.infra.dbretry import db_unavailable, retry_db
from dataengine.infra.errors import (
    BudgetExceeded,
    BudgetPaused,
    DatabaseUnavailable,
    LeaseLost,
    RunFatal,
    StepFailed,
    StepTimedOut,
    TransientStepError,
)
from dataengine.infra.logs import RunLogger, in_run_context, run_context, run_logger, set_run_field
from dataengine.infra.metrics import metrics
from dataengine.infra.settings import get_settings
from dataengine.infra.workerid import dead_sibling
from dataengine.llm import calls as llm
from dataengine.llm.budgets import RunBudget, daily_pause, pause_for_s
from dataengine.llm.journal import journaled_steps
from models.base import RunStatus
from models.events import EventType

if TYPE_CHECKING:
    from dataengine.engine.submitting import Created

#: How long finished steps that cost nothing may wait to be checkpointed with the next ones.
GATHER_S = 0.05
T = TypeVar("T")


@dataclass(frozen=True)
class RunOutcome:
    """What a task reports: the run's status and a sentence on what this execution did."""

    run_id: str
    status: str
    detail: str
    executed: bool = True
    #: The run was handed back unfinished and must be enqueued again.
    requeue: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The task's JSON result."""
        return {"run_id": self.run_id, "status": self.status, "detail": self.detail, "executed": self.executed}


def execute_run(*, job: Job, run_id: object, worker_id: str, task_id: str | None, may_retry: bool = True) -> RunOutcome:
    """Claim the run and work it to the end, or explain why this worker does not.

    Raises ``LeaseLost`` if another worker took the run over, ``TransientStepError`` when a
    step failed for now and ``DatabaseUnavailable`` when the database stayed away too long (the
    run is handed back for a retry in both cases), and ``StepFailed`` when the run ended failed.
    """
    started = start_run(job=job, run_id=run_id, worker_id=worker_id, task_id=task_id, may_retry=may_retry)
    return started if isinstance(started, RunOutcome) else started.run()


def start_run(*, job: Job, run_id: object, worker_id: str, task_id: str | None,
              may_retry: bool = True) -> RunOutcome | Execution:
    """Claim the run: its execution, ready to ``run()`` on any thread, or the outcome when this
    worker does not run it. Raises as ``execute_run`` does for what happens before the first step."""
    rid = parse_run_id(run_id)
    log = run_logger(run_id=rid, task_id=task_id)
    if not budget.reserve(rid):
        reason = f"run is being executed by {worker_id} (this process)"
        log.info("[%s] Not running: %s", job.name, reason)
        return RunOutcome(str(rid), RunStatus.running.value, reason, executed=False)
    try:
        started = _start(job=job, rid=rid, worker_id=worker_id, task_id=task_id, may_retry=may_retry, log=log)
    except Exception as exc:
        budget.release(rid)
        if isinstance(exc, DatabaseUnavailable) or not db_unavailable(exc):
            raise
        raise DatabaseUnavailable(seconds=0, what="claiming the run", run_id=rid) from exc
    if isinstance(started, RunOutcome):
        budget.release(rid)
    return started


def adopt_run(*, job: Job, created: Created, task_id: str | None) -> Execution:
    """The execution of a run this worker created already claimed (``dataengine.engine.submitting.StartHere``):
    nothing to check or read back; its first steps are on record as in flight since the insert."""
    claim = created.claim
    assert claim is not None  # noqa: S101  narrows a type the code above guarantees; not input validation
    budget.reserve(claim.run_id)
    log = run_logger(run_id=claim.run_id, task_id=task_id)
    execution = Execution(job=job, claim=claim, log=log, may_retry=True, total=claim.row.total_steps,
                          steps=created.steps)
    execution.confirmed_at = created.sent_at
    return execution


def _claim(*, job: Job, rid: Any, worker_id: str, task_id: str | None, log: RunLogger) -> Claim | Refusal:
    with session_scope() as session:
        claim = claim_run(session=session, job=job, run_id=rid, worker_id=worker_id, task_id=task_id)
    if isinstance(claim, Refusal) and claim.owner == worker_id:
        # This process's own lease, left by an execution that gave up (a database outage longer
        # than db_retry_limit_s, then a Celery retry): nothing else works under it.
        log.info("[%s] Taking back this process's own lease", job.name)
        with session_scope() as session:
            claim = claim_run(
                session=session, job=job, run_id=rid, worker_id=worker_id, task_id=task_id, dead_owner=worker_id
            )
    elif isinstance(claim, Refusal) and claim.owner and dead_sibling(claim.owner, worker_id):
        # A process of this machine died holding the run (OOM, SIGKILL) and Celery redelivered it.
        log.warning("[%s] Taking over from %s, a process of this machine that died", job.name, claim.owner)
        with session_scope() as session:
            claim = claim_run(
                session=session, job=job, run_id=rid, worker_id=worker_id, task_id=task_id, dead_owner=claim.owner
            )
    return claim


def _start(*, job: Job, rid: Any, worker_id: str, task_id: str | None, may_retry: bool,
           log: RunLogger) -> RunOutcome | Execution:
    claim = _claim(job=job, rid=rid, worker_id=worker_id, task_id=task_id, log=log)
    if isinstance(claim, Refusal):
        log.info("[%s] Not running: %s", job.name, claim.reason)
        return RunOutcome(str(rid), claim.status, claim.reason, executed=False)
    poison = poison_step(claim.row.step_losses)
    if poison is not None:
        error = describe_losses(job=job, run_id=rid, losses=poison[1], index=poison[0])
        with session_scope() as session:
            finish_run(session=session, job=job, run_id=rid, status=RunStatus.failed, token=claim.token, error=error,
                       worker=worker_id)
        log.error("[%s] %s", job.name, error)
        raise StepFailed(error)
    total = claim.row.total_steps
    if not total:
        with session_scope() as session:
            total = count_steps(session=session, job=job, claim=claim)
    if not total:
        error = f"the run has no {job.step_plural}: write them before sending its id"
        with session_scope() as session:
            finish_run(session=session, job=job, run_id=rid, status=RunStatus.failed, token=claim.token, error=error,
                       worker=worker_id)
        raise StepFailed(error)
    return Execution(job=job, claim=claim, log=log, may_retry=may_retry, total=total)


_draining = threading.Event()


def drain() -> None:
    """The worker is shutting down: runs finish their in-flight steps, checkpoint, and are handed back."""
    _draining.set()


def is_draining() -> bool:
    """Whether the worker is shutting down."""
    return _draining.is_set()


@dataclass(frozen=True)
class _Running:
    """A step, or a group of steps sharing one call, in the thread pool."""

    steps: list[tuple[int, Any]]
    deadline: float

    @property
    def indexes(self) -> list[int]:
        return [index for index, _ in self.steps]


class Execution:
    """One claimed run being worked by this worker; ``run()`` works it to the end (once)."""

    def __init__(self, *, job: Job, claim: Claim, log: RunLogger, may_retry: bool, total: int,
                 steps: list[tuple[int, Any]] | None = None) -> None:
        self.job, self.claim, self.log, self.may_retry, self.total = job, claim, log, may_retry, total
        # Its tier's and workspace's part of the calls in flight.
        budget.belongs(claim.run_id, claim.row.workspace_id or "-", claim.row.priority)
        #: Every step of a run created moments ago, none recorded yet: nothing to read back.
        self.known_steps = steps
        self.s = get_settings()
        self.cursor: int = claim.row.current_query_index
        self.completed: int = claim.row.completed_steps
        self.done_here = 0
        self.started = time.monotonic()
        self.in_flight: dict[Future[Any], _Running] = {}
        self.failure: tuple[int, BaseException] | None = None
        #: Set when a daily budget was found spent: the run stops starting steps and is handed back.
        self.paused: BudgetPaused | None = None
        #: What the run spent (its recorded steps' cost as claimed, then every call) and its budgets.
        self.spend = RunBudget(noun=job.step_noun, spent=claim.row.cost_usd, max_cost=claim.row.max_cost_usd,
                               workspace_id=claim.row.workspace_id)
        self.cancelled = self.exhausted = False
        #: Steps whose next lost worker would fail the run: they run alone, so only a step that kills its
        #: worker is charged that loss. Steps lost fewer times run as usual (a worker killed by something
        #: else, a deploy or a neighbour's OOM, does not slow the rest of the run to one step at a time).
        self.suspects = {int(i) for i, n in claim.row.step_losses.items() if n + 1 >= self.s.max_losses_per_step}
        self.peeked: tuple[int, Any] | None = None
        #: Units the last checkpoint recorded as in flight, to start when room frees up.
        self.ahead: list[list[tuple[int, Any]]] = []
        #: Finished steps not checkpointed yet (see ``_may_wait``), and since when.
        self.pending: list[tuple[int, StepOutcome]] = []
        self.pending_since = 0.0
        #: When the last checkpoint that the database accepted was sent (its lease was ours then).
        self.confirmed_at = -float("inf")
        #: The steps the run row records as in flight (a run created claimed records its first ones).
        self.marked = {int(i) for i in claim.row.in_flight_steps}
        self.heartbeat = Lease(job=job, claim=claim, log=log)

    def _db(self, fn: Callable[[], T], what: str) -> T:
        return retry_db(fn, what=what, run_id=self.claim.run_id, limit_s=self.s.db_retry_limit_s, log=self.log)

    def run(self) -> RunOutcome:
        held = metrics().runs_in_progress.labels(self.job.key)
        held.inc()
        try:
            row = self.claim.row
            with run_context(run_id=str(self.claim.run_id), task_id=row.task_id, kind=self.job.key,
                             worker=self.claim.worker_id, step=self.cursor, workspace_id=row.workspace_id,
                             priority=row.priority,
                             budget=self.spend, property=self.job.property_of(row)):
                return self._run()
        finally:
            held.dec()
            budget.release(self.claim.run_id)

    def _run(self) -> RunOutcome:
        job, rid = self.job, self.claim.run_id

        def read_recorded() -> set[int]:
            with session_scope() as session:
                return recorded_steps(session=session, job=job, run_id=rid, from_index=self.cursor)

        self.recorded = set() if self.known_steps is not None else self._db(read_recorded, "reading the recorded steps")
        if self.claim.token > 1:  # interrupted before: its steps may have answers it paid for and never checkpointed
            set_run_field("replay", self._db(lambda: journaled_steps(rid, self.cursor), "reading the LLM journal"))
        if self.cursor or self.recorded:
            self.log.info(
                "[%s] Resuming at %s %d/%d (%d already recorded, not asked again)",
                job.name, job.step_noun, self.cursor + 1, self.total, self.completed,
            )
        paused = self._db(lambda: daily_pause(self.claim.row.workspace_id), "reading today's spend")
        if paused is not None:
            return self._pause(paused)
        self.heartbeat.start()
        try:  # the lease is vouched for until the run's last write: nothing takes it back meanwhile
            self._work(job.prepare(self.claim.row))
            if self.failure is not None:
                return self._fail(*self.failure)
            if self.cancelled:
                return self._finish(RunStatus.cancelled, "cancelled by request")
            if self.paused is not None:
                return self._pause(self.paused)
            if not self.exhausted:
                return self._hand_back()
            return self._finish(RunStatus.completed, None)
        finally:
            self.heartbeat.stop()

    def _work(self, context: Any) -> None:
        try:
            self._loop(context)
        except DatabaseUnavailable as exc:
            self._release_quietly(str(exc))
            raise
        finally:
            for future in self.in_flight:
                future.cancel()  # queued behind other runs' steps: never started

    def _steps(self) -> Iterator[tuple[int, Any]]:
        if self.known_steps is not None:
            yield from self.known_steps
            return
        start = self.cursor

        def page() -> list[tuple[int, Any]]:
            with session_scope() as session:
                return list(self.job.load_steps(session, self.claim.run_id, start, STEP_PAGE_SIZE))

        while start < self.total:
            rows = self._db(page, "reading steps")
            if not rows:
                return
            for index, item in rows:
                if index not in self.recorded:
                    yield index, item
            start = rows[-1][0] + 1

    def _loop(self, context: Any) -> None:
        steps = self._steps()
        self._advance([], steps, context)
        while self.in_flight or self.ahead or self.pending:
            if self.heartbeat.lost.is_set():
                raise LeaseLost(run_id=self.claim.run_id, token=self.claim.token)
            self.cancelled = self.cancelled or self.heartbeat.cancel.is_set()
            deadlines = [r.deadline for r in self.in_flight.values()]
            if self.pending:
                deadlines.append(self.pending_since + GATHER_S)
            soonest = min(deadlines, default=0) - time.monotonic()
            # Cancelled: take what has finished and abandon the rest now, not after the slowest step.
            timeout = 0 if self.cancelled else max(min(self.s.heartbeat_interval_s, soonest), 0.01)
            finished, _ = wait(self.in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
            self._advance(self._collect(finished), steps, context)

    def _collect(self, finished: set[Future[Any]]) -> list[tuple[int, StepOutcome]]:
        results: list[tuple[int, StepOutcome]] = []
        for future in finished:
            running = self.in_flight.pop(future)
            exc = future.exception()
            outcomes = [] if exc is not None else future.result()
            if exc is None and len(running.steps) == 1:
                outcomes = [outcomes]
            if exc is None and len(outcomes) != len(running.steps):
                exc = ValueError(f"a group of {len(running.steps)} steps returned {len(outcomes)} outcomes")
            if exc is None:
                results += zip(running.indexes, outcomes, strict=True)
            elif isinstance(exc, DatabaseUnavailable):
                raise exc  # away longer than a checkpoint waits: the run is handed back, as then
            else:
                for step in running.steps:
                    self._step_failed(step, exc, results)
        for running in self._abandon():
            if not self.cancelled:  # a cancelled run drops its abandoned steps: they failed at nothing
                for step in running.steps:
                    self._step_failed(step, StepTimedOut(timeout_s=self.s.step_timeout_s), results)
        return results

    def _abandon(self) -> list[_Running]:
        """Stop waiting for the steps in flight past their deadline, or for all of them once the run is
        cancelled. A thread cannot be stopped: it ends on its own (the SDK's or the fetch's timeout), and
        its result is dropped, never checkpointed (only this loop checkpoints, and only what it still
        awaits; after the run ends its fenced writes match no row). The step budget counts the thread
        until it ends, as it is busy until then."""
        now = time.monotonic()
        dropped = [f for f, r in self.in_flight.items() if self.cancelled or now >= r.deadline]
        for future in dropped:
            future.cancel()  # one still queued behind other runs' steps never starts
        return [self.in_flight.pop(future) for future in dropped]

    def _transient(self, exc: BaseException) -> bool:
        return llm.is_transient(exc) or isinstance(exc, self.job.transient_errors) or bool(getattr(exc, "retryable", False))

    def _step_failed(self, step: tuple[int, Any], exc: BaseException, results: list[tuple[int, StepOutcome]]) -> None:
        index, item = step
        if isinstance(exc, BudgetPaused):  # not the step's fault: it runs once the budget allows
            self.paused = self.paused or exc
        elif self.job.step_error_policy == "record" and not self._transient(exc) and not isinstance(exc, RunFatal):
            assert self.job.failed_step_values is not None  # noqa: S101  narrows a type the code above guarantees; not input validation
            self.log.warning("[%s] %s %d/%d failed, recorded: %s: %s", self.job.name, self.job.step_noun,
                             index + 1, self.total, type(exc).__name__, exc)
            results.append((index, StepOutcome(values=self.job.failed_step_values(index, item, exc))))
        elif self.failure is None or index < self.failure[0]:
            self.failure = (index, exc)

    def _advance(self, results: list[tuple[int, StepOutcome]], steps: Iterator[tuple[int, Any]], context: Any) -> None:
        """Checkpoint finished steps together with the steps about to start, then start them.

        The checkpoint is fenced, so it is also the proof that the lease is still ours: a worker
        that was paused past its lease and taken over gets ``LeaseLost`` here and starts nothing.
        It also records a few steps ahead (``self.ahead``) as in flight: when a step ends soon after,
        the next one starts at once, while the checkpoint recording the first is being written,
        provided that proof is recent (a heartbeat interval, so no other worker can have it yet).
        """
        stopping = self.cancelled or self.failure is not None or self.paused is not None or _draining.is_set()
        if stopping and self.ahead:
            self.ahead, self.exhausted = [], False  # recorded as in flight but never started: not done
        hungry = not stopping and (bool(self.ahead) or not self.exhausted)  # other runs are owed less if not
        free = budget.room(len(self.in_flight), self.claim.run_id, hungry=hungry)
        free = 0 if stopping else free
        ready, self.ahead = self.ahead[:free], self.ahead[free:]
        free -= len(ready)
        # Only this soon after the last checkpoint the database accepted (which proved the lease
        # ours): a process is taken over no sooner than two heartbeat intervals after its last beat.
        if ready and self._proven_recently():
            self._start(ready, context)
            ready = []
        starting = ready + self._next_units(steps, free)
        marked = len(self.ahead)
        # Topped up once half used (a suspect runs alone: nothing is recorded ahead of it).
        want = min(2 * (len(self.in_flight) + len(starting)), AHEAD)
        if len(self.ahead) <= want // 2 and not any(i >= self.cursor for i in self.suspects):
            self.ahead += self._next_units(steps, want - len(self.ahead))
        if results and not self.pending:
            self.pending_since = time.monotonic()
        self.pending += results
        if not starting and len(self.ahead) == marked and (not self.pending or self._may_wait(stopping)):
            return
        busy = [index for r in self.in_flight.values() for index in r.indexes]
        busy += [index for unit in starting + self.ahead for index, _ in unit]
        recorded, self.pending = self.pending, []
        # Nothing to record when the row already has every busy step in flight, as of a proof recent
        # enough (the insert of a run created claimed, for its first steps).
        if recorded or not self.marked.issuperset(busy) or not self._proven_recently():
            self._checkpoint(recorded, sorted(busy))
        self._start(starting, context)

    def _proven_recently(self) -> bool:
        """Whether the database accepted a write fenced by this claim within a heartbeat interval."""
        return time.monotonic() - self.confirmed_at < self.s.heartbeat_interval_s

    def _may_wait(self, stopping: bool) -> bool:
        """Whether finished steps may wait for the next checkpoint: steps that paid for nothing (an
        unchanged source), while steps recorded ahead keep the run going, for ``GATHER_S`` at most.
        An answer that was paid for is recorded at once: a worker dying meanwhile would pay again."""
        return (not stopping and bool(self.in_flight) and bool(self.ahead)
                and time.monotonic() - self.pending_since < GATHER_S
                and not any(o.usage.prompt_tokens or o.usage.completion_tokens for _, o in self.pending))

    def _start(self, units: list[list[tuple[int, Any]]], context: Any) -> None:
        """Submit steps the database records as in flight."""
        deadline = time.monotonic() + self.s.step_timeout_s
        for unit in units:
            for index, _ in unit:
                self.log.info("[%s] Processing %s %d/%d", self.job.name, self.job.step_noun, index + 1, self.total,
                              extra={"step": index})
            step = unit[0][0]
            if len(unit) == 1:
                future = budget.submit(in_run_context(self._waiting_out_outages(self.job.execute_step), step=step),
                                       context, *unit[0], run_id=self.claim.run_id)
            else:
                future = budget.submit(in_run_context(self._waiting_out_outages(self.job.execute_group), step=step),
                                       context, unit, run_id=self.claim.run_id)
            self.in_flight[future] = _Running(unit, deadline)

    def _waiting_out_outages(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` (a step) run again while the database is away, as a checkpoint is: a step that reads the
        database (a job's own read, of what it stored before, ahead of its calls) and meets an outage
        waits for it, instead of failing and handing its run to another worker. A step reads before it
        pays, and the journal answers what was paid, so running it again asks nothing twice."""
        noun = self.job.step_noun

        def call(*args: Any) -> T:
            return self._db(lambda: fn(*args), f"running a {noun}")

        return call

    def _take(self, steps: Iterator[tuple[int, Any]]) -> tuple[int, Any] | None:
        step, self.peeked = self.peeked or next(steps, None), None
        if step is None:
            self.exhausted = True
        return step

    def _groupable(self, step: tuple[int, Any]) -> bool:
        job = self.job
        return job.execute_group is not None and step[0] not in self.suspects and bool(job.groupable(step[1]))

    def _next_units(self, steps: Iterator[tuple[int, Any]], free: int) -> list[list[tuple[int, Any]]]:
        """Up to ``free`` units of the next steps, each a step alone or a group of steps sharing one call."""
        if free <= 0 or self.cancelled or self.exhausted or self.failure or self.paused or _draining.is_set():
            return []
        units: list[list[tuple[int, Any]]] = []
        while len(units) < free and not any(i in self.suspects for r in self.in_flight.values() for i in r.indexes):
            step = self._take(steps)
            if step is None:
                break
            if step[0] in self.suspects:
                # Its next lost worker would fail the run: it runs alone, so a step that kills its
                # worker is the only one charged, and an innocent one completes.
                if self.in_flight or units:
                    self.peeked = step
                else:
                    units.append([step])
                break
            unit = [step]
            while self._groupable(step) and len(unit) < self.job.group_size:
                more = self._take(steps)
                if more is None:
                    break
                if not self._groupable(more):
                    self.peeked = more
                    break
                unit.append(more)
            units.append(unit)
        return units

    def _checkpoint(self, results: list[tuple[int, StepOutcome]], in_flight: list[int]) -> None:
        self.recorded.update(index for index, _ in results)
        while self.cursor in self.recorded:
            self.recorded.discard(self.cursor)
            self.cursor += 1
        set_run_field("step", self.cursor)
        rows = [
            {
                "query_index": index,
                **o.values,
                "prompt_tokens": o.usage.prompt_tokens,
                "completion_tokens": o.usage.completion_tokens,
                "cost_usd": o.usage.cost_usd,
                "latency_ms": o.usage.latency_ms,
            }
            for index, o in results
        ]
        eta_s = None
        if results:
            self.done_here += len(results)
            remaining = max(self.total - self.completed - len(results), 0)
            eta_s = round((time.monotonic() - self.started) / self.done_here * remaining)

        carrying = [(i, o) for i, o in results if o.rows is not None] if self.job.record_step_rows else []

        def write() -> Any:
            arguments = {"job": self.job, "claim": self.claim, "results": rows, "next_index": self.cursor,
                         "in_flight": in_flight, "eta_s": eta_s}
            if not carrying:  # one statement, its own transaction: a single round trip
                with statement_scope() as conn:
                    return checkpoint(session=conn, **arguments)
            with session_scope() as session:
                state = checkpoint(session=session, **arguments)
                assert self.job.record_step_rows is not None  # noqa: S101  narrows a type the code above guarantees; not input validation
                self.job.record_step_rows(session, self.claim.run_id, carrying)
                return state

        sent = time.monotonic()
        state = self._db(write, "checkpointing")
        self.confirmed_at, self.marked = sent, set(in_flight)
        self.completed = state.completed_steps
        self.cancelled = self.cancelled or state.cancel_requested

    def _finish(self, status: RunStatus, error: str | None) -> RunOutcome:
        """End the run with ``status``; a completed run's summary is computed in the same transaction."""
        def write() -> bool:
            with statement_session() as session:
                summary = self.job.summarize(session, self.claim.run_id) if status is RunStatus.completed else None
                return finish_run(
                    session=session, job=self.job, run_id=self.claim.run_id, status=status,
                    token=self.claim.token, error=error, summary=summary, worker=self.claim.worker_id,
                )

        if not self._db(write, "finishing the run") and not self._finished_by_me(status):
            raise LeaseLost(run_id=self.claim.run_id, token=self.claim.token)
        done = f"{self.completed}/{self.total} {self.job.step_plural} recorded"
        self.log.info("[%s] Run %s: %s", self.job.name, status.value, done)
        return RunOutcome(str(self.claim.run_id), status.value, error or done)

    def _finished_by_me(self, status: RunStatus) -> bool:
        """Whether a finish whose commit went unanswered (then retried) did land."""
        t = self.job.runs
        with session_scope() as session:
            row = session.execute(select(t.c.status, t.c.fencing_token).where(t.c.id == self.claim.run_id)).one()
        return row.status == status.value and row.fencing_token == self.claim.token

    def _release(self, error: str | None, event: EventType, detail: str, **paused: Any) -> None:
        def write() -> None:
            with session_scope() as session:
                release_run(session=session, job=self.job, claim=self.claim, error=error, event=event, detail=detail,
                            **paused)

        self._db(write, "handing the run back")

    def note_lease_lost(self) -> None:
        """Count the lost claim and write the run's ``lease_lost`` event (on a best effort: the run is
        another worker's now)."""
        metrics().claims_lost.labels(self.job.key).inc()
        try:
            with session_scope() as session:
                record(session, run_id=self.claim.run_id, job_key=self.job.key, event=EventType.lease_lost,
                       worker=self.claim.worker_id, token=self.claim.token, step_index=self.cursor,
                       detail="another worker took the run over: this one's writes were refused and it stopped")
        except Exception as exc:
            self.log.warning("[%s] could not record the lost lease: %s", self.job.name, type(exc).__name__)

    def _release_quietly(self, error: str) -> None:
        try:
            with session_scope() as session:
                release_run(session=session, job=self.job, claim=self.claim, error=error,
                            detail=f"handed back: {error}")
        except Exception as exc:  # still away: the lease runs out and the sweeper takes the run back
            self.log.warning("[%s] could not hand the run back: %s", self.job.name, type(exc).__name__)

    def _hand_back(self) -> RunOutcome:
        detail = f"handed back at {self.job.step_noun} {self.cursor + 1}/{self.total}: this worker is shutting down"
        self._release(None, EventType.handed_back, detail)
        self.log.info("[%s] %s", self.job.name, detail)
        return RunOutcome(str(self.claim.run_id), RunStatus.running.value, detail, requeue=True)

    def _pause(self, pause: BudgetPaused) -> RunOutcome:
        """Hand the run back as queued: the sweepers send it again once the budget allows."""
        reason = str(pause)
        metrics().budget_stops.labels(self.job.key, "daily").inc()
        detail = f"{reason}; at {self.job.step_noun} {self.cursor + 1}/{self.total}"
        self._release(reason, EventType.paused, detail, status=RunStatus.queued, retry_after_s=pause_for_s())
        self.log.warning("[%s] %s", self.job.name, detail)
        return RunOutcome(str(self.claim.run_id), RunStatus.queued.value, reason)

    def _fail(self, index: int, exc: BaseException) -> RunOutcome:
        details = f"{self.job.step_noun} {index + 1}/{self.total} failed: {type(exc).__name__}: {exc}"
        if isinstance(exc, BudgetExceeded):  # what it spent once its calls in flight landed
            details = self.spend.exceeded_message(index)
            metrics().budget_stops.labels(self.job.key, "run").inc()
        elif isinstance(exc, RunFatal):
            details = f"{self.job.step_noun} {index + 1}/{self.total}: {exc}"
        if self._transient(exc):
            if self.may_retry:
                self._release(details, EventType.step_failed, f"{details}; the run will be retried")
                self.log.warning("[%s] %s; the run will be retried", self.job.name, details)
                raise TransientStepError(details) from exc
            details += (f" (still failing with no retries left: at most {self.s.task_max_retries} retries "
                        f"within {self.s.transient_retry_window_s:.0f} s of the first failure)")
        self._finish(RunStatus.failed, details)
        self.log.error("[%s] %s", self.job.name, details)
        raise StepFailed(details) from exc
