"""The run loop every job shares: claim, resume, run steps a few at a time, checkpoint, finish.

Steps run in a small thread pool (``step_concurrency``); results are checkpointed from the
loop's own thread, in the order they finish, each batch in one transaction. A heartbeat
thread keeps the lease alive and notices cancellation or a takeover.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from dataengine import llm
from dataengine.db import session_scope
from dataengine.errors import LeaseLost, StepFailed, TransientStepError
from dataengine.jobs import Job, StepOutcome
from dataengine.logs import RunLogger, run_logger
from dataengine.recovery import describe_losses
from dataengine.runs import (
    Claim,
    Refusal,
    checkpoint,
    claim_run,
    count_steps,
    finish_run,
    losses_exhausted,
    parse_run_id,
    recorded_steps,
    release_run,
    renew_lease,
)
from dataengine.settings import get_settings
from dataengine.workerid import dead_sibling
from models.base import RunStatus

#: Steps read from the database at a time, from the resume point on.
STEP_PAGE_SIZE = 200


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
    step failed for now (the run is released for a retry) and ``StepFailed`` when the run
    ended failed.
    """
    rid = parse_run_id(run_id)
    log = run_logger(run_id=rid, task_id=task_id)
    with session_scope() as session:
        claim = claim_run(session=session, job=job, run_id=rid, worker_id=worker_id, task_id=task_id)
    if isinstance(claim, Refusal) and claim.owner and dead_sibling(claim.owner, worker_id):
        # This worker's pool process died holding the run (OOM, SIGKILL) and Celery redelivered it.
        log.warning("[%s] Taking over from %s, a pool process of this worker that died", job.name, claim.owner)
        with session_scope() as session:
            claim = claim_run(
                session=session, job=job, run_id=rid, worker_id=worker_id, task_id=task_id, dead_owner=claim.owner
            )
    if isinstance(claim, Refusal):
        log.info("[%s] Not running: %s", job.name, claim.reason)
        return RunOutcome(str(rid), claim.status, claim.reason, executed=False)
    if losses_exhausted(claim):
        error = describe_losses(job=job, run_id=rid, losses=claim.row.losses_at_step, index=claim.row.current_query_index)
        with session_scope() as session:
            finish_run(session=session, job=job, run_id=rid, status=RunStatus.failed, token=claim.token, error=error)
        log.error("[%s] %s", job.name, error)
        raise StepFailed(error)
    total = claim.row.total_steps
    if not total:
        with session_scope() as session:
            total = count_steps(session=session, job=job, claim=claim)
    if not total:
        error = f"the run has no {job.step_plural}: write them before sending its id"
        with session_scope() as session:
            finish_run(session=session, job=job, run_id=rid, status=RunStatus.failed, token=claim.token, error=error)
        raise StepFailed(error)
    return _Execution(job=job, claim=claim, log=log, may_retry=may_retry, total=total).run()


class _Heartbeat(threading.Thread):
    """Renews the lease every ``heartbeat_interval_s``; flags a takeover or a cancellation."""

    def __init__(self, *, job: Job, claim: Claim, log: RunLogger) -> None:
        super().__init__(name=f"heartbeat-{claim.run_id}", daemon=True)
        self.job, self.claim, self.log = job, claim, log
        self.stopped, self.lost, self.cancel = threading.Event(), threading.Event(), threading.Event()

    def run(self) -> None:
        s = get_settings()
        last_ok = time.monotonic()
        while not self.stopped.wait(s.heartbeat_interval_s):
            try:
                with session_scope() as session:
                    if renew_lease(session=session, job=self.job, claim=self.claim):
                        self.cancel.set()
                last_ok = time.monotonic()
            except LeaseLost:
                self.lost.set()
                return
            except Exception as exc:  # a database blip: keep trying until our lease could have expired
                self.log.warning("[%s] heartbeat failed: %s", self.job.name, exc)
                if time.monotonic() - last_ok >= s.lease_s:
                    self.lost.set()
                    return


_draining = threading.Event()


def drain() -> None:
    """The worker is shutting down: runs finish their in-flight steps, checkpoint, and are handed back."""
    _draining.set()


class _Execution:
    """One claimed run being worked by this worker."""

    def __init__(self, *, job: Job, claim: Claim, log: RunLogger, may_retry: bool, total: int) -> None:
        self.job, self.claim, self.log, self.may_retry, self.total = job, claim, log, may_retry, total
        self.cursor: int = claim.row.current_query_index
        self.completed: int = claim.row.completed_steps
        self.done_here = 0
        self.started = time.monotonic()
        self.in_flight: dict[Future[StepOutcome], int] = {}
        self.failure: tuple[int, BaseException] | None = None
        self.cancelled = self.exhausted = False

    def run(self) -> RunOutcome:
        job, rid = self.job, self.claim.run_id
        with session_scope() as session:
            self.recorded = recorded_steps(session=session, job=job, run_id=rid, from_index=self.cursor)
        if self.cursor or self.recorded:
            self.log.info(
                "[%s] Resuming at %s %d/%d (%d already recorded, not asked again)",
                job.name, job.step_noun, self.cursor + 1, self.total, self.completed,
            )
        heartbeat = _Heartbeat(job=job, claim=self.claim, log=self.log)
        heartbeat.start()
        pool = ThreadPoolExecutor(max_workers=get_settings().step_concurrency, thread_name_prefix="step")
        try:
            self._loop(pool, heartbeat, job.prepare(self.claim.row))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            heartbeat.stopped.set()
        if self.failure is not None:
            return self._fail(*self.failure)
        if self.cancelled:
            return self._finish(RunStatus.cancelled, "cancelled by request", summary=None)
        if not self.exhausted:
            return self._hand_back()
        with session_scope() as session:
            summary = job.summarize(session, rid)
        return self._finish(RunStatus.completed, None, summary=summary)

    def _steps(self) -> Iterator[tuple[int, Any]]:
        start = self.cursor
        while start < self.total:
            with session_scope() as session:
                page = list(self.job.load_steps(session, self.claim.run_id, start, STEP_PAGE_SIZE))
            if not page:
                return
            for index, item in page:
                if index not in self.recorded:
                    yield index, item
            start = page[-1][0] + 1

    def _loop(self, pool: ThreadPoolExecutor, heartbeat: _Heartbeat, context: Any) -> None:
        steps = self._steps()
        while True:
            if heartbeat.lost.is_set():
                raise LeaseLost(run_id=self.claim.run_id, token=self.claim.token)
            self.cancelled = self.cancelled or heartbeat.cancel.is_set()
            self._fill(pool, steps, context)
            if not self.in_flight:
                return
            finished, _ = wait(self.in_flight, timeout=get_settings().heartbeat_interval_s, return_when=FIRST_COMPLETED)
            results: list[tuple[int, StepOutcome]] = []
            for future in finished:
                index = self.in_flight.pop(future)
                exc = future.exception()
                if exc is None:
                    results.append((index, future.result()))
                elif self.failure is None or index < self.failure[0]:
                    self.failure = (index, exc)
            self._fill(pool, steps, context)  # the next steps run while this batch commits
            if results:
                self.cancelled = self._checkpoint(results) or self.cancelled

    def _fill(self, pool: ThreadPoolExecutor, steps: Iterator[tuple[int, Any]], context: Any) -> None:
        width = get_settings().step_concurrency
        while len(self.in_flight) < width and not (
            self.cancelled or self.exhausted or self.failure or _draining.is_set()
        ):
            step = next(steps, None)
            if step is None:
                self.exhausted = True
                return
            index, item = step
            self.log.info("[%s] Processing %s %d/%d", self.job.name, self.job.step_noun, index + 1, self.total)
            self.in_flight[pool.submit(self.job.execute_step, context, index, item)] = index

    def _checkpoint(self, results: list[tuple[int, StepOutcome]]) -> bool:
        self.recorded.update(index for index, _ in results)
        while self.cursor in self.recorded:
            self.recorded.discard(self.cursor)
            self.cursor += 1
        usage = sum((o.usage for _, o in results), llm.Usage())
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
        self.done_here += len(results)
        remaining = max(self.total - self.completed - len(results), 0)
        eta_s = round((time.monotonic() - self.started) / self.done_here * remaining)
        with session_scope() as session:
            state = checkpoint(
                session=session, job=self.job, claim=self.claim, results=rows,
                next_index=self.cursor, usage=usage, eta_s=eta_s,
            )
        self.completed = state.completed_steps
        return state.cancel_requested

    def _finish(self, status: RunStatus, error: str | None, *, summary: dict[str, Any] | None) -> RunOutcome:
        with session_scope() as session:
            mine = finish_run(
                session=session, job=self.job, run_id=self.claim.run_id, status=status,
                token=self.claim.token, error=error, summary=summary,
            )
        if not mine:
            raise LeaseLost(run_id=self.claim.run_id, token=self.claim.token)
        done = f"{self.completed}/{self.total} {self.job.step_plural} recorded"
        self.log.info("[%s] Run %s: %s", self.job.name, status.value, done)
        return RunOutcome(str(self.claim.run_id), status.value, error or done)

    def _hand_back(self) -> RunOutcome:
        with session_scope() as session:
            release_run(session=session, job=self.job, claim=self.claim, error=None)
        detail = f"handed back at {self.job.step_noun} {self.cursor + 1}/{self.total}: this worker is shutting down"
        self.log.info("[%s] %s", self.job.name, detail)
        return RunOutcome(str(self.claim.run_id), RunStatus.running.value, detail, requeue=True)

    def _fail(self, index: int, exc: BaseException) -> RunOutcome:
        details = f"{self.job.step_noun} {index + 1}/{self.total} failed: {type(exc).__name__}: {exc}"
        if llm.is_transient(exc) and self.may_retry:
            with session_scope() as session:
                release_run(session=session, job=self.job, claim=self.claim, error=details)
            self.log.warning("[%s] %s; the run will be retried", self.job.name, details)
            raise TransientStepError(details) from exc
        self._finish(RunStatus.failed, details, summary=None)
        self.log.error("[%s] %s", self.job.name, details)
        raise StepFailed(details) from exc
