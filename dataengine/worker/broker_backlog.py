"""Which runs still have a message waiting in the broker (kombu's Redis list for a queue), and
whether the broker lost its messages.

The sweeper asks before it sends a run no worker has claimed yet: a run behind a long backlog
is still on its way and must not be sent twice; only a message the broker lost is sent again.
A broker that lost every message (Redis restarted without persistence, flushed, failed over to
an empty replica) is noticed within a second by a key that was there and is gone
(:func:`broker_lost_messages`), not after ``redispatch_after_s``.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time

import redis

from dataengine.infra.redis_keys import BROKER_EPOCH_KEY

#: Messages read from the queue per round trip.
SCAN_CHUNK = 500
#: kombu's hash of the messages workers have taken and not acknowledged (the Redis transport's default).
UNACKED_KEY = "unacked"


def _body_text(raw: bytes) -> str:
    """The task body of a kombu message, decoded when it is base64 (as Celery sends it)."""
    try:
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode(errors="replace")
        return str(body)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return ""


def _named(raw: bytes, run_ids: set[str]) -> set[str]:
    """The ids among ``run_ids`` that a message names. Celery's headers carry a readable kwargsrepr;
    other producers may send only the body, which is then decoded."""
    text = raw.decode(errors="replace")
    return {r for r in run_ids if r in text} or {r for r in run_ids if r in _body_text(raw)}


def waiting_runs(*, redis_url: str, queue: str, run_ids: set[str], taken: bool = False) -> set[str]:
    """The ids among ``run_ids`` that appear in a message waiting in ``queue``, or with ``taken`` also
    in one a worker has taken and not acknowledged (kombu's ``unacked`` hash).

    Taken messages do not count by default: if that worker died, only Redis' visibility timeout
    (hours) would bring them back, so they count as lost. After the broker was found without its
    epoch key they do: the broker has them, so it did not lose them (on a broker that really lost
    its data the hash is gone too), and the worker that took them is most likely alive.
    """
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    found: set[str] = set()
    try:
        if taken:
            for raw in client.hvals(UNACKED_KEY):
                found |= _named(raw, run_ids)
        length = client.llen(queue)
        for start in range(0, length, SCAN_CHUNK):
            for raw in client.lrange(queue, start, start + SCAN_CHUNK - 1):
                found |= _named(raw, run_ids - found)
                if found == run_ids:
                    return found
    finally:
        client.close()
    return found


_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def _client(redis_url: str) -> redis.Redis:
    with _clients_lock:
        if redis_url not in _clients:
            _clients[redis_url] = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        return _clients[redis_url]


def broker_lost_messages(redis_url: str) -> bool:
    """True once for every time the broker's data is found gone: the epoch key is missing, and this
    caller set it (``SET NX``, so of many sweepers exactly one sees it). Also true on a broker the
    engine never used, where nothing can have been lost: the check that follows finds nothing to send.
    Raises ``redis.RedisError`` while the broker does not answer."""
    return bool(_client(redis_url).set(BROKER_EPOCH_KEY, f"{time.time():.0f}", nx=True))
