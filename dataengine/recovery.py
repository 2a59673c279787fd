"""The sweeper: re-enqueues runs whose worker died, fails runs that keep killing their worker.

It runs as a thread in every worker's main process and in beat, so recovery never hinges on
one process; ``runs.requeue_expired`` makes each expiry count once however many sweep.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable

from dataengine.db import session_scope
from dataengine.jobs import Job, all_jobs
from dataengine.runs import Requeued, finish_run, requeue_expired
from dataengine.settings import get_settings
from models.base import RunStatus

log = logging.getLogger("dataengine.recovery")

#: (task name, kwargs) -> None; the Celery app's ``send_task`` in production.
Sender = Callable[[str, dict[str, str]], object]

# A worker's main process forks pool processes while the sweeper thread may be mid-sweep,
# holding an import lock or a connection pool's lock that the child would then wait on for
# ever. Forks wait for the sweep in progress instead (it takes milliseconds).
_sweeping = threading.Lock()
os.register_at_fork(before=_sweeping.acquire, after_in_parent=_sweeping.release, after_in_child=_sweeping.release)


def describe_losses(*, job: Job, run_id: uuid.UUID, losses: int, index: int) -> str:
    """The error message of a run given up after its worker died ``losses`` times at step ``index``."""
    with session_scope() as session:
        step = next(iter(job.load_steps(session, run_id, index, 1)), None)
    what = f" ({str(step[1])[:120]!r})" if step else ""
    return (
        f"worker lost {losses} times at {job.step_noun} {index + 1}{what} (index {index}); "
        f"giving up so it is not paid for again"
    )


def sweep_job(*, job: Job, send: Sender) -> list[Requeued]:
    """One sweep of one job's runs; sends a task for each run taken back, after the commit."""
    with session_scope() as session:
        requeued = requeue_expired(session=session, job=job)
    for r in requeued:
        if r.failed:
            error = describe_losses(job=job, run_id=r.run_id, losses=r.losses, index=r.step_index)
            with session_scope() as session:
                finish_run(session=session, job=job, run_id=r.run_id, status=RunStatus.failed, error=error)
            log.error("[%s] %s run_id=%s", job.name, error, r.run_id)
            continue
        send(job.task_name, {"run_id": str(r.run_id)})
        log.warning(
            "[%s] Re-enqueued run whose worker stopped answering, at %s %d run_id=%s",
            job.name, job.step_noun, r.step_index + 1, r.run_id,
        )
    return requeued


def sweep(*, send: Sender) -> list[Requeued]:
    """One sweep of every registered job."""
    return [r for job in all_jobs() for r in sweep_job(job=job, send=send)]


class Sweeper(threading.Thread):
    """Sweeps every ``sweep_interval_s`` until stopped; an error is logged and the next sweep goes on."""

    def __init__(self, *, send: Sender, name: str = "dataengine-sweeper") -> None:
        super().__init__(name=name, daemon=True)
        self.send = send
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = get_settings().sweep_interval_s
        while not self.stopped.wait(interval):
            try:
                with _sweeping:
                    sweep(send=self.send)
            except Exception:
                log.exception("sweep failed; retrying in %.1fs", interval)
