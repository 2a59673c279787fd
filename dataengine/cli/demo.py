"""``dataengine demo [JOB]``: a run of a job that declares a demo (``Job.demo``, a ``JobDemo``) end to
end on real local processes, its worker SIGKILLed half-way.

Everything runs on this machine: the LLM is the project's stand-in server (``dataengine.testing.standin_llm``)
in this process; worker and beat are real ``celery`` subprocesses on the user's PostgreSQL and Redis.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from dataengine.engine.events import history
from dataengine.engine.jobs import Job, JobDemo, get_job, load_jobs
from dataengine.engine.run_views import find_run, watch
from dataengine.engine.runs import finish_run
from dataengine.engine.submitting import submit_run
from dataengine.infra.db import session_scope
from dataengine.infra.migrate import migrate
from dataengine.infra.settings import get_settings
from dataengine.testing.processes import CeleryProcess, start_beat, start_worker
from dataengine.testing.standin_llm import FakeConfig, FakeLLMServer
from dataengine.worker.app import enqueue
from models.base import RunStatus
from models.events import EventType

LOG_DIR = Path(".dataengine") / "demo"
READY_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 120.0


class DemoError(Exception):
    """A problem explained in its message, shown without a traceback (with the end of ``log`` if given)."""

    def __init__(self, message: str, log: CeleryProcess | None = None) -> None:
        super().__init__(message)
        # Read now: stopping the process afterwards appends its shutdown noise to the log.
        self.log_path = log.log_path if log else None
        self.log_tail = "\n".join(log.log_text().splitlines()[-25:]) if log else ""


def _redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def check_services() -> None:
    """Ping Redis and bring PostgreSQL to the latest schema, or raise ``DemoError`` saying what to fix."""
    s = get_settings()
    try:
        redis.Redis.from_url(s.redis_url, socket_connect_timeout=2, socket_timeout=2).ping()
    except redis.RedisError as exc:
        raise DemoError(f"Redis at {_redacted(s.redis_url)} is not reachable ({str(exc).rstrip('.')}). "
                        "Start Redis or point REDIS_URL at one, e.g. REDIS_URL=redis://127.0.0.1:6379/0") from None
    try:
        migrate()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DemoError(f"PostgreSQL at {_redacted(s.database_url)} is not usable ({reason}). Check that it runs "
                        "and that this user may connect and create the database, or point DATABASE_URL elsewhere, "
                        "e.g. DATABASE_URL=postgresql://postgres@127.0.0.1:5432/dataengine") from None


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

    def __init__(self, console: Console, job: Job, inputs: list[str], env: dict[str, str],
                 llm_stats: Callable[[], dict[str, Any]] = dict) -> None:
        self.console, self.job, self.inputs, self.env, self.llm_stats = console, job, inputs, env, llm_stats
        #: The stand-in's counts just before the kill: which prompts it had answered, which it was still on.
        self.at_kill: dict[str, Any] = {}
        self.procs: dict[str, CeleryProcess] = {}
        self.run_id: str | None = None
        self.killed_at: datetime | None = None  # the database's clock, to compare with the run's events
        self.checkpointed = 0  # answers recorded when demo-1 died: the resume point
        self.recovered_after: float | None = None  # seconds from the kill to demo-2's claim

    def start(self, name: str) -> CeleryProcess:
        """Spawn worker ``name`` (concurrency 1), without waiting for it."""
        self.procs[name] = start_worker(name, env=self.env, log_dir=LOG_DIR, concurrency=1)
        return self.procs[name]

    def worker(self) -> CeleryProcess:
        """The worker that should be working the run now."""
        return self.procs.get("demo-2") or self.procs["demo-1"]

    def on_update(self, row: dict[str, Any]) -> None:
        """Kill demo-1 once half the steps are checkpointed, start demo-2, and report when it takes over."""
        n, noun = len(self.inputs), self.job.step_noun
        if self.worker().proc.poll() is not None:
            raise DemoError(f"worker {self.worker().name} exited unexpectedly", log=self.worker())
        if self.killed_at is None and row["status"] == "running" and row["completed_steps"] >= n // 2:
            victim = self.procs["demo-1"]
            self.at_kill = self.llm_stats()
            victim.kill_main()
            self.killed_at = self.now()
            # Re-read: the row may have moved on since this poll, and nothing writes to it now.
            _, row = find_run(self.run_id)
            self.checkpointed = row["current_query_index"]
            self.console.print(
                f"[bold red]SIGKILL[/bold red] worker demo-1 (pid {victim.pid}) at {noun} {self.checkpointed + 1}/{n}"
                f" — {row['completed_steps']} {self.job.step_plural} already checkpointed")
            self.start("demo-2")
            self.console.print("started worker demo-2; the run is taken back once demo-1's lease "
                               f"({get_settings().lease_s:g} s) expires", style="dim")
        elif self.killed_at and self.recovered_after is None and (taken_at := self.taken_over_at()) is not None:
            self.recovered_after = max(0.0, (taken_at - self.killed_at).total_seconds())
            self.console.print(f"[bold green]demo-2 resumed[/bold green] at {noun} {self.checkpointed + 1}/{n} "
                               f"after {self.recovered_after:.1f}s")

    def now(self) -> datetime:
        with session_scope() as session:
            return session.execute(select(func.clock_timestamp())).scalar_one()

    def taken_over_at(self) -> datetime | None:
        """When demo-2 took the run (its claim in the run's history): a poll may not see demo-2 holding the
        lease at all, when it finishes the last steps between two polls."""
        with session_scope() as session:
            events = history(session, uuid.UUID(str(self.run_id)))
        return next((e["at"] for e in events if e["event"] in (EventType.claimed, EventType.resumed)
                     and (e["worker"] or "").startswith("demo-2@")), None)

    def cleanup(self) -> None:
        """Stop every process started here; a run they left unfinished is cancelled, so no later worker resumes it."""
        with ThreadPoolExecutor() as pool:  # each warm shutdown takes a second or so: wait for them together
            list(pool.map(CeleryProcess.stop, self.procs.values()))
        if self.run_id is not None:  # a no-op when the run is already final
            with session_scope() as session:
                finish_run(session=session, job=self.job, run_id=uuid.UUID(self.run_id), status=RunStatus.cancelled,
                           error="the demo stopped before the run finished")


def summary_table(job: Job, kind: JobDemo, row: dict[str, Any], recovered_after: float | None) -> Table:
    """What the run found, what it cost, and how long it took."""
    table = Table(title=f"{job.name} result", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row(*kind.subject)
    for name, value in kind.result_rows(row["summary"]):
        table.add_row(name, value)
    table.add_row("Tokens", f"{row['prompt_tokens']:,} in + {row['completion_tokens']:,} out")
    table.add_row("Cost", f"${float(row['cost_usd']):.4f} at {row['model']} prices (the stand-in charged nothing)")
    duration = f"{(row['finished_at'] - row['started_at']).total_seconds():.1f}s"
    if recovered_after is not None:
        duration += f", of which {recovered_after:.1f}s from the kill until demo-2 took over"
    table.add_row("Duration", duration)
    return table


def report_paid_twice(console: Console, demo: Demo, kind: JobDemo, answered: dict[str, int]) -> bool:
    """Print which steps the stand-in answered more than once; True unless a checkpointed one was."""
    c, plural = demo.checkpointed, demo.job.step_plural
    again = [i for i, q in enumerate(demo.inputs) if kind.asked(answered, q) > 1]
    if demo.killed_at is None:
        console.print(f"The run ended before half-way was seen, so no worker was killed; {len(again)} {plural} "
                      "were asked more than once.")
        return not again
    repeated = [demo.inputs[i] for i in again if i < c]
    if repeated:
        console.print(f"[bold red]Paid twice:[/bold red] {len(repeated)} of the {c} {plural} checkpointed before "
                      f"the kill were asked again: {repeated}")
        return False
    returned, asked = demo.at_kill.get("answered_prompts", {}), demo.at_kill.get("prompts", {})
    # Answers the stand-in had sent before the kill and was asked for again: the journal's to prevent.
    again_returned = sum(1 for prompt, n in returned.items() if answered.get(prompt, 0) > n)
    waiting = sum(asked.values()) - sum(returned.values())
    calls = f"{waiting} call{'' if waiting == 1 else 's'} still waiting for {'its' if waiting == 1 else 'their'} answer"
    if again_returned:  # it came back in the moment before the worker could record it
        console.print(f"[bold yellow]Paid twice:[/bold yellow] {again_returned} answer(s) the stand-in had sent just "
                      f"before the kill were asked again (the worker died before recording them); {calls} when it "
                      f"died {'was' if waiting == 1 else 'were'} asked again; the {c} checkpointed {plural} were not.")
        return True
    console.print(f"[bold green]Nothing paid twice:[/bold green] 0 answers that had returned before the kill were "
                  f"asked again (the journal gave them back), and the {c} checkpointed {plural} were not; "
                  f"{calls} when the worker died {'was' if waiting == 1 else 'were'} asked again "
                  "(counted by the stand-in server, which sees every LLM call).")
    return True


def demos() -> dict[str, JobDemo]:
    """The registered jobs' demos by job key, the default one first."""
    found = {job.key: job.demo for job in load_jobs() if job.demo is not None}
    return dict(sorted(found.items(), key=lambda kv: not kv[1].default))


def run_demo(*, console: Console, job_key: str | None = None, steps: int = 30, latency_ms: float = 300.0) -> int:
    """Run the demo of ``job_key`` (the default one: None) end to end; returns the exit code (0 if the run
    completed and nothing was paid twice)."""
    job_key = job_key or next(iter(demos()))
    job, kind = get_job(job_key), demos()[job_key]
    console.rule(f"[bold]dataengine demo {job_key}")
    console.print(f"A {job.name} of {steps} {job.step_plural} runs on a real Celery worker; half-way through, the "
                  "worker is SIGKILLed and a second worker resumes the run from its last checkpoint.")
    console.print("[yellow]The LLM answers come from dataengine's local stand-in server (dataengine.testing.standin_llm), not a "
                  "real model: no internet and no API key are needed.[/yellow]")
    # A closed terminal (SIGHUP) or a kill (SIGTERM) must still stop the workers the demo started.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with FakeLLMServer(FakeConfig(latency_ms=latency_ms * kind.per_call)) as llm:
            check_services()
            s = get_settings()
            console.print(f"• PostgreSQL {_redacted(s.database_url)} at the latest schema; Redis "
                          f"{_redacted(s.redis_url)} reachable")
            console.print(f"• stand-in LLM at {llm.base_url}, {latency_ms * kind.per_call:g} ms per call")
            demo = Demo(console, job, kind.inputs(steps), worker_env(llm.base_url), llm.stats)
            try:
                row = _run(console, demo, kind)
            finally:
                demo.cleanup()
            return _report(console, demo, kind, row, llm.stats()["answered_prompts"])
    except DemoError as exc:
        console.print(f"[red]error:[/red] {exc}")
        if exc.log_path is not None:
            console.print(f"last lines of {exc.log_path}:", style="dim")
            console.print(Text(exc.log_tail, style="dim"))
        return 1
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]; the demo's processes are stopped (an unfinished run is cancelled)")
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(console: Console, demo: Demo, kind: JobDemo) -> dict[str, Any]:
    for old in LOG_DIR.glob("*.log"):  # so every log there is this demo's
        old.unlink()
    first = demo.start("demo-1")
    beat = demo.procs["beat"] = start_beat("beat", env=demo.env, log_dir=LOG_DIR)
    with console.status("starting worker demo-1 and celery beat"):
        try:
            first.wait_ready(READY_TIMEOUT_S)
        except (TimeoutError, RuntimeError):  # not ready in time, or exited
            raise DemoError(f"worker demo-1 did not start within {READY_TIMEOUT_S:g}s", log=first) from None
    console.print(f"• worker demo-1 (pid {first.pid}) and celery beat (pid {beat.pid}) running; logs in {LOG_DIR}/")
    spec = {**kind.spec(demo.inputs), "idempotency_key": f"demo-{uuid.uuid4()}"}
    demo.run_id = submit_run(job=demo.job, spec=spec, send=enqueue)
    console.print(f"• submitted {demo.job.name} {demo.run_id}: {len(demo.inputs)} {demo.job.step_plural} for "
                  f"{kind.subject[1]}, e.g. {demo.inputs[0]!r}")
    try:
        return watch(demo.run_id, console=console, on_update=demo.on_update, timeout_s=RUN_TIMEOUT_S)
    except TimeoutError:
        raise DemoError(f"the run did not finish in {RUN_TIMEOUT_S:g}s", log=demo.worker()) from None


def _report(console: Console, demo: Demo, kind: JobDemo, row: dict[str, Any], answered: dict[str, int]) -> int:
    if row["status"] != "completed":
        raise DemoError(f"the run ended {row['status']}: {row['error_message']} (worker logs in {LOG_DIR}/)")
    console.print(summary_table(demo.job, kind, row, demo.recovered_after))
    return 0 if report_paid_twice(console, demo, kind, answered) else 1
