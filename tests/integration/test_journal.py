"""The LLM response journal: an answer a step received is not paid for again when the step runs again
after a crash, and a request that differs is asked anew."""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from conftest import wait_for
from helpers import answered, audit_spec, create, results, run_row
from sqlalchemy import text

from dataengine import app, llm
from dataengine.infra.db import session_scope
from dataengine.infra.logs import run_context
from tasks.propertyaudit import JOB as AUDIT

pytestmark = pytest.mark.timeout(120)
MESSAGES = [{"role": "user", "content": "best apartments in austin for the journal"}]


def journal_rows(run_id: uuid.UUID | str) -> list[tuple[int, str]]:
    with session_scope() as session:
        found = session.execute(text("SELECT step_index, model FROM llm_responses WHERE run_id = :id "
                                     "ORDER BY step_index"), {"id": str(run_id)})
        return [tuple(r) for r in found]


def test_a_recorded_answer_is_reused_by_the_same_request_only(db_url, fake_llm):
    run_id = str(uuid.uuid4())
    with run_context(run_id=run_id, kind="propertyaudit", step=2):
        first, paid = llm.chat(messages=MESSAGES, model="gpt-4o-mini")  # a first attempt: asked, recorded
    assert paid.prompt_tokens > 0 and journal_rows(run_id) == [(2, "gpt-4o-mini")]
    with run_context(run_id=run_id, kind="propertyaudit", step=2, replay=frozenset({2})):
        again, reused = llm.chat(messages=MESSAGES, model="gpt-4o-mini")
        # Not asked again; the step's usage is what was paid for the answer, once (the ledger counted it then).
        assert again == first and reused.prompt_tokens == paid.prompt_tokens and reused.cost_usd == paid.cost_usd
        assert fake_llm.stats()["answered"] == 1
        llm.chat(messages=MESSAGES, model="gpt-4o")  # another model: asked anew
        llm.chat(messages=[{"role": "user", "content": "a changed prompt"}], model="gpt-4o-mini")
    assert fake_llm.stats()["answered"] == 3
    with run_context(run_id=run_id, kind="propertyaudit", step=3, replay=frozenset({2})):
        llm.chat(messages=MESSAGES, model="gpt-4o-mini")  # the same request at another step: asked
    assert fake_llm.stats()["answered"] == 4


def test_a_step_killed_between_its_two_calls_does_not_pay_again_for_the_first(workers, fake_llm):
    """PropertyAudit's step asks for an answer, then for its evaluation. The stand-in holds the
    evaluation of one query; its pool process is killed then, the answer already returned. The step
    run again reuses that answer: only the evaluation, which never returned, is asked again."""
    held = "best apartments in austin held here"
    fake_llm.configure(latency_ms=50, hang_substrings=[f'options for "{held}"'])  # in its evaluation prompt only
    worker = workers("a")
    spec = audit_spec(8)
    spec["queries"][3] = held
    run_id = create(spec)
    app.send_task(AUDIT.task_name, kwargs={"run_id": str(run_id)})
    # Killed once every other query is recorded: the held one is then the only step in flight (another
    # in flight, its answer not returned yet, would rightly be asked again).
    wait_for(lambda: 3 in [s for s, _ in journal_rows(run_id)] and answered(fake_llm, held) == 1
             and sorted(results(run_id)) == [0, 1, 2, 4, 5, 6, 7], timeout_s=30,
             what="the held query's answer to return and be recorded, and the other queries to be recorded")
    (pool,) = worker.children()
    os.kill(pool, signal.SIGKILL)
    fake_llm.configure(hang_substrings=[])
    row = wait_for(lambda: (r := run_row(run_id))["status"] in ("completed", "failed") and r, timeout_s=60,
                   what="the run to finish after the kill")
    assert row["status"] == "completed" and sorted(results(run_id)) == list(range(8))
    assert answered(fake_llm, held) == 1, "the answer that had returned was asked again"
    assert all(answered(fake_llm, q) == 1 for q in spec["queries"])
    assert results(run_id)[3]["answer"].startswith(f'Here are some options for "{held}"')


def test_the_answers_of_finished_runs_are_pruned_after_the_retention_and_an_active_runs_kept(db_url, fake_llm):
    from datetime import timedelta

    from dataengine.llm.journal import prune

    active, finished = create(audit_spec(2, tag="active")), create(audit_spec(2, tag="finished"))
    for run_id in (active, finished):
        with run_context(run_id=str(run_id), kind="propertyaudit", step=0):
            llm.chat(messages=[{"role": "user", "content": f"question of {run_id}"}], model="gpt-4o-mini")
    with session_scope() as session:
        session.execute(text("UPDATE geo_runs SET status = 'completed' WHERE id = :id"), {"id": finished})
        session.execute(text("UPDATE llm_responses SET created_at = now() - interval '8 days'"))
    assert prune(older_than=timedelta(days=7), run_tables={AUDIT.key: AUDIT.runs.name}) == 1
    assert journal_rows(finished) == [] and journal_rows(active) == [(0, "gpt-4o-mini")]
