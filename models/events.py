"""A run's history: what happened to it, when, and by which worker (``dataengine.engine.events``)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Identity, Index, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class EventType(enum.StrEnum):
    """What happened to a run. Written in the transaction that did it; never one per step."""

    submitted = "submitted"
    #: A worker took the lease at step 0 (``resumed`` when the run had recorded steps already).
    claimed = "claimed"
    resumed = "resumed"
    #: A step failed for now (rate limit, outage); the run was handed back and will be retried.
    step_failed = "step_failed"
    #: The worker gave the run back unfinished (it was shutting down, or lost its database).
    handed_back = "handed_back"
    #: The worker found its claim gone (another worker took the run over) and stopped.
    lease_lost = "lease_lost"
    #: A sweeper took the run back from a dead worker, or sent again a run no worker claimed.
    recovered = "recovered"
    #: It still heartbeats but has made no progress for many times its usual step time.
    stalled = "stalled"
    #: A daily budget (the fleet's or its workspace's) was spent: the run was handed back, to go on
    #: once the budget allows (the next day, or when it is raised).
    paused = "paused"
    #: An operator sent a failed or cancelled run back to work.
    retried = "retried"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class RunEvent(Base):
    """One event of one run of any job (``job`` is the job's key). Pruned by age
    (``DATAENGINE_EVENTS_RETENTION_DAYS``)."""

    __tablename__ = "run_events"
    __table_args__ = (
        Index("ix_run_events_run", "run_id", "id"),
        Index("ix_run_events_at", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    run_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    job: Mapped[str] = mapped_column(String(64), nullable=False)
    event: Mapped[str] = mapped_column(String(32), nullable=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.clock_timestamp())
    #: The worker process that did it (a lease owner name), or None (a producer, the API, an operator).
    worker: Mapped[str | None] = mapped_column(String(200))
    #: The run's fencing token after the event.
    fencing_token: Mapped[int | None] = mapped_column(BigInteger)
    #: The run's resume point at the event: the first step without a result.
    step_index: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)
