"""``GET /metrics``: the API process's own metrics and the fleet as the database and broker see it now.

No API key is asked (Prometheus scrapes without one, as ``/health``): the page holds counts by job,
status and model, never a run's content, a host or a secret. Put the API behind a network rule if
even those are private.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import cache
from typing import Any

import redis
from fastapi import FastAPI, Response
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dataengine.engine.jobs import all_jobs
from dataengine.infra.db import session_scope
from dataengine.infra.metrics import metrics
from dataengine.infra.settings import get_settings
from models.base import ACTIVE_STATUSES

log = logging.getLogger(__name__)


#: The families :class:`FleetCollector` serves.
FLEET_FAMILIES = ("dataengine_runs", "dataengine_runs_stalled_now", "dataengine_queue_depth", "dataengine_fleet_up")


class FleetCollector:
    """At scrape time: runs queued and running (and how many of those are stalled) by kind, from the
    database, and the messages waiting in the broker's queue. A server that does not answer leaves its
    families out (and ``dataengine_fleet_up`` says which)."""

    def __init__(self, queue: str) -> None:
        self.queue = queue

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only, never at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("dataengine_fleet_up", "Whether the database and the broker answered this scrape",
                               labels=["server"])
        runs = GaugeMetricFamily("dataengine_runs", "Active runs by kind and status now", labels=["kind", "status"])
        stalled = GaugeMetricFamily("dataengine_runs_stalled_now", "Running runs flagged stalled now",
                                    labels=["kind"])
        try:
            counts = self._runs()
        except Exception as exc:
            log.warning("metrics: the database did not answer (%s)", type(exc).__name__)
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            for (kind, status), (n, flagged) in counts.items():
                runs.add_metric([kind, status], n)
                if status == "running":
                    stalled.add_metric([kind], flagged)
            yield runs
            yield stalled
        depth = GaugeMetricFamily("dataengine_queue_depth", "Messages waiting in the broker's queue",
                                  labels=["queue"])
        try:
            with redis.Redis.from_url(get_settings().redis_url, socket_timeout=2, socket_connect_timeout=2) as r:
                depth.add_metric([self.queue], r.llen(self.queue))
        except redis.RedisError as exc:
            log.warning("metrics: the broker did not answer (%s)", type(exc).__name__)
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            yield depth
        yield up

    @staticmethod
    def _runs() -> dict[tuple[str, str], tuple[int, int]]:
        found: dict[tuple[str, str], tuple[int, int]] = {}
        with session_scope() as session:
            for job in all_jobs():
                t = job.runs
                for status in ACTIVE_STATUSES:
                    found[(job.key, status)] = (0, 0)
                query = (select(t.c.status, func.count(), func.count(t.c.stalled_at))
                         .where(t.c.status.in_(ACTIVE_STATUSES)).group_by(t.c.status))
                for status, n, flagged in session.execute(query):
                    found[(job.key, status)] = (n, flagged)
        return found


#: HTTP methods counted under their own name; any other is counted as ``other``: a label never takes
#: its value from a request as it was sent (a client could make a series per request).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@cache
def _requests() -> Any:
    """One counter per process, however many apps the tests create."""
    from prometheus_client import Counter

    return Counter("dataengine_api_requests", "HTTP requests the API answered", ["method", "route", "status"])


class RequestCounter:
    """Count every answer by method (known ones, else ``other``), route template (``unmatched`` when no
    route took the request) and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.requests = app, _requests()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes every handler is answered 500 by Starlette

        async def noted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            route = getattr(scope.get("route"), "path", "unmatched")
            self.requests.labels(method, route, str(status)).inc()


def add_request_counter(app: FastAPI) -> None:
    """Count the API's requests (``dataengine_api_requests_total``), outermost, so that answers the
    middleware gives (401 before the body, 413) are counted too."""
    app.add_middleware(RequestCounter)


def add_metrics(app: FastAPI) -> None:
    """Serve ``/metrics``: this process's metrics and the fleet's."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    from dataengine.worker.app import app as celery

    metrics()  # the engine's own families exist from the first scrape on
    fleet = CollectorRegistry()
    fleet.register(FleetCollector(celery.conf.task_default_queue))

    @app.get("/metrics", include_in_schema=False)
    def serve_metrics() -> Response:
        """The Prometheus exposition of this process's metrics and the fleet's."""
        return Response(generate_latest(REGISTRY) + generate_latest(fleet), media_type=CONTENT_TYPE_LATEST)
