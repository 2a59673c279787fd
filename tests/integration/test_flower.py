"""Flower started the documented way (``celery -A dataengine flower`` in the repository root, so it
reads ``flowerconfig.py``), watching a real worker on the test's Redis DB and database: it asks for
a password, refuses to start without one, shows each run's task by name with its run id, and
serves no secret of the engine's."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_for
from helpers import create_audit, run_row

from dataengine import app
from dataengine.testing.processes import CeleryProcess, start_celery

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "ops", f"flower-pw-{uuid.uuid4().hex}"
REDIS_PASSWORD = f"redis-pw-{uuid.uuid4().hex}"
RUN = "propertyaudit.run"


@dataclass
class Flower:
    """A Flower process we started, and its address."""

    proc: CeleryProcess
    url: str

    def get(self, path: str, *, auth: tuple[str, str] | None = (USER, PASSWORD)) -> httpx.Response:
        """``GET path``, with the test's credentials unless ``auth=None``."""
        return httpx.get(self.url + path, auth=auth, timeout=10)

    def json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
        return response.json()

    def task(self, task_id: str) -> dict[str, Any] | None:
        """What Flower shows of a task, or None while it has not heard of it (a 404: for ``wait_for``)."""
        response = self.get(f"/api/task/info/{task_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, (task_id, response.status_code, response.text[:500])
        return response.json()


@pytest.fixture
def flower(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Start ``celery -A dataengine flower`` in the repository root on a free loopback port.

    Basic auth is the test's user unless ``env`` says otherwise; with ``ready=False`` the process
    is returned as soon as it is started. Every Flower started is stopped after the test."""
    for name in list(os.environ):  # the test session's own Flower settings must not leak in
        if name.startswith("FLOWER_") or name == "DATAENGINE_FLOWER_ALLOW_NO_AUTH":
            monkeypatch.delenv(name)
    started: list[CeleryProcess] = []

    def start(env: dict[str, str] | None = None, *, ready: bool = True) -> Any:
        env = {"REDIS_URL": redis_url, "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}", **(env or {})}
        env = {k: v for k, v in env.items() if v is not None}
        proc = start_celery(f"flower-{len(started)}", ["flower", "--port=0"], env=env, log_dir=tmp_path, cwd=ROOT)
        started.append(proc)
        if not ready:
            return proc
        proc.wait_ready(marker="Visit me at")
        url = re.search(r"Visit me at (http://\S+?)/?$", proc.log_text(), re.M).group(1)
        return Flower(proc=proc, url=url)

    yield start
    for proc in started:
        proc.stop(timeout_s=5)


def watching(flower: Flower, worker: str) -> bool:
    """Flower has heard from ``worker`` (so it receives the fleet's events)."""
    rows = flower.json("/workers?json=1")["data"]
    return any(row["hostname"].startswith(f"{worker}@") and row["status"] for row in rows)


def audit_through_flower(flower: Flower, workers: Any, send: Callable[[str], str],
                         worker_env: dict[str, str] | None = None) -> tuple[str, str]:
    """A 3-query PropertyAudit run, sent by ``send(run_id) -> task id``, to completion on a real worker
    while Flower watches; its (task id, run id)."""
    workers("a", env=worker_env)
    wait_for(lambda: watching(flower, "a"), timeout_s=15, what="Flower to see worker a")
    run_id = str(create_audit(3))
    task_id = send(run_id)
    # Flower hears of a task from the worker's events, a moment after it was sent: until then, a 404.
    wait_for(lambda: (flower.task(task_id) or {}).get("state") == "SUCCESS", timeout_s=30,
             what="Flower to record the task's success")
    assert run_row(run_id)["status"] == "completed"
    return task_id, run_id


def test_flower_refuses_requests_without_the_password(flower):
    f = flower()
    assert f.url.startswith("http://127.0.0.1:")  # loopback unless --address says otherwise
    for path in ("/api/tasks", "/api/workers", "/", "/tasks"):
        assert f.get(path, auth=None).status_code == 401, path
        assert f.get(path, auth=(USER, "wrong")).status_code == 401, path
        assert f.get(path).status_code == 200, path


def test_flower_does_not_start_without_auth_unless_allowed_for_local_use(flower):
    refused = flower({"FLOWER_BASIC_AUTH": None}, ready=False)
    assert refused.proc.wait(timeout=20) != 0
    log = refused.log_text()
    assert "refuses to start without authentication" in log and "Visit me at" not in log
    assert "FLOWER_BASIC_AUTH=user:password" in log and "DATAENGINE_FLOWER_ALLOW_NO_AUTH=true" in log

    malformed = flower({"FLOWER_BASIC_AUTH": "ops"}, ready=False)  # no password: nobody could log in
    assert malformed.proc.wait(timeout=20) != 0
    assert "user:password" in malformed.log_text() and "Visit me at" not in malformed.log_text()

    # The password of .env.example, in production: refused, with the reason and not the password.
    placeholder = flower({"FLOWER_BASIC_AUTH": "ops:change-me", "DATAENGINE_ENVIRONMENT": "production",
                          "OPENAI_API_KEY": "sk-production"}, ready=False)
    assert placeholder.proc.wait(timeout=20) != 0
    log = placeholder.log_text()
    assert "FLOWER_BASIC_AUTH has the placeholder password" in log and "Traceback" not in log
    assert "Visit me at" not in log and "sk-production" not in log

    local = flower({"FLOWER_BASIC_AUTH": None, "DATAENGINE_FLOWER_ALLOW_NO_AUTH": "true"})
    assert local.url.startswith("http://127.0.0.1:")
    assert local.get("/workers", auth=None).status_code == 200
    assert "WITHOUT authentication" in local.proc.log_text()


def test_a_run_shows_in_flower_by_task_name_with_its_run_id(workers, flower):
    f = flower()
    task_id, run_id = audit_through_flower(f, workers, lambda run_id: app.send_task(RUN, kwargs={"run_id": run_id}).id)

    info = f.task(task_id)
    assert info is not None and info["name"] == RUN and info["state"] == "SUCCESS"
    assert info["kwargs"] == repr({"run_id": run_id})
    assert run_id in info["result"] and "completed" in info["result"]
    listed = f.json(f"/api/tasks?taskname={RUN}")
    assert listed[task_id]["name"] == RUN and run_id in listed[task_id]["kwargs"]
    # The tasks page of the UI lists the run id next to the name (flowerconfig.py's tasks_columns).
    page = f.json("/tasks/datatable?draw=1&start=0&length=10&order[0][column]=0&columns[0][data]=name")
    (row,) = [r for r in page["data"] if r["uuid"] == task_id]
    assert row["name"] == RUN and run_id in row["kwargs"]
    assert ">kwargs<" in f.get("/tasks").text


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[str]:
    """A private redis-server that asks for a password: its URL, password included. Ask for it
    before ``workers`` and ``flower``, so that it outlives them."""
    import redis
    from redis_server import RedisServer

    with RedisServer(tmp_path / "redis") as server:
        with redis.Redis(port=server.port) as client:
            client.config_set("requirepass", REDIS_PASSWORD)
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"


def _db_url_with_password(db_url: str) -> tuple[str, str]:
    """``db_url`` with a password the server checks, or, where it trusts loopback, one it ignores."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.password:
        return db_url, str(url.password)
    password = f"pg-secret-{uuid.uuid4().hex}"
    url = url.set(password=password)
    try:
        psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False)).close()
    except psycopg.OperationalError:
        pytest.skip("the test server has no password in DATABASE_URL and does not trust loopback")
    return url.render_as_string(hide_password=False), password


def everything_in_redis(url: str) -> str:
    """Every key and value of the Redis at ``url`` (messages, results, events, schedules), as text."""
    import redis

    out = []
    with redis.Redis.from_url(url) as client:
        for key in client.scan_iter(count=500):
            kind = client.type(key).decode()
            value: Any = {"string": client.get, "list": lambda k: client.lrange(k, 0, -1), "hash": client.hgetall,
                          "set": client.smembers, "zset": lambda k: client.zrange(k, 0, -1)}.get(kind, repr)(key)
            out.append(f"{key!r} {value!r}")
    return "\n".join(out)


def everything_in_the_database(url: str) -> str:
    """Every row of every table of the database at ``url`` (runs, steps, results, heartbeats...), as text."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        tables = conn.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).all()
        rows = [f"{t} {r}" for t in tables for r in conn.scalars(text(f'SELECT t::text FROM "{t}" t')).all()]
    engine.dispose()
    return "\n".join(rows)


def test_no_secret_reaches_flower_the_logs_redis_or_the_database(locked_redis, workers, flower, db_url, tmp_path):
    """A run with distinctive secrets in every setting that holds one; then everything the product
    wrote is searched for them: Flower's pages and API, every process's log, every Redis key and
    value (messages, results, events), every database row."""
    database_url, db_password = _db_url_with_password(db_url)
    secrets = {
        "OPENAI_API_KEY": f"sk-openai-secret-{uuid.uuid4().hex}",
        "DATA_ENGINE_API_KEY": f"de-api-secret-{uuid.uuid4().hex}",
    }
    # Flower gets the engine's environment too, as in the compose file.
    env = {**secrets, "DATABASE_URL": database_url, "REDIS_URL": locked_redis}
    f = flower(env)

    def send(run_id: str) -> str:  # an operator starting a run from Flower, on the locked broker
        response = httpx.post(f"{f.url}/api/task/send-task/{RUN}", json={"kwargs": {"run_id": run_id}},
                              auth=(USER, PASSWORD), timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["task-id"]

    task_id, run_id = audit_through_flower(f, workers, send, env)
    secrets |= {"database password": db_password, "Redis password": REDIS_PASSWORD, "Flower's password": PASSWORD}

    worker = next(name for name in f.json("/api/workers?refresh=1") if name.startswith("a@"))
    pages = [
        "/api/tasks", "/api/workers?refresh=1", f"/api/workers?workername={worker}&refresh=1",
        f"/api/task/info/{task_id}", f"/api/task/result/{task_id}", "/api/task/types", "/api/queues/length",
        "/", "/workers?json=1", f"/worker/{worker}", "/tasks", f"/task/{task_id}", "/broker", "/metrics",
        "/tasks/datatable?draw=1&start=0&length=10&order[0][column]=0&columns[0][data]=name",
    ]
    served = {}
    for path in pages:
        response = f.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
        served[path] = response.text
    # What is searched is what an operator sees: the run, the worker's settings, the queue.
    assert run_id in served[f"/api/task/info/{task_id}"] and run_id in served["/api/tasks"]
    assert "redbeat_redis_url" in served[f"/worker/{worker}"] and '"celery"' in served["/api/queues/length"]
    written = {f"log {p.name}": p.read_text(errors="replace") for p in tmp_path.glob("*.log")}
    assert any(run_id in text for text in written.values())  # the logs searched are the run's
    written["redis"] = everything_in_redis(locked_redis)
    written["database"] = everything_in_the_database(db_url)
    assert run_id in written["redis"] and run_id in written["database"]
    leaks = [(what, where) for what, secret in secrets.items() for where, text in {**served, **written}.items()
             if secret in text]
    assert leaks == []
