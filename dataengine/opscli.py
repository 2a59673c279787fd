"""The operator's commands: ``dataengine runs`` (failed runs and why), ``dataengine events RUN_ID``
(what happened to a run) and ``dataengine retry`` (send failed runs back to work from their checkpoint)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

import typer

from dataengine.cliout import console, fail
from dataengine.errors import DataEngineError
from models.base import RunStatus


def _jobs(kind: str | None) -> list[Any] | None:
    from dataengine.jobs import get_job, load_jobs

    load_jobs()
    if kind is None:
        return None
    try:
        return [get_job(kind)]
    except KeyError as exc:
        raise fail(exc.args[0]) from None


def _since(value: str | None) -> timedelta | None:
    from dataengine.operations import parse_since

    try:
        return None if value is None else parse_since(value)
    except ValueError as exc:
        raise fail(f"--since: {exc}") from None


STATUSES = ", ".join(s.value for s in RunStatus)


def runs(
    status: Annotated[str | None, typer.Option(help=f"Only runs of this status: {STATUSES}")] = None,
    kind: Annotated[str | None, typer.Option(help="Only runs of this job: propertyaudit, reviewflow, knowledge")] = None,
    since: Annotated[str | None, typer.Option(help="Only runs that ended (or began) within this long: 1d, 12h, 30m")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, newest first")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON")] = False,
) -> None:
    """List runs with the step where each stopped and why it failed (--status failed: the failed runs).

    dataengine runs --status failed --since 1d lists the runs that failed in the last day, newest first.
    """
    from dataengine.operations import list_runs

    if status is not None and status not in {s.value for s in RunStatus}:
        raise fail(f"--status must be one of {STATUSES}, not {status!r}")
    found = list_runs(status=status, kinds=_jobs(kind), since=_since(since), limit=limit)
    if as_json:
        print(json.dumps([{"kind": r.job.key, "stopped_at": r.stopped_at, **r.row} for r in found], default=str,
                         indent=2))
        return
    what = f"{status} runs" if status else "runs"
    console.print(f"[bold]{len(found)} {what}[/bold]" + (f" within {since}" if since else "") + ", newest first",
                  highlight=False)
    for r in found:
        row = r.row
        state = row["status"] + (" (stalled)" if row["stalled_at"] and row["status"] == "running" else "")
        console.print(f"{row['at']:%Y-%m-%d %H:%M}  {r.job.key:<13} {row['id']}  [bold]{state}[/bold] at "
                      f"{r.stopped_at}  ${float(row['cost_usd']):.4f}", highlight=False, soft_wrap=True)
        if row["error_message"]:
            console.print(f"    {row['error_message']}", highlight=False, markup=False, soft_wrap=True)


def events(
    run_id: Annotated[str, typer.Argument(help="A run of any job")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the events as JSON")] = False,
) -> None:
    """A run's history: claims, failed steps, hand-backs, recoveries, and how it ended.

    Oldest first: submitted, claimed or resumed (by which worker, with which fencing token, at which
    step), steps failed and retried, handed back, lease lost, recovered by a sweeper, stalled, retried,
    completed, failed or cancelled.
    """
    _jobs(None)
    from dataengine.inspect import describe
    from dataengine.operations import events_of

    try:
        job, row, found = events_of(run_id)
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps({"run_id": str(row["id"]), "kind": job.key, "events": found}, default=str, indent=2))
        return
    console.print(f"[bold]{job.name} run {row['id']}[/bold]: {len(found)} events, oldest first", highlight=False)
    for e in found:
        step = "" if e["step_index"] is None else f" at {job.step_noun} {e['step_index'] + 1}/{row['total_steps']}"
        by = f" by {e['worker']}" if e["worker"] else ""
        token = "" if e["fencing_token"] is None else f" (token {e['fencing_token']})"
        console.print(f"{e['at']:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f"  [bold]{e['event']}[/bold]{step}{by}{token}",
                      highlight=False, soft_wrap=True)
        if e["detail"]:
            console.print(f"    {e['detail']}", highlight=False, markup=False, soft_wrap=True)
    console.print(describe(job, row), highlight=False)


def retry(
    run_id: Annotated[str | None, typer.Argument(help="A failed or cancelled run")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Every failed run (with --since, --kind)")] = False,
    since: Annotated[str | None, typer.Option(help="With --all-failed: those that failed within this long")] = None,
    kind: Annotated[str | None, typer.Option(help="With --all-failed: those of this job")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
) -> None:
    """Send failed or cancelled runs back to work, each from its checkpoint.

    Recorded steps are not asked again. dataengine retry --all-failed --since 1d retries every run
    that failed in the last day, after a confirmation (--yes skips it).
    """
    from dataengine.celery_app import enqueue
    from dataengine.inspect import find_run
    from dataengine.operations import list_runs
    from dataengine.operations import retry as send_back

    if (run_id is None) == (not all_failed):
        raise fail("name one run (dataengine retry RUN_ID) or ask for --all-failed, not both")
    jobs = _jobs(kind)
    if run_id is not None:
        if since or kind:
            raise fail("--since and --kind go with --all-failed")
        try:
            job, row = find_run(run_id)
            kept = send_back(job, row["id"], enqueue)
        except DataEngineError as exc:
            raise fail(str(exc)) from None
        if kept is not None:
            raise fail(f"run {row['id']} is {kept}; only failed or cancelled runs can be retried")
        console.print(f"run {row['id']} queued again; it resumes at {job.step_noun} {row['current_query_index'] + 1}")
        return
    failed = list_runs(status=RunStatus.failed.value, kinds=jobs, since=_since(since), limit=100_000)
    if not failed:
        console.print("no failed runs" + (f" within {since}" if since else ""))
        return
    if not yes and not typer.confirm(f"Retry {len(failed)} failed run(s)?"):
        raise typer.Exit(code=1)
    sent = sum(send_back(r.job, r.row["id"], enqueue) is None for r in failed)
    console.print(f"{sent} of {len(failed)} failed run(s) queued again, each from its checkpoint")


def register(cli: typer.Typer) -> None:
    """Add the commands to the ``dataengine`` command line."""
    for command in (runs, events, retry):
        cli.command()(command)
