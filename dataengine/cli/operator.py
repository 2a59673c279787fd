"""The operator's commands: ``dataengine runs`` (failed runs and why), ``dataengine events RUN_ID``
(what happened to a run), ``dataengine retry`` (send failed runs back to work from their checkpoint)
and ``dataengine costs`` (what LLM calls cost)."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.table import Table

from dataengine.cli.output import console, fail
from dataengine.infra.errors import DataEngineError
from dataengine.llm.budgets import dollars
from dataengine.llm.ledger import GROUPINGS
from models.base import RunStatus


def _jobs(kind: str | None) -> list[Any] | None:
    from dataengine.engine.jobs import get_job, load_jobs

    load_jobs()
    if kind is None:
        return None
    try:
        return [get_job(kind)]
    except KeyError as exc:
        raise fail(exc.args[0]) from None


def _since(value: str | None) -> timedelta | None:
    from dataengine.engine.operator_views import parse_since

    try:
        return None if value is None else parse_since(value)
    except ValueError as exc:
        raise fail(f"--since: {exc}") from None


STATUSES = ", ".join(s.value for s in RunStatus)


def runs(
    status: Annotated[str | None, typer.Option(help=f"Only runs of this status: {STATUSES}")] = None,
    kind: Annotated[str | None, typer.Option(help="Only runs of this job (its key)")] = None,
    since: Annotated[str | None, typer.Option(help="Only runs that ended (or began) within this long: 1d, 12h, 30m")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, newest first")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON")] = False,
) -> None:
    """List runs with the step where each stopped and why it failed (--status failed: the failed runs).

    dataengine runs --status failed --since 1d lists the runs that failed in the last day, newest first.
    """
    from dataengine.engine.operator_views import list_runs

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
    from dataengine.engine.operator_views import events_of
    from dataengine.engine.run_views import describe

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
    max_cost: Annotated[float | None, typer.Option("--max-cost", min=0.000001,
                                                   help="A new budget in USD for the run (max_cost_usd)")] = None,
) -> None:
    """Send failed or cancelled runs back to work, each from its checkpoint.

    Recorded steps are not asked again. dataengine retry --all-failed --since 1d retries every run
    that failed in the last day, after a confirmation (--yes skips it). A run stopped by its budget
    goes on with a larger one: dataengine retry RUN_ID --max-cost 5.
    """
    from dataengine.engine.operator_views import list_runs
    from dataengine.engine.operator_views import retry as send_back
    from dataengine.engine.run_views import find_run
    from dataengine.worker.app import enqueue

    if (run_id is None) == (not all_failed):
        raise fail("name one run (dataengine retry RUN_ID) or ask for --all-failed, not both")
    jobs = _jobs(kind)
    if run_id is not None:
        if since or kind:
            raise fail("--since and --kind go with --all-failed")
        try:
            job, row = find_run(run_id)
            budget = None if max_cost is None else Decimal(str(max_cost)).quantize(Decimal("0.000001"))
            kept = send_back(job, row["id"], enqueue, max_cost_usd=budget)
        except DataEngineError as exc:
            raise fail(str(exc)) from None
        if kept is not None:
            raise fail(f"run {row['id']} is {kept}; only failed or cancelled runs can be retried")
        spent = f"; spent ${dollars(row['cost_usd'])} so far, budget ${dollars(budget)}" if budget is not None else ""
        console.print(f"run {row['id']} queued again; it resumes at {job.step_noun} {row['current_query_index'] + 1}"
                      + spent, highlight=False)
        return
    if max_cost is not None:
        raise fail("--max-cost goes with one run: dataengine retry RUN_ID --max-cost 5")
    failed = list_runs(status=RunStatus.failed.value, kinds=jobs, since=_since(since), limit=100_000)
    if not failed:
        console.print("no failed runs" + (f" within {since}" if since else ""))
        return
    if not yes and not typer.confirm(f"Retry {len(failed)} failed run(s)?"):
        raise typer.Exit(code=1)
    sent = sum(send_back(r.job, r.row["id"], enqueue) is None for r in failed)
    console.print(f"{sent} of {len(failed)} failed run(s) queued again, each from its checkpoint")


def costs(
    by: Annotated[str, typer.Option(help=f"Group by {', '.join(GROUPINGS)}")] = "day",
    since: Annotated[str | None, typer.Option(help="Only the last 12h, 7d, 2w... (whole hours)")] = None,
    workspace: Annotated[str | None, typer.Option(help="Only this workspace's calls")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Lines to show (the total counts them all)")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Lines to skip first")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """What LLM calls cost: calls, tokens (cached input apart) and USD, by day, kind, model, property or workspace.

    From the cost ledger, which counts every call paid for, including those of steps a crash cut short.
    Calls of a model without a price (DATAENGINE_MODEL_PRICES_PER_MTOK) count $0 and are flagged.
    """
    from dataengine.engine.operator_views import cost_report

    if by not in GROUPINGS:
        raise fail(f"--by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    _jobs(None)
    report = cost_report(by=by, since=_since(since), workspace_id=workspace,  # type: ignore[arg-type]
                         limit=limit + 1, offset=offset)
    more, lines = len(report.lines) > limit, report.lines[:limit]
    if as_json:
        print(json.dumps({"by": by, "since": since, "lines": [line.as_dict() for line in lines], "offset": offset,
                          "next_offset": offset + limit if more else None, "total": report.total.as_dict(),
                          "unpriced_models": report.unpriced_models}, indent=2))
        return
    table = Table(title=f"LLM costs by {by}" + (f", last {since}" if since else ""), title_justify="left")
    for name in (by, "calls", "prompt tokens", "cached", "completion tokens", "USD"):
        table.add_column(name, justify="left" if name == by else "right")
    for line in [*lines, report.total]:
        table.add_row(line.key or "(none)", f"{line.calls:,}", f"{line.prompt_tokens:,}", f"{line.cached_tokens:,}",
                      f"{line.completion_tokens:,}", f"${dollars(line.cost_usd)}",
                      end_section=line is lines[-1] if lines else False)
    console.print(table)
    if more:
        console.print(f"lines {offset + 1:,} to {offset + limit:,}; the total counts every line: --offset "
                      f"{offset + limit} for the next ones", style="dim", highlight=False)
    if report.unpriced_models:
        console.print(f"[yellow]{report.total.unpriced_calls:,} call(s) of {', '.join(report.unpriced_models)} had no "
                      "price and count $0 above: add them to DATAENGINE_MODEL_PRICES_PER_MTOK[/yellow]", highlight=False)


def register(cli: typer.Typer) -> None:
    """Add the commands to the ``dataengine`` command line."""
    for command in (runs, events, retry, costs):
        cli.command()(command)
