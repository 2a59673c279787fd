"""Malformed messages pushed straight onto the Redis queue list, as a buggy producer in another
language would: each is set aside with its reason, and the worker that met it goes on."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
import redis
from conftest import wait_for
from helpers import create_audit, finished, results

from dataengine import app
from dataengine.infra.redis_keys import REJECTED_KEY

pytestmark = pytest.mark.timeout(120)
RUN = "propertyaudit.run"


def envelope(body: str, *, headers: Any = None, content_type: str = "application/json") -> str:
    """A queue item shaped as kombu writes it, around ``body``."""
    return json.dumps({
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {"lang": "py", "task": RUN, "id": str(uuid.uuid4())} if headers is None else headers,
        "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    })


def poison() -> dict[str, tuple[str, str]]:
    """name -> (raw queue item, what its reason must say); every item holds a unique marker."""
    no_id = envelope(json.dumps([[], {"run_id": "x"}, {}]), headers={"task": RUN})
    return {
        "body a string": (envelope(json.dumps("just a string")), "arguments"),
        "body {}": (envelope("{}"), "arguments"),
        "body null": (envelope("null"), "arguments"),
        "not json": (f"this is not json {uuid.uuid4()} {{", "not JSON"),
        "json list": (json.dumps([1, 2, str(uuid.uuid4())]), "not a message envelope"),
        "json string": (json.dumps(f"hello {uuid.uuid4()}"), "not a message envelope"),
        "no properties": (json.dumps({"body": "", "headers": {}, "marker": str(uuid.uuid4())}), "properties"),
        "no delivery tag": (json.dumps({"body": "", "headers": {}, "properties": {}, "marker": str(uuid.uuid4())}),
                            "delivery_tag"),
        "bad base64": (envelope("x").replace('"eA=="', '"e"'), "body"),
        "headers a list": (envelope("[[], {}, {}]", headers=[str(uuid.uuid4())]), "headers"),
        "task not a string": (envelope("[[], {}, {}]", headers={"task": 42, "id": str(uuid.uuid4())}), "task"),
        "no task id": (no_id, "id"),
        "unknown task": (envelope("[[], {}, {}]", headers={"task": "nope.run", "id": str(uuid.uuid4())}), "nope.run"),
        "kwargs a list": (envelope(json.dumps([[], [1], {}])), "arguments"),
        "bad json body": (envelope("{not json"), "does not decode"),
        "no task name": (envelope(json.dumps({"hello": 1}), headers={"marker": str(uuid.uuid4())}), "task"),
        "v1 task a list": (envelope(json.dumps({"task": [], "id": "x"}), headers={}), "the body's task"),
    }


def marker(item: str) -> str:
    """The unique part of a poison item: its delivery tag if it is an envelope, else the item itself."""
    try:
        return json.loads(item)["properties"]["delivery_tag"]
    except (ValueError, TypeError, KeyError):
        return item


@pytest.fixture
def client(redis_url: str):
    """A client of the session's Redis DB (the broker the workers use)."""
    with redis.Redis.from_url(redis_url) as c:
        yield c


def push(client: redis.Redis, item: str) -> None:
    client.lpush("celery", item)  # workers BRPOP from the other end: first pushed, first taken


def rejected(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(e) for e in client.lrange(REJECTED_KEY, 0, -1)]


def test_malformed_messages_are_set_aside_and_the_worker_goes_on(workers, fake_llm, client):
    worker = workers("a")
    items = poison()
    for item, _ in items.values():
        push(client, item)
    pickled = app.send_task(RUN, kwargs={"run_id": str(uuid.uuid4())}, serializer="pickle")  # a real producer
    good = [create_audit(4, tag=f"good{i}") for i in range(2)]
    for run_id in good:
        app.send_task(RUN, kwargs={"run_id": str(run_id)})

    def alive() -> bool:
        if worker.proc.poll() is not None:
            pytest.fail(f"the worker died:\n{worker.log_text()[-3000:]}")
        return True

    for run_id in good:
        row = wait_for(lambda r=run_id: alive() and finished(r), timeout_s=60, what="the good runs to finish")
        assert row["status"] == "completed" and len(results(run_id)) == 4
    assert alive() and "Unrecoverable error" not in worker.log_text()

    entries = wait_for(lambda: len(rejected(client)) >= len(items) + 1 and rejected(client), timeout_s=10,
                       what="every bad message in the rejected list")
    assert len(entries) == len(items) + 1, [e["reason"] for e in entries]
    for name, (item, says) in items.items():
        (entry,) = [e for e in entries if marker(item) in e["raw"]]
        assert says in entry["reason"], f"{name}: {entry['reason']!r} does not say {says!r}"
        assert entry["queue"] == "celery" and entry["at"], entry
    (entry,) = [e for e in entries if e.get("id") == pickled.id]
    assert entry["task"] == RUN and "only JSON" in entry["reason"]

    pickled.get(timeout=10, propagate=False)
    assert pickled.state == "FAILURE"
    assert "only JSON is accepted" in str(pickled.result)
    assert client.llen("celery") == 0  # nothing was put back to kill the next worker
    assert client.hlen("unacked") == 0  # nor left for kombu to restore after the visibility timeout


def test_the_cli_shows_the_newest_rejected_messages_and_clears_them(client):
    from typer.testing import CliRunner

    from dataengine.cli.main import cli
    from dataengine.worker.broker_guards import set_aside

    client.delete(REJECTED_KEY)
    try:
        for i in range(5):
            set_aside(client=client, queue="celery", reason=f"reason {i}", raw=f"raw {i}", task=RUN, task_id=f"t{i}")
        shown = CliRunner().invoke(cli, ["rejected", "--limit", "3"])
        assert shown.exit_code == 0, shown.output
        assert all(f"reason {i}" in shown.output and f"id=t{i}" in shown.output for i in (4, 3, 2))
        assert "reason 1" not in shown.output and "3 of 5 rejected message(s)" in shown.output

        cleared = CliRunner().invoke(cli, ["rejected", "--clear"])
        assert cleared.exit_code == 0 and "5 rejected message(s) cleared" in cleared.output
        assert client.llen(REJECTED_KEY) == 0
    finally:
        client.delete(REJECTED_KEY)
