"""The SQLAlchemy engine and session factory, one per process (re-made after a fork)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from dataengine.infra.settings import Settings, get_settings

#: Supabase's pooler in transaction mode listens on this port; a URL with it means such a pooler.
SUPABASE_TRANSACTION_POOLER_PORT = 6543

#: A pooled connection idle for longer than this is pinged before use (SQLAlchemy's pre-ping, but
#: not on every checkout: on the checkpoint path the ping was a fifth of each transaction's round trips,
#: measured by a benchmark of unchanged sources). A connection used moments ago that has since died fails its
#: first statement instead, which invalidates the pool; the run loop retries that transaction.
PING_AFTER_IDLE_S = 1.0
_USED_AT = "dataengine_used_at"

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
            s = get_settings()
            _engine = create_engine(
                s.sqlalchemy_url, pool_size=s.db_pool_size, max_overflow=s.db_max_overflow,
                connect_args=connect_args(s.sqlalchemy_url),
            )
            _ping_when_idle(_engine)
            if transaction_pooler(s.sqlalchemy_url) and session_limits(s):
                event.listen(_engine, "begin", _limit_transaction)
            _engine_pid = os.getpid()
            _sessions = sessionmaker(_engine, expire_on_commit=False)
        return _engine


def _ping_when_idle(engine: Engine) -> None:
    """Ping a pooled connection on checkout when it has been idle for ``PING_AFTER_IDLE_S``; one
    found dead invalidates the pool, and the checkout goes on with a new connection."""

    def used(dbapi_connection: Any, record: ConnectionPoolEntry, *_: Any) -> None:
        record.info[_USED_AT] = time.monotonic()

    def checkout(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection) -> None:
        if time.monotonic() - record.info.get(_USED_AT, 0.0) < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as err:
            if engine.dialect.is_disconnect(err, dbapi_connection, None):
                raise exc.InvalidatePoolError() from err
            raise

    event.listen(engine.pool, "connect", used)
    event.listen(engine.pool, "checkin", used)
    event.listen(engine.pool, "checkout", checkout)


def transaction_pooler(url: str | URL) -> bool:
    """Whether ``url`` reaches PostgreSQL through a transaction-mode pooler (``DATAENGINE_DB_POOLER``,
    or by default Supabase's pooler port)."""
    mode = get_settings().db_pooler
    if mode == "auto":
        return make_url(url).port == SUPABASE_TRANSACTION_POOLER_PORT
    return mode == "transaction"


def session_limits(settings: Settings) -> dict[str, str]:
    """The server-side timeouts that are on, in milliseconds, by PostgreSQL setting name."""
    limits = {
        "statement_timeout": settings.db_statement_timeout_s,
        "lock_timeout": settings.db_lock_timeout_s,
        "idle_in_transaction_session_timeout": settings.db_idle_in_transaction_timeout_s,
    }
    return {name: str(round(seconds * 1000)) for name, seconds in limits.items() if seconds > 0}


def connect_args(url: str | URL, *, limits: bool = True) -> dict[str, Any]:
    """psycopg's arguments for connections to ``url``: TCP keepalives both ways, and either the
    session limits as a startup option (direct) or no prepared statements (transaction pooler)."""
    s = get_settings()
    keepalives = {"idle": s.db_keepalives_idle_s, "interval": s.db_keepalives_interval_s, "count": s.db_keepalives_count}
    args: dict[str, Any] = {"keepalives": 1, **{f"keepalives_{k}": v for k, v in keepalives.items()}}
    if transaction_pooler(url):
        # Each transaction may run on another server session: a statement psycopg prepared on one
        # (after 5 runs: the heartbeat, the checkpoint) is missing or already there on the next.
        # Poolers also refuse the ``options`` startup parameter; the limits are set per transaction.
        args["prepare_threshold"] = None
        return args
    settings = {f"tcp_keepalives_{k}": str(v) for k, v in keepalives.items()}  # the server drops a silent us
    if limits:
        settings |= session_limits(s)
    given = make_url(url).query.get("options")
    options = [given] if isinstance(given, str) else list(given or ())
    args["options"] = " ".join([*options, *(f"-c {name}={value}" for name, value in settings.items())])
    return args


def _limit_transaction(conn: Connection) -> None:
    # Behind a transaction pooler session settings would stick to whichever server session ran
    # them, so the limits are set for each transaction: one more round trip per transaction.
    limits = session_limits(get_settings())
    query = "SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(limits))
    # dbapi_connection: a detached connection (the heartbeat's own) has no pool record, hence no
    # driver_connection; for psycopg's sync driver they are the same object.
    conn.connection.dbapi_connection.execute(query, [v for item in limits.items() for v in item])


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    get_engine()
    assert _sessions is not None  # noqa: S101  narrows a type the code above guarantees; not input validation
    with _sessions.begin() as session:
        yield session


@contextmanager
def statement_scope() -> Iterator[Connection]:
    """A connection for one statement that is a transaction by itself (the checkpoint): committed as it
    runs, with no BEGIN and no COMMIT round trip. Behind a transaction pooler that sets the session
    limits per transaction, it is a transaction like any other."""
    engine = get_engine()
    if transaction_pooler(engine.url) and session_limits(get_settings()):
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


@contextmanager
def statement_session() -> Iterator[Session]:
    """A session on ``statement_scope``'s connection: each statement a transaction by itself, with no
    BEGIN or COMMIT round trip. For reads and a single write that need no transaction around them
    (a completed run's summary, read from results no one else writes, then its last write)."""
    with statement_scope() as conn, Session(bind=conn) as session:
        yield session


def reset_engine() -> None:
    """Drop the engine (tests and the CLI call this after changing ``DATABASE_URL``)."""
    global _engine, _engine_pid, _sessions
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine = _engine_pid = _sessions = None
