"""The run engine on a real PostgreSQL: claims, fencing, resume, sweeps, cancellation, failures.

Runs execute in this process (no Celery) against the stand-in LLM server; the tests with
real worker processes are in test_workers.py.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from decimal import Decimal

import pytest
from helpers import answered, audit_spec, claim, create_audit, expire_lease, record, results, run_row

from dataengine.db import session_scope
from dataengine.errors import InvalidRunId, LeaseLost, RunNotFound, StepFailed, TransientStepError
from dataengine.jobs import StepOutcome
from dataengine.recovery import sweep_job
from dataengine.runloop import execute_run
from dataengine.runs import Claim, claim_run, release_run, request_cancel
from tasks.propertyaudit import JOB

pytestmark = pytest.mark.usefixtures("db_url", "fake_llm")


def run(run_id: uuid.UUID, job=JOB, worker: str = "w/1"):
    return execute_run(job=job, run_id=str(run_id), worker_id=worker, task_id="task-1")


def test_a_claim_excludes_other_workers_until_its_lease_expires():
    run_id = create_audit(4)
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
    run_id = create_audit(4)
    old = claim(run_id, "a/1")
    record(old, [0], 1)
    expire_lease(run_id, owner="a/1")
    new = claim(run_id, "b/2")
    with pytest.raises(LeaseLost):
        record(old, [1], 2)
    row = run_row(run_id)
    assert set(results(run_id)) == {0}
    assert (row["current_query_index"], row["completed_steps"], row["fencing_token"]) == (1, 1, new.token)


def test_a_run_completes_with_progress_usage_eta_and_summary(fake_llm):
    run_id = create_audit(12, name="Cedar Flats")
    outcome = run(run_id)
    row = run_row(run_id)
    assert outcome.status == row["status"] == "completed"
    assert row["progress_pct"] == Decimal(100) and row["current_query_index"] == 12 == row["completed_steps"]
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["cost_usd"] > 0
    assert row["started_at"] <= row["finished_at"] and row["eta_s"] == 0 and row["lease_owner"] is None
    recorded = results(run_id)
    assert sorted(recorded) == list(range(12))
    mentioned = sum(r["mentioned"] for r in recorded.values())
    summary = row["summary"]
    assert summary["queries_answered"] == 12 and summary["mentions"] == mentioned
    assert summary["visibility_score"] == round(mentioned / 12, 4)
    assert summary["top_competitors"] and "Cedar Flats" not in {c["name"] for c in summary["top_competitors"]}
    assert all(r["latency_ms"] >= 0 and r["prompt_tokens"] > 0 for r in recorded.values())
    assert fake_llm.stats()["answered"] == 24  # one answer and one evaluation per query


def test_resume_asks_only_the_steps_without_a_result(fake_llm):
    spec = audit_spec(10)
    run_id = create_audit(10)
    c = claim(run_id)
    record(c, [0, 1, 2, 3, 4, 6], next_index=5)  # step 5 was in flight, 6 finished first
    expire_lease(run_id)
    run(run_id)
    asked = {i: answered(fake_llm, q) for i, q in enumerate(spec["queries"])}
    assert asked == {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 0, 7: 1, 8: 1, 9: 1}
    assert run_row(run_id)["status"] == "completed" and len(results(run_id)) == 10


def test_steps_of_one_run_are_in_flight_together(monkeypatch):
    monkeypatch.setenv("DATAENGINE_STEP_CONCURRENCY", "3")
    from conftest import reload_settings

    reload_settings()
    lock, live, peak = threading.Lock(), [0], [0]

    def slow_step(ctx, index, item):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.1)
        with lock:
            live[0] -= 1
        return StepOutcome({"query_text": item, "answer": "", "evaluation": {}, "mentioned": False})

    run_id = create_audit(9)
    run(run_id, job=dataclasses.replace(JOB, execute_step=slow_step))
    assert peak[0] == 3
    assert run_row(run_id)["completed_steps"] == 9


def test_a_finished_run_enqueued_again_is_a_no_op(fake_llm):
    run_id = create_audit(3)
    run(run_id)
    calls = fake_llm.stats()["requests"]
    again = run(run_id)
    assert (again.executed, again.status) == (False, "completed")
    assert "already completed" in again.detail
    assert fake_llm.stats()["requests"] == calls


def test_unknown_or_malformed_run_ids_get_a_clear_error():
    missing = uuid.uuid4()
    with pytest.raises(RunNotFound, match=str(missing)):
        run(missing)
    with pytest.raises(InvalidRunId, match="not a UUID"):
        run("not-a-uuid")  # type: ignore[arg-type]


def test_two_sweepers_requeue_each_expired_run_exactly_once():
    run_ids = [create_audit(2, tag=str(i)) for i in range(12)]
    for run_id in run_ids:
        claim(run_id)
        expire_lease(run_id)
    sent: list[str] = []
    barrier = threading.Barrier(2)

    def sweeper() -> None:
        barrier.wait()
        sweep_job(job=JOB, send=lambda name, kwargs: sent.append(kwargs["run_id"]))

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sent) == sorted(str(r) for r in run_ids)
    assert all(run_row(r)["lease_owner"] is None for r in run_ids)
    sweep_job(job=JOB, send=lambda name, kwargs: sent.append(kwargs["run_id"]))
    assert len(sent) == 12  # taken back runs are not sent again while a worker may still pick them up


def test_a_run_that_loses_its_worker_three_times_at_one_step_fails_naming_it():
    run_id = create_audit(6)
    c = claim(run_id)
    record(c, [0, 1], 2, in_flight=(2,))
    sent: list[str] = []
    for death in range(3):
        if death:
            record(claim(run_id, f"doomed/{death}"), [], 2, in_flight=(2,))  # picked up again, step 2 started
        expire_lease(run_id, owner=f"doomed/{death}")  # ...and that worker dies with it in flight
        sweep_job(job=JOB, send=lambda name, kwargs: sent.append(kwargs["run_id"]))
    row = run_row(run_id)
    assert len(sent) == 2 and row["status"] == "failed"
    assert "lost 3 times at query 3" in row["error_message"] and "austin q 2" in row["error_message"]


def test_losses_are_charged_to_the_steps_in_flight_not_to_the_resume_point():
    """Four steps in flight at once: the one that kills its worker is named, not the slow one before it."""
    run_id = create_audit(14)
    record(claim(run_id, "w/0"), [0, 1], 2, in_flight=(2, 3, 4, 5))
    expire_lease(run_id, owner="w/0")
    sweep_job(job=JOB, send=lambda name, kwargs: None)
    record(claim(run_id, "w/1"), [2, 4, 5], 3, in_flight=(3, 6, 7, 8))
    expire_lease(run_id, owner="w/1")
    sweep_job(job=JOB, send=lambda name, kwargs: None)
    record(claim(run_id, "w/2"), [6, 7, 8], 3, in_flight=(3, 9, 10, 11))
    expire_lease(run_id, owner="w/2")
    sweep_job(job=JOB, send=lambda name, kwargs: None)
    row = run_row(run_id)
    assert row["status"] == "failed", row["step_losses"]
    assert "lost 3 times at query 4 ('best apartments in austin q 3')" in row["error_message"]
    assert row["step_losses"] == {"2": 1, "3": 3, "4": 1, "5": 1, "6": 1, "7": 1, "8": 1, "9": 1, "10": 1, "11": 1}


def test_losses_at_different_steps_do_not_add_up():
    run_id = create_audit(6)
    for step in range(4):
        c = claim(run_id, f"w/{step}")
        record(c, [step], step + 1, in_flight=(step + 1,))
        expire_lease(run_id, owner=f"w/{step}")
        sweep_job(job=JOB, send=lambda name, kwargs: None)
    row = run_row(run_id)
    assert row["status"] == "running" and row["step_losses"] == {"1": 1, "2": 1, "3": 1, "4": 1}


def test_a_run_handed_back_or_taken_back_unclaimed_is_not_charged_a_loss():
    run_id = create_audit(4)
    c = claim(run_id)
    record(c, [0], 1, in_flight=(1, 2))
    with session_scope() as session:
        release_run(session=session, job=JOB, claim=c, error=None)
    claim(run_id, "w/2")
    assert run_row(run_id)["step_losses"] == {}


def test_cancelling_a_queued_run_ends_it_at_once(fake_llm):
    run_id = create_audit(3)
    with session_scope() as session:
        assert request_cancel(session=session, job=JOB, run_id=run_id) == "cancelled"
    outcome = run(run_id)
    assert outcome.executed is False and run_row(run_id)["status"] == "cancelled"
    assert fake_llm.stats()["requests"] == 0


def test_cancelling_a_running_run_stops_it_between_steps(fake_llm):
    fake_llm.configure(latency_ms=60)
    run_id = create_audit(40)
    worker = threading.Thread(target=run, args=(run_id,))
    worker.start()
    deadline = time.monotonic() + 20
    while run_row(run_id)["completed_steps"] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    with session_scope() as session:
        request_cancel(session=session, job=JOB, run_id=run_id)
    worker.join(timeout=20)
    row = run_row(run_id)
    assert row["status"] == "cancelled" and row["finished_at"] is not None
    assert 4 <= row["completed_steps"] < 40 and len(results(run_id)) == row["completed_steps"]


def test_a_step_that_fails_for_good_fails_the_run_naming_the_step():
    def flaky(ctx, index, item):
        if index == 3:
            raise ValueError("the model returned nonsense")
        return StepOutcome({"query_text": item, "answer": "", "evaluation": {}, "mentioned": False})

    run_id = create_audit(6)
    with pytest.raises(StepFailed, match="query 4/6 failed: ValueError: the model returned nonsense"):
        run(run_id, job=dataclasses.replace(JOB, execute_step=flaky))
    row = run_row(run_id)
    assert row["status"] == "failed" and "query 4/6" in row["error_message"]
    assert 3 in {i for i in range(6)} - set(results(run_id))


def test_an_llm_outage_releases_the_run_for_a_retry(fake_llm, monkeypatch):
    monkeypatch.setenv("OPENAI_MAX_RETRIES", "0")
    from conftest import reload_settings

    reload_settings()
    fake_llm.configure(fail_5xx_every=1)
    run_id = create_audit(3)
    with pytest.raises(TransientStepError, match="InternalServerError"):
        run(run_id)
    row = run_row(run_id)
    assert row["status"] == "running" and row["lease_owner"] is None
    assert "InternalServerError" in row["error_message"] and "query" in row["error_message"]
    fake_llm.configure(fail_5xx_every=0)
    assert run(run_id).status == "completed"


def test_a_run_written_by_a_producer_in_another_language_runs(fake_llm):
    """What a Node app does: insert the row and its queries with plain SQL, then send the id."""
    from sqlalchemy import text

    run_id = uuid.uuid4()
    with session_scope() as session:
        session.execute(text("INSERT INTO geo_runs (id, property_name) VALUES (:id, 'Cedar Flats')"), {"id": run_id})
        session.execute(
            text("INSERT INTO geo_queries (run_id, query_index, query_text) VALUES (:id, 0, 'pool'), (:id, 1, 'gym')"),
            {"id": run_id},
        )
    assert run(run_id).status == "completed"
    row = run_row(run_id)
    assert (row["total_steps"], row["completed_steps"], row["progress_pct"]) == (2, 2, Decimal(100))


def test_a_run_without_steps_fails_with_a_clear_message():
    from sqlalchemy import text

    run_id = uuid.uuid4()
    with session_scope() as session:
        session.execute(text("INSERT INTO geo_runs (id, property_name) VALUES (:id, 'Cedar Flats')"), {"id": run_id})
    with pytest.raises(StepFailed, match="the run has no queries"):
        run(run_id)
    assert run_row(run_id)["status"] == "failed"


def test_a_worker_takes_over_at_once_from_its_own_dead_pool_process(fake_llm):
    import subprocess

    from dataengine.workerid import process_space, worker_id

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer exists, as after an OOM kill
    run_id = create_audit(3)
    record(claim(run_id, f"a@host/{gone.pid}/{process_space()}/0bad"), [], 0, in_flight=(0, 1))  # lease still live
    outcome = execute_run(job=JOB, run_id=str(run_id), worker_id=worker_id("a@host"), task_id="t2")
    assert outcome.status == "completed"
    assert run_row(run_id)["step_losses"] == {"0": 1, "1": 1}  # it still counts as a lost worker
    other = create_audit(3, tag="other")
    claim(other, f"a@host/{gone.pid}/elsewhere.1/0bad")  # another machine's process: its lease is respected
    assert execute_run(job=JOB, run_id=str(other), worker_id=worker_id("a@host"), task_id="t3").executed is False


def test_a_retry_in_the_same_process_takes_its_own_lease_back_and_is_charged_nothing():
    """After a database outage outlasted db_retry_limit_s the run was abandoned with its lease live;
    Celery's retry lands in the same pool process, which must not wait for its own lease."""
    from dataengine.workerid import worker_id

    me = worker_id("a@host")
    run_id = create_audit(3)
    record(claim(run_id, me), [], 0, in_flight=(0, 1))
    outcome = execute_run(job=JOB, run_id=str(run_id), worker_id=me, task_id="t2")
    assert outcome.status == "completed" and run_row(run_id)["step_losses"] == {}
