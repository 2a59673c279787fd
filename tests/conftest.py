"""Shared fixtures: real PostgreSQL databases cloned from a migrated template, a Redis DB of the
session's own, the stand-in LLM server, and real Celery worker processes.

Nothing here imports ``dataengine`` at module level: ``REDIS_URL`` must be chosen (in
``pytest_configure``) before the Celery app reads it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dataengine.infra.workerid import process_exists

#: The fault-injection suite's fixtures (tests/faults).
pytest_plugins = ["faults.faultkit"]
LOOPBACK = {"127.0.0.1", "localhost", "::1", None}
REDIS_MARKER = "dataengine:tests:owner"
_redis_db: int | None = None


def _loopback_only(url: str, what: str) -> None:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        pytest.exit(f"{what} points at {host}; tests only ever use servers on loopback", returncode=4)


def _server_url() -> str:
    return os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_configure(config: pytest.Config) -> None:
    """Claim an empty Redis DB number for this session (unit tests run without Redis)."""
    global _redis_db
    import redis

    # The crash tests pace a run at 4 steps in flight, so that a kill lands mid-run (alone, a run
    # would take its process's whole budget and end at once). Tests of the adaptive share unset it.
    os.environ.setdefault("DATAENGINE_STEP_CONCURRENCY", "4")

    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    _loopback_only(base, "REDIS_URL")
    _loopback_only(_server_url(), "DATABASE_URL")
    try:
        for n in range(15, 0, -1):
            client = redis.Redis.from_url(_redis_db_url(base, n), socket_timeout=10)  # a busy machine answers late
            owner = client.get(REDIS_MARKER)
            if owner is not None and not process_exists(int(owner)):
                client.flushdb()  # left by a test session that was killed: all of it was that session's
            if _redis_db is None and client.dbsize() == 0 and client.set(REDIS_MARKER, os.getpid(), nx=True):
                _redis_db = n
    except redis.RedisError:
        return  # integration fixtures will say Redis is unreachable
    if _redis_db is not None:
        os.environ["REDIS_URL"] = _redis_db_url(base, _redis_db)


#: Fixtures that start processes of their own (workers, beat, Flower, a redis-server, a browser, a pooler,
#: a live API): a test that uses one is ``slow``, left out of the quick tier (``scripts/test.sh --quick``).
PROCESS_FIXTURES = frozenset({"workers", "beat", "flower", "broker", "locked_redis", "browser", "pgbouncer", "live"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/faults is the fault-injection suite (``-m faults``), and runs first,
    the longest first (by the time limit each was given): see :func:`pytest_xdist_make_scheduler`.
    It, and every test that starts processes, is ``slow``."""
    for item in items:
        if "faults" in item.path.parts:
            item.add_marker(pytest.mark.faults)
        if "faults" in item.path.parts or PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

    def budget(item: pytest.Item) -> float:
        marker = item.get_closest_marker("timeout")
        return float(marker.args[0]) if marker and marker.args else 0.0

    items.sort(key=lambda item: (0, -budget(item)) if "faults" in item.path.parts else (1, 0))


#: The most tests a pytest-xdist process is sent at once (see pytest_xdist_make_scheduler).
XDIST_CHUNK = 3


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's load scheduling, with short queues: a fault test is sent to a process with one
    short test behind it (a process starts a test only once it holds the next one), never with
    another, and no process is sent more than ``XDIST_CHUNK`` tests at once.

    The fault scenarios take one to four minutes each, the crash tests of test_workers up to forty
    seconds, the rest seconds. xdist sends each process a chunk of consecutive tests to start with,
    so the fault tests, collected together, all went to one process and ran back to back (15
    minutes), and later the crash tests did, while the other processes ran out of work. Sent this
    way, the longest first, they spread over the processes as each frees up.
    """
    if config.getoption("dist", "load") != "load":
        return None
    from xdist.scheduler import LoadScheduling

    class FaultsSpread(LoadScheduling):
        def _is_fault(self, index: int) -> bool:
            return "tests/faults/" in self.collection[index]

        def _send_tests(self, node: Any, num: int) -> None:
            num = min(num, XDIST_CHUNK)
            if self.pending and self._is_fault(self.pending[0]):
                short = next((i for i in self.pending if not self._is_fault(i)), None)
                if short is not None:
                    self.pending.remove(short)
                    self.pending.insert(1, short)
                    num = 2
            super()._send_tests(node, num)

    return FaultsSpread(config, log)


def _redis_db_url(url: str, db: int) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{db}", query=""))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Empty the Redis DB this session claimed (it was empty when claimed, so all of it is ours)."""
    if _redis_db is not None:
        import redis

        redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()


def reload_settings() -> None:
    """Make the engine read the environment again (settings, engine, LLM client)."""
    from dataengine.infra import db
    from dataengine.infra.settings import get_settings, reset_job_settings
    from dataengine.llm import calls as llm

    get_settings.cache_clear()
    reset_job_settings()
    db.reset_engine()
    llm.reset_client()


def wait_for(predicate: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.05, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; fail the test with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The session's own Redis DB."""
    if _redis_db is None:
        pytest.fail("Redis is not reachable at REDIS_URL (or has no empty DB); run tests via scripts/test.sh")
    return os.environ["REDIS_URL"]


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A database migrated to head by Alembic, cloned by every test that needs one."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from dataengine.infra.migrate import migrate

    server = make_url(_server_url()).set(drivername="postgresql+psycopg")
    name = f"de_tmpl_{os.getpid()}"
    _drop_leftovers(server, create_engine, text)
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
    except OperationalError as exc:
        pytest.fail(f"PostgreSQL at {server.host}:{server.port} is not usable ({exc}); run tests via scripts/test.sh")
    yield url
    _drop(server, name, create_engine, text)


def _drop_leftovers(server: Any, create_engine: Any, text: Any) -> None:
    """Drop databases of test sessions that were killed: templates named after a dead pid, and
    the per-test clones made from them (their names record nothing else, so only when no live
    session owns a template)."""
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        names = conn.scalars(text("SELECT datname FROM pg_database WHERE datname ~ '^de_(tmpl|t)_'")).all()
    admin.dispose()
    templates = {n: int(n.rsplit("_", 1)[1]) for n in names if n.startswith("de_tmpl_")}
    stale = [n for n, pid in templates.items() if not process_exists(pid)]
    if len(stale) == len(templates):
        stale += [n for n in names if n.startswith("de_t_")]
    for name in stale:
        _drop(server, name, create_engine, text)


def _drop(server: Any, name: str, create_engine: Any, text: Any) -> None:
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def db_url(template_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database for this test (a clone of the template), set as ``DATABASE_URL``."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(template_db)
    name = f"de_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{server.database}"'))
    admin.dispose()
    url = server.set(database=name).render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)
    reload_settings()
    yield url
    # Owners this process ran under beat on for a moment after their last run: not into the next test's database.
    from dataengine.engine.heartbeats import close_heartbeats

    close_heartbeats()
    reload_settings()
    _drop(server, name, create_engine, text)


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[Any]:
    """The stand-in LLM server, one per session."""
    from dataengine.testing.standin_llm import FakeLLMServer

    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def fake_llm(fake_llm_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The stand-in server with zeroed counts and default behaviour, set as ``OPENAI_BASE_URL``."""
    from dataengine.testing.standin_llm import FakeConfig

    fake_llm_server.reset()
    fake_llm_server.configure(**FakeConfig().model_dump())
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    reload_settings()
    yield fake_llm_server
    reload_settings()


@pytest.fixture
def engine_env(db_url: str, redis_url: str, fake_llm: Any) -> Iterator[dict[str, str]]:
    """Database, Redis and stand-in LLM for one test: the environment a worker process needs."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.set(REDIS_MARKER, os.getpid())
    env = {"DATABASE_URL": db_url, "REDIS_URL": redis_url, "OPENAI_BASE_URL": fake_llm.base_url,
           "OPENAI_API_KEY": "sk-test"}
    yield env
    client.flushdb()
    client.set(REDIS_MARKER, os.getpid())


def require_pgbouncer() -> None:
    """Skip the test, saying what to install, if Debian's pgbouncer is missing; fail it under ``CI=true``."""
    import pgbouncer as pgb

    if pgb.binary() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and pgbouncer is missing: {pgb.INSTALL_HINT}")
        pytest.skip(f"pgbouncer is not installed: {pgb.INSTALL_HINT}")


@pytest.fixture(scope="session")
def pgbouncer() -> Iterator[Any]:
    """A real PgBouncer in transaction mode in front of the test server (Debian's package).

    Missing, the tests that need it skip, saying what to install; under ``CI=true`` they fail.
    """
    import pgbouncer as pgb
    from sqlalchemy.engine import make_url

    require_pgbouncer()
    server = make_url(_server_url())
    bouncer = pgb.PgBouncer(server_host=server.host or "127.0.0.1", server_port=server.port or 5432).start()
    yield bouncer
    bouncer.stop()


@pytest.fixture
def db_route(request: pytest.FixtureRequest) -> dict[str, str]:
    """How workers reach the database: ``direct`` (default) or ``pgbouncer`` in transaction mode.

    Parametrize it indirectly (``@pytest.mark.parametrize("db_route", ["direct", "pgbouncer"],
    indirect=True)``); the test process itself always talks to PostgreSQL directly.
    """
    route = getattr(request, "param", "direct")
    if route == "direct":
        return {}
    assert route == "pgbouncer", route
    bouncer = request.getfixturevalue("pgbouncer")
    return {"DATABASE_URL": bouncer.url_for(request.getfixturevalue("db_url")), "DATAENGINE_DB_POOLER": "transaction"}


@pytest.fixture
def workers(engine_env: dict[str, str], db_route: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start real worker processes (``python -m dataengine.worker``, or with ``ordinary`` ``celery -A dataengine
    worker``); all are stopped after the test."""
    from dataengine.testing.processes import start_worker

    started: list[Any] = []

    def start(name: str, *, concurrency: int = 1, env: dict[str, str] | None = None, ready: bool = True,
              ordinary: bool = False) -> Any:
        env = {**engine_env, **db_route, **(env or {})}
        proc = start_worker(name, env=env, log_dir=tmp_path, concurrency=concurrency, ordinary=ordinary)
        started.append(proc)
        if ready:
            proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop(timeout_s=5)


@pytest.fixture
def echo(db_url: str) -> Any:
    """The engine tests' own job (``tests/enginejob.py``), its tables created in this test's database."""
    from enginejob import ECHO, Base
    from sqlalchemy import create_engine

    engine = create_engine(db_url)
    Base.metadata.create_all(engine)
    engine.dispose()
    return ECHO


#: The HTTP API's key in the tests' ``api`` client, and the header that presents it.
API_KEY = "test-key-0123456789abcdef"
API_AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: The secret that signs the runs page's sessions in the tests' ``api`` client.
API_SESSION_SECRET = "test-session-secret-0123456789abcdef"


@contextmanager
def in_process_api(monkeypatch: pytest.MonkeyPatch, *, key: str, secret: str, **client: Any) -> Iterator[Any]:
    """The HTTP API in this process (FastAPI's TestClient with ``client``'s options), behind ``key``, its
    runs page's sessions signed with ``secret``."""
    from fastapi.testclient import TestClient

    from dataengine.web.app import create_app

    monkeypatch.setenv("DATA_ENGINE_API_KEY", key)
    monkeypatch.setenv("DATAENGINE_SESSION_SECRET", secret)
    reload_settings()
    with TestClient(create_app(), **client) as test_client:
        yield test_client
    reload_settings()


@pytest.fixture
def api(engine_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The HTTP API in this process, behind ``API_KEY``; errors answer 500 as they would."""
    with in_process_api(monkeypatch, key=API_KEY, secret=API_SESSION_SECRET, raise_server_exceptions=False) as client:
        yield client
