"""The run engine on a real PostgreSQL: claims, fencing, resume, concurrency, losses, cancellation.

It runs on the engine tests' own job (Echo, ``tests/enginejob.py``), in this process (no
Celery); PropertyAudit on the engine is in test_propertyaudit.py, real worker processes in
test_workers.py.
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
import uuid

import pytest
from conftest import wait_for
from echoruns import claim, create_texts, expire_lease, record, results, run_row
from enginejob import ECHO
from helpers import Concurrency

from dataengine.engine import runloop, runs
from dataengine.engine.jobs import StepOutcome
from dataengine.engine.runloop import execute_run
from dataengine.engine.runs import Claim, claim_run, release_run, request_cancel
from dataengine.engine.sweeper import sweep_job
from dataengine.infra.db import session_scope
from dataengine.infra.errors import InvalidRunId, LeaseLost, RunNotFound, StepFailed
from dataengine.infra.settings import get_settings
from dataengine.infra.workerid import process_space, worker_id
from dataengine.llm.calls import Usage

pytestmark = pytest.mark.usefixtures("echo")
JOB = ECHO


def run(run_id: object, job=JOB, worker: str = "w/1"):
    return execute_run(job=job, run_id=str(run_id), worker_id=worker, task_id="task-1")


def recording(calls: list[int], *, delay_s: float = 0.0):
    """Echo, recording which steps were executed (and taking ``delay_s`` each)."""

    def step(ctx, index, item):
        calls.append(index)
        time.sleep(delay_s)
        return StepOutcome({"echoed": item})

    return dataclasses.replace(JOB, execute_step=step)


def ignore_sends(name: str, kwargs: dict, queue: str | None = None) -> None:
    return None


def test_a_claim_excludes_other_workers_until_its_lease_expires():
    run_id = create_texts(4)
    first = claim(run_id, "a/1")
    with session_scope() as session:
        refused = claim_run(session=session, job=JOB, run_id=run_id, worker_id="b/2", task_id=None)
    assert not isinstance(refused, Claim)
    assert "a/1" in refused.reason
    expire_lease(run_id, owner="a/1")
    second = claim(run_id, "b/2")
    assert second.token > first.token
    assert run_row(run_id)["lease_owner"] == "b/2"


def test_a_worker_that_lost_its_claim_writes_nothing():
    run_id = create_texts(4)
    old = claim(run_id, "a/1")
    record(old, [0], 1)
    expire_lease(run_id, owner="a/1")
    new = claim(run_id, "b/2")
    with pytest.raises(LeaseLost):
        record(old, [1], 2)
    row = run_row(run_id)
    assert set(results(run_id)) == {0}
    assert (row["current_query_index"], row["completed_steps"], row["fencing_token"]) == (1, 1, new.token)


def test_a_run_completes_with_progress_and_its_summary():
    run_id = create_texts(5)
    outcome = run(run_id)
    row = run_row(run_id)
    assert outcome.status == row["status"] == "completed" and outcome.executed
    assert (row["progress_pct"], row["current_query_index"], row["completed_steps"]) == (100, 5, 5)
    assert row["started_at"] <= row["finished_at"] and row["eta_s"] == 0 and row["lease_owner"] is None
    assert row["in_flight_steps"] == [] and row["summary"] == {"chunks": 10}


def test_resume_executes_only_the_steps_without_a_result():
    run_id = create_texts(10)
    record(claim(run_id), [0, 1, 2, 3, 4, 6], next_index=5, in_flight=(5, 7))  # 6 finished before 5
    expire_lease(run_id)
    calls: list[int] = []
    assert run(run_id, job=recording(calls)).status == "completed"
    assert sorted(calls) == [5, 7, 8, 9]
    assert sorted(results(run_id)) == list(range(10)) and run_row(run_id)["completed_steps"] == 10


def test_steps_of_one_run_are_in_flight_together(monkeypatch):
    monkeypatch.setenv("DATAENGINE_STEP_CONCURRENCY", "3")
    from conftest import reload_settings

    reload_settings()
    gauge = Concurrency()

    def slow_step(ctx, index, item):
        with gauge:
            time.sleep(0.1)  # the step's own work: the others start meanwhile
        return StepOutcome({"echoed": item})

    run_id = create_texts(9)
    run(run_id, job=dataclasses.replace(JOB, execute_step=slow_step))
    assert gauge.peak == 3
    assert run_row(run_id)["completed_steps"] == 9


def test_a_step_recorded_ahead_starts_while_the_checkpoint_before_it_is_written(monkeypatch):
    """A checkpoint records the next step as in flight too, so it starts as soon as a slot frees up,
    not after one more round trip: steps and checkpoints overlap."""
    monkeypatch.setenv("DATAENGINE_STEP_CONCURRENCY", "1")
    from conftest import reload_settings

    reload_settings()
    writing, overlapped, executed = threading.Event(), [], []

    def slow_checkpoint(**kwargs):
        writing.set()
        try:
            time.sleep(0.05)
            return runs.checkpoint(**kwargs)
        finally:
            writing.clear()

    def step(ctx, index, item):
        executed.append(index)
        # A step started only after its own checkpoint would wait here in vain: the loop writes
        # nothing while its one step runs. (Briefly: a step starts early only within a heartbeat
        # interval of the last checkpoint.)
        overlapped.append(writing.wait(timeout=0.1))
        return StepOutcome({"echoed": item})

    monkeypatch.setattr(runloop, "checkpoint", slow_checkpoint)
    run_id = create_texts(8)
    assert run(run_id, job=dataclasses.replace(JOB, execute_step=step)).status == "completed"
    assert sorted(executed) == list(range(8)) and sorted(results(run_id)) == list(range(8))
    assert sum(overlapped) >= 6, overlapped  # all but the first (nothing written yet) and maybe the last


def test_a_worker_shutting_down_hands_back_a_run_whose_last_steps_were_only_recorded_ahead(monkeypatch):
    """Steps recorded ahead as in flight but never started are not done: the run is handed back, not completed."""
    monkeypatch.setenv("DATAENGINE_STEP_CONCURRENCY", "2")
    from conftest import reload_settings

    reload_settings()
    release, executed = threading.Event(), []

    def step(ctx, index, item):
        executed.append(index)
        release.wait(timeout=10)
        return StepOutcome({"echoed": item})

    run_id = create_texts(3)  # steps 0 and 1 start; step 2, the last, is recorded ahead
    outcomes: list = []
    job = dataclasses.replace(JOB, execute_step=step)
    try:
        worker = threading.Thread(target=lambda: outcomes.append(run(run_id, job=job)))
        worker.start()
        wait_for(lambda: run_row(run_id)["in_flight_steps"] == [0, 1, 2], timeout_s=10, interval_s=0.01,
                 what="steps 0-2 in flight")
        runloop.drain()
        release.set()
        worker.join(timeout=10)
    finally:
        runloop._draining.clear()
    (outcome,) = outcomes
    assert outcome.requeue and outcome.status == "running", outcome
    row = run_row(run_id)
    assert (row["status"], row["completed_steps"], row["in_flight_steps"]) == ("running", 2, [])
    assert sorted(executed) == [0, 1]
    assert run(run_id).status == "completed" and sorted(results(run_id)) == [0, 1, 2]


def test_finished_steps_are_checkpointed_together_yet_none_waits_for_slow_ones(monkeypatch):
    """Steps that finish close together share a checkpoint; a step that finishes alone is recorded
    within moments all the same, not when the slow steps beside it end."""
    monkeypatch.setenv("DATAENGINE_STEP_CONCURRENCY", "4")
    from conftest import reload_settings

    reload_settings()
    checkpoints: list[int] = []
    run_id = create_texts(40)

    def counted(**kwargs):
        checkpoints.append(len(kwargs["results"]))
        return runs.checkpoint(**kwargs)

    def step(ctx, index, item):
        if index:  # every other step is slow until step 0 is on record
            wait_for(lambda: 0 in results(run_id), timeout_s=10, interval_s=0.01, what="step 0 on record")
        return StepOutcome({"echoed": item})

    monkeypatch.setattr(runloop, "checkpoint", counted)
    assert run(run_id, job=dataclasses.replace(JOB, execute_step=step)).status == "completed"
    assert sorted(results(run_id)) == list(range(40)) and run_row(run_id)["completed_steps"] == 40
    assert len([n for n in checkpoints if n]) < 40, checkpoints  # not one checkpoint per step


def test_a_step_that_paid_for_an_answer_is_checkpointed_at_once(monkeypatch):
    """Only steps that cost nothing wait to share a checkpoint: an answer paid for is on record at
    once, so a worker dying a moment later does not pay for it again."""
    monkeypatch.setenv("DATAENGINE_STEP_CONCURRENCY", "4")
    from conftest import reload_settings

    reload_settings()
    monkeypatch.setattr(runloop, "GATHER_S", 30.0)  # free steps would wait this long: paid ones must not
    run_id = create_texts(12)

    def step(ctx, index, item):
        if index:
            wait_for(lambda: 0 in results(run_id), timeout_s=5, interval_s=0.01, what="step 0 on record")
        return StepOutcome({"echoed": item}, usage=Usage(prompt_tokens=10, completion_tokens=2))

    assert run(run_id, job=dataclasses.replace(JOB, execute_step=step)).status == "completed"
    assert run_row(run_id)["prompt_tokens"] == 120


def test_a_finished_run_enqueued_again_is_a_no_op():
    run_id = create_texts(3)
    run(run_id)
    calls: list[int] = []
    again = run(run_id, job=recording(calls))
    assert (again.executed, again.status) == (False, "completed")
    assert "already completed" in again.detail and calls == []


def test_unknown_or_malformed_run_ids_get_a_clear_error():
    missing = uuid.uuid4()
    with pytest.raises(RunNotFound, match=f"No Echo run with id {missing}"):
        run(missing)
    with pytest.raises(InvalidRunId, match="not a UUID"):
        run("not-a-uuid")


def test_a_run_without_steps_fails_with_a_clear_message():
    from sqlalchemy import insert

    run_id = uuid.uuid4()
    with session_scope() as session:
        session.execute(insert(JOB.runs).values(id=run_id, label="empty"))
    with pytest.raises(StepFailed, match="the run has no texts"):
        run(run_id)
    assert run_row(run_id)["status"] == "failed"


def test_a_run_that_loses_its_worker_three_times_at_one_step_fails_naming_it():
    run_id = create_texts(6)
    record(claim(run_id), [0, 1], 2, in_flight=(2,))
    sent: list[str] = []
    for death in range(3):
        if death:
            record(claim(run_id, f"doomed/{death}"), [], 2, in_flight=(2,))  # picked up again, step 2 started
        expire_lease(run_id, owner=f"doomed/{death}")  # ...and that worker dies with it in flight
        sweep_job(job=JOB, send=lambda name, kwargs, queue=None: sent.append(kwargs["run_id"]))
    row = run_row(run_id)
    assert len(sent) == 2 and row["status"] == "failed"
    assert "lost 3 times at text 3 ('text 2')" in row["error_message"]


def test_losses_are_charged_to_the_steps_in_flight_not_to_the_resume_point():
    """Four steps in flight at once: the one that kills its worker is named, not the slow one before it."""
    run_id = create_texts(14)
    record(claim(run_id, "w/0"), [0, 1], 2, in_flight=(2, 3, 4, 5))
    expire_lease(run_id, owner="w/0")
    sweep_job(job=JOB, send=ignore_sends)
    record(claim(run_id, "w/1"), [2, 4, 5], 3, in_flight=(3, 6, 7, 8))
    expire_lease(run_id, owner="w/1")
    sweep_job(job=JOB, send=ignore_sends)
    record(claim(run_id, "w/2"), [6, 7, 8], 3, in_flight=(3, 9, 10, 11))
    expire_lease(run_id, owner="w/2")
    sweep_job(job=JOB, send=ignore_sends)
    row = run_row(run_id)
    assert row["status"] == "failed", row["step_losses"]
    assert "lost 3 times at text 4 ('text 3')" in row["error_message"]
    assert row["step_losses"] == {"2": 1, "3": 3, "4": 1, "5": 1, "6": 1, "7": 1, "8": 1, "9": 1, "10": 1, "11": 1}


def test_losses_at_different_steps_do_not_add_up():
    run_id = create_texts(6)
    for step in range(4):
        record(claim(run_id, f"w/{step}"), [step], step + 1, in_flight=(step + 1,))
        expire_lease(run_id, owner=f"w/{step}")
        sweep_job(job=JOB, send=ignore_sends)
    row = run_row(run_id)
    assert row["status"] == "running" and row["step_losses"] == {"1": 1, "2": 1, "3": 1, "4": 1}


def test_a_run_handed_back_is_not_charged_a_loss():
    run_id = create_texts(4)
    c = claim(run_id)
    record(c, [0], 1, in_flight=(1, 2))
    with session_scope() as session:
        release_run(session=session, job=JOB, claim=c, error=None)
    claim(run_id, "w/2")
    assert run_row(run_id)["step_losses"] == {}


def test_steps_lost_once_run_as_usual_and_those_one_loss_from_failing_the_run_run_alone():
    """A step in flight when a worker died runs as usual after (a kill from elsewhere does not slow the
    run to a step at a time); one whose next loss would fail the run runs alone, so that a poison one
    is the only one charged."""
    run_id = create_texts(10)
    record(claim(run_id, "w/0"), [], 0, in_flight=(0, 1, 2, 3))
    expire_lease(run_id, owner="w/0")
    sweep_job(job=JOB, send=ignore_sends)
    record(claim(run_id, "w/1"), [], 0, in_flight=(0, 1, 2, 3, 4, 5))
    expire_lease(run_id, owner="w/1")
    sweep_job(job=JOB, send=ignore_sends)
    assert run_row(run_id)["step_losses"] == {"0": 2, "1": 2, "2": 2, "3": 2, "4": 1, "5": 1}
    spans: dict[int, tuple[float, float]] = {}

    def step(ctx, index, item):
        started = time.monotonic()
        time.sleep(0.1)  # the step's own work: spans that may overlap
        spans[index] = (started, time.monotonic())
        return StepOutcome({"echoed": item})

    def alone(index: int) -> bool:
        start, end = spans[index]
        return not any(s < end and start < e for i, (s, e) in spans.items() if i != index)

    assert run(run_id, job=dataclasses.replace(JOB, execute_step=step)).status == "completed"
    # Two losses each, the next would be their third (max_losses_per_step): alone. Lost once: together.
    assert {i: alone(i) for i in range(6)} == {0: True, 1: True, 2: True, 3: True, 4: False, 5: False}


def test_cancelling_a_queued_run_ends_it_at_once():
    run_id = create_texts(3)
    with session_scope() as session:
        assert request_cancel(session=session, job=JOB, run_id=run_id) == "cancelled"
    calls: list[int] = []
    outcome = run(run_id, job=recording(calls))
    assert outcome.executed is False and run_row(run_id)["status"] == "cancelled" and calls == []


def test_cancelling_a_running_run_stops_it_dropping_the_steps_in_flight():
    run_id = create_texts(40)
    calls: list[int] = []
    worker = threading.Thread(target=run, args=(run_id, recording(calls, delay_s=0.05)))
    worker.start()
    wait_for(lambda: run_row(run_id)["completed_steps"] >= 4, timeout_s=20, what="4 checkpointed steps")
    with session_scope() as session:
        request_cancel(session=session, job=JOB, run_id=run_id)
    worker.join(timeout=20)
    row = run_row(run_id)
    assert row["status"] == "cancelled" and row["finished_at"] is not None
    assert 4 <= row["completed_steps"] < 40 and len(results(run_id)) == row["completed_steps"]
    # The steps in flight at the cancel ran, but their results were dropped; none started after it.
    assert set(results(run_id)) <= set(calls) and len(calls) - row["completed_steps"] <= get_settings().step_concurrency


def test_a_worker_takes_over_at_once_from_a_dead_process_of_its_machine():
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer exists, as after an OOM kill
    run_id = create_texts(3)
    record(claim(run_id, f"a@host/{gone.pid}/{process_space()}/0bad"), [], 0, in_flight=(0, 1))  # lease still live
    outcome = execute_run(job=JOB, run_id=str(run_id), worker_id=worker_id("a@host"), task_id="t2")
    assert outcome.status == "completed"
    assert run_row(run_id)["step_losses"] == {"0": 1, "1": 1}  # it still counts as a lost worker
    other = create_texts(3)
    claim(other, f"a@host/{gone.pid}/elsewhere.1/0bad")  # another machine's process: its lease is respected
    assert execute_run(job=JOB, run_id=str(other), worker_id=worker_id("a@host"), task_id="t3").executed is False


def test_a_retry_in_the_same_process_takes_its_own_lease_back_and_is_charged_nothing():
    """After a database outage outlasted db_retry_limit_s the run was abandoned with its lease live;
    Celery's retry lands in the same pool process, which must not wait for its own lease."""
    me = worker_id("a@host")
    run_id = create_texts(3)
    record(claim(run_id, me), [], 0, in_flight=(0, 1))
    outcome = execute_run(job=JOB, run_id=str(run_id), worker_id=me, task_id="t2")
    assert outcome.status == "completed" and run_row(run_id)["step_losses"] == {}
