"""A run handed back for a retry is no longer this process's when the retry is sent: a retry whose
countdown is 0 (Celery's full jitter draws it) arrives as a run to take, not as a later delivery of
the run this process is executing, which would end with it and be dropped (seen once in the fault
suite: a Knowledge Refresh waited minutes for the sweeper)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from dataengine.infra.errors import TransientStepError
from dataengine.worker import hosted_runs


def test_the_retry_is_sent_once_the_run_is_no_longer_hosted_here():
    sent: list[dict[str, Any]] = []

    def send_task(name: str, **kwargs: Any) -> None:
        # What attach() would decide for the retry, had it arrived at this very moment.
        sent.append({"hosted": kwargs["kwargs"]["run_id"] in hosted_runs._hosted, "countdown": kwargs["countdown"]})

    task = SimpleNamespace(retry_backoff=2, retry_backoff_max=10, retry_jitter=True,
                           backend=SimpleNamespace(mark_as_retry=lambda *a, **k: None),
                           app=SimpleNamespace(send_task=send_task, events=None))
    job = SimpleNamespace(name="Echo", task_name="echo.run")
    message = hosted_runs.TaskMessage(task=task, job=job, run_id="run-1", task_id="t-1", hostname="w", retries=0,
                                  may_retry=True, received=time.monotonic(), reports=False)
    execution = SimpleNamespace(run=lambda: (_ for _ in ()).throw(TransientStepError(details="the provider is away")),
                                done_here=0, claim=SimpleNamespace(worker_id="w/1", row=SimpleNamespace(priority="normal")))
    with hosted_runs._room:
        hosted_runs._threads.add(threading.current_thread())
        hosted_runs._hosted.add(message.run_id)
    hosted_runs._work(execution, message)
    assert sent and sent[0]["hosted"] is False, sent
    assert message.run_id not in hosted_runs._hosted and threading.current_thread() not in hosted_runs._threads
