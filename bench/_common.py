"""What every benchmark shares: its own database and Redis DB, the stand-in LLM as a process, timing, verdicts.

Call ``configure()`` before importing any ``dataengine`` module: importing the package loads
``celeryconfig``, which reads the settings (broker URL, database URL) once, at import.
Everything here touches only what it created: the ``de_bench_*`` database it made, its Redis DB (``REDIS_DB``),
and processes it started, signalled by pid.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Worker and stand-in logs (outside the repository).
LOG_DIR = Path(tempfile.gettempdir()) / "de_bench_logs"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: DB 4 unless ``DE_BENCH_REDIS_DB`` says otherwise (two benchmarks at once each need their own: both flush it).
REDIS_DB = int(os.environ.get("DE_BENCH_REDIS_DB", "4"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


@dataclass(frozen=True)
class BenchConfig:
    """The names and addresses one benchmark run uses (all loopback, all its own)."""

    name: str
    database: str
    database_url: str
    llm_port: int

    @property
    def llm_base_url(self) -> str:
        """``OPENAI_BASE_URL`` of the stand-in server."""
        return f"http://127.0.0.1:{self.llm_port}/v1"


_config: BenchConfig | None = None


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure(name: str, **knobs: object) -> BenchConfig:
    """Point the engine at this benchmark's database, its Redis DB and stand-in port; ``knobs`` are DATAENGINE_* settings."""
    global _config
    database = f"de_bench_{name}_{os.getpid()}"
    _config = BenchConfig(
        name=name,
        database=database,
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
        llm_port=free_port(),
    )
    os.environ.update(
        DATABASE_URL=_config.database_url,
        REDIS_URL=REDIS_URL,
        OPENAI_BASE_URL=_config.llm_base_url,
        DATAENGINE_ENVIRONMENT="development",
    )
    os.environ.pop("OPENAI_API_KEY", None)  # the stand-in's placeholder key; never a real one
    for key, value in knobs.items():
        os.environ[f"DATAENGINE_{key.upper()}"] = str(value)
    # In case something imported the settings already (harmless when nothing did).
    if "dataengine.infra.settings" in sys.modules:
        from dataengine.infra.db import reset_engine
        from dataengine.infra.settings import get_settings

        get_settings.cache_clear()
        reset_engine()
    return _config


def config() -> BenchConfig:
    """The configuration ``configure()`` made."""
    if _config is None:
        raise RuntimeError("call bench._common.configure() first")
    return _config


def flush_redis() -> None:
    """Empty the benchmark's Redis DB (and only that one)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


def _drop_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@dataclass
class FakeLLMProcess:
    """``dataengine fake-llm`` in a process of its own, so its CPU is not the measured process's GIL."""

    port: int
    latency_ms: float = 0.0
    log_name: str = "fake-llm"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Root URL (the control endpoints live under ``/_fake``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> FakeLLMProcess:
        """Start the server and return once ``/healthz`` answers."""
        from dataengine.testing.standin_llm import wait_until_serving

        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log = (LOG_DIR / f"{self.log_name}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dataengine.cli.main", "fake-llm", "--port", str(self.port),
             "--latency-ms", str(self.latency_ms)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()  # the child holds its own descriptor
        proc = self.proc
        if wait_until_serving(self.url, timeout_s=timeout_s, alive=lambda: proc.poll() is None):
            return self
        if proc.poll() is not None:
            raise RuntimeError(f"fake LLM exited with {proc.returncode}; see {LOG_DIR}")
        self.stop()
        raise TimeoutError(f"fake LLM not answering on {self.url} after {timeout_s}s")

    def stop(self) -> None:
        """SIGTERM our process (by pid), SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def bench_environment(*, llm_latency_ms: float = 0.0, with_llm: bool = True) -> Iterator[FakeLLMProcess | None]:
    """A migrated ``de_bench_*`` database, an empty Redis DB and a stand-in LLM; all removed afterwards."""
    from dataengine.infra.db import reset_engine
    from dataengine.infra.migrate import migrate

    cfg = config()
    # A benchmark stopped with SIGTERM (kill, timeout) still stops its processes and drops its database;
    # a second SIGTERM (timeout passes it on too) must not cut that short.
    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    flush_redis()
    llm: FakeLLMProcess | None = None
    try:
        migrate(cfg.database_url)
        if with_llm:
            llm = FakeLLMProcess(port=cfg.llm_port, latency_ms=llm_latency_ms, log_name=f"fake-llm-{cfg.name}").start()
        yield llm
    finally:
        if llm is not None:
            llm.stop()
        reset_engine()  # our pooled connections would otherwise hold the database open
        _drop_database(cfg.database)
        flush_redis()


def audit_spec(queries: int, *, prefix: str = "best apartments near downtown Austin with a pool") -> dict[str, Any]:
    """A PropertyAudit spec with ``queries`` distinct queries."""
    return {
        "property": {"name": "Cedar Flats", "city": "Austin", "aliases": ["Cedar Flats Apartments"]},
        "queries": [f"{prefix} #{i}" for i in range(queries)],
    }


def new_audit_run(queries: int, *, workspace_id: str | None = None) -> str:
    """Create a queued PropertyAudit run row (not enqueued), in ``workspace_id`` if given; returns its id."""
    from dataengine.engine.submitting import create_run, validate_spec
    from dataengine.infra.db import session_scope
    from tasks.propertyaudit import JOB

    extra = {} if workspace_id is None else {"workspace_id": workspace_id}
    spec, options = validate_spec(JOB, {**audit_spec(queries), **extra})
    with session_scope() as session:
        run_id, _ = create_run(session=session, job=JOB, spec=spec, options=options)
    return str(run_id)


def median(values: Sequence[float]) -> float:
    """The median (of a non-empty sequence)."""
    return statistics.median(values)


def fmt_list(values: Sequence[float], unit: str = "", digits: int = 2) -> str:
    """``[1.23, 4.56] s`` for a line of output."""
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values) + "]" + (f" {unit}" if unit else "")


def verdict(label: str, passed: bool, detail: str) -> bool:
    """Print one ``PASS``/``FAIL`` line; returns ``passed``."""
    print(f"{'PASS' if passed else 'FAIL'}  {label}: {detail}")
    return passed


def header(title: str, **facts: object) -> None:
    """The benchmark's title and the conditions it ran under."""
    print(f"== {title} ==")
    for key, value in facts.items():
        print(f"   {key}: {value}")
