"""Every job's two Celery tasks, defined from its ``Job``: Celery's retry policy and the mapping
of engine errors to task results. Tasks are shared tasks, so defining them builds no app."""

from __future__ import annotations

from typing import Any

from celery import Task, current_app, shared_task
from celery.exceptions import Ignore, Reject

from dataengine.engine.estimates import Estimate
from dataengine.engine.jobs import Job
from dataengine.engine.runloop import RunOutcome, adopt_run, start_run
from dataengine.engine.runs import parse_run_id
from dataengine.engine.submitting import Created, StartHere, submit_run
from dataengine.infra.errors import (
    DatabaseUnavailable,
    IdempotencyKeyReused,
    InvalidRunId,
    RunNotFound,
    SpecInvalid,
    StepFailed,
    TransientStepError,
)
from dataengine.infra.settings import get_settings
from dataengine.infra.workerid import worker_id as make_worker_id
from dataengine.worker.hosted_runs import (
    TaskMessage,
    attach,
    database_away,
    has_room,
    host,
    retry_allowed,
    run_eagerly,
    wait_for_room,
)


class RunTask(Task):
    """A task that executes one run; transient step failures retry with backoff (Celery's own)."""

    autoretry_for = (TransientStepError, DatabaseUnavailable)
    # Expected outcomes, logged without a traceback: bad input, a run that ended failed, an outage.
    throws = (InvalidRunId, RunNotFound, SpecInvalid, StepFailed, DatabaseUnavailable)
    retry_backoff = 2
    retry_jitter = True
    acks_late = True
    reject_on_worker_lost = True

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        """``DATAENGINE_TASK_MAX_RETRIES``, read when a task runs, not when the module is imported."""
        return get_settings().task_max_retries

    @property
    def retry_backoff_max(self) -> int:  # type: ignore[override]
        """``DATAENGINE_RETRY_BACKOFF_MAX_S``: the longest wait between two retries."""
        return max(1, round(get_settings().retry_backoff_max_s))


def run_job(task: Task, job: Job, run_id: object) -> dict[str, Any]:
    """Claim ``run_id`` of ``job`` and hand it to this process's threads (``dataengine.worker.hosted_runs``),
    which report its end as this task's; returns the task's JSON result only when this worker does
    not run it (finished, held elsewhere) or when the task runs eagerly."""
    worker_id = make_worker_id(task.request.hostname)
    may_retry = retry_allowed(task)
    if not task.request.is_eager:
        if attach(TaskMessage.of(task, job, str(parse_run_id(run_id)), may_retry)):
            raise Ignore()  # a later delivery of a run this process executes: it ends with the run
        if not wait_for_room():
            raise Reject("the worker is shutting down", requeue=True)
    try:
        started = start_run(job=job, run_id=run_id, worker_id=worker_id, task_id=task.request.id, may_retry=may_retry)
    except DatabaseUnavailable as exc:
        if may_retry:
            raise
        return database_away(job, run_id, task.request.id, exc)
    if isinstance(started, RunOutcome):
        return started.as_dict()
    message = TaskMessage.of(task, job, str(started.claim.run_id), may_retry)
    if task.request.is_eager:
        return run_eagerly(started, message)
    host(started, message)
    raise Ignore()


def start_here(task: Task, job: Job) -> StartHere | None:
    """How the submit task starts its run in this process: on its threads, as a run task would, when
    the process has room for one more (else the run's id is sent to the queue, for any worker)."""
    if task.request.is_eager or not has_room():
        return None

    def start(created: Created) -> None:
        assert created.claim is not None  # noqa: S101  narrows a type the code above guarantees; not input validation
        message = TaskMessage.of(task, job, str(created.run_id), may_retry=True, reports=False)
        host(adopt_run(job=job, created=created, task_id=task.request.id), message)

    return StartHere(worker_id=make_worker_id(task.request.hostname), task_id=task.request.id, start=start)


def start_runs(job: Job, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The run task sent without a ``run_id``: the job finds or creates its runs, the new ones are enqueued."""
    started = job.start_runs(**kwargs) if job.start_runs is not None else []
    for run_id, created in started:
        if created:
            current_app.send_task(job.task_name, kwargs={"run_id": str(run_id)})  # runs it makes are normal
    return {"run_ids": [str(run_id) for run_id, _ in started], "created": sum(created for _, created in started)}


def define_tasks(job: Job) -> None:
    """Define ``<key>.run`` (execute a run by id) and ``<key>.submit`` (create one from its spec) for ``job``."""

    def run(self: RunTask, run_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
        if run_id is None and job.start_runs is not None:
            return start_runs(job, kwargs)
        if kwargs:
            raise SpecInvalid(details=f"unexpected arguments {', '.join(sorted(kwargs))}: send only run_id")
        return run_job(self, job, run_id)

    def submit(self: Task, **spec: Any) -> str | dict[str, Any]:
        submitted = submit_run(job=job, spec=spec, send=lambda name, kwargs, queue: current_app.send_task(
            name, kwargs=kwargs, queue=queue), here=start_here(self, job))
        return submitted.as_dict() if isinstance(submitted, Estimate) else submitted

    run.__doc__ = f"Execute the {job.name} run ``run_id`` (resuming it if it was interrupted)."
    submit.__doc__ = (f"Create a {job.name} run from its JSON spec (once per ``idempotency_key``: the same key "
                      "with another spec fails) and start it; with ``dry_run=True`` only its estimate is returned.")
    run.__name__, submit.__name__ = f"{job.key}_run", f"{job.key}_submit"
    shared_task(name=job.task_name, bind=True, base=RunTask)(run)
    # Over in moments: a STARTED state would cost two more Redis round trips per submit for nothing.
    # Bad input (an invalid spec, a key reused with another spec) fails it with its message, without a traceback.
    shared_task(name=job.submit_task_name, bind=True, throws=(SpecInvalid, IdempotencyKeyReused),
                track_started=False)(submit)
