"""Scenarios 4 and 5: PostgreSQL restarted mid-run, and the database unreachable for 30 s; each
directly and through a real PgBouncer in transaction mode (seed 004's deployment).

Two workers share the runs' database, so a lease stolen because of the outage would show as a
takeover; one run of 100 steps of every job checks the fleet's promises (``fleet.Fleet.check``).
"""

from __future__ import annotations

import time

import pytest
from faults.faultkit import worker_db_env
from sqlalchemy.engine import make_url
from tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(240)
ROUTES = pytest.mark.parametrize("route", ["direct", "pgbouncer"])
#: A takeover from a worker the sweeper believed dead.
TAKEOVER = "whose worker"


def tokens(fleet) -> dict:
    return {r["id"]: r["fencing_token"] for r in fleet.rows()}


def assert_not_stolen(fleet, standing, before: dict) -> None:
    """No run changed hands after ``before`` (its fencing tokens then), none was charged a lost worker,
    and every worker is still up."""
    rows = fleet.rows()
    assert all(r["fencing_token"] == before[r["id"]] and r["step_losses"] == {} for r in rows), \
        [(before[r["id"]], r["fencing_token"], r["step_losses"]) for r in rows]
    for w in standing:
        assert w.proc.poll() is None, f"{w.name} exited"
        assert TAKEOVER not in w.log_text(), f"{w.name}: a run was taken from a live worker"


@ROUTES
def test_postgresql_restarted_mid_run(route, private_db, bouncer_to, workers, fake_llm, fleet_on, report):
    """4. PostgreSQL restarted (fast shutdown: every session ended) mid-run: steps finish, checkpoints
    retry, each run resumes at its last committed step; no worker dies or hangs, no lease is stolen."""
    url = private_db.app_url
    env = worker_db_env(url, bouncer_to(private_db.port) if route == "pgbouncer" else None)
    standing = [workers(name, env=env) for name in ("a", "b")]
    fleet = fleet_on(url)
    fleet.submit()
    fleet.wait_progressed(15)
    fleet.fault("postgresql restarted")
    before = tokens(fleet)
    private_db.restart()
    recovered = fleet.wait_recovered()
    figures = fleet.check()
    assert_not_stolen(fleet, standing, before)
    report(figures, recovery_s=recovered, route=route)


OUTAGE_S = 30


@ROUTES
def test_the_database_unreachable_for_30_seconds(route, db_url, bouncer_to, workers, fake_llm, fleet_on, report):
    """5. The database unreachable for 30 s (every connection cut, new ones refused; behind the pooler,
    the pooler's own connections to the server): nothing recorded is lost, workers keep running, and
    no lease is stolen from a live worker because of the outage."""
    server = make_url(db_url)
    proxy = TcpProxy((server.host or "127.0.0.1", server.port or 5432))
    try:
        if route == "pgbouncer":
            env = worker_db_env(db_url, bouncer_to(proxy.port))
        else:
            env = worker_db_env(server.set(port=proxy.port).render_as_string(hide_password=False))
        standing = [workers(name, env=env) for name in ("a", "b")]
        fleet = fleet_on(db_url)
        fleet.submit(latency_ms=600)
        fleet.wait_progressed(10)
        fleet.fault("database unreachable")
        before = tokens(fleet)
        proxy.cut()
        time.sleep(OUTAGE_S)  # the outage itself
        proxy.restore()
        restored = time.monotonic()
        recovered = fleet.wait_recovered(restored, timeout_s=90)
        figures = fleet.check(timeout_s=180)
        assert_not_stolen(fleet, standing, before)
        report(figures, recovery_s=recovered, outage_s=OUTAGE_S, route=route)
    finally:
        proxy.close()
