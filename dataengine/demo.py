"""``dataengine demo``: a PropertyAudit end to end on real local processes, its worker SIGKILLed half-way.

Everything runs on this machine: the LLM is the project's stand-in server (``dataengine.fakellm``)
in this process; worker and beat are real ``celery`` subprocesses on the user's PostgreSQL and Redis.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from dataengine.db import session_scope
from dataengine.fakellm import FakeConfig, FakeLLMServer
from dataengine.inspect import find_run, watch
from dataengine.migrations import migrate
from dataengine.procs import CeleryProcess, start_beat, start_worker
from dataengine.runs import request_cancel
from dataengine.settings import get_settings
from models.base import FINAL_STATUSES
from tasks.propertyaudit import submit_audit

PROPERTY = {
    "name": "The Monarch at Riverside",
    "city": "Austin",
    "website": "https://www.the-monarch-at-riverside.example",
    "aliases": ["Monarch at Riverside"],
}
TEMPLATES = (
    "best apartments near {place} Austin with {amenity}",
    "apartments with {amenity} near {place} in Austin TX",
    "top rated apartment communities close to {place}, Austin, that have {amenity}",
    "where to rent near {place} in Austin if I want {amenity}",
    "affordable Austin apartments near {place} with {amenity}",
)
PLACES = ("downtown", "South Congress", "the Domain", "Zilker Park", "Mueller", "Hyde Park", "the UT campus",
          "Lady Bird Lake", "East Cesar Chavez", "Riverside Drive")
AMENITIES = ("a pool", "a gym", "a dog park", "in-unit laundry", "covered parking", "a rooftop deck",
             "EV charging", "a coworking space", "short-term leases", "utilities included")
LOG_DIR = Path(".dataengine") / "demo"
READY_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 120.0


class DemoError(Exception):
    """A problem explained in its message (plus the tail of ``log``), shown without a traceback."""

    def __init__(self, message: str, log: CeleryProcess | None = None) -> None:
        super().__init__(message)
        self.log = log


def demo_queries(n: int) -> list[str]:
    """``n`` distinct search-style queries about Austin apartments, the same on every demo."""
    combos = list(itertools.product(TEMPLATES, PLACES, AMENITIES))
    random.Random(7).shuffle(combos)  # neighbouring queries differ in every part
    return [t.format(place=p, amenity=a) for t, p, a in combos[:n]]


def _redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def check_services() -> None:
    """Ping Redis and bring PostgreSQL to the latest schema, or raise ``DemoError`` saying what to fix."""
    s = get_settings()
    try:
        redis.Redis.from_url(s.redis_url, socket_connect_timeout=2, socket_timeout=2).ping()
    except redis.RedisError as exc:
        raise DemoError(f"Redis at {_redacted(s.redis_url)} is not reachable ({exc}). "
                        "Start Redis or point REDIS_URL at one, e.g. REDIS_URL=redis://127.0.0.1:6379/0") from None
    try:
        migrate()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DemoError(f"PostgreSQL at {_redacted(s.database_url)} is not usable ({reason}). Start PostgreSQL or "
                        "point DATABASE_URL at one, e.g. DATABASE_URL=postgresql://postgres@127.0.0.1:5432/dataengine"
                        ) from None


def worker_env(base_url: str) -> dict[str, str]:
    """The settings the subprocesses must share with this one, spelled out."""
    s = get_settings()
    return {
        "DATABASE_URL": s.database_url,
        "REDIS_URL": s.redis_url,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": s.openai_api_key.get_secret_value(),
        # One query at a time, so the kill catches exactly one query in flight and the story is easy to follow.
        "DATAENGINE_STEP_CONCURRENCY": "1",
    }


class Demo:
    """The demo's processes and run, and the watch callback that kills the first worker half-way."""

    def __init__(self, console: Console, queries: list[str], env: dict[str, str]) -> None:
        self.console, self.queries, self.env = console, queries, env
        self.procs: dict[str, CeleryProcess] = {}
        self.run_id: str | None = None
        self.killed_at: float | None = None
        self.checkpointed = 0  # answers recorded when demo-1 died: the resume point
        self.resumed = False

    def start(self, name: str) -> CeleryProcess:
        """Spawn worker ``name`` (concurrency 1), without waiting for it."""
        self.procs[name] = start_worker(name, env=self.env, log_dir=LOG_DIR, concurrency=1)
        return self.procs[name]

    def worker(self) -> CeleryProcess:
        """The worker that should be working the run now."""
        return self.procs.get("demo-2") or self.procs["demo-1"]

    def on_update(self, row: dict[str, Any]) -> None:
        """Kill demo-1 once half the queries are checkpointed, start demo-2, and report when it takes over."""
        n = len(self.queries)
        if self.worker().proc.poll() is not None:
            raise DemoError(f"worker {self.worker().name} exited unexpectedly", log=self.worker())
        if self.killed_at is None and row["status"] == "running" and row["completed_steps"] >= n // 2:
            victim = self.procs["demo-1"]
            self.killed_at = time.monotonic()
            victim.kill_main()
            # Re-read: the row may have moved on since this poll, and nothing writes to it now.
            _, row = find_run(self.run_id)
            self.checkpointed = row["current_query_index"]
            self.console.print(
                f"[bold red]SIGKILL[/bold red] worker demo-1 (pid {victim.pid}) at query {self.checkpointed + 1}/{n}"
                f" — {row['completed_steps']} answers already checkpointed")
            self.start("demo-2")
            self.console.print("started worker demo-2; the run is taken back once demo-1's lease "
                               f"({get_settings().lease_s:g} s) expires", style="dim")
        elif self.killed_at is not None and not self.resumed and (row["lease_owner"] or "").startswith("demo-2@"):
            self.resumed = True
            self.console.print(f"[bold green]demo-2 resumed[/bold green] at query {self.checkpointed + 1}/{n} "
                               f"after {time.monotonic() - self.killed_at:.1f}s")

    def cleanup(self) -> None:
        """Cancel an unfinished run (so no later worker picks it up), then stop every process started here."""
        if self.run_id is not None:
            job, row = find_run(self.run_id)
            if row["status"] not in FINAL_STATUSES:
                with session_scope() as session:
                    request_cancel(session=session, job=job, run_id=row["id"])
        with ThreadPoolExecutor() as pool:  # each warm shutdown takes a second or so: wait for them together
            list(pool.map(CeleryProcess.stop, self.procs.values()))


def print_tail(console: Console, proc: CeleryProcess, lines: int = 25) -> None:
    """The last ``lines`` lines of a process's log, with where to find the rest."""
    console.print(f"last lines of {proc.log_path}:", style="dim")
    console.print(Text("\n".join(proc.log_text().splitlines()[-lines:]), style="dim"))


def summary_table(row: dict[str, Any]) -> Table:
    """What the audit found and what it cost."""
    summary = row["summary"] or {}
    table = Table(title="PropertyAudit result", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    mentions, answered = summary.get("mentions", 0), summary.get("queries_answered", 0)
    table.add_row("Property", f"{PROPERTY['name']} ({PROPERTY['city']})")
    table.add_row("Visibility score", f"{summary.get('visibility_score', 0):.0%} ({mentions} of {answered} answers)")
    table.add_row("Mean rank", f"{summary['mean_rank']:g}" if summary.get("mean_rank") is not None else "—")
    top = ", ".join(f"{c['name']} ({c['mentions']})" for c in summary.get("top_competitors", []))
    table.add_row("Top competitors", top or "—")
    table.add_row("Tokens", f"{row['prompt_tokens']:,} in + {row['completion_tokens']:,} out")
    table.add_row("Cost", f"${float(row['cost_usd']):.4f} at {row['model']} prices (the stand-in charged nothing)")
    table.add_row("Duration", f"{(row['finished_at'] - row['started_at']).total_seconds():.1f}s")
    return table


def report_paid_twice(console: Console, demo: Demo, answered: dict[str, int]) -> bool:
    """Print which queries the stand-in answered more than once; True unless a checkpointed one was."""
    c = demo.checkpointed
    again = [i for i, q in enumerate(demo.queries) if answered.get(q, 0) > 1]
    if demo.killed_at is None:
        console.print(f"The run ended before half-way was seen, so no worker was killed; {len(again)} queries "
                      "were asked more than once.")
        return not again
    repeated = [demo.queries[i] for i in again if i < c]
    if repeated:
        console.print(f"[bold red]Paid twice:[/bold red] {len(repeated)} of the {c} queries checkpointed before "
                      f"the kill were asked again: {repeated}")
        return False
    if again:
        one = len(again) == 1
        what = (f"{len(again)} {'query was' if one else 'queries were'} in flight when the worker died and "
                f"{'was' if one else 'were'} asked again")
    else:
        what = "no query was asked twice"
    console.print(f"[bold green]Nothing paid twice:[/bold green] {what}; the {c} checkpointed queries were not "
                  "(counted by the stand-in server, which sees every LLM call).")
    return True


def run_demo(*, console: Console, queries: int = 30, latency_ms: float = 300.0) -> int:
    """Run the demo end to end; returns the exit code (0 if the run completed and nothing was paid twice)."""
    console.rule("[bold]dataengine demo")
    console.print(f"A PropertyAudit of {queries} queries runs on a real Celery worker; half-way through, the worker "
                  "is SIGKILLed and a second worker resumes the run from its last checkpoint.")
    console.print("[yellow]The LLM answers come from dataengine's local stand-in server (dataengine.fakellm), not a "
                  "real model: no internet and no API key are needed.[/yellow]")
    try:
        with FakeLLMServer(FakeConfig(latency_ms=latency_ms)) as llm:
            check_services()
            s = get_settings()
            console.print(f"• PostgreSQL {_redacted(s.database_url)} migrated; Redis {_redacted(s.redis_url)} "
                          "reachable")
            console.print(f"• stand-in LLM at {llm.base_url}, {latency_ms:g} ms per call")
            demo = Demo(console, demo_queries(queries), worker_env(llm.base_url))
            try:
                row = _run(console, demo)
            finally:
                demo.cleanup()
            return _report(console, demo, row, llm.stats()["answered_prompts"])
    except DemoError as exc:
        console.print(f"[red]error:[/red] {exc}")
        if exc.log is not None:
            print_tail(console, exc.log)
        return 1
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]; the demo's processes are stopped and its run cancelled")
        return 1


def _run(console: Console, demo: Demo) -> dict[str, Any]:
    first = demo.start("demo-1")
    beat = demo.procs["beat"] = start_beat("beat", env=demo.env, log_dir=LOG_DIR)
    with console.status("starting worker demo-1 and celery beat"):
        try:
            first.wait_ready(READY_TIMEOUT_S)
        except (TimeoutError, RuntimeError):
            raise DemoError(f"worker demo-1 did not get ready in {READY_TIMEOUT_S:g}s", log=first) from None
    console.print(f"• worker demo-1 (pid {first.pid}) and celery beat (pid {beat.pid}) running; logs in {LOG_DIR}/")
    spec = {"property": PROPERTY, "queries": demo.queries, "idempotency_key": f"demo-{uuid.uuid4()}"}
    demo.run_id = submit_audit(spec)
    console.print(f"• submitted PropertyAudit {demo.run_id}: {len(demo.queries)} queries for "
                  f"{PROPERTY['name']!r}, e.g. {demo.queries[0]!r}")
    try:
        return watch(demo.run_id, console=console, on_update=demo.on_update, timeout_s=RUN_TIMEOUT_S)
    except TimeoutError:
        raise DemoError(f"the run did not finish in {RUN_TIMEOUT_S:g}s", log=demo.worker()) from None


def _report(console: Console, demo: Demo, row: dict[str, Any], answered: dict[str, int]) -> int:
    if row["status"] != "completed":
        raise DemoError(f"the run ended {row['status']}: {row['error_message']}", log=demo.worker())
    console.print(summary_table(row))
    return 0 if report_paid_twice(console, demo, answered) else 1
