"""The columns every run row and every step-result row share (the declarative base is ``models.declarative``).

The lease and checkpoint columns are written by ``dataengine.engine.runs`` and
``dataengine.engine.sweeper`` only.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from models.declarative import NAMING, Base, new_base
from models.workspaces import WORKSPACE_ID_CHARS, Workspace

__all__ = ["NAMING", "Base", "RunMixin", "RunStatus", "StepMixin", "StepResultMixin", "new_base"]

class RunStatus(enum.StrEnum):
    """A run's life: queued -> running -> completed | failed | cancelled."""

    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_STATUSES = (RunStatus.queued.value, RunStatus.running.value)
#: A run's priority tiers, highest first (``dataengine.infra.tiers`` says what each means).
PRIORITY_TIERS = ("high", "normal", "low")
FINAL_STATUSES = (RunStatus.completed.value, RunStatus.failed.value, RunStatus.cancelled.value)


def _ts(*, nullable: bool = True, default_now: bool = False) -> Mapped[datetime | None]:
    return mapped_column(
        DateTime(timezone=True), nullable=nullable, server_default=func.now() if default_now else None
    )


class RunMixin:
    """The public run-row contract plus the engine's lease, fencing and usage columns."""

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default=RunStatus.queued.value)
    progress_pct: Mapped[Decimal] = mapped_column(Numeric(5, 2), nullable=False, server_default="0")
    #: Index of the first step without a recorded result: where a resumed run starts.
    current_query_index: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    #: 0 until the first claim counts the steps, so a producer that writes the row may leave it out.
    total_steps: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    completed_steps: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)
    last_updated_at: Mapped[datetime] = _ts(nullable=False, default_now=True)
    started_at: Mapped[datetime | None] = _ts()
    finished_at: Mapped[datetime | None] = _ts()
    error_message: Mapped[str | None] = mapped_column(Text)
    eta_s: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(14, 6), nullable=False, server_default="0")
    #: What the run found, written in the transaction that completes it.
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    #: A producer's key: a second submit with the same key (and the same spec) returns the same run.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    #: SHA-256 (hex) of the normalised spec a key's run was made from: the same key with another spec is
    #: refused. NULL for runs made without a key, by a producer's own SQL, or before it was stored.
    spec_digest: Mapped[str | None] = mapped_column(String(64))

    # Lease and fencing: owned by dataengine.engine.runs and dataengine.engine.sweeper.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = _ts()
    heartbeat_at: Mapped[datetime | None] = _ts()
    fencing_token: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    task_id: Mapped[str | None] = mapped_column(String(64))
    #: Steps started and not yet recorded, as of this worker's last checkpoint: what a dead worker had in flight.
    in_flight_steps: Mapped[list[int]] = mapped_column(ARRAY(Integer), nullable=False, server_default="{}")
    #: Times a worker died with a step in flight, by step index (``{"6": 2}``); a poison step ends the run.
    step_losses: Mapped[dict[str, int]] = mapped_column(JSONB, nullable=False, server_default="{}")
    #: The most the run may spend on LLM calls (its spec's ``max_cost_usd``); NULL: no budget of its own.
    max_cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    @declared_attr
    def workspace_id(cls) -> Mapped[str | None]:
        """The workspace whose provider key and limits the run's calls use; NULL: the engine's own key. A
        workspace with runs cannot be deleted. The key names the table's column, not its name, so that a
        test job's tables on a metadata of their own refer to it too."""
        return mapped_column(String(WORKSPACE_ID_CHARS), ForeignKey(Workspace.__table__.c.id, ondelete="RESTRICT"))
    #: Its tier: taken from the broker before the tiers below it, and weighted where capacity is shared.
    priority: Mapped[str] = mapped_column(String(8), nullable=False, server_default="normal")
    #: Set by a sweeper when the run still heartbeats but has made no progress for many times its usual
    #: step time (a hung provider); the next checkpoint clears it.
    stalled_at: Mapped[datetime | None] = _ts()

    @declared_attr.directive
    def __table_args__(cls) -> tuple:
        statuses = ", ".join(f"'{s.value}'" for s in RunStatus)
        active = f"status IN ({', '.join(repr(s) for s in ACTIVE_STATUSES)})"
        return (
            CheckConstraint(f"status IN ({statuses})", name="status"),
            CheckConstraint("progress_pct >= 0 AND progress_pct <= 100", name="progress_pct"),
            CheckConstraint(f"priority IN ({', '.join(repr(t) for t in PRIORITY_TIERS)})", name="priority"),
            # The sweeper's scan, in two index scans: active runs by lease expiry, and active runs a
            # producer wrote without a lease (no message seen yet) by creation time.
            Index(f"ix_{cls.__tablename__}_active_lease", "lease_expires_at", postgresql_where=text(active)),
            # The runs of a process found dead, taken back at once.
            Index(f"ix_{cls.__tablename__}_active_owner", "lease_owner", postgresql_where=text(active)),
            Index(
                f"ix_{cls.__tablename__}_unleased",
                "created_at",
                postgresql_where=text(f"{active} AND lease_expires_at IS NULL"),
            ),
            # Newest first, a page at a time (the API's list, the runs page): scanned backwards.
            Index(f"ix_{cls.__tablename__}_newest", "created_at", "id"),
            # The runs that ended one way, the latest first (dataengine runs --status failed --since 1d).
            Index(f"ix_{cls.__tablename__}_ended", "status", "finished_at"),
        )


class StepMixin:
    """A step's input row (a query, a review, a source): unique on (run, step index), read in
    pages from the resume point. Set ``__run_table__`` to the job's run table."""

    __run_table__: ClassVar[str]

    @declared_attr
    def run_id(cls) -> Mapped[uuid.UUID]:
        return mapped_column(ForeignKey(f"{cls.__run_table__}.id", ondelete="CASCADE"), primary_key=True)

    @declared_attr.directive
    def __table_args__(cls) -> tuple:
        # Spelled out: the key's index must lead with run_id, for "this run's steps from index N on".
        return (PrimaryKeyConstraint("run_id", "query_index"),)

    #: The column is ``query_index`` in every job, after the run row's ``current_query_index``.
    query_index: Mapped[int] = mapped_column(Integer, primary_key=True)


class StepResultMixin(StepMixin):
    """Columns of a recorded step: unique on (run, step index), stamped with the writer's fencing
    token. Set ``__run_table__`` to the job's run table."""

    fencing_token: Mapped[int] = mapped_column(BigInteger, nullable=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(14, 6), nullable=False, server_default="0")
    latency_ms: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    created_at: Mapped[datetime] = _ts(nullable=False, default_now=True)
