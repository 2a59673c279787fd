"""Bad input from a producer gets a clear error in the task's result (or the run row) and harms
nothing else: the worker goes on and other runs finish.

Raw malformed messages pushed onto the queue are ``test_poison_messages``; spec validation alone,
without a worker, is ``unit/test_specs``.
"""

from __future__ import annotations

import base64
import json
import threading
import tracemalloc
import uuid
from typing import Any

import pytest
from conftest import wait_for
from helpers import audit_spec, create_audit, finished, results, run_row, task_failure
from sqlalchemy import text

from dataengine import app

pytestmark = pytest.mark.timeout(120)
RUN, SUBMIT = "propertyaudit.run", "propertyaudit.submit"


def _publish_raw(body: bytes, content_type: str) -> None:
    with app.producer_or_acquire() as producer:
        producer.publish(
            body, routing_key="celery", content_type=content_type, content_encoding="binary",
            headers={"task": RUN, "id": str(uuid.uuid4()), "lang": "py"},
        )


def runs_in_db() -> int:
    from dataengine.infra.db import session_scope

    with session_scope() as session:
        return session.scalar(text("SELECT count(*) FROM geo_runs"))


def test_bad_input_gets_a_clear_error_and_harms_no_other_run(workers, fake_llm, engine_env):
    worker = workers("a")
    good = create_audit(6)
    unknown = uuid.uuid4()
    assert f"No PropertyAudit run with id {unknown}" in task_failure(app.send_task(RUN, kwargs={"run_id": str(unknown)}))
    assert "not a UUID" in task_failure(app.send_task(RUN, kwargs={"run_id": "../../etc/passwd"}))
    assert "not a UUID" in task_failure(app.send_task(RUN, kwargs={"run_id": 12345}))
    assert "not a UUID" in task_failure(app.send_task(RUN, kwargs={}))  # run_id missing
    assert "not a UUID" in task_failure(app.send_task(RUN, args=[["a", "list"]]))
    extra = task_failure(app.send_task(RUN, kwargs={"run_id": str(unknown), "priority": "high"}))
    assert "unexpected arguments priority: send only run_id" in extra
    missing = task_failure(app.send_task(SUBMIT, kwargs={}))
    assert "property: Field required" in missing and "queries: Field required" in missing
    malformed = task_failure(app.send_task(SUBMIT, kwargs={"property": {}, "queries": "best pool"}))
    assert "property.name: Field required" in malformed and "queries:" in malformed
    typed = task_failure(app.send_task(SUBMIT, kwargs={"property": {"name": 7}, "queries": [1, None]}))
    assert "property.name: Input should be a valid string" in typed and "queries.0: Input should be a valid string" in typed
    too_many = {**audit_spec(1), "queries": [f"q{i}" for i in range(10_001)]}
    assert "at most 10000 queries per run, got 10001" in task_failure(app.send_task(SUBMIT, kwargs=too_many))
    too_long = {**audit_spec(1), "queries": ["x" * 100_000]}
    assert "queries:" in task_failure(app.send_task(SUBMIT, kwargs=too_long))
    nul = {**audit_spec(2), "queries": ["fine", "bad\x00byte"]}
    assert "queries.1: text must not contain NUL" in task_failure(app.send_task(SUBMIT, kwargs=nul))
    _publish_raw(b"\x80\x04\x95not a pickle you want", "application/x-python-serialize")
    _publish_raw(b"{not json", "application/json")
    _publish_raw(base64.b64encode(json.dumps([[], {}, {}]).encode()), "text/plain")
    app.send_task(RUN, kwargs={"run_id": str(good)})
    row = wait_for(lambda: finished(good), timeout_s=30, what="the good run to finish")
    assert row["status"] == "completed" and len(results(good)) == 6
    again = app.send_task(RUN, kwargs={"run_id": str(good)}).get(timeout=30)  # a finished run sent again
    # Refused by its row, or (arriving while the run's thread still reports its end) by that thread.
    assert again["executed"] is False, again
    assert "already completed" in again["detail"] or "6/6 queries recorded" in again["detail"], again
    assert worker.proc.poll() is None
    assert runs_in_db() == 1  # no half-made runs from bad specs


def test_a_spec_over_the_byte_limit_is_refused_before_anything_is_written(workers, fake_llm, engine_env):
    workers("a", env={"DATAENGINE_MAX_SPEC_BYTES": "20000"})
    big = {**audit_spec(1), "queries": [f"query {i} " + "y" * 500 for i in range(50)]}
    assert "bytes of text; the limit is 20,000 (DATAENGINE_MAX_SPEC_BYTES)" in task_failure(app.send_task(SUBMIT, kwargs=big))
    assert runs_in_db() == 0


#: Text a producer may well send: other scripts, emoji, right-to-left, zero-width and control characters.
ODD = ["apartamentos baratos en Austin ñ", "奥斯汀最好的公寓", "شقق في أوستن", "best 🏊 pools\u200b in Austin",
       "tab\tand\r\nnewlines", "bell\x07 and escape\x1b[31m red", "a\u202eright-to-left override"]


def test_unicode_and_control_characters_in_text_are_kept_exactly(workers, fake_llm):
    workers("a")
    spec = {**audit_spec(1), "queries": ODD}
    run_id = uuid.UUID(app.send_task(SUBMIT, kwargs=spec).get(timeout=30))
    row = wait_for(lambda: finished(run_id), timeout_s=60, what="the run to finish")
    assert row["status"] == "completed", row["error_message"]
    assert [results(run_id)[i]["query_text"] for i in range(len(ODD))] == [q.strip() for q in ODD]


def test_a_spec_of_10000_queries_is_accepted_and_written_without_holding_it_many_times(db_url):
    """The steps go to the database as one JSON document encoded a step at a time: the submit's peak
    (the validated spec included) stays within a few times the spec's own size (7.3x when the whole
    list was encoded at once, 5.1x now)."""
    from dataengine.engine.submitting import create_run, validate_spec
    from dataengine.infra.db import session_scope
    from tasks.propertyaudit import JOB

    spec = {**audit_spec(1), "queries": [f"best apartments near the river {i} " + "x" * 150 for i in range(10_000)]}
    size = len(json.dumps(spec))
    tracemalloc.start()
    try:
        validated, options = validate_spec(JOB, spec)
        with session_scope() as session:
            run_id, status = create_run(session=session, job=JOB, spec=validated, options=options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == "queued" and run_row(run_id)["total_steps"] == 10_000
    assert peak < 6 * size, f"peak {peak:,} bytes for a spec of {size:,}"
    with session_scope() as session:
        assert session.scalar(text("SELECT count(*) FROM geo_queries WHERE run_id = :r"), {"r": run_id}) == 10_000


def _waiting_on_a_lock() -> int:
    from dataengine.infra.db import session_scope

    with session_scope() as session:  # a transaction of its own each time: pg_stat_activity is a snapshot per transaction
        return session.scalar(text("SELECT count(*) FROM pg_stat_activity"
                                   " WHERE wait_event_type = 'Lock' AND datname = current_database()"))


def test_two_submits_racing_with_one_key_and_two_specs_make_one_run_and_refuse_the_other(db_url):
    """The unique index decides: the second insert waits for the first one's commit, does nothing, and
    the first one's digest refuses its spec (it read no row before, so only the insert can tell)."""
    from dataengine.engine.submitting import create_run, submit_run, validate_spec
    from dataengine.infra.db import session_scope
    from dataengine.infra.errors import IdempotencyKeyReused
    from tasks.propertyaudit import JOB

    sent: list[Any] = []
    outcome: dict[str, Any] = {}

    def second() -> None:
        try:
            outcome["run"] = submit_run(job=JOB, spec=audit_spec(3, name="Elm Court", key="race"),
                                        send=lambda name, kwargs, queue=None: sent.append(kwargs))
        except IdempotencyKeyReused as exc:
            outcome["error"] = str(exc)

    validated, options = validate_spec(JOB, audit_spec(2, key="race"))
    with session_scope() as session:  # the first insert, not yet committed while the second one is sent
        first, _ = create_run(session=session, job=JOB, spec=validated, options=options)
        racer = threading.Thread(target=second)
        racer.start()
        wait_for(_waiting_on_a_lock, timeout_s=10, what="the second insert to wait for the first one's commit")
    racer.join(timeout=10)
    assert outcome == {"error": f"idempotency key 'race' was used with a different spec (run {first}); use a new key"}
    assert runs_in_db() == 1 and sent == [] and run_row(first)["total_steps"] == 2
