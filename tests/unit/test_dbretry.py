"""Which errors mean the database is away (waited out) and which are the statement's own (raised at once)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors
from sqlalchemy.exc import IntegrityError, OperationalError

from dataengine.infra.dbretry import db_unavailable


@pytest.mark.parametrize("exc", [
    # PgBouncer's answer for 15 s after the server came back, raised by the driver in a connection
    # event (outside SQLAlchemy's wrapping): before, it failed the run and fooled the sweepers.
    errors.ProtocolViolation("server login has been failing, try again later (server_login_retry)"),
    errors.AdminShutdown("terminating connection due to administrator command"),
    psycopg.OperationalError("connection is lost"),
    psycopg.InterfaceError("the connection is closed"),
    OperationalError("SELECT 1", {}, errors.AdminShutdown("terminating connection")),
], ids=["pgbouncer login retry", "admin shutdown", "lost", "closed", "wrapped"])
def test_an_outage_is_recognised_raw_or_wrapped(exc):
    assert db_unavailable(exc)


@pytest.mark.parametrize("exc", [
    errors.UniqueViolation("duplicate key value violates unique constraint"),
    IntegrityError("INSERT", {}, errors.UniqueViolation("duplicate key")),
    ValueError("not a database error"),
], ids=["raw unique violation", "wrapped unique violation", "other"])
def test_a_statements_own_error_is_not_an_outage(exc):
    assert not db_unavailable(exc)
