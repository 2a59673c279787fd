"""What the engine needs to know about a kind of run, and the registry of kinds.

A job module (``tasks/propertyaudit.py``) builds one ``Job`` and registers it; the run loop,
the sweeper and the CLI find it here by name or by task name.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Table
from sqlalchemy.orm import Session

from dataengine.llm import Usage


@dataclass(frozen=True)
class StepOutcome:
    """A finished step: the job's own result columns and what its LLM calls used."""

    values: dict[str, Any]
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class Job:
    """A kind of run: its tables, how to read its steps, how to do one, how to sum it up."""

    name: str  # shown in logs: "[PropertyAudit] Processing query 7/40"
    key: str  # CLI name: "propertyaudit"
    task_name: str  # the Celery task that executes a run: "propertyaudit.run"
    step_noun: str  # "query", "review", "source"
    step_plural: str  # "queries", "reviews", "sources"
    run_model: type
    result_model: type
    #: (session, run_id, start_index, limit) -> [(index, item)] in index order, from start_index on.
    load_steps: Callable[[Session, uuid.UUID, int, int], Sequence[tuple[int, Any]]]
    #: (session, run_id) -> how many steps the run has (for rows a producer wrote without the count).
    count_steps: Callable[[Session, uuid.UUID], int]
    #: run row -> an immutable context the steps share (what to audit, which model).
    prepare: Callable[[Any], Any]
    #: (context, index, item) -> StepOutcome. Runs in a worker thread: no database access.
    execute_step: Callable[[Any, int, Any], StepOutcome]
    #: (session, run_id) -> the run's summary, computed in the transaction that completes it.
    summarize: Callable[[Session, uuid.UUID], dict[str, Any]]
    #: Errors of this job's steps that may pass if the run is retried later (an LLM outage always may).
    transient_errors: tuple[type[BaseException], ...] = ()
    #: A step that fails for good: "fail" ends the run naming it; "record" records the failure
    #: (``failed_step_values``) as the step's result and goes on.
    step_error_policy: Literal["fail", "record"] = "fail"
    #: (index, item, error) -> the result row of a failed step, under the "record" policy.
    failed_step_values: Callable[[int, Any, BaseException], dict[str, Any]] | None = None
    #: (session, run_id, [(index, outcome)]) -> None: writes the job's own rows for finished steps
    #: (a source's chunks) in the checkpoint's transaction, after the fenced update: all or nothing.
    record_step_rows: Callable[[Session, uuid.UUID, list[tuple[int, StepOutcome]]], None] | None = None

    def __post_init__(self) -> None:
        if self.step_error_policy == "record" and self.failed_step_values is None:
            raise ValueError(f"job {self.key}: the 'record' step error policy needs failed_step_values")

    @property
    def runs(self) -> Table:
        """The run table (``geo_runs``...)."""
        return self.run_model.__table__

    @property
    def results(self) -> Table:
        """The step-result table, unique on (run, query_index)."""
        return self.result_model.__table__


_JOBS: dict[str, Job] = {}


def register(job: Job) -> Job:
    """Make a job known to the sweeper and the CLI."""
    _JOBS[job.key] = job
    return job


def all_jobs() -> list[Job]:
    """Every registered job."""
    return list(_JOBS.values())


def get_job(key: str) -> Job:
    """The job registered under ``key`` (``propertyaudit``), or a ``KeyError`` naming the known ones."""
    try:
        return _JOBS[key]
    except KeyError:
        raise KeyError(f"unknown job {key!r}; known: {', '.join(sorted(_JOBS)) or 'none'}") from None
