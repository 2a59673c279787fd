"""What an operator asks of the runs: which failed and why, what happened to one, send them back.

Used by the ``dataengine runs``, ``events``, ``retry`` and ``costs`` commands and by the HTTP API.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, func, literal, select

from dataengine.engine.events import history
from dataengine.engine.jobs import Job, all_jobs
from dataengine.engine.run_views import find_run
from dataengine.engine.runs import retry_run
from dataengine.infra.db import session_scope
from dataengine.infra.tiers import Sender, queue_of
from dataengine.llm.ledger import CostLine, Grouping, summary, total, unpriced_models
from models.base import FINAL_STATUSES

#: ``--since`` units: 90s, 30m, 12h, 1d, 2w.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.ASCII)
#: The longest ``--since`` window: longer ones reach before any ledger row, and past what dates can count.
MAX_SINCE = timedelta(days=36_500)

#: Columns of a listed run.
LISTED = ("id", "status", "current_query_index", "completed_steps", "total_steps", "cost_usd", "created_at",
          "finished_at", "error_message", "stalled_at", "lease_owner")


def parse_since(value: str) -> timedelta:
    """``"1d"``, ``"12h"``, ``"30m"``, ``"90s"``, ``"2w"`` as a timedelta; ``ValueError`` saying the form otherwise."""
    match = _SINCE.match(value or "")
    if match is None:
        raise ValueError(f"{value[:40]!r} is not a duration: write a number and a unit, as 90s, 30m, 12h, 1d or 2w")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_SINCE.total_seconds():
        raise ValueError(f"{value[:40]!r} is longer than the longest window, {MAX_SINCE.days:,}d")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class ListedRun:
    """A run in a listing, with its job."""

    job: Job
    row: dict[str, Any]

    @property
    def stopped_at(self) -> str:
        """Where the run is or stopped: ``query 7/100``."""
        r = self.row
        return f"{self.job.step_noun} {min(r['current_query_index'] + 1, max(r['total_steps'], 1))}/{r['total_steps']}"


def listing(job: Job, *, status: str | None, since: timedelta | None, limit: int) -> Select:
    """The newest ``limit`` runs of ``job`` for :func:`list_runs`. A run that ended is found by its end
    (the run tables' index on status and ``finished_at``), however many runs ended before it."""
    t = job.runs
    when = t.c.finished_at if status in FINAL_STATUSES else func.coalesce(t.c.finished_at, t.c.created_at)
    query = select(*(t.c[c] for c in LISTED), when.label("at")).order_by(when.desc()).limit(limit)
    if status is not None:
        query = query.where(t.c.status == status, when.isnot(None))
    if since is not None:
        query = query.where(when >= func.now() - literal(since))
    return query


def list_runs(*, status: str | None, kinds: list[Job] | None = None, since: timedelta | None = None,
              limit: int = 50) -> list[ListedRun]:
    """Runs of ``status`` (any when None) of ``kinds`` (every job when None), finished (or, if not
    finished, created) within ``since``, newest first."""
    found: list[ListedRun] = []
    with session_scope() as session:
        for job in kinds or all_jobs():
            query = listing(job, status=status, since=since, limit=limit)
            found += [ListedRun(job, dict(r)) for r in session.execute(query).mappings()]
    found.sort(key=lambda r: r.row["at"], reverse=True)
    return found[:limit]


def events_of(run_id: object) -> tuple[Job, dict[str, Any], list[dict[str, Any]]]:
    """A run's job, row and history, oldest event first; ``RunNotFound``/``InvalidRunId`` otherwise."""
    job, row = find_run(run_id)
    with session_scope() as session:
        return job, row, history(session, row["id"])


def retry(job: Job, run_id: uuid.UUID, send: Sender, *, max_cost_usd: Decimal | None = None) -> str | None:
    """Send a failed or cancelled run back to work from its checkpoint (with a new budget, if given), to its
    tier's queue. Returns None when it was sent, else the status that kept it (only failed and cancelled
    runs are retried)."""
    with session_scope() as session:
        kept = retry_run(session=session, job=job, run_id=run_id, max_cost_usd=max_cost_usd)
        tier = session.scalar(select(job.runs.c.priority).where(job.runs.c.id == run_id)) if kept is None else None
    if kept is None:
        send(job.task_name, {"run_id": str(run_id)}, queue_of(tier))
    return kept


@dataclass(frozen=True)
class CostReport:
    """The cost ledger grouped one way, its total, and the models whose calls it could not price."""

    lines: list[CostLine]
    total: CostLine
    unpriced_models: list[str]


def cost_report(*, by: Grouping, since: timedelta | None = None, workspace_id: str | None = None,
                limit: int | None = None, offset: int = 0) -> CostReport:
    """What LLM calls cost, grouped ``by`` day, kind, model, property or workspace, within ``since``: the
    ``limit`` lines after ``offset`` (all when None), and the total of every line."""
    start = None if since is None else datetime.now(UTC) - since
    lines = summary(by=by, since=start, workspace_id=workspace_id, limit=limit, offset=offset)
    whole = total(since=start, workspace_id=workspace_id)
    return CostReport(lines, whole, unpriced_models(since=start) if whole.unpriced_calls else [])
