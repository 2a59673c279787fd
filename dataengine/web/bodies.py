"""Request bodies as the API reads them: strict JSON, and a large body's work off the event loop.

Strict: ``NaN`` and ``Infinity`` are not JSON numbers, and text must be Unicode that UTF-8 can hold
(JSON's ``"\\ud800"`` escape makes a lone surrogate, which PostgreSQL's driver cannot encode), so
both are a 422 naming the field rather than a 500 later. Off the loop: parsing 30 MiB of JSON and
validating a million items takes seconds, during which one event loop would answer nothing else (not
even ``/health``); a body over ``OFF_LOOP_BYTES`` is parsed, validated and handled on a worker
thread, with an event loop of its own for FastAPI's request handler.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from fastapi import Request, Response
from fastapi.routing import APIRoute

#: Bodies larger than this are handled off the event loop.
OFF_LOOP_BYTES = 256 * 1024
#: A surrogate, escaped (``\\udXXX``) or as the raw bytes ``json.loads`` lets through
#: (it decodes with ``surrogatepass``): only then is the parsed body searched for a lone one.
SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (write a number, or leave the field out)")


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def lone_surrogate_at(value: Any, path: str = "") -> str | None:
    """The dotted path of the first text in ``value`` (a key or a value) that holds a lone surrogate."""
    if isinstance(value, str):
        return None if _encodable(value) else path or "body"
    if isinstance(value, dict):
        for key, item in value.items():
            if not _encodable(key):
                return path or "body"
            found = lone_surrogate_at(item, f"{path}.{key}" if path else key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = lone_surrogate_at(item, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None


def parse_json(body: bytes) -> Any:
    """``body`` as JSON, strictly; ``json.JSONDecodeError`` saying what is wrong (FastAPI's 422) otherwise."""
    try:
        value = json.loads(body, parse_constant=_not_a_number)
    except json.JSONDecodeError:
        raise
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"the body is not UTF-8 text ({exc.reason} at byte {exc.start})", "", 0) from None
    except RecursionError:
        raise json.JSONDecodeError("the body is nested too deeply", "", 0) from None
    except ValueError as exc:
        raise json.JSONDecodeError(str(exc), "", 0) from None
    if SURROGATE.search(body):
        where = lone_surrogate_at(value)
        if where is not None:
            raise json.JSONDecodeError(f"{where}: text must be valid Unicode; it holds a lone surrogate "
                                       "(a \\ud800-\\udfff escape that is not half of a pair)", "", 0)
    return value


class StrictRequest(Request):
    """A request whose JSON body is parsed by :func:`parse_json`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """FastAPI's route, reading its JSON body with :class:`StrictRequest`, and handling a body over
    ``OFF_LOOP_BYTES`` (its parsing, validation and endpoint) on a worker thread."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def handle(request: Request) -> Response:
            strict = StrictRequest(request.scope, request.receive)
            if len(await strict.body()) <= OFF_LOOP_BYTES:
                return await handler(strict)
            # The body is read (and kept by ``strict``): the handler needs nothing more from this loop.
            return await anyio.to_thread.run_sync(anyio.run, handler, strict)

        return handle
