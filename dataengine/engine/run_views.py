"""Read-only views of runs for the CLI and the demo: find a run by id, render its progress."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from sqlalchemy import select

from dataengine.engine.jobs import Job, all_jobs
from dataengine.engine.runs import parse_run_id
from dataengine.infra.db import session_scope
from dataengine.infra.errors import RunNotFound
from models.base import FINAL_STATUSES

#: Columns shown by ``dataengine status``, in order.
STATUS_COLUMNS = (
    "status", "progress_pct", "current_query_index", "completed_steps", "total_steps", "eta_s",
    "prompt_tokens", "completion_tokens", "cost_usd", "lease_owner", "fencing_token",
    "created_at", "started_at", "last_updated_at", "finished_at", "stalled_at", "error_message", "summary",
)


def find_run(run_id: object) -> tuple[Job, dict[str, Any]]:
    """The job and the row of a run, whichever job's table it is in."""
    rid: uuid.UUID = parse_run_id(run_id)
    with session_scope() as session:
        for job in all_jobs():
            row = session.execute(select(job.runs).where(job.runs.c.id == rid)).mappings().one_or_none()
            if row is not None:
                return job, dict(row)
    raise RunNotFound(job="known", run_id=rid)


#: Columns of the latest-runs listing, after the job's name.
LISTED_COLUMNS = ("id", "status", "progress_pct", "completed_steps", "total_steps", "cost_usd", "created_at",
                  "finished_at", "error_message")


def latest_runs(limit: int = 20) -> list[tuple[Job, dict[str, Any]]]:
    """The newest ``limit`` runs of every job, newest first."""
    rows: list[tuple[Job, dict[str, Any]]] = []
    with session_scope() as session:
        for job in all_jobs():
            t = job.runs
            found = session.execute(
                select(*(t.c[c] for c in LISTED_COLUMNS)).order_by(t.c.created_at.desc()).limit(limit)
            ).mappings()
            rows += [(job, dict(r)) for r in found]
    return sorted(rows, key=lambda jr: jr[1]["created_at"], reverse=True)[:limit]


def describe(job: Job, row: dict[str, Any]) -> str:
    """One line: where the run is, what it costs, how long it still needs."""
    eta = f", ETA {row['eta_s']}s" if row["eta_s"] and row["status"] == "running" else ""
    stalled = " (stalled)" if row.get("stalled_at") and row["status"] == "running" else ""
    return (
        f"{job.name} {row['status']}{stalled}: {row['completed_steps']}/{row['total_steps']} {job.step_plural} "
        f"({float(row['progress_pct']):.0f}%){eta}, {row['prompt_tokens'] + row['completion_tokens']} tokens, "
        f"${float(row['cost_usd']):.4f}" + (f" of ${float(row['max_cost_usd']):.2f}" if row.get("max_cost_usd") else "")
    )


def watch(
    run_id: object,
    *,
    console: Console | None = None,
    poll_s: float = 0.25,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Show a live progress bar (steps, ETA, tokens, cost) until the run is final; returns the last row."""
    job, row = find_run(run_id)
    console = console or Console()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} " + job.step_plural),
        TextColumn("{task.fields[eta]}"),
        TextColumn("[dim]{task.fields[usage]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(job.name, total=row["total_steps"], eta="", usage="")
        while True:
            eta = f"ETA {row['eta_s']}s" if row["eta_s"] and row["status"] == "running" else row["status"]
            usage = f"{row['prompt_tokens'] + row['completion_tokens']} tok ${float(row['cost_usd']):.4f}"
            progress.update(bar, completed=row["completed_steps"], eta=eta, usage=usage)
            if on_update is not None:
                on_update(row)
            if row["status"] in FINAL_STATUSES:
                return row
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {row['status']} after {timeout_s}s")
            time.sleep(poll_s)
            _, row = find_run(run_id)
