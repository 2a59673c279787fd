"""Riding out database outages: which errors mean "the database is away", and a bounded retry.

A restarted server, a dropped connection, a failover or a pooler that lost its backend all
surface as these errors; the engine's writes are fenced and idempotent, so trying again is safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from dataengine.infra.errors import DatabaseUnavailable

T = TypeVar("T")
#: Backoff between attempts: doubles from the first to the last value.
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0


def db_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or answered (as opposed to a bad statement).

    Also the driver's own errors, which reach here unwrapped when they happen in a connection event
    (the session limits set as a transaction begins): behind PgBouncer, ``server login has been
    failing, try again later`` (``server_login_retry``, 15 s by default after the server restarted)
    arrives that way, as a protocol violation (SQLSTATE class 08, a connection exception)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def retry_db(
    fn: Callable[[], T], *, what: str, run_id: object, limit_s: float, log: logging.LoggerAdapter | logging.Logger
) -> T:
    """Call ``fn`` until it gets through, for at most ``limit_s`` seconds of database trouble.

    Other errors propagate at once; an outage longer than the limit raises ``DatabaseUnavailable``.
    """
    started = time.monotonic()
    backoff = FIRST_BACKOFF_S
    while True:
        try:
            return fn()
        except Exception as exc:
            if not db_unavailable(exc):
                raise
            waited = time.monotonic() - started
            if waited + backoff > limit_s:
                raise DatabaseUnavailable(seconds=waited, what=what, run_id=run_id) from exc
            log.warning("database unreachable while %s (%s); retrying in %.1fs", what, type(exc).__name__, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
