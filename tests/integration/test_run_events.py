"""A run's history (``run_events``): each change of a run writes its event in the same statement,
checkpoints write none, and old events are pruned."""

from __future__ import annotations

from datetime import timedelta

import pytest
from echoruns import claim, create_texts, expire_lease, record, run_row
from enginejob import ECHO as JOB
from sqlalchemy import text

from dataengine.engine.events import history, prune
from dataengine.engine.runs import finish_run, release_run, retry_run
from dataengine.engine.sweeper import sweep_job
from dataengine.infra.db import session_scope
from models.base import RunStatus
from models.events import EventType

pytestmark = pytest.mark.usefixtures("echo")


def events(run_id) -> list[tuple[str, str | None, int | None, int | None]]:
    with session_scope() as session:
        return [(e["event"], e["worker"], e["fencing_token"], e["step_index"]) for e in history(session, run_id)]


def test_a_runs_life_is_written_as_it_happens_and_its_steps_are_not():
    run_id = create_texts(6)
    first = claim(run_id, "w/1")
    record(first, [0, 1, 2], 3)  # checkpoints: no events
    expire_lease(run_id, owner="w/1")
    sweep_job(job=JOB, send=lambda name, kwargs, queue=None: None)
    second = claim(run_id, "w/2")
    record(second, [3, 4, 5], 6)
    with session_scope() as session:
        assert finish_run(session=session, job=JOB, run_id=run_id, status=RunStatus.completed, token=second.token,
                          worker="w/2")
    assert events(run_id) == [
        ("submitted", None, 0, 0),
        ("claimed", "w/1", 1, 0),
        ("recovered", None, 2, 3),
        ("resumed", "w/2", 3, 3),
        ("completed", "w/2", 3, 6),
    ]
    with session_scope() as session:
        details = {e["event"]: e["detail"] for e in history(session, run_id)}
    assert details["recovered"] == "taken back from w/1, which stopped answering"
    assert details["completed"] == "6/6 steps recorded"
    assert details["submitted"] == "6 steps"


def test_a_failed_step_a_failure_and_a_retry_are_written_with_their_reason():
    run_id = create_texts(4)
    c = claim(run_id, "w/1")
    record(c, [0], 1)
    with session_scope() as session:
        release_run(session=session, job=JOB, claim=c, error="text 2/4 failed: RateLimitError",
                    event=EventType.step_failed, detail="text 2/4 failed: RateLimitError; the run will be retried")
    c = claim(run_id, "w/2")
    with session_scope() as session:
        finish_run(session=session, job=JOB, run_id=run_id, status=RunStatus.failed, token=c.token,
                   error="text 2/4 failed: BadRequestError", worker="w/2")
        assert retry_run(session=session, job=JOB, run_id=run_id) is None
        stale = finish_run(session=session, job=JOB, run_id=run_id, status=RunStatus.failed, token=c.token - 1)
    assert not stale  # a refused write writes no event either
    with session_scope() as session:
        found = [(e["event"], e["step_index"], e["detail"]) for e in history(session, run_id)][2:]
    assert found == [
        ("step_failed", 1, "text 2/4 failed: RateLimitError; the run will be retried"),
        ("resumed", 1, None),
        ("failed", 1, "text 2/4 failed: BadRequestError"),
        ("retried", 1, "sent back to work; it resumes at its checkpoint"),
    ]


def test_events_older_than_the_retention_are_pruned_and_newer_ones_kept():
    old, new = create_texts(1), create_texts(1)
    with session_scope() as session:
        session.execute(text("UPDATE run_events SET at = now() - interval '40 days' WHERE run_id = :id"), {"id": old})
    with session_scope() as session:
        assert prune(session, older_than=timedelta(days=30)) >= 1
    assert events(old) == []
    assert [e[0] for e in events(new)] == ["submitted"]


def test_a_run_that_stops_making_progress_is_flagged_stalled_once_and_cleared_by_its_next_step(monkeypatch):
    from conftest import reload_settings

    from dataengine.engine import jobs
    from dataengine.engine.sweeper import flag_stalled_runs

    monkeypatch.setitem(jobs._JOBS, JOB.key, JOB)  # the sweepers look after the registered jobs
    monkeypatch.setenv("DATAENGINE_STALL_MIN_S", "1")
    reload_settings()
    moving, stuck = create_texts(4, tag="moving"), create_texts(4, tag="stuck")
    c_moving, c_stuck = claim(moving, "w/1"), claim(stuck, "w/1")
    record(c_moving, [0], 1)
    record(c_stuck, [0], 1)
    with session_scope() as session:  # each step took a second; the stuck one has been quiet for 20
        session.execute(text("UPDATE echo_runs SET started_at = now() - interval '21 s', "
                             "last_updated_at = now() - interval '20 s' WHERE id = :id"), {"id": stuck})
        session.execute(text("UPDATE echo_runs SET started_at = now() - interval '3 s', "
                             "last_updated_at = now() - interval '2 s' WHERE id = :id"), {"id": moving})
    flagged = [r.id for _, r in flag_stalled_runs()]
    assert stuck in flagged and moving not in flagged
    assert stuck not in [r.id for _, r in flag_stalled_runs()]  # flagged once, not at every look
    assert run_row(stuck)["stalled_at"] is not None
    assert [e[0] for e in events(stuck)][-1] == "stalled"
    with session_scope() as session:
        detail = history(session, stuck)[-1]["detail"]
    assert detail.startswith("no step recorded for 20 s, though w/1 still heartbeats"), detail
    record(c_stuck, [1], 2)
    assert run_row(stuck)["stalled_at"] is None
