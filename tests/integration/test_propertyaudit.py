"""PropertyAudit on the engine, in this process against the stand-in LLM: what a run records and
sums up, that a resumed run asks the LLM nothing twice, outages, and runs written by producers
in other languages. The engine's own behaviour is tested on its own job in test_engine.py."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from helpers import answered, audit_spec, claim, create_audit, expire_lease, record, results, run_row

from dataengine.engine.runloop import execute_run
from dataengine.infra.db import session_scope
from dataengine.infra.errors import StepFailed, TransientStepError
from tasks.propertyaudit import JOB

pytestmark = pytest.mark.usefixtures("db_url", "fake_llm")


def run(run_id: uuid.UUID):
    return execute_run(job=JOB, run_id=str(run_id), worker_id="w/1", task_id="task-1")


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


def test_a_finished_run_enqueued_again_is_a_no_op(fake_llm):
    run_id = create_audit(3)
    run(run_id)
    calls = fake_llm.stats()["requests"]
    again = run(run_id)
    assert (again.executed, again.status) == (False, "completed")
    assert "already completed" in again.detail
    assert fake_llm.stats()["requests"] == calls


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
