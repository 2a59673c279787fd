"""What the engine needs to know about a kind of run, and the registry of kinds.

A job module (a package under ``tasks/``) is its tables, its spec, its step and its summary: it
builds one ``Job`` and registers it. Everything else is the engine's, driven by the ``Job``:
creating runs idempotently (``dataengine.engine.submitting``), reading steps in pages, the two Celery
tasks ``<key>.run`` and ``<key>.submit`` (``dataengine.worker.tasks``), the sweeper and the CLI.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from dataengine.infra.settings import job_module_names
from dataengine.llm.calls import Usage

#: Columns every step table has (``models.base.StepMixin``); the others are the step's item.
STEP_KEY_COLUMNS = ("run_id", "query_index")
#: Steps the run loop reads from the database at a time, from the resume point on.
STEP_PAGE_SIZE = 200


@dataclass(frozen=True)
class StepOutcome:
    """A finished step: the job's own result columns and what its LLM calls used."""

    values: dict[str, Any]
    usage: Usage = field(default_factory=Usage)
    #: What the job's ``record_step_rows`` writes besides the result row (a changed source's chunks
    #: and their embeddings). A checkpoint none of whose steps carry rows is a single statement.
    rows: Any = None


@dataclass(frozen=True)
class NewRun:
    """What a validated spec becomes: the run row's own columns, and one row of step columns per step."""

    values: dict[str, Any]
    steps: list[dict[str, Any]]


@dataclass(frozen=True)
class PlannedCall:
    """An LLM call a run will make, as far as its spec tells before anything is created: what a dry
    run's estimate prices (``dataengine.engine.estimates``)."""

    kind: Literal["chat", "parse", "embed"]
    model: str
    #: What it sends, as far as the spec knows it: chat messages, or texts to embed.
    prompt: list[dict[str, str]] | list[str] = field(default_factory=list)
    #: Its prompt also carries text only the run will have (an earlier call's answer, a fetched page):
    #: estimated from recent runs.
    unknown_input: bool = False
    #: False when whether (or how often) the call is made depends on what the run finds (an embeddings
    #: request per changed source): the count is a guess.
    exact: bool = True


@dataclass(frozen=True)
class JobDemo:
    """What ``dataengine demo <key>`` runs for a job: its LLM inputs, the spec they make, and how its
    result reads."""

    #: steps -> that many distinct inputs (queries, review texts), the same on every demo.
    inputs: Callable[[int], list[str]]
    #: the inputs -> the run's spec.
    spec: Callable[[list[str]], dict[str, Any]]
    #: the run's summary -> (label, value) rows of the result table.
    result_rows: Callable[[dict[str, Any]], list[tuple[str, str]]]
    #: (label, value) of what the run is about, shown first: ("Property", "The Monarch at Riverside (Austin)").
    subject: tuple[str, str]
    #: (the stand-in's answered prompts, an input) -> how many answered calls carried it.
    asked: Callable[[dict[str, int], str], int] = lambda answered, text: answered.get(text, 0)
    #: Steps that share one LLM call: each call is given that much more latency, so the run lasts
    #: long enough to be killed half-way.
    per_call: int = 1
    #: The demo ``dataengine demo`` runs without a job named.
    default: bool = False


@dataclass(frozen=True)
class Job:
    """A kind of run: its tables, its spec, how to do one step, how to sum a run up."""

    name: str  # shown in logs: "[Audit] Processing query 7/40"
    key: str  # CLI name and task prefix: "audit" -> "audit.run", "audit.submit"
    step_noun: str  # "query", "review", "source"
    step_plural: str  # "queries", "reviews", "sources"
    run_model: type  # a models.base.RunMixin table
    step_model: type  # a models.base.StepMixin table: the steps' inputs
    result_model: type  # a models.base.StepResultMixin table: one row per finished step
    #: What ``<key>.submit`` accepts (the idempotency key aside, which the engine handles).
    spec_model: type[BaseModel]
    #: validated spec -> the run row's own columns and its steps.
    build: Callable[[Any], NewRun]
    #: run row -> an immutable context the steps share (what to audit, which model).
    prepare: Callable[[Any], Any]
    #: (context, index, item) -> StepOutcome. Runs in a worker thread and writes nothing (the
    #: checkpoint does). The item is the step row's own column, or a dict of them when there are
    #: several, or what ``load_items`` makes of it.
    execute_step: Callable[[Any, int, Any], StepOutcome]
    #: (session, run_id) -> the run's summary, computed before the run completes.
    summarize: Callable[[Session, uuid.UUID], dict[str, Any]]
    #: Errors of this job's steps that may pass if the run is retried later (an LLM outage always may).
    transient_errors: tuple[type[BaseException], ...] = ()
    #: A step that fails for good: "fail" ends the run naming it; "record" records the failure
    #: (``failed_step_values``) as the step's result and goes on.
    step_error_policy: Literal["fail", "record"] = "fail"
    #: (index, item, error) -> the result row of a failed step, under the "record" policy.
    failed_step_values: Callable[[int, Any, BaseException], dict[str, Any]] | None = None
    #: (session, run_id, [(index, outcome)]) -> None: writes the job's own rows for the finished steps
    #: whose outcome carries ``rows`` (a changed source's chunks) in the checkpoint's transaction, after
    #: the fenced update: all or nothing.
    record_step_rows: Callable[[Session, uuid.UUID, list[tuple[int, StepOutcome]]], None] | None = None
    #: An UPDATE (or INSERT) that the checkpoint statement itself runs, reading the result rows it
    #: has just recorded as ``inserted`` (a job that refreshes sources: each source's validators and error, from
    #: its result). Nothing is written if the claim is stale, and it costs no extra round trip.
    checkpoint_sql: str | None = None
    #: The name of the task that executes a run, when the public contract names it otherwise
    #: than ``<key>.run`` (``<key>.analyze``).
    run_task_name: str | None = None
    #: (context, [(index, item), ...]) -> one StepOutcome per step, in order: a few small steps in
    #: one call (short reviews in one LLM request). Each step is still recorded on its own, and a
    #: step that was in flight when a worker died never shares a call.
    execute_group: Callable[[Any, list[tuple[int, Any]]], list[StepOutcome]] | None = None
    #: item -> whether the step may share a call with others.
    groupable: Callable[[Any], bool] = lambda item: True
    #: Steps in one call at most.
    group_size: int = 1
    #: (**kwargs) -> [(run id, created)]: what the run task does when sent without a ``run_id``
    #: (a refresh sent with ``property_id=`` or nothing). It validates its arguments
    #: (``SpecInvalid``), finds or creates the runs, and the engine enqueues the created ones.
    start_runs: Callable[..., list[tuple[uuid.UUID, bool]]] | None = None
    #: The result columns the runs page shows for each step, after its index and what it was about
    #: (empty: every column of the result table but the engine's own).
    page_columns: tuple[str, ...] = ()
    #: What ``start_runs`` accepts, as the HTTP API documents and validates it.
    start_model: type[BaseModel] | None = None
    #: (session, run_id, start, limit) -> [(index, item)]: steps read with more than their own row
    #: (a source's URL and validators, joined in), so that a step reads nothing itself.
    load_items: Callable[[Session, uuid.UUID, int, int], list[tuple[int, Any]]] | None = None
    #: (context, [item, ...]) -> the calls one step, or a group of steps sharing a call, will make
    #: (``PlannedCall``): how a dry run estimates tokens and cost before spending. The context is
    #: ``prepare``'s of the run row the spec would make; an item is the step's own columns as the spec
    #: builds them. None: the estimate leans on the job's recent runs alone.
    plan_calls: Callable[[Any, list[Any]], list[PlannedCall]] | None = None

    #: What ``dataengine demo <key>`` runs (``JobDemo``); None: the job has no demo.
    demo: JobDemo | None = None
    #: The job's own commands, added to the ``dataengine`` command line under its key: a ``typer.Typer``, or
    #: ``"module:attribute"`` naming one, which only the command line imports (a worker loads no typer).
    cli: Any = None
    #: () -> when beat sends the job's task without arguments: entry name -> a five-field cron expression
    #: (UTC) or a number of seconds (empty: off). Read when beat starts.
    schedules: Callable[[], dict[str, str]] | None = None

    #: run row -> the property it is about, as the cost ledger groups spend (``dataengine costs --by property``):
    #: by default its ``property_name`` or ``property_id`` column.
    property_of: Callable[[Any], str | None] = lambda row: getattr(row, "property_name", None) or getattr(
        row, "property_id", None)

    def __post_init__(self) -> None:
        if self.step_error_policy == "record" and self.failed_step_values is None:
            raise ValueError(f"job {self.key}: the 'record' step error policy needs failed_step_values")
        unknown = set(self.page_columns) - set(self.results.c.keys())
        if unknown:
            raise ValueError(f"job {self.key}: page_columns names no result column: {', '.join(sorted(unknown))}")

    @property
    def task_name(self) -> str:
        """The Celery task that executes a run: ``<key>.run``, unless ``run_task_name`` says otherwise."""
        return self.run_task_name or f"{self.key}.run"

    @property
    def submit_task_name(self) -> str:
        """The Celery task that creates a run from its spec and starts it: ``<key>.submit``."""
        return f"{self.key}.submit"

    @property
    def runs(self) -> Table:
        """The run table (a ``RunMixin`` table)."""
        return self.run_model.__table__

    @property
    def steps(self) -> Table:
        """The step table (a ``StepMixin`` table), unique on (run, query_index)."""
        return self.step_model.__table__

    @property
    def results(self) -> Table:
        """The step-result table, unique on (run, query_index)."""
        return self.result_model.__table__

    def load_steps(self, session: Session, run_id: uuid.UUID, start: int, limit: int) -> list[tuple[int, Any]]:
        """Up to ``limit`` steps from index ``start`` on, in order, as ``(index, item)``."""
        if self.load_items is not None:
            return self.load_items(session, run_id, start, limit)
        t = self.steps
        own = [c for c in t.columns if c.name not in STEP_KEY_COLUMNS]
        rows = session.execute(
            select(t.c.query_index, *own)
            .where(t.c.run_id == run_id, t.c.query_index >= start)
            .order_by(t.c.query_index)
            .limit(limit)
        ).mappings()
        if len(own) == 1:
            return [(r["query_index"], r[own[0].name]) for r in rows]
        return [(r["query_index"], {c.name: r[c.name] for c in own}) for r in rows]

    def items_of(self, steps: list[dict[str, Any]]) -> list[tuple[int, Any]] | None:
        """The steps a run was just built with, as ``load_steps`` would read them back; None when only a
        read gives them (a job's ``load_items``, a column left to its default, more than a page of steps)."""
        own = [c.name for c in self.steps.columns if c.name not in STEP_KEY_COLUMNS]
        if self.load_items is not None or len(steps) > STEP_PAGE_SIZE or any(set(own) - step.keys() for step in steps):
            return None
        return list(enumerate(self.built_items(steps)))

    def built_items(self, steps: list[dict[str, Any]]) -> list[Any]:
        """The items of steps as a spec builds them: the step's own column, or a dict of them when there
        are several (a column the spec leaves out is None)."""
        own = [c.name for c in self.steps.columns if c.name not in STEP_KEY_COLUMNS]
        if len(own) == 1:
            return [step.get(own[0]) for step in steps]
        return [{name: step.get(name) for name in own} for step in steps]

    def units(self, items: list[Any]) -> list[list[Any]]:
        """The items as the run loop hands them to the job when no step is suspect: a groupable one
        shares a call with the groupable ones right after it, ``group_size`` at most; any other goes alone."""
        units: list[list[Any]] = []
        for item in items:
            last = units[-1] if units else None
            if (self.execute_group is not None and last is not None and len(last) < self.group_size
                    and self.groupable(last[0]) and self.groupable(item)):
                last.append(item)
            else:
                units.append([item])
        return units

    def count_steps(self, session: Session, run_id: uuid.UUID) -> int:
        """How many steps the run has (for rows a producer wrote without the count)."""
        t = self.steps
        return session.scalar(select(func.count()).select_from(t).where(t.c.run_id == run_id)) or 0


_JOBS: dict[str, Job] = {}
#: Told of every job registered (and, when they start listening, of those registered before): the
#: worker layer defines each job's Celery tasks this way, so that the engine depends on no task.
_listeners: list[Callable[[Job], None]] = []


def on_register(listener: Callable[[Job], None]) -> None:
    """Call ``listener`` with every registered job now, and with each one registered from now on."""
    _listeners.append(listener)
    for job in list(_JOBS.values()):
        listener(job)


def register(job: Job) -> Job:
    """Make a job known to the engine (the sweeper, the CLI, the API) and to whoever listens (the Celery
    app: its two tasks)."""
    new = job.key not in _JOBS
    _JOBS[job.key] = job
    if new:
        for listener in list(_listeners):
            listener(job)
    return job


def load_jobs() -> list[Job]:
    """Import the job modules (``DATAENGINE_JOB_MODULES``): each registers its job."""
    for module in job_module_names():
        importlib.import_module(module)
    return all_jobs()


def all_jobs() -> list[Job]:
    """Every registered job."""
    return list(_JOBS.values())


def get_job(key: str) -> Job:
    """The job registered under ``key``, or a ``KeyError`` naming the known ones."""
    try:
        return _JOBS[key]
    except KeyError:
        raise KeyError(f"unknown job {key!r}; known: {', '.join(sorted(_JOBS)) or 'none'}") from None
