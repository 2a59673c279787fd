"""The checks that keep a malformed queue item from ending a worker (no servers needed)."""

from __future__ import annotations

import hashlib
import inspect
import json

import fakeredis
import pytest
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import Base64

from dataengine.infra.redis_keys import REJECTED_KEY
from dataengine.worker.broker_guards import REJECTED_MAX, clear_rejected, envelope_problem, rejected_messages, set_aside

CODECS = {"base64": Base64()}


def good() -> dict:
    return {
        "body": "W1tdLCB7fSwge31d",  # [[], {}, {}]
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": "propertyaudit.run", "id": "abc"},
        "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": "t1"},
    }


def with_(path: str, value: object) -> dict:
    env = good()
    *parents, last = path.split(".")
    node = env
    for key in parents:
        node = node[key]
    node[last] = value
    return env


def test_a_kombu_envelope_passes():
    assert envelope_problem(good(), codecs=CODECS) is None
    assert envelope_problem(with_("headers", None), codecs=CODECS) is None  # Celery rejects it itself, safely


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        ([1, 2], "a JSON array"),
        ("text", "a JSON string"),
        (None, "a JSON null"),
        (with_("properties", []), "properties is array"),
        (with_("properties.delivery_tag", 7), "delivery_tag is number"),
        (with_("properties.delivery_info", None), "delivery_info"),
        (with_("properties.delivery_info", {"exchange": ""}), "delivery_info"),
        (with_("properties.priority", "high"), "priority"),
        (with_("properties.body_encoding", "rot13"), "body_encoding"),
        (with_("body", "e"), "not valid base64"),
        (with_("body", 12), "body is number"),
        (with_("content-type", ["json"]), "content-type"),
        (with_("headers", "x"), "headers is string"),
        (with_("headers.task", None), "headers.task"),
        (with_("headers.id", ""), "headers.id"),
        ({**with_("headers", {}), "body": "eyJ0YXNrIjogW119"}, "the body's task is array"),  # {"task": []}
    ],
)
def test_malformed_envelopes_say_why(payload, says):
    assert says in (envelope_problem(payload, codecs=CODECS) or "passed")


def test_the_rejected_list_keeps_the_newest_entries_truncated():
    client = fakeredis.FakeRedis()
    for i in range(REJECTED_MAX + 2):
        set_aside(client=client, queue="celery", reason=f"r{i}", raw="x" * 9_000, task=None, task_id=None)
    entries = rejected_messages(client=client, limit=2)
    assert [e["reason"] for e in entries] == [f"r{REJECTED_MAX + 1}", f"r{REJECTED_MAX}"]
    assert len(entries[0]["raw"]) < 9_000 and json.loads(client.lindex(REJECTED_KEY, 0))["queue"] == "celery"
    assert clear_rejected(client=client) == REJECTED_MAX and client.llen(REJECTED_KEY) == 0


def test_the_mirrored_brpop_read_is_still_kombus():
    # dataengine.worker.broker_guards.Channel._brpop_read is kombu's with one check added; when kombu changes
    # its method, compare the two again and update ours, then this digest.
    source = inspect.getsource(kombu_redis.Channel._brpop_read)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == "c42518699709f2df"
