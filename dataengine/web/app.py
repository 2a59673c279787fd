"""The HTTP API: ``dataengine api`` serves ``create_app()`` under uvicorn.

Web apps on serverless platforms create a run (or its row), call with an API key and poll. Every
error is JSON ``{"detail": ...}``: 401, 404, 409, 413, 422 naming each bad field, 503 when the
database or the broker is away, and never a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from dataengine.infra.errors import DataEngineError
from dataengine.infra.settings import MAKE_SESSION_SECRET, get_settings
from dataengine.web.health import Health, check_health, package_version
from dataengine.web.middleware import BodyLimit, EveryAnswerHeaders, KeyGate
from dataengine.web.problems import handlers

log = logging.getLogger("dataengine.api")


class NoKeyConfigured(DataEngineError):
    """The API refuses to start in production with no API key: set DATA_ENGINE_API_KEY, or create one
    with `dataengine api-keys create NAME`."""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Refuse to start in production without a key; say what is missing otherwise (logged once the
    server has set up its logging, so that it is a JSON line like the rest when logs are JSON)."""
    from dataengine.web.keys import keys_configured

    s = get_settings()
    if not keys_configured():
        if s.environment == "production":
            raise NoKeyConfigured()
        log.warning("no API key is configured: every request under /v1 gets 401 (set DATA_ENGINE_API_KEY, "
                    "or run: dataengine api-keys create NAME)")
    if s.session_secret is None:
        log.warning("DATAENGINE_SESSION_SECRET is not set: the runs page's login answers 503 (set it, the same "
                    "in every API process: %s)", MAKE_SESSION_SECRET)
    yield


def create_app() -> FastAPI:
    """The API with a start route for every registered job."""
    from dataengine.engine.jobs import load_jobs
    from dataengine.infra.sentry import init_sentry
    from dataengine.web import pages, runs_api
    from dataengine.web.costs_api import add_costs
    from dataengine.web.metrics_route import add_metrics, add_request_counter

    load_jobs()
    init_sentry("api")
    # FastAPIOffline: the /docs page's script and style come from this package, never from a CDN.
    app = FastAPIOffline(
        title="dataengine", version=package_version(), lifespan=_lifespan, redoc_url=None,
        static_url="/docs/static",
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

    for exc_type, handler in handlers().items():
        app.add_exception_handler(exc_type, handler)
    # The last added runs first: the key before the body's size, the headers on every answer.
    app.add_middleware(BodyLimit, limit=get_settings().api_max_body_bytes)
    app.add_middleware(KeyGate)
    app.add_middleware(EveryAnswerHeaders)
    add_request_counter(app)
    return app
