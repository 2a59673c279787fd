"""The peer plain Celery: a bare app on the same Redis, with ``acks_late`` and nothing of ours.

Workers start with ``celery -A bare_celery worker`` (``_peers.start_bare_worker``); a benchmark
imports it to send. Everything else is Celery's defaults: no result backend, no events, and
Redis' visibility timeout of one hour. Its own queue, so that its workers and ours, started
side by side on one Redis DB, never take each other's messages. Built at import, as a plain
Celery project is, on the benchmarks' Redis DB; ``DATABASE_URL`` comes from the benchmark's ``configure()``.
"""

from __future__ import annotations

import functools
import os
import time
from datetime import datetime

import _peers
import redis
from celery import Celery, Task
from sqlalchemy import DateTime, create_engine, func, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

QUEUE = "bare_peer"
#: A Redis list per task id: the workers that received it, one entry per delivery.
DELIVERIES_KEY = "bare_peer:deliveries:{task_id}"

app = Celery("bare_celery", broker=_peers._common.REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)


class Base(DeclarativeBase):
    """The bare app's own table, in the benchmark's database."""


class Tick(Base):
    """A row the ORM task marks done, with the database's clock."""

    __tablename__ = "bare_peer_ticks"

    id: Mapped[int] = mapped_column(primary_key=True)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@functools.cache
def _sessions() -> sessionmaker:
    # Built in each pool process on its first task: connections are not shared across fork.
    return sessionmaker(create_engine(os.environ["DATABASE_URL"]))


@app.task(name="bare_peer.noop")
def noop() -> None:
    """Nothing: the baseline of a send."""


@app.task(name="bare_peer.orm_update")
def orm_update(tick_id: int) -> None:
    """One SQLAlchemy ORM UPDATE and its commit."""
    with _sessions()() as session:
        session.execute(update(Tick).where(Tick.id == tick_id).values(done_at=func.clock_timestamp()))
        session.commit()


@app.task(name="bare_peer.long_task", bind=True)
def long_task(self: Task, seconds: float) -> None:
    """Records its delivery, then works for ``seconds`` (long enough to be killed mid-way)."""
    client = redis.Redis.from_url(_peers._common.REDIS_URL)
    client.rpush(DELIVERIES_KEY.format(task_id=self.request.id), self.request.hostname)
    client.close()
    time.sleep(seconds)
