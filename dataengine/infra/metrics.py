"""Prometheus metrics (prometheus-client): what the workers did, and what the fleet looks like now.

Counted where it happens, in whichever process does it (a worker's pool processes and sweeper, the
API, the CLI): runs started, finished by status, recovered by a sweeper, stalled, claims lost to
fencing; the sweeps made; steps and their latency; LLM calls, 429s, retries, tokens and cost by model. Served by:

- each worker, when ``DATAENGINE_WORKER_METRICS_PORT`` is set (off by default): its main process
  serves what all its processes counted. Celery's prefork pool processes write their values to files
  of a directory of the worker's own (prometheus-client's multiprocess mode, chosen before the pool
  forks: :func:`use_multiprocess_dir`), and a pool process that exits, or was killed, has its live
  gauges removed at the next scrape;
- the API (``GET /metrics``): what the API process counted, plus the fleet as the database and the
  broker see it at scrape time (:class:`FleetCollector`): runs queued, running and stalled by kind,
  and the depth of the queue.

prometheus-client is imported only when the first metric is used, so that a worker can choose
multiprocess mode first.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from functools import cache
from typing import Any

from dataengine.infra.workerid import process_exists

#: Where a pool process's values live in multiprocess mode (prometheus-client reads this variable).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Step latency buckets, seconds: a cached answer to a slow structured one.
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_lock = threading.Lock()
_own_dir: str | None = None


class Metrics:
    """The engine's metrics, made once per process (:func:`metrics`)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.runs_submitted = Counter("dataengine_runs_submitted", "Runs created from a spec", ["kind"])
        self.runs_started = Counter("dataengine_runs_started", "Runs a worker claimed and started or resumed",
                                    ["kind"])
        self.runs_finished = Counter("dataengine_runs_finished", "Runs ended, by final status (completed, "
                                     "failed, cancelled)", ["kind", "status"])
        self.runs_recovered = Counter("dataengine_runs_recovered", "Runs a sweeper took back from a dead worker "
                                      "or sent again when no worker had claimed them", ["kind"])
        self.runs_stalled = Counter("dataengine_runs_stalled", "Runs flagged stalled: heartbeating, no progress",
                                    ["kind"])
        self.sweeps = Counter("dataengine_sweeps", "Full sweeps a sweeper made (lapsed leases, runs no worker "
                              "claimed, a broker that lost its messages): one a sweep interval while it works")
        self.claims_lost = Counter("dataengine_claims_lost", "Claims a worker found taken over (fencing): it "
                                   "wrote nothing more and stopped", ["kind"])
        self.steps = Counter("dataengine_steps", "Steps recorded", ["kind"])
        self.step_seconds = Histogram("dataengine_step_seconds", "Time of a recorded step's LLM calls",
                                      ["kind"], buckets=STEP_BUCKETS)
        self.runs_in_progress = Gauge("dataengine_runs_in_progress", "Runs this worker's processes hold now",
                                      ["kind"], multiprocess_mode="livesum")
        self.llm_calls = Counter("dataengine_llm_calls", "LLM calls by model and outcome (ok, rate_limited, "
                                 "error; reused: a recorded answer a resumed step did not ask again; "
                                 "unpriced: a model without a price, counted $0); a model neither priced nor a default is 'other'",
                                 ["model", "outcome"])
        self.budget_stops = Counter("dataengine_budget_stops", "Runs a budget stopped (run: its max_cost_usd, "
                                    "ended failed) or paused (daily: a daily budget spent)", ["kind", "budget"])
        self.llm_retries = Counter("dataengine_llm_retries", "LLM calls tried again after a transient failure",
                                   ["model"])
        self.llm_tokens = Counter("dataengine_llm_tokens", "LLM tokens used, by model and type (prompt, "
                                  "completion)", ["model", "type"])
        self.llm_cost_usd = Counter("dataengine_llm_cost_usd", "LLM spend in US dollars at the configured prices",
                                    ["model"])


def model_label(model: str) -> str:
    """A model as a metrics label: a model with a configured price, or one of the engine's default
    models, by its name; any other ``other``. A spec may name any model, and a label must not take
    every value a client sends (each would be a series kept for ever)."""
    from dataengine.infra.settings import get_settings

    s = get_settings()
    known = model in s.model_prices_per_mtok or model in (s.openai_model, s.openai_eval_model, s.openai_embedding_model)
    return model if known else "other"


@cache
def metrics() -> Metrics:
    """This process's metrics (a forked pool process keeps its parent's, which prometheus-client
    re-files under its own pid in multiprocess mode)."""
    return Metrics()


def use_multiprocess_dir() -> str:
    """Put this process, and the pool processes it will fork, in multiprocess mode: the directory
    named by ``PROMETHEUS_MULTIPROC_DIR``, or a new one of this worker's (removed by
    :func:`remove_own_dir`). Call before the first metric is used."""
    global _own_dir
    with _lock:
        if MULTIPROC_ENV not in os.environ:
            _own_dir = tempfile.mkdtemp(prefix="dataengine-metrics-")
            os.environ[MULTIPROC_ENV] = _own_dir
        if "prometheus_client.values" in sys.modules:
            # Imported already (Flower, a Celery command plugin, imports it with the celery command):
            # prometheus-client chose its value class then, from the environment of that moment. Every
            # metric made from now on asks the module again, so choose again.
            from prometheus_client import values

            values.ValueClass = values.get_value_class()
        return os.environ[MULTIPROC_ENV]


def remove_own_dir() -> None:
    """Remove the directory :func:`use_multiprocess_dir` made, at the worker's shutdown."""
    global _own_dir
    with _lock:
        if _own_dir is not None:
            shutil.rmtree(_own_dir, ignore_errors=True)
            _own_dir = None


def process_exited(pid: int) -> None:
    """A pool process is exiting: its live gauges (the runs it holds) stop counting."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


#: A value file starts with how much of it is used (4 bytes) and 4 bytes of padding.
_HEADER_BYTES = 8
_LIVE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def forget_dead_processes(path: str) -> None:
    """Remove the live gauges of processes that are gone (a pool process SIGKILLed never says so)."""
    from prometheus_client import multiprocess

    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_FILE.search(name)
        if match and not process_exists(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), path)


def readable_files(path: str) -> list[str]:
    """The value files in ``path`` that can be read now. A process creates its file empty and sizes it
    a moment later (prometheus-client's ``MmapedDict``), and a scrape in between failed with a 500
    (prometheus/client_python#1199): such a file holds no value yet, so it is left for the next scrape.
    A file only grows, so one seen with its header stays readable."""
    files = []
    for name in glob.glob(os.path.join(path, "*.db")):
        try:
            if os.path.getsize(name) >= _HEADER_BYTES:
                files.append(name)
        except FileNotFoundError:  # a live gauge of a process marked dead meanwhile
            continue
    return files


def worker_registry(path: str) -> Any:
    """A registry of everything the worker's processes counted (the files in ``path``)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    class Collector(MultiProcessCollector):
        def collect(self) -> Iterator[Any]:
            forget_dead_processes(path)
            return self.merge(readable_files(path), accumulate=True)

    registry = CollectorRegistry()
    Collector(registry, path=path)
    return registry


def serve_worker_metrics(port: int, host: str) -> Any:
    """Serve the worker's metrics on ``host:port`` from this (main) process; returns the server."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=worker_registry(os.environ[MULTIPROC_ENV]))
    return server
