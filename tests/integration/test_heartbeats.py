"""The process's heartbeat renews every run it holds in one statement per job, and tells each run's
loop what became of its lease. On the engine tests' own job (Echo), in this process."""

from __future__ import annotations

import threading
import time

import pytest
from echoruns import claim, create_texts, expire_lease, run_row
from enginejob import ECHO as JOB
from sqlalchemy import event

from dataengine.db import get_engine, session_scope
from dataengine.heartbeats import Heartbeats, Lease
from dataengine.logs import run_logger
from dataengine.runs import request_cancel

pytestmark = pytest.mark.usefixtures("echo")


def test_one_beat_renews_every_run_of_the_process_in_one_statement_and_flags_lost_and_cancelled_runs():
    claims = [claim(create_texts(2), "w/1") for _ in range(20)]
    leases = [Lease(job=JOB, claim=c, log=run_logger(run_id=c.run_id, task_id=None)) for c in claims]
    beat = Heartbeats()  # not started: beaten by hand
    for lease in leases:
        beat.add(lease)
    before = {c.run_id: run_row(c.run_id)["lease_expires_at"] for c in claims}
    statements: list[str] = []
    listener = lambda conn, cursor, sql, *rest: statements.append(sql)  # noqa: E731
    event.listen(get_engine(), "before_cursor_execute", listener)
    try:
        beat.beat()
    finally:
        event.remove(get_engine(), "before_cursor_execute", listener)
    assert len(statements) == 1  # liveness writes do not grow with the runs a process holds
    assert all(run_row(c.run_id)["lease_expires_at"] > before[c.run_id] for c in claims)

    taken, cancelled = claims[0], claims[1]
    expire_lease(taken.run_id, owner="w/1")
    claim(taken.run_id, "b/2")
    with session_scope() as session:
        request_cancel(session=session, job=JOB, run_id=cancelled.run_id)
    beat.beat()
    assert leases[0].lost.is_set() and not leases[0].cancel.is_set()
    assert leases[1].cancel.is_set() and not leases[1].lost.is_set()
    assert not any(lease.lost.is_set() or lease.cancel.is_set() for lease in leases[2:])
    beat.remove(leases[2], wait_s=1)
    beat.beat()
    assert run_row(claims[2].run_id)["lease_expires_at"] < run_row(claims[3].run_id)["lease_expires_at"]


def test_a_run_that_ends_stops_waiting_for_a_renewal_the_database_does_not_answer(monkeypatch):
    from dataengine import heartbeats

    c = claim(create_texts(2), "w/1")
    lease = Lease(job=JOB, claim=c, log=run_logger(run_id=c.run_id, task_id=None))
    answered, calls = threading.Event(), []

    def renew_leases(**kwargs):  # a black-holed server: no answer until the test says so
        calls.append(kwargs["claims"])
        answered.wait(10)
        return {}

    monkeypatch.setattr(heartbeats, "renew_leases", renew_leases)
    beat = Heartbeats()
    beat.add(lease)
    stuck = threading.Thread(target=beat.beat)
    stuck.start()
    time.sleep(0.1)
    started = time.monotonic()
    beat.remove(lease, wait_s=0.3)
    assert 0.25 <= time.monotonic() - started < 2  # bounded, not until TCP gives up
    answered.set()
    stuck.join(5)
    beat.beat()
    assert calls == [[c]]  # the lease is no longer renewed
