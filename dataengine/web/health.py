"""``GET /health``: whether the database and Redis answer (and how fast), and what is configured.

It names no host, URL or secret: only whether each dependency is configured and reachable.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import redis
from pydantic import BaseModel
from sqlalchemy import text

from dataengine.infra.db import get_engine
from dataengine.infra.settings import PLACEHOLDER_API_KEY, get_settings

#: How long a dependency may take to answer before it counts as unreachable.
CHECK_TIMEOUT_S = 2.0


class ServerHealth(BaseModel):
    configured: bool
    reachable: bool
    latency_ms: float | None


class OpenAIHealth(BaseModel):
    configured: bool


class AuthHealth(BaseModel):
    api_key_configured: bool


class Dependencies(BaseModel):
    database: ServerHealth
    redis: ServerHealth
    openai: OpenAIHealth
    auth: AuthHealth


class Health(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    version: str
    dependencies: Dependencies


def package_version() -> str:
    try:
        return version("dataengine")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _timed(check: Any) -> float:
    started = time.perf_counter()
    check()
    return round((time.perf_counter() - started) * 1000, 2)


def _probe(checks: dict[str, Any]) -> dict[str, ServerHealth]:
    """Run the checks at once; one that fails or takes longer than ``CHECK_TIMEOUT_S`` is unreachable
    (a server that drops packets would otherwise hold the answer for as long as TCP waits)."""
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="health")
    futures = {name: pool.submit(_timed, check) for name, check in checks.items()}
    pool.shutdown(wait=False)
    found = {}
    for name, future in futures.items():
        try:
            latency = future.result(timeout=CHECK_TIMEOUT_S)
        except Exception:  # noqa: BLE001 (any failure means: not reachable)
            found[name] = ServerHealth(configured=True, reachable=False, latency_ms=None)
        else:
            found[name] = ServerHealth(configured=True, reachable=True, latency_ms=latency)
    return found


def _ping_database() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


def _ping_redis() -> None:
    with redis.Redis.from_url(get_settings().redis_url, socket_timeout=CHECK_TIMEOUT_S,
                              socket_connect_timeout=CHECK_TIMEOUT_S) as client:
        client.ping()


def check_health(*, api_key_configured: bool) -> Health:
    """The health of the engine as the API reports it."""
    s = get_settings()
    probed = _probe({"database": _ping_database, "redis": _ping_redis})
    database, broker = probed["database"], probed["redis"]
    openai_configured = s.openai_api_key.get_secret_value() != PLACEHOLDER_API_KEY or s.openai_base_url is not None
    if not (database.reachable and broker.reachable):
        status: Literal["healthy", "degraded", "unhealthy"] = "unhealthy"
    elif not (openai_configured and api_key_configured):
        status = "degraded"
    else:
        status = "healthy"
    return Health(
        status=status,
        version=package_version(),
        dependencies=Dependencies(
            database=database, redis=broker, openai=OpenAIHealth(configured=openai_configured),
            auth=AuthHealth(api_key_configured=api_key_configured),
        ),
    )
