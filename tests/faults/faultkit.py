"""Fixtures of the fault-injection suite (a plugin of the root conftest, ``pytest_plugins``;
it imports nothing of the engine's until a fixture runs): a private
broker, a producer on it, a fleet of runs on the test's database, and the scenario's report.

Every server a scenario breaks is its own: a ``redis-server`` on a free port, a PostgreSQL cluster
of its own (``pg_cluster``), or a loopback proxy (``tcpproxy``) between the workers and a server.
The machine's own Redis and PostgreSQL are never stopped, flushed or cut.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from redis_server import RedisServer

if TYPE_CHECKING:
    from faults.fleet import Figures, Fleet

#: Where the scenarios write their figures when ``scripts/reliability_report.py`` runs them.
REPORT_DIR_ENV = "DATAENGINE_FAULTS_REPORT_DIR"


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that keeps what it acknowledged over a SIGKILL (an append-only file),
    unless parametrized with False. Ask for it before ``workers``, so that it outlives them."""
    with RedisServer(tmp_path / "redis", persist=getattr(request, "param", True)) as server:
        yield server


@pytest.fixture
def producer(broker: RedisServer) -> Iterator[Any]:
    """A Celery client of the private broker, as a web app would hold one."""
    from celery import Celery

    app = Celery("producer", broker=broker.url(), backend=broker.url(), set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    yield app
    app.close()


@pytest.fixture
def fleet_on(fake_llm: Any) -> Callable[..., Fleet]:
    """``fleet_on(db_url, send=None)``: a fleet of runs whose results are audited for stale writes;
    ``send`` defaults to the engine's own producer (the session's Redis)."""

    def make(db_url: str, send: Callable[[str, dict[str, str]], Any] | None = None) -> Fleet:
        from faults.fleet import Fleet, audit_writes

        if send is None:
            from dataengine import app

            def send(name: str, kwargs: dict[str, str]) -> Any:
                return app.send_task(name, kwargs=kwargs)

        audit_writes(db_url)
        return Fleet(fake_llm, send, db_url)

    return make


def sender(producer: Any) -> Callable[[str, dict[str, str]], Any]:
    """Send a task by name through ``producer``."""
    return lambda name, kwargs, queue=None: producer.send_task(name, kwargs=kwargs)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``report(figures, **extra)``: the scenario's figures, written for docs/reliability.md when
    ``DATAENGINE_FAULTS_REPORT_DIR`` is set (``scripts/reliability_report.py``)."""

    def record(figures: Figures, **extra: Any) -> None:
        directory = os.environ.get(REPORT_DIR_ENV)
        if not directory:
            return
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("::", 1)[1])
        data = asdict(figures) | {"extra": figures.extra | extra, "test": request.node.nodeid,
                                  "doc": (request.node.function.__doc__ or "").strip()}
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))

    return record


def messages_for(url: str, run_ids: list[Any], queue: str = "celery") -> dict[str, int]:
    """How many messages of the broker at ``url`` name each run: queued, or taken and not acknowledged."""
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        items = [m.decode(errors="replace") for m in client.lrange(queue, 0, -1)]
        items += [m.decode(errors="replace") for m in client.hvals("unacked")]
    return {str(r): sum(str(r) in m for m in items) for r in run_ids}


@pytest.fixture
def private_db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A PostgreSQL cluster of the test's own with a migrated database (``.app_url``), set as
    ``DATABASE_URL`` for this process: the scenarios that restart the server itself. Ask for it before
    ``workers``, so that the workers stop before it does (it takes over from ``db_url``, set up first)."""
    import psycopg
    from conftest import reload_settings
    from pg_cluster import PgCluster

    from dataengine.infra.migrate import migrate

    with PgCluster() as cluster:
        with psycopg.connect(host="127.0.0.1", port=cluster.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE app")
        url = cluster.url("app")
        migrate(url)
        monkeypatch.setenv("DATABASE_URL", url)
        reload_settings()
        cluster.app_url = url  # type: ignore[attr-defined]
        yield cluster
        from dataengine.engine.heartbeats import close_heartbeats

        close_heartbeats()
        reload_settings()


@pytest.fixture
def bouncer_to() -> Iterator[Callable[[int], Any]]:
    """``bouncer_to(port)``: a PgBouncer in transaction mode in front of the server on ``port``."""
    import pgbouncer as pgb
    from conftest import require_pgbouncer

    require_pgbouncer()
    started: list[Any] = []

    def start(port: int) -> Any:
        started.append(pgb.PgBouncer(server_host="127.0.0.1", server_port=port).start())
        return started[-1]

    yield start
    for b in started:
        b.stop()


def worker_db_env(url: str, bouncer: Any = None) -> dict[str, str]:
    """The environment that points workers at ``url``, or at it through ``bouncer`` in transaction mode."""
    if bouncer is None:
        return {"DATABASE_URL": url}
    return {"DATABASE_URL": bouncer.url_for(url), "DATAENGINE_DB_POOLER": "transaction"}
