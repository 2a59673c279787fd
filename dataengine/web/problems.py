"""How the API answers an error: JSON ``{"detail": ...}`` and never a stack trace.

A 422 names each bad field and quotes at most a short prefix of the value (a 10 MB name is not sent
back, a list is described by its length), and lists at most ``MAX_PROBLEMS_SHOWN`` problems: the
answer to any body is a few KiB.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from dataengine.infra.errors import DatabaseUnavailable, IdempotencyKeyReused, InvalidRunId, RunNotFound, SpecInvalid

log = logging.getLogger("dataengine.api")

#: Problems a 422 lists; the rest are counted.
MAX_PROBLEMS_SHOWN = 20
#: Characters of a bad value, or of a message, a 422 quotes at most.
QUOTED_CHARS, MESSAGE_CHARS = 40, 500


def shorten(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and a count of the rest."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def quoted(value: Any) -> Any:
    """A bad value as a 422 quotes it: a short prefix of text, a number as it is, a container by its size."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return shorten(value, QUOTED_CHARS)
    if isinstance(value, dict | list | tuple):
        return f"({type(value).__name__} of {len(value):,} items)"
    return f"({type(value).__name__})"


def _context(ctx: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, bool | int | float) else shorten(str(v), MESSAGE_CHARS) for k, v in ctx.items()}


def _problem_of(error: dict[str, Any]) -> dict[str, Any]:
    """One of pydantic's errors as the API shows it; a body that is not JSON says why in ``msg``."""
    ctx = error.get("ctx") or {}
    msg = str(ctx["error"]) if error.get("type") == "json_invalid" and "error" in ctx else error.get("msg", "")
    shown = {"loc": [shorten(str(p), QUOTED_CHARS) if isinstance(p, str) else p for p in error.get("loc", ())],
             "msg": shorten(msg, MESSAGE_CHARS), "type": error.get("type", "value_error")}
    if "input" in error and error.get("type") != "json_invalid":
        shown["input"] = quoted(error["input"])
    if ctx and error.get("type") != "json_invalid":
        shown["ctx"] = _context(ctx)
    return shown


def problem(status: int, detail: Any) -> JSONResponse:
    """An error answer."""
    return JSONResponse({"detail": detail}, status_code=status)


def unprocessable_list(errors: list[dict[str, Any]]) -> JSONResponse:
    """A 422 listing the first ``MAX_PROBLEMS_SHOWN`` problems and counting the rest."""
    shown = [_problem_of(e) for e in errors[:MAX_PROBLEMS_SHOWN]]
    if len(errors) > MAX_PROBLEMS_SHOWN:
        more = len(errors) - MAX_PROBLEMS_SHOWN
        shown.append({"loc": [], "msg": f"and {more:,} more problems", "type": "more_errors"})
    return problem(422, shown)


def handlers() -> dict[Any, Callable[[Request, Any], Awaitable[JSONResponse]]]:
    """The API's exception handlers, by exception type."""

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return problem(404, str(exc))

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        return problem(422, [{"loc": ["body"], "msg": shorten(str(exc), 4 * MESSAGE_CHARS), "type": "value_error"}])

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return problem(409, str(exc))

    async def validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
        return unprocessable_list(list(exc.errors()))

    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        return problem(503, "the database is unavailable; try again shortly")

    async def broker_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("broker unavailable: %s", type(exc).__name__)
        return problem(503, "the broker (Redis) is unavailable; try again shortly")

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return await database_down(request, exc)
        log.exception("unexpected error on %s %s", request.method, request.scope.get("route", request.url).path)
        return problem(500, "internal error (logged by the API)")

    return {
        RequestValidationError: validation_failed,
        RunNotFound: not_found,
        InvalidRunId: not_found,
        SpecInvalid: invalid,
        IdempotencyKeyReused: conflict,
        OperationalError: database_down,
        InterfaceError: database_down,
        DatabaseUnavailable: database_down,
        RedisError: broker_down,
        BrokerError: broker_down,
        Exception: unexpected,
    }
