"""Runs a pool process executes on its own threads, so it holds many runs at once.

A prefork pool process executes one Celery task at a time. A run spends its life waiting on the
LLM, so the run task claims its run, hands the claimed run to a thread of this process and
returns (``Ignore``: Celery acknowledges the message and records nothing). The process then takes
the next message, up to ``runs_per_process`` runs; beyond that the task waits for room, so the
messages stay in the queue for other workers.

What Celery would have done when the task returned is done here when the run ends: the result
is stored in the result backend, Flower hears ``task-succeeded`` / ``task-failed`` /
``task-retried``, and a transient failure is retried with Celery's own backoff (the same message,
one retry more). A run never depends on its message once claimed: its lease is in PostgreSQL,
and the sweeper takes it back if this process dies.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from dataengine.engine.jobs import Job
from dataengine.engine.runloop import Execution, is_draining
from dataengine.engine.stepbudget import budget
from dataengine.infra.errors import DatabaseUnavailable, LeaseLost, TransientStepError
from dataengine.infra.logs import run_logger
from dataengine.infra.settings import get_settings
from dataengine.infra.tiers import queue_of

log = logging.getLogger("dataengine.worker.hosted_runs")

_room = threading.Condition()
_threads: set[threading.Thread] = set()
#: Run id -> later deliveries of a run this process is executing (a retry that arrived after the
#: sweeper had sent the run again): they end with it.
_attached: dict[str, list[TaskMessage]] = {}
_hosted: set[str] = set()


@dataclass(frozen=True)
class TaskMessage:
    """What is needed of the task's request once the task has returned."""

    task: Task
    job: Job
    run_id: str
    task_id: str
    hostname: str
    retries: int
    may_retry: bool
    received: float
    #: The run's end is this task's result (``<job>.run``); a run started by ``<job>.submit`` is not:
    #: that task's result is the run id, and the run's end is in its row and its log.
    reports: bool = True
    #: When the deliveries of this run began failing without recording a step (wall clock, carried
    #: from retry to retry in the message header ``FAILING_SINCE``), or None.
    failing_since: float | None = None

    @classmethod
    def of(cls, task: Task, job: Job, run_id: str, may_retry: bool, *, reports: bool = True) -> TaskMessage:
        r = task.request
        return cls(task, job, run_id, r.id, r.hostname or "", r.retries or 0, may_retry, time.monotonic(), reports,
                   failing_since(task))


#: The message header of a retry: since when (epoch seconds) the run has been failing without progress.
FAILING_SINCE = "dataengine_failing_since"


def failing_since(task: Task) -> float | None:
    """The retried message's ``FAILING_SINCE``, or None (a first delivery, or a header that is not a number)."""
    value = getattr(task.request, FAILING_SINCE, None)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def retry_allowed(task: Task) -> bool:
    """Whether this delivery may hand its run back for a retry after a transient failure: within
    ``task_max_retries`` and within ``transient_retry_window_s`` of the first failure in a row."""
    s, since = get_settings(), failing_since(task)
    within = since is None or time.time() - since < s.transient_retry_window_s
    return (task.request.retries or 0) < s.task_max_retries and within


def has_room() -> bool:
    """Whether this process may start one more run now (the submit task starts its run here if so)."""
    return budget.runs < get_settings().runs_per_process and not is_draining()


def wait_for_room() -> bool:
    """Block while this process holds ``runs_per_process`` runs; False if the worker is shutting down."""
    limit = get_settings().runs_per_process
    with _room:
        while budget.runs >= limit and not is_draining():
            _room.wait(timeout=1.0)
    return not is_draining()


def host(execution: Execution, message: TaskMessage) -> None:
    """Work ``execution`` on a thread of this process and report its end as the task's."""
    thread = threading.Thread(target=_work, args=(execution, message), daemon=True,
                              name=f"run-{execution.claim.run_id}")
    with _room:
        _threads.add(thread)
        _hosted.add(message.run_id)
    thread.start()


def attach(message: TaskMessage) -> bool:
    """If this process is executing the message's run, the message's task ends when the run does
    (reported as not executed by it); False if it is not."""
    with _room:
        if message.run_id not in _hosted:
            return False
        _attached.setdefault(message.run_id, []).append(message)
        return True


def join_all(timeout_s: float) -> None:
    """Wait for the hosted runs (draining: each checkpoints its steps in flight and is handed back)."""
    deadline = time.monotonic() + timeout_s
    for thread in list(_threads):
        thread.join(max(deadline - time.monotonic(), 0))


def _work(execution: Execution, message: TaskMessage) -> None:
    ended: dict[str, Any] | BaseException = RuntimeError("the run's thread ended without an outcome")
    attached: list[TaskMessage] = []
    try:
        try:
            ended = outcome_of(message, execution)
        finally:
            # No longer executed here before the end is reported: a retry sent by the report (its
            # countdown may be 0) is a run to take, not a later delivery to end with this one, which
            # would drop it.
            with _room:
                _hosted.discard(message.run_id)
                attached = _attached.pop(message.run_id, [])
        _report(message, execution, ended)
    finally:
        with _room:
            _threads.discard(threading.current_thread())
            _room.notify_all()
        for other in attached:
            _succeeded(other, _as_seen_by(other, message, execution.claim.worker_id, ended))


def _as_seen_by(other: TaskMessage, primary: TaskMessage, worker_id: str,
                ended: dict[str, Any] | BaseException) -> dict[str, Any]:
    """The result of a later delivery of a run that ``primary`` executed."""
    if isinstance(ended, TransientStepError | DatabaseUnavailable):
        status, detail = "running", f"handed back and retried as task {primary.task_id}: {ended}"
    elif isinstance(ended, BaseException):
        status, detail = "failed", f"{type(ended).__name__}: {ended}"
    else:
        status, detail = ended["status"], ended["detail"]
    return {"run_id": other.run_id, "status": status, "executed": False,
            "detail": f"run was being executed by {worker_id} as task {primary.task_id}; {detail}"}


def outcome_of(m: TaskMessage, execution: Execution) -> dict[str, Any] | BaseException:
    """Work the run to its end, as the task ends: its JSON result, or the exception it ends with
    (``TransientStepError`` and ``DatabaseUnavailable`` with retries left are retried)."""
    try:
        outcome = execution.run()
    except LeaseLost as exc:
        run_logger(run_id=m.run_id, task_id=m.task_id).warning("[%s] %s", m.job.name, exc)
        execution.note_lease_lost()
        return {"run_id": m.run_id, "status": "lost", "detail": str(exc), "executed": True}
    except DatabaseUnavailable as exc:
        return exc if m.may_retry else database_away(m.job, m.run_id, m.task_id, exc)
    except Exception as exc:
        return exc
    if outcome.requeue:
        m.task.app.send_task(m.job.task_name, kwargs={"run_id": outcome.run_id}, queue=_queue(execution))
    return outcome.as_dict()


def database_away(job: Job, run_id: object, task_id: str | None, exc: DatabaseUnavailable) -> dict[str, Any]:
    """The result of a run the database kept away from after the last retry: not a failure of the
    run, which resumes from its last checkpoint once the database is back."""
    detail = f"{exc}; no task retries left, so the recovery sweeper re-enqueues it once the database is back"
    run_logger(run_id=run_id, task_id=task_id).warning("[%s] %s", job.name, detail)
    return {"run_id": str(run_id), "status": "running", "detail": detail, "executed": True}


def run_eagerly(m: TaskMessage, execution: Execution) -> dict[str, Any]:
    """The run worked in the task itself (``task_always_eager``, ``apply()``): Celery reports it."""
    ended = outcome_of(m, execution)
    if isinstance(ended, BaseException):
        raise ended
    return ended


def _report(m: TaskMessage, execution: Execution, ended: dict[str, Any] | BaseException) -> None:
    """Report how the run ended as the task's result: done, retried after a backoff, or failed."""
    if not isinstance(ended, BaseException):
        _succeeded(m, ended)
    elif isinstance(ended, TransientStepError | DatabaseUnavailable):
        _retry(m, ended, progressed=execution.done_here > 0, queue=_queue(execution))
    else:
        if not isinstance(ended, m.task.throws):
            run_logger(run_id=m.run_id, task_id=m.task_id).error(
                "[%s] the run ended with an unexpected error", m.job.name, exc_info=ended)
        _failed(m, ended)


def _succeeded(m: TaskMessage, result: dict[str, Any]) -> None:
    if m.reports:
        m.task.backend.mark_as_done(m.task_id, result, request=None)
        _event(m, "task-succeeded", result=repr(result), runtime=time.monotonic() - m.received)


def _failed(m: TaskMessage, exc: BaseException) -> None:
    if m.reports:
        tb = "".join(traceback.format_exception(exc))
        m.task.backend.mark_as_failure(m.task_id, exc, traceback=tb, request=None)
        _event(m, "task-failed", exception=repr(exc), traceback=tb)


def _queue(execution: Execution) -> str:
    """The queue of the run's tier: a run sent again keeps its place among the tiers."""
    return queue_of(execution.claim.row.priority)


def _retry(m: TaskMessage, exc: BaseException, *, progressed: bool, queue: str) -> None:
    """What Celery's ``autoretry_for`` does: the same task id, one retry more, after a backoff; the
    message carries since when the run has failed without recording a step (``FAILING_SINCE``)."""
    t = m.task
    since = time.time() if progressed or m.failing_since is None else m.failing_since
    countdown = get_exponential_backoff_interval(factor=int(max(1.0, t.retry_backoff)), retries=m.retries,
                                                 maximum=t.retry_backoff_max, full_jitter=t.retry_jitter)
    window = get_settings().transient_retry_window_s
    run_logger(run_id=m.run_id, task_id=m.task_id).info(
        "[%s] Retry in %ss (retry %d; failing for %.0fs of the %.0fs retry window): %s", m.job.name, countdown,
        m.retries + 1, time.time() - since, window, exc)
    if m.reports:
        t.backend.mark_as_retry(m.task_id, exc, request=None)
        _event(m, "task-retried", exception=repr(exc), traceback="")
    # A run started by its submit task is retried as a run task of its own (the submit's result stays the run id).
    t.app.send_task(m.job.task_name, kwargs={"run_id": m.run_id}, task_id=m.task_id if m.reports else None,
                    countdown=countdown, retries=m.retries + 1, headers={FAILING_SINCE: since}, queue=queue)


def _event(m: TaskMessage, kind: str, **fields: Any) -> None:
    """Tell Flower (task events) as the worker would have."""
    try:
        with m.task.app.events.default_dispatcher(hostname=m.hostname) as dispatcher:
            dispatcher.send(kind, uuid=m.task_id, **fields)
    except Exception as exc:  # a broker outage must not end the run's report
        log.warning("could not send %s for task %s: %s", kind, m.task_id, exc)
