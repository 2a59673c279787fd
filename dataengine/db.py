"""The SQLAlchemy engine and session factory, one per process (re-made after a fork)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from dataengine.settings import get_settings

#: The loop thread and the heartbeat thread may both ask first; only one may build the engine.
_lock = threading.Lock()
_engine: Engine | None = None
_engine_pid: int | None = None
_sessions: sessionmaker[Session] | None = None


def get_engine() -> Engine:
    """This process's engine; a forked child never reuses its parent's connections."""
    global _engine, _engine_pid, _sessions
    with _lock:
        if _engine is None or _engine_pid != os.getpid():
            if _engine is not None:
                _engine.dispose(close=False)
            _engine = create_engine(get_settings().sqlalchemy_url, pool_pre_ping=True, pool_size=5, max_overflow=10)
            _engine_pid = os.getpid()
            _sessions = sessionmaker(_engine, expire_on_commit=False)
        return _engine


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    get_engine()
    assert _sessions is not None
    with _sessions.begin() as session:
        yield session


def reset_engine() -> None:
    """Drop the engine (tests and the CLI call this after changing ``DATABASE_URL``)."""
    global _engine, _engine_pid, _sessions
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine = _engine_pid = _sessions = None
