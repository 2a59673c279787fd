"""Worker processes' heartbeats: a run's lease holds while its holder's heartbeat is fresh."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class WorkerHeartbeat(Base):
    """One row per process holding runs, written a few times a second (``dataengine.engine.heartbeats``).

    ``backend_pid`` and ``backend_start`` name the PostgreSQL connection the last beat came over:
    a process that dies closes it at once, so a sweeper need not wait for the heartbeat to go stale
    (behind a transaction pooler the connection is the pooler's and outlives the process: there the
    heartbeat's age alone tells).
    """

    __tablename__ = "worker_heartbeats"

    #: The lease owner name of the process (``dataengine.infra.workerid``).
    worker_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    beat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    #: Beats written since the row was created (what ``bench/liveness.py`` counts).
    beats: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="1")
    backend_pid: Mapped[int | None] = mapped_column(Integer)
    backend_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
