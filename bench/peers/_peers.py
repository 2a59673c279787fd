"""What the side-by-side benchmarks share: ``bench/`` on the path, peer databases and workers, workloads, results.

Import this before anything from ``bench/``: it puts ``bench/`` on ``sys.path`` so that
``_common`` and the benchmarks reused here import as they do when run from ``bench/``.
Like ``_common``, it touches only what it created: the ``de_bench_dbos_*`` database, its Redis DB
and processes it started, signalled by pid.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataengine.testing.processes import CeleryProcess

PEERS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(PEERS_DIR.parent))  # bench/: _common and the benchmarks reused here

import _common  # noqa: E402

#: Longest wait for a batch of runs or tasks to finish.
WORKLOAD_TIMEOUT_S = 600.0
#: (completed, ended otherwise, last finished) of the runs of a table created since a moment.
OUR_RUNS_DONE = """
    SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status IN ('failed', 'cancelled')),
           max(finished_at) FROM {table} WHERE created_at >= :since
"""
#: (done, failed: none, last done) of the bare app's ticks from an id on.
BARE_TICKS_DONE = "SELECT count(done_at), 0, max(done_at) FROM bare_peer_ticks WHERE id >= :first"


@contextmanager
def dbos_database() -> Iterator[str]:
    """DBOS's system database, ``de_bench_dbos_<pid>``: created empty here, dropped ``WITH (FORCE)`` afterwards."""
    from sqlalchemy import create_engine, text

    name = f"de_bench_dbos_{os.getpid()}"
    admin = create_engine(_common.PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        _common._drop_database(name)


def dbos_version(database_url: str) -> str:
    """For a header: the installed DBOS and its system database."""
    return f"dbos {version('dbos')}, system database {database_url.rsplit('/', 1)[1]}"


def start_dbos_process(log_name: str, *args: str) -> subprocess.Popen[bytes]:
    """``dbos_app.py`` with ``args`` in a process (and session) of its own, logging to ``LOG_DIR/<log_name>.log``."""
    _common.LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (_common.LOG_DIR / f"{log_name}.log").open("wb") as log:  # the child holds its own descriptor
        return subprocess.Popen(
            [sys.executable, str(PEERS_DIR / "dbos_app.py"), *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process we started (by its pid) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def start_bare_worker(name: str, *, concurrency: int) -> CeleryProcess:
    """A prefork worker of the bare Celery app (``bare_celery``), flags as ``dataengine.testing.processes.start_worker`` gives ours."""
    from dataengine.testing.processes import CeleryProcess, celery_command

    _common.LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = _common.LOG_DIR / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [*celery_command(), "-A", "bare_celery", "worker", "--pool", "prefork", "-c", str(concurrency),
         "-n", f"{name}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
        env={**os.environ, "PYTHONPATH": str(PEERS_DIR)},
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    return CeleryProcess(name=name, proc=proc, log_path=log_path, _log=log)


def cpu_s(worker: CeleryProcess) -> dict[str, float]:
    """CPU seconds (user + system) so far of a worker's main process and of its pool processes (Linux ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def of(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    return {"main": of(worker.pid), "pool": sum(of(pid) for pid in worker.children())}


def per_s(n: int, work: Callable[[], object]) -> float:
    """``n`` over the seconds ``work()`` takes (``n`` steps, sends... that it does)."""
    started = time.perf_counter()
    work()
    return n / (time.perf_counter() - started)


def wait_for(predicate: Callable[[], bool], *, timeout_s: float, poll_s: float = 0.05) -> float | None:
    """Poll ``predicate`` until it holds; the ``time.monotonic()`` of that poll, or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(poll_s)
    return None


def _db_now() -> datetime:
    from sqlalchemy import text

    from dataengine.infra.db import get_engine

    with get_engine().connect() as conn:
        return conn.execute(text("SELECT clock_timestamp()")).scalar_one()


def _seconds_until_done(started: datetime, query: str, params: dict[str, object], *, count: int) -> float:
    """Wait until ``query`` (done, failed, last done at) shows ``count`` done; seconds from ``started`` to the last."""
    from sqlalchemy import text

    from dataengine.infra.db import get_engine

    last: list[Any] = []

    def all_done() -> bool:
        with get_engine().connect() as conn:
            last[:] = conn.execute(text(query), params).one()
        done, failed, _ = last
        if failed:
            raise RuntimeError(f"{failed} of {count} ended failed or cancelled; see {_common.LOG_DIR}")
        return done >= count

    if wait_for(all_done, timeout_s=WORKLOAD_TIMEOUT_S, poll_s=0.1) is None:
        raise TimeoutError(f"{last[0] if last else 0} of {count} done after {WORKLOAD_TIMEOUT_S:g}s")
    return (last[2] - started).total_seconds()


def submit_runs(runs: int, *, task: str, spec: dict[str, Any], table: str) -> float:
    """Send ``runs`` of the submit ``task`` with ``spec``, as a producer does; seconds (database clock) from just
    before the first send until the last run (a row of ``table``) is ``completed``."""
    from dataengine.worker.app import app

    started = _db_now()
    for _ in range(runs):
        app.send_task(task, kwargs=spec)
    return _seconds_until_done(started, OUR_RUNS_DONE.format(table=table), {"since": started}, count=runs)


def submit_audits(runs: int, *, queries: int) -> float:
    """``submit_runs`` of ``propertyaudit.submit`` with ``queries`` queries."""
    return submit_runs(runs, task="propertyaudit.submit", spec=_common.audit_spec(queries), table="geo_runs")


def bare_updates(tasks: int) -> float:
    """Send ``tasks`` of the bare app's ORM UPDATE; seconds (database clock) from just before the first send
    until the last has committed."""
    import bare_celery
    from sqlalchemy import func, insert, select

    from dataengine.infra.db import session_scope

    with session_scope() as session:
        first = (session.scalar(select(func.max(bare_celery.Tick.id))) or 0) + 1
        ids = list(range(first, first + tasks))
        session.execute(insert(bare_celery.Tick), [{"id": i} for i in ids])
    started = _db_now()
    for tick_id in ids:
        bare_celery.orm_update.delay(tick_id)
    return _seconds_until_done(started, BARE_TICKS_DONE, {"first": first}, count=tasks)


@dataclass(frozen=True)
class Series:
    """One side's figure over the rounds."""

    label: str
    values: Sequence[float]

    @property
    def median(self) -> float:
        """The median of the rounds."""
        return statistics.median(self.values)

    def line(self, unit: str, digits: int) -> str:
        """``median unit [min–max] (rounds)`` for the summary."""
        lo, hi = min(self.values), max(self.values)
        return (f"{self.label:<34}{self.median:>10.{digits}f} {unit:<8} range {lo:.{digits}f}–{hi:.{digits}f}  "
                f"{_common.fmt_list(self.values, digits=digits)}")


def compare(ours: Series, peer: Series, *, unit: str, digits: int = 1) -> float:
    """Print both sides' medians and ranges; returns ours / peer (of the medians)."""
    ratio = ours.median / peer.median
    print(f"   {ours.line(unit, digits)}")
    print(f"   {peer.line(unit, digits)}")
    print(f"   ratio ours / peer = {ratio:.3g}")
    return ratio
