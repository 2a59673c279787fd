"""Fencing and the sweeper, made to fail if either is broken: a worker that lost its claim writes
nothing, a sweep takes each run once, sends each on its own, and resends only what was lost.

They run on the engine tests' own job (Echo, ``tests/enginejob.py``), in this process.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from conftest import wait_for
from echoruns import claim, create_texts, expire_lease, record, results, run_row
from enginejob import ECHO as JOB
from helpers import result_row
from sqlalchemy import text

from dataengine.engine.heartbeats import Heartbeats, Lease
from dataengine.engine.jobs import StepOutcome
from dataengine.engine.runloop import execute_run
from dataengine.engine.runs import (
    Claim,
    checkpoint,
    due_runs,
    finish_run,
    release_run,
    requeue_expired,
)
from dataengine.engine.sweeper import sweep_job
from dataengine.infra.db import session_scope
from dataengine.infra.errors import LeaseLost
from dataengine.infra.logs import run_logger
from dataengine.infra.settings import get_settings
from models.base import RunStatus

pytestmark = pytest.mark.usefixtures("echo")


def renew(c: Claim) -> bool:
    """One heartbeat of the process holding the claim: whether cancellation was requested; ``LeaseLost``
    if the lease is gone."""
    lease = Lease(job=JOB, claim=c, log=run_logger(run_id=c.run_id, task_id=None))
    beat = Heartbeats()  # not started: beaten by hand
    beat.add(lease)
    beat.beat()
    beat.remove(lease, wait_s=1)
    beat.close()
    if lease.lost.is_set():
        raise LeaseLost(run_id=c.run_id, token=c.token)
    return lease.cancel.is_set()


def ignore_sends(name: str, kwargs: dict, queue: str | None = None) -> None:
    return None


def test_a_takeback_by_the_sweeper_fences_the_worker_that_held_the_run():
    run_id = create_texts(4)
    paused = claim(run_id, "a/1")
    expire_lease(run_id, owner="a/1")  # a/1 is only paused (SIGSTOP, a VM pause), not dead
    sweep_job(job=JOB, send=ignore_sends)
    with pytest.raises(LeaseLost):
        renew(paused)  # waking up, it must not renew a lease the sweeper took back
    with pytest.raises(LeaseLost):
        record(paused, [0], 1)
    row = run_row(run_id)
    assert row["lease_owner"] is None and results(run_id) == {}


def test_a_stale_checkpoint_inserts_nothing_even_if_its_transaction_commits():
    run_id = create_texts(4)
    stale = claim(run_id, "a/1")
    expire_lease(run_id, owner="a/1")
    claim(run_id, "b/2")
    with session_scope() as session:  # commits when the block ends
        with pytest.raises(LeaseLost):
            checkpoint(session=session, job=JOB, claim=stale, results=[result_row(0, job=JOB)], next_index=1,
                       in_flight=[], eta_s=None)
    assert results(run_id) == {}
    assert run_row(run_id)["completed_steps"] == 0


def test_a_renewal_after_the_run_was_handed_back_does_not_revive_its_lease():
    run_id = create_texts(4)
    c = claim(run_id)
    with session_scope() as session:
        release_run(session=session, job=JOB, claim=c, error=None)
    before = run_row(run_id)
    with pytest.raises(LeaseLost):
        renew(c)  # the heartbeat's last renewal, arriving late
    after = run_row(run_id)
    assert after["lease_owner"] is None and after["lease_expires_at"] == before["lease_expires_at"]


def test_finishing_is_fenced_by_the_claims_token():
    run_id = create_texts(4)
    stale = claim(run_id, "a/1")
    expire_lease(run_id, owner="a/1")
    claim(run_id, "b/2")
    with session_scope() as session:
        assert not finish_run(session=session, job=JOB, run_id=run_id, status=RunStatus.completed, token=stale.token)
    row = run_row(run_id)
    assert row["status"] == "running" and row["lease_owner"] == "b/2" and row["finished_at"] is None


def test_two_overlapping_sweeps_take_each_expired_run_exactly_once():
    run_ids = [create_texts(2, tag=f"text {i}") for i in range(12)]
    for run_id in run_ids:
        claim(run_id)
        expire_lease(run_id)
    second: list = []
    with session_scope() as session:
        first = requeue_expired(session=session, job=JOB)  # its row locks are held until this block ends
        overlapping = threading.Thread(target=lambda: second.extend(sweep_job(job=JOB, send=ignore_sends)))
        overlapping.start()
        overlapping.join(timeout=10)
        assert not overlapping.is_alive(), "the second sweep waited for the first one's locks"
    assert sorted(r.run_id for r in first) == sorted(run_ids) and second == []
    assert sweep_job(job=JOB, send=ignore_sends) == []  # taken back: not due again while a worker may pick it up
    assert all(run_row(r)["lease_owner"] is None for r in run_ids)


def test_a_run_that_cannot_be_sent_is_due_again_and_the_others_still_go():
    run_ids = [create_texts(2, tag=f"text {i}") for i in range(3)]
    for run_id in run_ids:
        claim(run_id)
        expire_lease(run_id)
    sent: list[str] = []

    def flaky_send(name: str, kwargs: dict, queue: str | None = None) -> None:
        if kwargs["run_id"] == str(run_ids[1]):
            raise ConnectionError("broker unreachable")
        sent.append(kwargs["run_id"])

    sweep_job(job=JOB, send=flaky_send)
    assert sorted(sent) == sorted(str(r) for r in (run_ids[0], run_ids[2]))
    sent.clear()
    sweep_job(job=JOB, send=lambda name, kwargs, queue=None: sent.append(kwargs["run_id"]))
    assert sent == [str(run_ids[1])]  # at the next sweep, not redispatch_after_s later


def test_a_run_no_worker_claimed_is_sent_again_only_when_its_message_is_gone(redis_url):
    """A run still in the broker is not sent twice to its queue; a normal run found waiting there after
    redispatch_after_s is also sent to the high queue, once (so a stream of higher-tier runs cannot
    starve it); a message the broker lost is sent again to its own tier's queue."""
    import redis

    from dataengine.worker.app import enqueue, still_queued

    high = "dataengine.high"
    queue = redis.Redis.from_url(redis_url)
    queue.delete("celery", high)
    run_id = create_texts(2)  # as submitted: no lease, dispatched once
    enqueue(JOB.task_name, {"run_id": str(run_id)})

    def overdue() -> None:  # no worker has taken it for longer than redispatch_after_s
        with session_scope() as session:
            session.execute(text("UPDATE echo_runs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
                            {"id": run_id})

    def due_in() -> float:
        with session_scope() as session:
            return float(session.execute(text("SELECT EXTRACT(EPOCH FROM lease_expires_at - now()) FROM echo_runs "
                                              "WHERE id = :id"), {"id": run_id}).scalar_one())

    s = get_settings()
    overdue()
    sweep_job(job=JOB, send=enqueue, waiting=still_queued)
    assert queue.llen("celery") == 1  # behind a backlog, still on its way: not sent twice
    assert queue.llen(high) == 1 and str(run_id) in queue.lindex(high, 0).decode()  # aged: high's queue too
    assert due_in() == pytest.approx(s.redispatch_after_s, abs=5)  # nor looked for again soon
    overdue()
    sweep_job(job=JOB, send=enqueue, waiting=still_queued)
    assert (queue.llen("celery"), queue.llen(high)) == (1, 1)  # one copy in high's queue is enough
    queue.delete("celery", high)  # the broker lost them (restarted empty)
    overdue()
    sweep_job(job=JOB, send=enqueue, waiting=still_queued)
    assert queue.llen("celery") == 1 and str(run_id) in queue.lindex("celery", 0).decode()
    assert queue.llen(high) == 0  # sent again to its own tier's queue
    # Sent: looked at again soon, in case the worker that takes it dies before its claim.
    assert due_in() == pytest.approx(s.unclaimed_recheck_s, abs=5)
    queue.delete("celery")


def test_after_the_broker_is_found_without_its_epoch_a_message_a_worker_took_is_not_sent_twice(redis_url,
                                                                                               monkeypatch):
    """A broker first seen by a sweeper while producers were already sending (a fresh deployment):
    its epoch key is missing, yet the messages it holds, even those a worker has taken and not yet
    acknowledged, were not lost. Only an overdue run whose message is nowhere is sent again."""
    import redis

    from dataengine import app
    from dataengine.engine import jobs
    from dataengine.engine.sweeper import Sweeper
    from dataengine.worker.broker_backlog import waiting_runs

    monkeypatch.setitem(jobs._JOBS, JOB.key, JOB)  # the sweeper sweeps the registered jobs
    queue = redis.Redis.from_url(redis_url)
    queue.delete("celery", "unacked")
    taken = create_texts(2, tag="prefetched by a worker")
    app.send_task(JOB.task_name, kwargs={"run_id": str(taken)})
    queue.hset("unacked", "tag-1", queue.rpop("celery"))  # as kombu does when a worker takes it
    sent: list[str] = []
    sweeper = Sweeper(send=lambda name, kwargs, queue=None: sent.append(kwargs["run_id"]),
                      waiting=lambda ids, taken=False, **_: waiting_runs(redis_url=redis_url, queue="celery",
                                                                    run_ids=ids, taken=taken),
                      broker_lost=iter([True]).__next__)
    try:
        wait_for(lambda: sweeper.in_contact(), timeout_s=10, interval_s=0.05, what="the sweeper to settle")
        sweeper.sweep_once(full=False)
        assert str(taken) not in sent, "a message the broker still held was sent again"
        with session_scope() as session:  # later, overdue with the worker that took it gone: sent
            session.execute(text("UPDATE echo_runs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
                            {"id": taken})
        sweep_job(job=JOB, send=lambda name, kwargs, queue=None: sent.append(kwargs["run_id"]),
                  waiting=lambda ids, **_: waiting_runs(redis_url=redis_url, queue="celery", run_ids=ids))
        assert str(taken) in sent
    finally:
        queue.delete("celery", "unacked")


def test_the_sweepers_scan_is_an_index_scan_on_100000_active_runs():
    with session_scope() as session:
        session.execute(text("""
            INSERT INTO echo_runs (id, label, status, lease_owner, lease_expires_at, created_at)
            SELECT gen_random_uuid(), 'p' || i,
                   CASE WHEN i % 10 = 0 THEN 'completed' WHEN i % 10 = 1 THEN 'queued' ELSE 'running' END,
                   CASE WHEN i % 10 > 1 THEN 'w/' || i END,
                   CASE WHEN i % 10 > 1 THEN now() + interval '1 hour' END,  -- alive however slow the test
                   now() - interval '1 minute'
            FROM generate_series(1, 110000) AS i
        """))
    with session_scope() as session:
        session.execute(text("ANALYZE echo_runs"))
        compiled = due_runs(job=JOB, limit=100, dead=["gone/1", "gone/2"]).compile(
            dialect=session.get_bind().dialect, compile_kwargs={"render_postcompile": True}
        )
        plan = "\n".join(r[0] for r in session.connection().exec_driver_sql(f"EXPLAIN {compiled}", compiled.params))
    assert "Seq Scan on echo_runs" not in plan, plan  # worker_heartbeats has a row per live process
    for index in ("ix_echo_runs_active_lease", "ix_echo_runs_unleased", "ix_echo_runs_active_owner"):
        assert index in plan, plan


def test_a_long_run_is_read_in_pages_and_resumes_mid_page():
    """450 steps, 200 a page, resumed at 100 with a few later steps already recorded: each step runs once."""
    run_id = create_texts(450)
    recorded_before = set(range(100)) | {150, 299, 300, 420}
    c = claim(run_id)
    with session_scope() as session:
        checkpoint(session=session, job=JOB, claim=c, results=[result_row(i, job=JOB) for i in sorted(recorded_before)],
                   next_index=100, in_flight=[], eta_s=None)
    expire_lease(run_id)
    calls: list[int] = []

    def step(ctx, index, item):
        calls.append(index)
        return StepOutcome({"echoed": item})

    outcome = execute_run(job=dataclasses.replace(JOB, execute_step=step), run_id=run_id, worker_id="w/2", task_id=None)
    assert outcome.status == "completed"
    assert sorted(calls) == sorted(set(range(450)) - recorded_before) and len(calls) == len(set(calls))
    assert run_row(run_id)["completed_steps"] == 450 and sorted(results(run_id)) == list(range(450))


def test_a_worker_whose_lease_may_have_run_out_confirms_it_before_starting_a_step(monkeypatch):
    """As after a SIGSTOP: the whole process, heartbeat included, stood still past its lease, and
    another worker took the run over. Waking, it finishes what was in flight but starts nothing."""
    from dataengine.engine import heartbeats

    monkeypatch.setattr(heartbeats.Heartbeats, "beat", lambda self: None)  # frozen
    run_id = create_texts(6)
    release, started = threading.Event(), []

    def step(ctx, index, item):
        started.append(index)
        release.wait(timeout=30)
        return StepOutcome({"echoed": item})

    monkeypatch.setenv("DATAENGINE_STEP_CONCURRENCY", "2")
    from conftest import reload_settings

    reload_settings()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            execute_run(job=dataclasses.replace(JOB, execute_step=step), run_id=run_id, worker_id="a/1", task_id=None)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    wait_for(lambda: len(started) == 2, timeout_s=10, interval_s=0.02, what="steps 0 and 1 to start")
    expire_lease(run_id, owner="a/1")
    claim(run_id, "b/2")
    time.sleep(get_settings().lease_s + 0.3)  # the freeze itself, past a's own view of its lease too
    release.set()
    worker.join(timeout=30)
    assert sorted(started) == [0, 1], "a step was started under a lease that was no longer ours"
    assert failure and isinstance(failure[0], LeaseLost)
    assert results(run_id) == {}
