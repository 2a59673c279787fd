"""The HTTP API: ``dataengine api`` serves ``create_app()`` under uvicorn.

Web apps on serverless platforms create a run (or its row), call with an API key and poll. Every
error is JSON ``{"detail": ...}``: 401, 404, 409, 413, 422 naming each bad field, 503 when the
database or the broker is away, and never a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dataengine.errors import (
    DatabaseUnavailable,
    DataEngineError,
    IdempotencyKeyReused,
    InvalidRunId,
    RunNotFound,
    SpecInvalid,
)
from dataengine.settings import get_settings
from dataengine.web.health import Health, check_health, package_version

log = logging.getLogger("dataengine.api")


class NoKeyConfigured(DataEngineError):
    """The API refuses to start in production with no API key: set DATA_ENGINE_API_KEY, or create one
    with `dataengine api-keys create NAME`."""


class BodyLimit:
    """Refuse a body over ``limit`` bytes with 413: from its declared length before reading it, or
    as soon as a body sent without one goes past the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen, refused = 0, False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # answer now; the app sees the client gone and its answer goes nowhere
                refused = True
                await self._refuse(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the body is larger than {self.limit} bytes (DATAENGINE_API_MAX_BODY_BYTES)"
        await JSONResponse({"detail": detail}, status_code=413, headers={"Connection": "close"})(scope, receive, send)


def _problem(status: int, detail: Any) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _handlers() -> dict[Any, Callable[[Request, Any], Awaitable[JSONResponse]]]:
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return _problem(404, str(exc))

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        return _problem(422, [{"loc": ["body"], "msg": str(exc), "type": "value_error"}])

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return _problem(409, str(exc))

    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        return _problem(503, "the database is unavailable; try again shortly")

    async def broker_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("broker unavailable: %s", type(exc).__name__)
        return _problem(503, "the broker (Redis) is unavailable; try again shortly")

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return await database_down(request, exc)
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _problem(500, "internal error (logged by the API)")

    return {
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


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    from dataengine.web.keys import keys_configured

    if get_settings().environment == "production" and not keys_configured():
        raise NoKeyConfigured()
    yield


def create_app() -> FastAPI:
    """The API with a start route for every registered job."""
    from dataengine.jobs import load_jobs
    from dataengine.sentry import init_sentry
    from dataengine.web import pages, runs_api
    from dataengine.web.costs_api import add_costs
    from dataengine.web.metrics_route import add_metrics

    load_jobs()
    init_sentry("api")
    app = FastAPI(
        title="dataengine", version=package_version(), lifespan=_lifespan,
        description="Start long LLM jobs, poll their progress, cancel and retry them. Every route but "
                    "/health needs `Authorization: Bearer KEY` or `X-API-Key: KEY`.",
    )
    app.include_router(runs_api.job_routes())
    app.include_router(runs_api.router)
    app.include_router(add_costs())
    pages.add_pages(app)
    add_metrics(app)

    @app.get("/health", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
    def health() -> JSONResponse:
        """Whether the database and Redis answer (and how fast) and what is configured; no secrets."""
        from dataengine.web.keys import keys_configured

        try:
            configured = keys_configured()
        except Exception:  # noqa: BLE001 (the database is down: its own entry says so)
            configured = get_settings().api_key is not None
        found = check_health(api_key_configured=configured)
        return JSONResponse(found.model_dump(mode="json"), status_code=503 if found.status == "unhealthy" else 200)

    for exc_type, handler in _handlers().items():
        app.add_exception_handler(exc_type, handler)
    app.add_middleware(BodyLimit, limit=get_settings().api_max_body_bytes)
    return app
