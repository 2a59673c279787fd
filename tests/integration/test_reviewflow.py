"""ReviewFlow on the engine, in this process against the stand-in LLM: each review analysed once,
a review the model cannot analyse recorded with its error while the run goes on, the summary,
and runs written by producers in other languages."""

from __future__ import annotations

import uuid

import pytest
from helpers import SAMPLE_REVIEWS, answered_within, claim, create, expire_lease, results, review_spec, run_row
from sqlalchemy import text

from dataengine.engine.runloop import execute_run
from dataengine.infra.db import session_scope
from tasks.reviewflow import JOB

pytestmark = pytest.mark.usefixtures("db_url", "fake_llm")


def run(run_id: uuid.UUID):
    return execute_run(job=JOB, run_id=str(run_id), worker_id="w/1", task_id="task-1")


def test_a_batch_is_analysed_and_summed_up(fake_llm):
    spec = review_spec(10)
    run_id = create(spec, job=JOB)
    assert run(run_id).status == "completed"
    row, recorded = run_row(run_id, job=JOB), results(run_id, job=JOB)
    assert sorted(recorded) == list(range(10)) and row["completed_steps"] == 10 and row["total_reviews"] == 10
    assert all(answered_within(fake_llm, r["text"]) == 1 for r in spec["reviews"])
    assert fake_llm.stats()["answered"] == 3  # short reviews, 4 to a call: 4 + 4 + 2
    assert row["prompt_tokens"] > 0 and row["cost_usd"] > 0
    leak = recorded[2]
    assert (leak["urgency"], leak["needs_reply"], leak["sentiment_label"]) == ("high", True, "negative")
    assert "maintenance" in leak["topics"] and leak["suggested_reply"].startswith("Thank you")
    spanish = recorded[3]
    assert spanish["language"] == "es" and spanish["sentiment_label"] == "positive"
    summary = row["summary"]
    assert summary["reviews_analyzed"] == 10 and summary["reviews_failed"] == 0
    assert sum(summary["sentiment"].values()) == 10 and summary["sentiment"]["positive"] >= 2
    assert summary["urgent_needing_reply"] == 2 and [u["index"] for u in summary["urgent"]] == [2, 7]
    assert summary["urgent"][0]["excerpt"].startswith(SAMPLE_REVIEWS[2][:40])
    top = summary["top_topics"][0]
    assert top["reviews"] >= 2 and top["example"]
    assert summary["average_rating"] == 3.0 and -1 <= summary["average_sentiment"] <= 1


def test_a_review_the_model_cannot_analyse_is_recorded_and_the_run_goes_on(fake_llm):
    spec = review_spec(4)
    spec["reviews"][1]["text"] = "Confusing review <<invalid>> the model answers badly"
    run_id = create(spec, job=JOB)
    assert run(run_id).status == "completed"
    recorded = results(run_id, job=JOB)
    assert recorded[1]["sentiment_label"] is None and "InvalidAnalysis: no valid analysis after 2 attempts" in (
        recorded[1]["error"])
    assert all(recorded[i]["error"] is None for i in (0, 2, 3))
    # Its group's answer did not fit, so each review was asked alone; this one twice, then recorded.
    assert fake_llm.stats()["prompts"][spec["reviews"][1]["text"]] == 2
    assert answered_within(fake_llm, spec["reviews"][0]["text"]) == 2  # in the group, then alone
    summary = run_row(run_id, job=JOB)["summary"]
    assert (summary["reviews_analyzed"], summary["reviews_failed"]) == (3, 1)


def test_resume_asks_only_the_reviews_without_an_analysis(fake_llm):
    spec = review_spec(6)
    run_id = create(spec, job=JOB)
    rows = [{"query_index": i, "sentiment_label": "neutral", "urgency": "low", "needs_reply": False} for i in (0, 1, 3)]
    from dataengine.engine.runs import checkpoint

    c = claim(run_id, job=JOB)
    with session_scope() as session:
        checkpoint(session=session, job=JOB, claim=c, results=rows, next_index=2, in_flight=[2], eta_s=None)
    expire_lease(run_id, job=JOB)
    assert run(run_id).status == "completed"
    asked = [answered_within(fake_llm, r["text"]) for r in spec["reviews"]]
    assert asked == [0, 0, 1, 0, 1, 1]


def test_a_run_written_by_a_producer_in_another_language_runs(fake_llm):
    run_id = uuid.uuid4()
    with session_scope() as session:
        session.execute(text("INSERT INTO reviewflow_analysis_runs (id, property_name) VALUES (:id, 'Cedar Flats')"),
                        {"id": run_id})
        session.execute(text("INSERT INTO reviewflow_reviews (run_id, query_index, review_text, rating) "
                             "VALUES (:id, 0, 'Loud neighbours', 2), (:id, 1, 'Great pool', 5)"), {"id": run_id})
    assert run(run_id).status == "completed"
    row = run_row(run_id, job=JOB)
    assert (row["total_steps"], row["completed_steps"], row["summary"]["average_rating"]) == (2, 2, 3.5)


def test_short_reviews_share_calls_and_cost_fewer_tokens_for_the_same_analyses(fake_llm):
    import dataclasses

    grouped, alone = create(review_spec(8, tag="g"), job=JOB), create(review_spec(8, tag="a"), job=JOB)
    run(grouped)
    execute_run(job=dataclasses.replace(JOB, execute_group=None), run_id=str(alone), worker_id="w/1", task_id=None)
    g, a = run_row(grouped, job=JOB), run_row(alone, job=JOB)
    assert g["prompt_tokens"] < 0.6 * a["prompt_tokens"], (g["prompt_tokens"], a["prompt_tokens"])
    labels = [[r["sentiment_label"] for _, r in sorted(results(x, job=JOB).items())] for x in (grouped, alone)]
    assert labels[0] == labels[1]
    assert sum(r["prompt_tokens"] for r in results(grouped, job=JOB).values()) == g["prompt_tokens"]  # shares add up
