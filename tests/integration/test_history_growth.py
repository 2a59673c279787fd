"""Reads that stay flat as history grows: on 100,000 runs and their events, the operator's list of failed
runs, event pruning and a process's heartbeat each read through an index, never the whole table.
(``bench/history_growth.py`` times them at two scales.)"""

from __future__ import annotations

from datetime import timedelta

import pytest
from enginejob import ECHO as JOB
from sqlalchemy import Select, TextClause, text

from dataengine.engine.events import PRUNE, PRUNE_BATCH
from dataengine.engine.liveness import beat_sql, lease_param
from dataengine.engine.operator_views import list_runs, listing
from dataengine.engine.sweeper import prune_events
from dataengine.infra.db import session_scope

pytestmark = pytest.mark.usefixtures("echo")


def plan_of(statement: Select | TextClause, params: dict[str, object] | None = None) -> str:
    """PostgreSQL's plan for ``statement`` (nothing is executed)."""
    with session_scope() as session:
        if isinstance(statement, Select):
            compiled = statement.compile(dialect=session.get_bind().dialect, compile_kwargs={"render_postcompile": True})
            rows = session.connection().exec_driver_sql(f"EXPLAIN {compiled}", compiled.params)
        else:
            rows = session.execute(text(f"EXPLAIN {statement.text}"), params or {})
        return "\n".join(r[0] for r in rows)


@pytest.fixture
def history() -> None:
    """100,000 Echo runs over 90 days, the newest first (5 % failed), 12 of them running."""
    with session_scope() as session:
        session.execute(text("""
            INSERT INTO echo_runs (id, label, status, created_at, last_updated_at, finished_at, lease_owner,
                                   lease_expires_at, fencing_token)
            SELECT gen_random_uuid(), 'r' || i, s.status, s.at, s.at,
                   CASE WHEN s.status <> 'running' THEN s.at + interval '1 minute' END,
                   CASE WHEN s.status = 'running' THEN 'w/' || (i % 3) END,
                   CASE WHEN s.status = 'running' THEN now() + interval '1 hour' END, 1
            FROM generate_series(1, 100000) AS i,
                 LATERAL (SELECT now() - i * interval '90 days' / 100000 AS at,
                                 CASE WHEN i <= 12 THEN 'running' WHEN i % 20 = 0 THEN 'failed'
                                      ELSE 'completed' END AS status) AS s
        """))
    with session_scope() as session:
        session.execute(text("ANALYZE echo_runs"))


def test_failed_runs_of_the_last_day_are_found_by_their_end_not_by_reading_every_run(history):
    query = listing(JOB, status="failed", since=timedelta(days=1), limit=50)
    plan = plan_of(query)
    assert "Seq Scan on echo_runs" not in plan and "ix_echo_runs_ended" in plan, plan
    found = list_runs(status="failed", kinds=[JOB], since=timedelta(days=1), limit=100)
    ends = [r.row["finished_at"] for r in found]
    assert len(found) == 55 and ends == sorted(ends, reverse=True)  # 1,111 runs a day, every 20th failed
    assert {r.row["status"] for r in found} == {"failed"}


def test_event_pruning_deletes_the_oldest_through_the_index_on_at_a_batch_at_a_time(history):
    with session_scope() as session:
        session.execute(text("""
            INSERT INTO run_events (run_id, job, event, at)
            SELECT id, 'echo', 'submitted', created_at FROM echo_runs
        """))
        session.execute(text("ANALYZE run_events"))
    plan = plan_of(PRUNE, {"older_than": timedelta(days=30), "batch": PRUNE_BATCH})
    assert "Seq Scan on run_events" not in plan and "ix_run_events_at" in plan, plan
    old = 100000 * 60 // 90  # the runs created more than 30 of the 90 days ago, give or take one
    pruned, more = prune_events(older_than=timedelta(days=30), budget_s=100)
    assert abs(pruned - old) <= 2 and more is False
    with session_scope() as session:
        kept = session.execute(text("SELECT count(*), min(at) > now() - interval '30 days' FROM run_events "
                                    "WHERE job = 'echo'")).one()
    assert abs(kept[0] - (100000 - old)) <= 2 and kept[1] is True
    pruned, more = prune_events(older_than=timedelta(days=30), budget_s=0)  # nothing left: one empty batch
    assert (pruned, more) == (0, False)


def test_a_pass_that_runs_out_of_time_says_more_is_left(history):
    with session_scope() as session:
        session.execute(text("INSERT INTO run_events (run_id, job, event, at) "
                             "SELECT id, 'echo', 'submitted', created_at FROM echo_runs"))
    pruned, more = prune_events(older_than=timedelta(days=30), budget_s=0)
    assert (pruned, more) == (PRUNE_BATCH, True)


def test_a_heartbeat_reads_the_runs_it_holds_by_key_whatever_the_fleet_holds(history):
    with session_scope() as session:
        held = session.execute(text("SELECT id FROM echo_runs WHERE status = 'running' AND lease_owner = 'w/1'"))
        held_ids = [r.id for r in held]
    params = {"owners": ["w/1"], "held": held_ids, "tokens": [1] * len(held_ids),
              "holders": ["w/1"] * len(held_ids), **lease_param()}
    beat = beat_sql((JOB,))
    plan = plan_of(beat, params)
    assert "Seq Scan on echo_runs" not in plan and "pk_echo_runs" in plan, plan
    with session_scope() as session:
        rows = session.execute(beat, params).all()
    assert sorted(r.id for r in rows) == sorted(held_ids) and len(held_ids) == 4
