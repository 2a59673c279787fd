"""Which runs still have a message waiting in the broker (kombu's Redis list for a queue).

The sweeper asks before it sends a run no worker has claimed yet: a run behind a long backlog
is still on its way and must not be sent twice; only a message the broker lost is sent again.
"""

from __future__ import annotations

import base64
import binascii
import json

import redis

#: Messages read from the queue per round trip.
SCAN_CHUNK = 500


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


def waiting_runs(*, redis_url: str, queue: str, run_ids: set[str]) -> set[str]:
    """The ids among ``run_ids`` that appear in a message waiting in ``queue``.

    Messages a worker has taken but not acknowledged are not waiting: if that worker died, only
    Redis' visibility timeout (hours) would bring them back, so they count as lost.
    """
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    found: set[str] = set()
    try:
        length = client.llen(queue)
        for start in range(0, length, SCAN_CHUNK):
            for raw in client.lrange(queue, start, start + SCAN_CHUNK - 1):
                # Celery's headers carry a readable kwargsrepr; other producers may send only the body.
                text = raw.decode(errors="replace")
                missing = run_ids - found
                hits = {r for r in missing if r in text} or {r for r in missing if r in _body_text(raw)}
                found |= hits
                if found == run_ids:
                    return found
    finally:
        client.close()
    return found
