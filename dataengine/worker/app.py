"""The Celery app, configured from ``celeryconfig``; the sweeper rides along in workers and beat.

Importing this module builds the app: only processes that need it do (``dataengine.app`` is
resolved lazily). The job modules it serves are imported by the worker (``include``) and
before the sweeper starts.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from celery import Celery
from celery.platforms import set_pdeathsig
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from celery.utils.serialization import strtobool
from celery.worker import control
from kombu.utils.url import maybe_sanitize_url

from dataengine.engine.heartbeats import close_heartbeats
from dataengine.engine.jobs import load_jobs, on_register
from dataengine.engine.runloop import drain
from dataengine.engine.sweeper import Sweeper
from dataengine.infra import malloc, metrics
from dataengine.infra.logs import configure_handlers
from dataengine.infra.sentry import init_sentry
from dataengine.infra.settings import get_settings
from dataengine.infra.tiers import QUEUES
from dataengine.llm import calls as llm
from dataengine.worker import hosted_runs
from dataengine.worker.broker_backlog import broker_lost_messages, waiting_runs
from dataengine.worker.tasks import define_tasks

app = Celery("dataengine")
app.config_from_object("celeryconfig")
on_register(define_tasks)  # every job's two tasks, those registered already and those to come

log = logging.getLogger("dataengine.worker")
_sweeper: Sweeper | None = None
_consumer: Any = None
_metrics_server: Any = None
#: Sent by a worker's main process to its pool processes when it starts a warm shutdown.
DRAIN_SIGNAL = signal.SIGUSR2


def enqueue(task_name: str, kwargs: dict[str, str], queue: str | None = None) -> object:
    """Send a task by name, to ``queue`` (a run's tier's) or the default one: the sweeper's, the API's
    and the CLI's way to enqueue a run."""
    return app.send_task(task_name, kwargs=kwargs, queue=queue)


def still_queued(run_ids: set[str], taken: bool = False, queues: tuple[str, ...] = tuple(QUEUES.values())) -> set[str]:
    """The runs among ``run_ids`` whose message still waits in one of ``queues`` (every tier's by default;
    or, with ``taken``, was taken by a worker and not acknowledged)."""
    found: set[str] = set()
    for i, queue in enumerate(queues):
        found |= waiting_runs(redis_url=get_settings().redis_url, queue=queue, run_ids=run_ids - found,
                              taken=taken and i == 0)
        if found == run_ids:
            break
    return found


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return maybe_sanitize_url(value, mask="********")


@control.inspect_command(name="conf", alias="dump_conf", signature="[include_defaults=False]",
                         args=[("with_defaults", strtobool)])
def _conf(state: Any, with_defaults: bool = False, **kwargs: Any) -> Any:
    """List configuration (Flower's worker page, ``celery inspect conf``), every URL's password masked."""
    # Celery's own masks the broker's and the result backend's, not redbeat_redis_url's.
    return _masked(control.conf(state, with_defaults=with_defaults, **kwargs))


def _start_sweeper(where: str) -> None:
    global _sweeper
    if _sweeper is None:
        load_jobs()
        _sweeper = Sweeper(send=enqueue, waiting=still_queued,
                           broker_lost=lambda: broker_lost_messages(get_settings().redis_url))
        _sweeper.start()
        log.info("recovery sweeper started in %s", where)


@after_setup_logger.connect
def _quiet_http_logs(**_: object) -> None:
    # One INFO line per LLM request drowns the run's own progress lines.
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _run_fields_and_format(logger: logging.Logger, **_: object) -> None:
    # Workers' and beat's lines: each of a run with its fields, as text or JSON (DATAENGINE_LOG_FORMAT).
    configure_handlers(logger)


@worker_init.connect
@beat_init.connect
def _die_with_parent(**_: object) -> None:
    # A killed test session or demo must not leave workers behind to eat a later one's tasks.
    if get_settings().die_with_parent:
        set_pdeathsig("SIGKILL")


@worker_init.connect
def _sentry_in_workers(**_: object) -> None:
    init_sentry("worker")  # before the pool forks: its processes report too


@beat_init.connect
def _sentry_in_beat(**_: object) -> None:
    init_sentry("beat")


@worker_init.connect
def _metrics_shared_by_the_pool(**_: object) -> None:
    # Before the pool forks: its processes then write their metrics where the main process serves them.
    if get_settings().worker_metrics_port:
        metrics.use_multiprocess_dir()


@worker_ready.connect
def _on_worker_ready(sender: object = None, **_: object) -> None:
    global _consumer, _metrics_server
    _consumer = sender
    _start_sweeper("worker")
    s = get_settings()
    if s.worker_metrics_port:
        _metrics_server = metrics.serve_worker_metrics(s.worker_metrics_port, s.worker_metrics_host)
        log.info("worker metrics on http://%s:%d/metrics", s.worker_metrics_host, s.worker_metrics_port)


@worker_process_init.connect
def _init_pool_process(**_: object) -> None:
    malloc.limit_arenas()  # before its step threads: they share a few malloc arenas
    signal.signal(DRAIN_SIGNAL, lambda signum, frame: drain())
    llm.client()  # built now, not on a resumed run's first step


@worker_process_shutdown.connect
def _hand_back_hosted_runs(**_: object) -> None:
    # The pool process is ending (a warm shutdown closes the pool): the runs on its threads are not
    # Celery tasks any more, so Celery would not wait for them. Each finishes its steps in flight,
    # checkpoints, and is handed back before the process exits.
    drain()
    hosted_runs.join_all(timeout_s=get_settings().step_timeout_s)
    close_heartbeats()
    metrics.process_exited(os.getpid())


@beat_init.connect
def _on_beat_init(sender: object = None, **_: object) -> None:
    _start_sweeper("beat")


@worker_shutting_down.connect
def _on_shutdown(**_: object) -> None:
    # Celery would wait for every run to end, which can take an hour; instead each run
    # finishes the steps in flight, checkpoints, and is enqueued again for another worker.
    if _sweeper is not None:
        _sweeper.stopped.set()
    pool = getattr(_consumer, "pool", None)
    for pid in (pool.info.get("processes", []) if pool is not None else []):
        try:
            os.kill(pid, DRAIN_SIGNAL)
        except ProcessLookupError:
            pass


@worker_shutdown.connect
def _stop_serving_metrics(**_: object) -> None:
    # The pool has exited: nothing writes metrics any more.
    if _metrics_server is not None:
        _metrics_server.shutdown()
    metrics.remove_own_dir()
