"""The engine's connections are safe to lose and safe behind a transaction-mode pooler.

A worker frozen inside a transaction (SIGSTOP standing in for a VM pause or a partition) must
not hold a run row's lock for as long as its connection lives; ``dataengine migrate`` works
through PgBouncer in transaction mode and leaves no advisory lock behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import reload_settings
from helpers import create_audit, run_row
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from dataengine.infra.db import session_scope

pytestmark = pytest.mark.timeout(90)
ROUTES = pytest.mark.parametrize("db_route", ["direct", "pgbouncer"], indirect=True)
ROOT = Path(__file__).resolve().parents[2]

#: A worker that locks a run row with an UPDATE and stops before its COMMIT.
FREEZER = """
import sys, uuid
from sqlalchemy import text
from dataengine.infra.db import session_scope

with session_scope() as session:
    session.execute(text("UPDATE geo_runs SET lease_owner = 'frozen/1' WHERE id = :id"), {"id": uuid.UUID(sys.argv[1])})
    print("locked", flush=True)
    sys.stdin.readline()  # the test stops us here, inside the transaction
"""


@ROUTES
def test_session_limits_hold_in_every_transaction(db_url, db_route, monkeypatch):
    for name, value in db_route.items():
        monkeypatch.setenv(name, value)
    reload_settings()
    for _ in range(8):  # psycopg would prepare a statement run 5 times; through the pooler it must not
        with session_scope() as session:
            shown = session.execute(text(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
                " current_setting('idle_in_transaction_session_timeout')"
            )).one()
    assert tuple(shown) == ("30s", "10s", "6s")


@ROUTES
def test_a_worker_frozen_inside_a_transaction_frees_the_run_row_within_seconds(db_url, db_route):
    from dataengine.engine.runs import Claim, claim_run
    from tasks.propertyaudit import JOB

    run_id = create_audit(3)
    env = {**os.environ, "DATABASE_URL": db_url, **db_route, "DATAENGINE_DB_IDLE_IN_TRANSACTION_TIMEOUT_S": "2"}
    frozen = subprocess.Popen([sys.executable, "-c", FREEZER, str(run_id)], env=env, cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert frozen.stdout is not None and frozen.stderr is not None
        assert frozen.stdout.readline() == b"locked\n", frozen.stderr.read().decode()
        os.kill(frozen.pid, signal.SIGSTOP)
        with pytest.raises(OperationalError, match="could not obtain lock"), session_scope() as session:
            session.execute(text("SELECT 1 FROM geo_runs WHERE id = :id FOR UPDATE NOWAIT"), {"id": run_id})
        started = time.monotonic()
        with session_scope() as session:
            # Without the frozen session's timeout this claim would wait for as long as it lives.
            session.execute(text("SET LOCAL lock_timeout = '20s'"))
            claim = claim_run(session=session, job=JOB, run_id=run_id, worker_id="test/1", task_id=None)
        waited_s = time.monotonic() - started
        assert isinstance(claim, Claim), claim
        assert waited_s < 8, f"the frozen transaction held the row for {waited_s:.1f}s"
        os.kill(frozen.pid, signal.SIGCONT)
        _, err = frozen.communicate(b"\n", timeout=20)
        assert frozen.returncode != 0, "the frozen worker's transaction must not commit after it was ended"
        assert run_row(run_id)["lease_owner"] == "test/1"
    finally:
        if frozen.poll() is None:
            frozen.kill()
            frozen.wait()


def test_migrate_through_pgbouncer_in_transaction_mode_twice_at_once(template_db, pgbouncer):
    server = make_url(template_db)
    name = f"de_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = pgbouncer.url_for(server.set(database=name).render_as_string(hide_password=False))
        env = {**os.environ, "DATABASE_URL": url, "DATAENGINE_DB_POOLER": "transaction"}
        exe = Path(sys.executable).with_name("dataengine")
        migrators = [subprocess.Popen([str(exe), "migrate"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT) for _ in range(2)]
        outputs = [p.communicate(timeout=60)[0].decode() for p in migrators]
        assert [p.returncode for p in migrators] == [0, 0], outputs
        db = create_engine(server.set(database=name))
        with db.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM alembic_version")) == 1
            assert conn.scalar(text("SELECT to_regclass('geo_runs') IS NOT NULL"))
        db.dispose()
        with admin.connect() as conn:  # a session-level lock would stay held in a server session pgbouncer keeps
            leaked = conn.scalar(text(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND d.datname = :n"
            ), {"n": name})
        assert leaked == 0
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_pooled_connection_the_server_dropped_while_idle_is_replaced_on_checkout(db_url, monkeypatch):
    import dataengine.infra.db as db

    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # every checkout comes after an idle spell
    with session_scope() as session:
        pid = session.scalar(text("SELECT pg_backend_pid()"))
    other = create_engine(db_url, poolclass=NullPool)
    with other.connect() as conn:  # an idle timeout, a restart: the server ends it
        # With a timeout, pg_terminate_backend returns once the session has ended, not when it is signalled.
        assert conn.scalar(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})
    with session_scope() as session:
        assert session.scalar(text("SELECT pg_backend_pid()")) != pid


def test_a_connection_used_moments_ago_is_not_pinged_again(db_url, monkeypatch):
    # The checkpoint path takes a pooled connection for every transaction: a ping each time was one
    # round trip in five. Only a connection idle for PING_AFTER_IDLE_S is pinged.
    from dataengine.infra.db import get_engine

    dialect = get_engine().dialect
    with session_scope() as session:  # the pool's connection, however long it sat before the test
        session.execute(text("SELECT 1"))
    pings: list[object] = []
    real_ping = dialect.do_ping
    monkeypatch.setattr(dialect, "do_ping", lambda conn: pings.append(conn) or real_ping(conn))
    for _ in range(5):
        with session_scope() as session:
            session.execute(text("SELECT 1"))
    assert pings == []


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_sslmode_in_the_database_url_reaches_the_driver(db_url, sslmode, monkeypatch):
    """``?sslmode=`` (and libpq's other TLS options) in DATABASE_URL are passed through as written: the
    session is encrypted exactly when asked; a server without TLS refuses ``require`` saying so."""
    url = make_url(db_url).update_query_dict({"sslmode": sslmode})
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    reload_settings()
    try:
        with session_scope() as session:
            encrypted = session.scalar(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    except OperationalError as exc:
        assert sslmode == "require" and "SSL" in str(exc), exc
        return
    assert encrypted is (sslmode == "require")
