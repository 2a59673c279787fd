"""The ``dataengine`` command line: migrate, submit, status, watch, cancel, sweep, rejected, fake-llm, demo,
api, api-keys, workspaces, runs, events, retry, costs; and each job's own commands under its key."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dataengine.cli.api import api as api_command
from dataengine.cli.api import keys_cli
from dataengine.cli.operator import register as register_operations
from dataengine.cli.output import console, fail
from dataengine.cli.workspaces import workspaces_cli
from dataengine.infra.errors import DataEngineError

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _jobs() -> list[Any]:
    from dataengine.engine.jobs import load_jobs

    return load_jobs()


@cli.callback()
def _settings_first() -> None:
    """Settings the engine refuses (a placeholder key in production, say) end every command with the reason."""
    from pydantic import ValidationError

    from dataengine.infra.settings import get_settings

    try:
        get_settings()
    except ValidationError as exc:
        raise fail(f"the settings are refused: {exc}") from None


@cli.command()
def migrate() -> None:
    """Create the database if needed and apply every Alembic migration."""
    from dataengine.infra.migrate import migrate as run_migrations

    run_migrations()
    console.print("database is at the latest schema")


@cli.command()
def submit(
    job: Annotated[str, typer.Argument(help="The job's key (dataengine runs --help lists them)")],
    spec_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The run spec as JSON")],
    watch_run: Annotated[bool, typer.Option("--watch", help="Show the progress bar until the run ends")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and estimate only: steps, calls, tokens, "
                                                            "cost; nothing is created")] = False,
    priority: Annotated[str | None, typer.Option("--priority", help="The run's tier: high, normal or low "
                                                                     "(the spec's \"priority\" otherwise; default normal)")] = None,
) -> None:
    """Create a run from a JSON spec and enqueue it; prints the run id (with --dry-run, or ``"dry_run": true``
    in the spec, its estimate instead)."""
    _jobs()
    from dataengine.engine.estimates import Estimate
    from dataengine.engine.jobs import get_job
    from dataengine.engine.submitting import submit_run
    from dataengine.worker.app import enqueue

    try:
        kind = get_job(job)
    except KeyError as exc:
        raise fail(exc.args[0]) from None
    try:
        spec: Any = json.loads(spec_file.read_text())
        if not isinstance(spec, dict):
            raise fail(f"{spec_file} must hold a JSON object")
        if priority is not None:
            spec["priority"] = priority
        submitted = submit_run(job=kind, spec={**spec, "dry_run": True} if dry_run else spec, send=enqueue)
    except json.JSONDecodeError as exc:
        raise fail(f"{spec_file} is not JSON: {exc}") from None
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    if isinstance(submitted, Estimate):
        console.print(submitted.describe(), highlight=False, markup=False, soft_wrap=True)
        return
    run_id = submitted
    print(run_id)
    if watch_run:
        watch(run_id)


@cli.command()
def status(
    run_id: Annotated[str | None, typer.Argument(help="A run of any job; without one, the latest runs")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run row as JSON")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many of the latest runs to list")] = 20,
) -> None:
    """Show a run's row (status, progress, ETA, tokens, cost, error), or list the latest runs of every job."""
    _jobs()
    from dataengine.engine.run_views import STATUS_COLUMNS, describe, find_run

    if run_id is None:
        _list_runs(limit=limit, as_json=as_json)
        return
    try:
        job, row = find_run(run_id)
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps({"id": str(row["id"]), **{c: row[c] for c in STATUS_COLUMNS}}, default=str, indent=2))
        return
    console.print(describe(job, row), highlight=False)
    for column in STATUS_COLUMNS:
        if row[column] is not None:
            console.print(f"  {column:<20} {row[column]}", highlight=False)


def _list_runs(*, limit: int, as_json: bool) -> None:
    from rich.table import Table

    from dataengine.engine.run_views import latest_runs

    runs = latest_runs(limit)
    if as_json:
        print(json.dumps([{"job": job.key, **row} for job, row in runs], default=str, indent=2))
        return
    table = Table(title=f"latest {len(runs)} runs, newest first", highlight=False)
    for name in ("job", "id"):
        table.add_column(name, no_wrap=True)
    for name in ("status", "steps", "cost", "created", "error"):
        table.add_column(name, overflow="ellipsis")
    for job, row in runs:
        table.add_row(
            job.key, str(row["id"]), row["status"], f"{row['completed_steps']}/{row['total_steps']}",
            f"${float(row['cost_usd']):.4f}", f"{row['created_at']:%Y-%m-%d %H:%M}", (row["error_message"] or "")[:80],
        )
    console.print(table)


@cli.command()
def watch(run_id: str) -> None:
    """A live progress bar with ETA until the run ends."""
    _jobs()
    from dataengine.engine.run_views import describe, find_run
    from dataengine.engine.run_views import watch as watch_run

    try:
        row = watch_run(run_id, console=console)
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    console.print(describe(find_run(run_id)[0], row), highlight=False)
    if row["error_message"]:
        console.print(f"[red]{row['error_message']}[/red]", highlight=False)
    raise typer.Exit(code=0 if row["status"] == "completed" else 1)


@cli.command()
def cancel(run_id: str) -> None:
    """Ask a run to stop: within 2 s, the results of its steps in flight dropped (a run no worker holds is
    cancelled at once)."""
    _jobs()
    from dataengine.engine.run_views import find_run
    from dataengine.engine.runs import request_cancel
    from dataengine.infra.db import session_scope

    try:
        job, row = find_run(run_id)
        with session_scope() as session:
            state = request_cancel(session=session, job=job, run_id=row["id"])
    except DataEngineError as exc:
        raise fail(str(exc)) from None
    console.print(f"cancellation requested; run is {state}")


@cli.command()
def sweep() -> None:
    """Re-enqueue runs whose worker died, once (workers and beat do this every second)."""
    _jobs()
    from dataengine.engine.sweeper import sweep as sweep_all
    from dataengine.worker.app import enqueue, still_queued

    requeued = sweep_all(send=enqueue, waiting=still_queued)
    console.print(f"{len(requeued)} run(s) taken back")


@cli.command()
def rejected(
    limit: Annotated[int, typer.Option(min=1, help="How many to show, newest first")] = 20,
    clear: Annotated[bool, typer.Option("--clear", help="Empty the list instead of showing it")] = False,
) -> None:
    """Messages the workers rejected and set aside (malformed, not JSON, unknown task), with the reason."""
    import redis

    from dataengine.infra.redis_keys import REJECTED_KEY
    from dataengine.infra.settings import get_settings
    from dataengine.worker.broker_guards import clear_rejected, rejected_messages

    with redis.Redis.from_url(get_settings().redis_url) as client:
        if clear:
            console.print(f"{clear_rejected(client=client)} rejected message(s) cleared from {REJECTED_KEY}")
            return
        entries = rejected_messages(client=client, limit=limit)
        total = client.llen(REJECTED_KEY)
    for e in entries:
        console.print(f"[bold]{e['at']}[/bold] queue={e['queue']} task={e['task']} id={e['id']}", highlight=False)
        console.print(f"  {e['reason']}", style="red", highlight=False, markup=False)
        console.print(f"  {e['raw'][:300]}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"{len(entries)} of {total} rejected message(s) in {REJECTED_KEY}", highlight=False)


@cli.command("fake-llm")
def fake_llm(
    host: str = "127.0.0.1",
    port: int = 8765,
    latency_ms: Annotated[float, typer.Option(help="Delay before each answer")] = 0.0,
    fail_429_every: Annotated[int, typer.Option(help="Every Nth request gets 429 + Retry-After")] = 0,
    fail_5xx_every: Annotated[int, typer.Option(help="Every Nth request gets a 500")] = 0,
    rpm_limit: Annotated[int, typer.Option(help="Requests per minute it admits, as a provider would (0: no limit)")] = 0,
    tpm_limit: Annotated[int, typer.Option(help="Tokens per minute it admits (0: no limit)")] = 0,
    allow_remote: Annotated[bool, typer.Option(help="Listen on a non-loopback address (containers)")] = False,
) -> None:
    """Serve the OpenAI-compatible stand-in LLM (for tests, the demo and benchmarks)."""
    from dataengine.testing.standin_llm import FakeConfig, serve

    console.print(f"stand-in LLM on http://{host}:{port}/v1 (OPENAI_BASE_URL); answers are canned, not a real model")
    config = FakeConfig(latency_ms=latency_ms, fail_429_every=fail_429_every, fail_5xx_every=fail_5xx_every,
                        rpm_limit=rpm_limit, tpm_limit=tpm_limit)
    serve(host=host, port=port, config=config, allow_remote=allow_remote)


@cli.command()
def demo(
    job: Annotated[str | None, typer.Argument(help="A job with a demo (default: the first job's)")] = None,
    steps: Annotated[int, typer.Option("--steps", "--queries", min=4, max=500,
                                       help="How many steps (queries, reviews) the demo run has")] = 30,
    latency_ms: Annotated[float, typer.Option(help="Stand-in LLM latency per call")] = 300.0,
) -> None:
    """Run a job's demo end to end, SIGKILL its worker half-way, and show it resume."""
    from dataengine.cli.demo import demos, run_demo

    if job is not None and job not in demos():
        raise fail(f"no demo for {job!r}; known: {', '.join(sorted(demos()))}")
    raise typer.Exit(code=run_demo(console=console, job_key=job, steps=steps, latency_ms=latency_ms))


cli.command("api")(api_command)
cli.add_typer(keys_cli, name="api-keys")
cli.add_typer(workspaces_cli, name="workspaces")
register_operations(cli)

_job_commands_added = False


def command_line(argv: list[str] | None = None) -> typer.Typer:
    """The command line, with each job's own commands (``Job.cli``) under its key, unless ``argv``
    names an engine command (those do not wait for every job to be imported)."""
    global _job_commands_added
    ours = {c.name for c in cli.registered_commands} | {g.name for g in cli.registered_groups}
    if _job_commands_added or (argv and argv[0] in ours):
        return cli
    try:
        jobs = _jobs()
    except Exception as exc:  # noqa: BLE001 (a job that cannot be imported: the engine's commands still work)
        console.print(f"[yellow]the jobs' own commands are unavailable: {type(exc).__name__}: {exc}[/yellow]",
                      highlight=False)
        return cli
    for job in jobs:
        if job.cli is not None:
            cli.add_typer(_commands_of(job.cli), name=job.key)
    _job_commands_added = True
    return cli


def _commands_of(job_cli: Any) -> typer.Typer:
    """A job's ``cli``: the typer app itself, or the one its ``"module:attribute"`` names."""
    if not isinstance(job_cli, str):
        return job_cli
    module, _, attribute = job_cli.partition(":")
    return getattr(importlib.import_module(module), attribute)


def database_trouble(exc: BaseException) -> str | None:
    """What to tell the user when a command failed for want of a database (unreachable, missing, not
    migrated); None for any other error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ProgrammingError

    from dataengine.infra.dbretry import db_unavailable
    from dataengine.infra.errors import DatabaseUnavailable
    from dataengine.infra.settings import get_settings

    where = make_url(get_settings().database_url).render_as_string(hide_password=True)
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if isinstance(exc, DatabaseUnavailable) or db_unavailable(exc):
        return (f"cannot use the database at {where} (DATABASE_URL): {reason}. Start PostgreSQL or fix "
                "DATABASE_URL; 'dataengine migrate' creates a missing database")
    if isinstance(exc, ProgrammingError) and "does not exist" in reason:
        return f"the database at {where} has not been migrated ({reason}): run 'dataengine migrate'"
    return None


def main() -> None:
    """Entry point of the ``dataengine`` script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        command_line(sys.argv[1:])()
    except Exception as exc:
        message = database_trouble(exc)
        if message is None:
            raise
        raise SystemExit(fail(message).exit_code) from None


if __name__ == "__main__":
    main()
