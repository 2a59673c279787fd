"""What the HTTP API answers: the shapes its OpenAPI document names."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class RunRef(BaseModel):
    """A run the web app created itself (its row written with SQL), sent by id."""

    model_config = ConfigDict(extra="forbid")

    run_id: uuid.UUID


class Started(BaseModel):
    """A run accepted for work: poll ``status_url`` (or the run's row) for its progress."""

    run_id: uuid.UUID
    status: str
    status_url: str


class StartedMany(BaseModel):
    """The runs a request started or found already queued or running (one per property)."""

    run_id: uuid.UUID | None
    run_ids: list[uuid.UUID]
    created: int
    status_url: str | None


class CallCountView(BaseModel):
    """How many calls of one kind a run would make on one model (``exact`` false: a guess)."""

    model: str
    kind: str
    calls: int
    exact: bool


class EstimateView(BaseModel):
    """A dry run's answer (``dataengine.engine.estimates.Estimate``): what the run would do and cost; nothing
    was created. Amounts are decimal strings; a figure with nothing to estimate it from is null, and
    ``basis`` says where each figure came from."""

    dry_run: bool
    kind: str
    steps: int
    calls: list[CallCountView]
    prompt_tokens: int | None
    completion_tokens: int | None
    #: Of the priced models only; the calls of ``unpriced_models`` are not counted.
    cost_usd: str | None
    unpriced_models: list[str]
    max_cost_usd: str | None
    over_budget: bool | None
    basis: dict[str, str]


class RunView(BaseModel):
    """A run of any kind: its row's contract columns under their own names, and what it has cost."""

    id: uuid.UUID
    kind: str
    status: str
    progress_pct: float
    current_query_index: int
    completed_steps: int
    total_steps: int
    eta_s: int | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    worker: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    last_updated_at: datetime
    finished_at: datetime | None
    error_message: str | None
    summary: dict[str, Any] | None
    #: Since when the run, still heartbeating, has made no progress for many times its usual step
    #: time (a hung provider, say); None while it moves.
    stalled_at: datetime | None = None
    #: The most it may spend on LLM calls (its spec's ``max_cost_usd``), and its workspace.
    max_cost_usd: float | None = None
    workspace_id: str | None = None
    #: Its tier: high, normal or low.
    priority: str = "normal"


class RunPage(BaseModel):
    """Runs newest first; pass ``next_cursor`` as ``cursor`` for the next page (``None``: no more)."""

    runs: list[RunView]
    next_cursor: str | None


class RunState(BaseModel):
    """A run's status after a cancel or a retry."""

    run_id: uuid.UUID
    status: str


class Problem(BaseModel):
    """An error: ``detail`` says what went wrong (a list naming each bad field, for a 422)."""

    detail: Any


class EventView(BaseModel):
    """One event of a run's history."""

    model_config = ConfigDict(from_attributes=True)

    at: datetime
    event: str
    worker: str | None
    fencing_token: int | None
    #: The run's resume point then: the first step without a result (0-based).
    step_index: int | None
    detail: str | None


class RunEvents(BaseModel):
    """A run's history, oldest first."""

    run_id: uuid.UUID
    kind: str
    events: list[EventView]
