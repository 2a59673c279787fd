"""What a worker takes from the broker: a malformed message is set aside with its reason, never fatal.

Celery and kombu let some malformed queue items escape their consumer and end the worker (and
every worker after it, since the message goes back on the queue). Two layers stop that:

- :class:`Transport` (``broker_transport`` in ``celeryconfig.py``) checks each item popped from
  a Redis queue list before kombu delivers it: JSON, an envelope with ``properties``, a
  ``delivery_tag``, a decodable body, headers that are an object with a string ``task`` and ``id``;
- :func:`strategy` and :class:`Request` (``task_annotations`` in ``celeryconfig.py``, so every
  task of the app uses them) check a task message before Celery builds its request: JSON
  content, ``[args, kwargs, embed]`` of the right types. Anything else becomes Celery's
  ``InvalidTaskError``, which its consumer rejects without putting the message back.

Every rejected message is kept in a capped Redis list (``REJECTED_KEY``, newest first) with the
time, queue, reason, task name and id when known, and the raw item truncated; ``dataengine
rejected`` lists them. A rejected task message with an id also gets a FAILURE result saying
why, so a producer waiting on it does not wait in PENDING for ever.

The broker connection's time limits (``BROKER_SOCKET_TIMEOUT_S`` and friends, read by
``celeryconfig.py``) live here too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from queue import Empty
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.signals import task_rejected, task_unknown
from celery.worker.request import Request as CeleryRequest
from celery.worker.strategy import default as default_strategy
from kombu.exceptions import ContentDisallowed
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from dataengine.infra.errors import DataEngineError
from dataengine.infra.redis_keys import REJECTED_KEY

log = logging.getLogger("dataengine.worker.broker_guards")

#: The rejected list keeps this many entries, the newest.
REJECTED_MAX = 1000
#: Characters of a rejected item kept in its entry.
RAW_MAX_CHARS = 4000
#: A command to Redis that gets no answer for this long fails (a stalled or partitioned broker)
#: and is retried, instead of blocking its thread for ever.
BROKER_SOCKET_TIMEOUT_S = 10.0
#: Connecting to Redis gives up after this, and is tried again.
BROKER_CONNECT_TIMEOUT_S = 5.0
#: Storing a task's result while Redis is away is retried with backoff up to this interval.
RESULT_RETRY_MAX_SLEEP_MS = 5000
#: What a producer is told when it sends anything but JSON (pickle above all).
ONLY_JSON = "only JSON is accepted: send with serializer='json' (content type application/json)"


class MessageRejected(DataEngineError):
    """The worker rejected this task message and set it aside: {reason}"""


def set_aside(
    *, client: Any, queue: str | None, reason: str, raw: str, task: str | None = None, task_id: str | None = None
) -> None:
    """Keep a rejected message in the capped rejected list, and log it."""
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "queue": queue,
        "reason": reason,
        "task": task,
        "id": task_id,
        "raw": raw[:RAW_MAX_CHARS],
    }
    log.error("Rejected a message from queue %r (task=%s id=%s): %s; kept in %s",
              queue, task, task_id, reason, REJECTED_KEY)
    with client.pipeline() as pipe:
        pipe.lpush(REJECTED_KEY, json.dumps(entry)).ltrim(REJECTED_KEY, 0, REJECTED_MAX - 1).execute()


def rejected_messages(*, client: Any, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` rejected messages, newest first."""
    return [json.loads(e) for e in client.lrange(REJECTED_KEY, 0, max(limit, 1) - 1)]


def clear_rejected(*, client: Any) -> int:
    """Empty the rejected list; returns how many entries it held."""
    with client.pipeline() as pipe:
        count, _ = pipe.llen(REJECTED_KEY).delete(REJECTED_KEY).execute()
    return int(count)


_JSON_KINDS = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _kind(value: Any) -> str:
    """The JSON name of a decoded value's type, for reasons a producer in any language can read."""
    return "null" if value is None else _JSON_KINDS.get(type(value), type(value).__name__)


def envelope_problem(payload: Any, *, codecs: dict[str, Any]) -> str | None:
    """Why a decoded queue item is not a message kombu can deliver, or None if it is one."""
    if not isinstance(payload, dict):
        return f"not a message envelope: a JSON {_kind(payload)}, not an object"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return f"properties is {_kind(props)}, not an object"
    tag = props.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        return f"properties.delivery_tag is {_kind(tag)}, not a non-empty string"
    info = props.get("delivery_info")
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("exchange", "routing_key")):
        return "properties.delivery_info must be an object with string exchange and routing_key"
    priority = props.get("priority")
    if priority is not None and (type(priority) is not int or not 0 <= priority <= 255):
        return f"properties.priority is {priority!r}, not an integer from 0 to 255"
    for key in ("content-type", "content-encoding"):
        if not isinstance(payload.get(key), str | None):
            return f"{key} is {_kind(payload.get(key))}, not a string"
    headers = payload.get("headers")
    if not isinstance(headers, dict | None):
        return f"headers is {_kind(headers)}, not an object"
    if headers and "task" in headers:
        for key in ("task", "id"):
            if not isinstance(headers.get(key), str) or not headers[key]:
                return f"headers.{key} is {_kind(headers.get(key))}, not a non-empty string"
    body, encoding = payload.get("body"), props.get("body_encoding")
    if not isinstance(body, str | None):
        return f"body is {_kind(body)}, not a string"
    if encoding is not None and (not isinstance(encoding, str) or
                                 (encoding.lower() != "utf-8" and encoding not in codecs)):
        return f"properties.body_encoding {encoding!r} is not one kombu knows"
    decoded: Any = body
    if body and encoding and encoding.lower() != "utf-8":
        try:
            decoded = codecs[encoding].decode(body)
        except Exception as exc:  # any failure to decode is the message's fault
            return f"body is not valid {encoding}: {exc}"
    if not (headers and "task" in headers) and payload.get("content-type") == "application/json" and decoded:
        # Celery looks a protocol 1 message's task name up in a dict, outside any error handling.
        try:
            v1 = json.loads(decoded)
        except ValueError:
            return None  # Celery rejects an undecodable body itself
        if isinstance(v1, dict) and "task" in v1 and not isinstance(v1["task"], str):
            return f"the body's task is {_kind(v1['task'])}, not a string"
    return None


def _headers_of(payload: Any) -> tuple[str | None, str | None]:
    headers = payload.get("headers") if isinstance(payload, dict) else None
    if not isinstance(headers, dict):
        return None, None
    task, task_id = headers.get("task"), headers.get("id")
    return (task if isinstance(task, str) else None), (task_id if isinstance(task_id, str) else None)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, with each popped item checked before it is delivered, and one redis-py
    client for its commands."""

    _commands: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        # kombu builds a redis-py client for every publish, ack and event; its constructor was a
        # fifth of a worker main process's time (py-spy, bench/peers/one_step_runs.py). A client
        # only borrows connections from the channel's pool, so one per pool serves every thread.
        if client:
            yield client
            return
        pool = self.pool
        if self._commands is None or self._commands.connection_pool is not pool:
            self._commands = self._create_client()
        yield self._commands

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7's Channel._brpop_read, with one change: the item is checked (and set aside
        # if it is bad) between the pop and the delivery, where kombu would raise and end the worker.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            message = self._checked(item, queue=dest)
            if message is None:
                raise Empty()
            self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _checked(self, item: bytes | str, *, queue: str) -> dict[str, Any] | None:
        """The decoded envelope, or None once a bad item is set aside."""
        raw = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        payload: Any = None
        try:
            payload = kombu_redis.loads(bytes_to_str(item))
        except (ValueError, TypeError) as exc:
            reason = f"not JSON: {exc}"
        else:
            reason = envelope_problem(payload, codecs=self.codecs)
        if reason is None:
            return payload
        task, task_id = _headers_of(payload)
        try:
            with self.conn_or_acquire() as client:
                set_aside(client=client, queue=queue, reason=reason, raw=raw, task=task, task_id=task_id)
        except Exception:  # the item is already off the queue; the log keeps it
            log.exception("Could not keep a rejected message in %s; it was: %s", REJECTED_KEY, raw[:RAW_MAX_CHARS])
        return None


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`; ``broker_transport = "dataengine.worker.broker_guards:Transport"``."""

    Channel = Channel


def _arguments_problem(args: Any, kwargs: Any) -> str | None:
    if not isinstance(args, list | tuple):
        return f"the task's positional arguments are {_kind(args)}, not a list"
    if not isinstance(kwargs, dict):
        return f"the task's keyword arguments are {_kind(kwargs)}, not an object"
    return None


def task_message_problem(message: Any, body: Any) -> str | None:
    """Why a task message cannot become a Celery request, or None if it can."""
    if body is not None:  # protocol 1: Celery decoded the body already
        if not isinstance(body.get("id"), str) or not body["id"]:
            return "the task id is missing or not a string"
        return _arguments_problem(body.get("args", ()), body.get("kwargs", {}))
    task_id = message.headers.get("id")
    if not isinstance(task_id, str) or not task_id:
        return f"headers.id (the task id) is {_kind(task_id)}, not a non-empty string"
    try:
        payload = message.decode()
    except ContentDisallowed:
        return f"content type {message.content_type!r} refused: {ONLY_JSON}"
    except Exception as exc:  # whatever the codec raises, the body is unreadable
        return f"body does not decode as {message.content_type}: {exc}"
    if isinstance(payload, dict) and "args" in payload:  # protocol 1 body under protocol 2 headers
        return _arguments_problem(payload["args"], payload.get("kwargs", {}))
    if not isinstance(payload, list | tuple) or len(payload) != 3:
        return f"the body must be the task's arguments [args, kwargs, embed], not a JSON {_kind(payload)}"
    args, kwargs, embed = payload
    if not isinstance(embed, dict | None):
        return f"the body's third item (embed) is {_kind(embed)}, not an object"
    return _arguments_problem(args, kwargs)


def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default strategy, with each message checked before Celery builds its request."""
    _connect_signals()
    handle = default_strategy(task, app, consumer, **kwargs)

    def task_message_handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        reason = task_message_problem(message, body)
        if reason is not None:
            raise InvalidTaskError(reason)
        return handle(message, body, ack, reject, callbacks, **kw)

    return task_message_handler


class Request(CeleryRequest):
    """Celery's request; any error building it is the message's fault, so the message is rejected."""

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(message, *args, **kwargs)
        except InvalidTaskError:
            raise
        except Exception as exc:  # ContentDisallowed, DecodeError, a bad shape: all the message's
            raise InvalidTaskError(f"the message cannot be read as a task: {exc!r}") from exc
        limits = self.time_limits
        if not (isinstance(limits, list | tuple) and len(limits) == 2 and
                all(x is None or (isinstance(x, int | float) and not isinstance(x, bool)) for x in limits)):
            raise InvalidTaskError(f"headers.timelimit is {limits!r}, not [hard, soft] seconds")


def _raw(message: Any) -> str:
    raw = getattr(message, "_raw", None)
    if raw is None:
        return bytes_to_str(message.body) if isinstance(message.body, bytes) else repr(message.body)
    return json.dumps(raw, default=str)


def _set_aside_message(message: Any, reason: str, *, app: Any, store_failure: bool) -> None:
    headers = message.headers if isinstance(message.headers, dict) else {}
    task, task_id = _headers_of({"headers": headers})
    queue = (message.delivery_info or {}).get("routing_key")
    try:
        with message.channel.conn_or_acquire() as client:
            set_aside(client=client, queue=queue, reason=reason, raw=_raw(message), task=task, task_id=task_id)
    except Exception:  # the message is rejected either way; the log keeps it
        log.exception("Could not keep a rejected message in %s; it was: %s", REJECTED_KEY, _raw(message)[:2000])
    if store_failure and task_id:
        try:
            app.backend.mark_as_failure(task_id, MessageRejected(reason=reason))
        except Exception:  # a result we could not store must not stop the consumer
            log.exception("Could not store the failure of rejected task %s", task_id)


def _on_task_rejected(sender: Any = None, message: Any = None, exc: BaseException | None = None, **_: Any) -> None:
    reason = str(exc) if exc is not None else "no task name in the headers or the body: not a Celery task message"
    _set_aside_message(message, reason, app=sender.app, store_failure=exc is not None)


def _on_task_unknown(sender: Any = None, message: Any = None, name: str | None = None, **_: Any) -> None:
    # Celery has already stored a NotRegistered failure for the task id.
    _set_aside_message(message, f"unknown task {name!r}: no task of that name is registered",
                       app=sender.app, store_failure=False)


def _connect_signals() -> None:
    # Connected when a worker builds its strategies, not on import; dispatch_uid makes it once.
    task_rejected.connect(_on_task_rejected, dispatch_uid="dataengine.worker.broker_guards.rejected", weak=False)
    task_unknown.connect(_on_task_unknown, dispatch_uid="dataengine.worker.broker_guards.unknown", weak=False)
