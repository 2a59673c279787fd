"""Liveness per process: one heartbeat statement per beat however many runs the process holds, what
it tells each run's loop, and how a sweeper tells a dead process from a live one. On the engine
tests' own job (Echo), in this process."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from echoruns import claim, create_texts, expire_lease, run_row
from enginejob import ECHO as JOB
from sqlalchemy import event, text

from dataengine.engine.heartbeats import Heartbeats, Lease
from dataengine.engine.jobs import StepOutcome
from dataengine.engine.liveness import dead_owners
from dataengine.engine.runloop import execute_run
from dataengine.engine.runs import request_cancel
from dataengine.engine.sweeper import take_back_dead
from dataengine.infra.db import get_engine, session_scope, statement_scope
from dataengine.infra.logs import run_logger

pytestmark = pytest.mark.usefixtures("echo")


def lease_of(c) -> Lease:
    return Lease(job=JOB, claim=c, log=run_logger(run_id=c.run_id, task_id=None))


def heartbeat(owner: str) -> dict | None:
    with session_scope() as session:
        row = session.execute(text("SELECT * FROM worker_heartbeats WHERE worker_id = :o"), {"o": owner}).first()
    return row._asdict() if row else None


def age_heartbeat(owner: str, seconds: float) -> None:
    with session_scope() as session:
        session.execute(text("UPDATE worker_heartbeats SET beat_at = now() - make_interval(secs => :s) "
                             "WHERE worker_id = :o"), {"s": seconds, "o": owner})


def test_one_beat_is_one_statement_for_every_run_of_the_process_and_flags_lost_and_cancelled_runs():
    claims = [claim(create_texts(2), "w/1") for _ in range(20)]
    leases = [lease_of(c) for c in claims]
    beat = Heartbeats()  # not started: beaten by hand
    for lease in leases:
        beat.add(lease)
    before = {c.run_id: run_row(c.run_id) for c in claims}
    statements: list[str] = []
    listener = lambda conn, cursor, sql, *rest: statements.append(sql)  # noqa: E731
    event.listen(get_engine(), "before_cursor_execute", listener)
    try:
        beat.beat()
    finally:
        event.remove(get_engine(), "before_cursor_execute", listener)
    assert len(statements) == 1  # liveness writes do not grow with the runs a process holds
    assert heartbeat("w/1")["backend_pid"] is not None
    assert all(run_row(c.run_id) == before[c.run_id] for c in claims)  # no run row is written

    taken, cancelled = claims[0], claims[1]
    expire_lease(taken.run_id, owner="x/9")
    claim(taken.run_id, "b/2")
    with session_scope() as session:
        request_cancel(session=session, job=JOB, run_id=cancelled.run_id)
    beat.beat()
    assert leases[0].lost.is_set() and not leases[0].cancel.is_set()
    assert leases[1].cancel.is_set() and not leases[1].lost.is_set()
    assert not any(lease.lost.is_set() or lease.cancel.is_set() for lease in leases[2:])
    for lease in leases:
        beat.remove(lease, wait_s=1)
    beat.close()
    assert heartbeat("w/1") is None  # gone with the owner's last lease: an idle process writes nothing


def test_a_run_the_process_owns_but_no_longer_executes_is_handed_back_by_its_heartbeat():
    """A hand-back the database did not answer leaves the run owned by a live process: its heartbeat
    frees it once its lease ran out, for the sweeper to send again, so it is not held for ever."""
    held, orphan, fresh, ending = (claim(create_texts(2), "w/1") for _ in range(4))
    expire_lease(orphan.run_id, owner="w/1")
    with session_scope() as session:  # its last checkpoint a lease ago and more
        session.execute(text("UPDATE echo_runs SET last_updated_at = now() - interval '1 minute' WHERE id = :id"),
                        {"id": orphan.run_id})
    # Claimed long ago but checkpointed moments ago: a run between the end of its lease here and its
    # last write (its loop has just stopped vouching for it), not an orphan.
    expire_lease(ending.run_id, owner="w/1")
    beat = Heartbeats()
    lease = lease_of(held)
    beat.add(lease)
    beat.beat()
    beat.remove(lease, wait_s=1)
    beat.close()
    row = run_row(orphan.run_id)
    assert row["lease_owner"] is None and row["fencing_token"] == orphan.token + 1 and row["step_losses"] == {}
    assert run_row(fresh.run_id)["lease_owner"] == "w/1"  # just claimed, its executor not started yet
    assert run_row(ending.run_id)["lease_owner"] == "w/1"
    assert run_row(held.run_id)["lease_owner"] == "w/1"


def test_a_run_that_ends_stops_waiting_for_a_beat_the_database_does_not_answer(monkeypatch):
    c = claim(create_texts(2), "w/1")
    lease = lease_of(c)
    asked, answered = threading.Event(), threading.Event()

    class BlackHole:  # a server that does not answer until the test says so
        def execute(self, *args, **kwargs):
            asked.set()
            answered.wait(10)
            raise ConnectionError("no answer")

    beat = Heartbeats()
    monkeypatch.setattr(beat, "_connection", lambda: BlackHole())
    beat.add(lease)
    stuck = threading.Thread(target=beat.beat)
    stuck.start()
    assert asked.wait(10), "the beat never reached the database"
    started = time.monotonic()
    beat.remove(lease, wait_s=0.3)
    assert 0.25 <= time.monotonic() - started < 2  # bounded, not until TCP gives up
    answered.set()
    stuck.join(5)
    assert lease.failed and not lease.lost.is_set()


def test_a_sweeper_finds_a_process_dead_by_a_stale_heartbeat_or_by_its_closed_connection():
    alive, stalled, killed = (claim(create_texts(2), f"{name}/1") for name in ("alive", "stalled", "killed"))
    beat = Heartbeats()
    leases = [lease_of(c) for c in (alive, stalled, killed)]
    for lease in leases:
        beat.add(lease)
    beat.beat()
    with statement_scope() as conn:
        assert dead_owners(conn) == []
    # "stalled" has not beaten for longer than a lease; "killed" for a little while, and its connection is gone.
    age_heartbeat("stalled/1", 4)
    age_heartbeat("killed/1", 0.6)
    with session_scope() as session:
        session.execute(text("UPDATE worker_heartbeats SET backend_pid = 999999 WHERE worker_id = 'killed/1'"))
    age_heartbeat("alive/1", 0.6)  # as late, but connected: a busy process, not a dead one
    with statement_scope() as conn:
        assert sorted(dead_owners(conn)) == ["killed/1", "stalled/1"]
    sent: list[str] = []
    requeued = take_back_dead(send=lambda name, kwargs, queue=None: sent.append(kwargs["run_id"]), jobs=[JOB])
    assert sorted(str(r.run_id) for r in requeued) == sorted(sent) == sorted([str(stalled.run_id), str(killed.run_id)])
    assert run_row(alive.run_id)["lease_owner"] == "alive/1"
    assert heartbeat("killed/1") is None and heartbeat("alive/1") is not None
    assert take_back_dead(send=lambda name, kwargs, queue=None: sent.append(kwargs["run_id"]), jobs=[JOB]) == []  # each taken back once
    for lease in leases:
        beat.remove(lease, wait_s=1)
    beat.close()


def test_a_live_process_keeps_a_run_whose_step_outlasts_the_lease(monkeypatch):
    """Liveness is the process's: a step longer than the lease, with no checkpoint meanwhile, is not
    taken over while the process beats, however often sweepers look."""
    monkeypatch.setenv("DATAENGINE_LEASE_S", "1")
    monkeypatch.setenv("DATAENGINE_HEARTBEAT_INTERVAL_S", "0.1")
    from conftest import reload_settings

    reload_settings()

    def slow(ctx, index, item):
        time.sleep(2.5)  # the step itself: longer than the 1 s lease
        return StepOutcome({"echoed": item})

    run_id = create_texts(2)
    stop, taken = threading.Event(), []

    def sweeper() -> None:
        while not stop.wait(0.1):
            taken.extend(take_back_dead(send=lambda name, kwargs, queue=None: None, jobs=[JOB]))

    sweeping = threading.Thread(target=sweeper)
    sweeping.start()
    try:
        outcome = execute_run(job=dataclasses.replace(JOB, execute_step=slow), run_id=run_id, worker_id="w/1",
                              task_id=None)
    finally:
        stop.set()
        sweeping.join(5)
    assert outcome.status == "completed" and taken == []
    assert run_row(run_id)["fencing_token"] == 1
