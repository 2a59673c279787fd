"""One worker process holds many runs and keeps their calls in flight together (``dataengine.worker.hosted_runs``,
``dataengine.engine.stepbudget``), with real ``celery worker`` processes on the stand-in.

The other crash tests pace each run at 4 steps in flight; here runs take their adaptive share.
"""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import pytest
from conftest import wait_for
from helpers import answered, audit_spec, create, results, run_row

from dataengine import app

pytestmark = pytest.mark.timeout(180)
ADAPTIVE = {"DATAENGINE_STEP_CONCURRENCY": ""}


def start(run_ids: list[uuid.UUID]) -> None:
    for run_id in run_ids:
        app.send_task("propertyaudit.run", kwargs={"run_id": str(run_id)})


def finished(run_ids: list[uuid.UUID]) -> list[dict] | None:
    rows = [run_row(r) for r in run_ids]
    return rows if all(r["status"] in ("completed", "failed", "cancelled") for r in rows) else None


def audits(n_runs: int, n_queries: int, tag: str) -> tuple[list[uuid.UUID], list[str]]:
    specs = [audit_spec(n_queries, tag=f"{tag}{k}") for k in range(n_runs)]
    return [create(spec) for spec in specs], [q for spec in specs for q in spec["queries"]]


def test_one_pool_process_keeps_the_calls_of_many_runs_in_flight(workers, fake_llm):
    fake_llm.configure(latency_ms=2000)
    run_ids, queries = audits(10, 20, "many")
    workers("a", concurrency=1, env=ADAPTIVE)
    start(run_ids)
    rows = wait_for(lambda: finished(run_ids), timeout_s=120, what="the 10 runs to finish")
    assert {r["status"] for r in rows} == {"completed"}
    assert all(answered(fake_llm, q) == 1 for q in queries)
    # 10 runs × 20 queries, one process: each run's 20 first calls are in flight together
    # (4 at a time per process before, whatever the provider allowed).
    assert fake_llm.stats()["max_in_flight"] >= 120, fake_llm.stats()["max_in_flight"]


def test_a_big_run_alone_takes_the_whole_budget_and_shares_it_when_others_arrive(workers, fake_llm):
    fake_llm.configure(latency_ms=500)
    big, _ = audits(1, 300, "big")
    small, _ = audits(3, 12, "small")
    workers("a", concurrency=1, env={**ADAPTIVE, "DATAENGINE_CALLS_IN_FLIGHT": "30"})
    start(big)
    wait_for(lambda: fake_llm.stats()["max_in_flight"] >= 30, timeout_s=30, what="the big run to use all 30 calls")
    assert fake_llm.stats()["max_in_flight"] == 30  # and never more than the process allows
    start(small)
    rows = wait_for(lambda: finished(big + small), timeout_s=120, what="every run to finish")
    assert {r["status"] for r in rows} == {"completed"}
    # The small runs got their share at once instead of waiting behind the big one.
    assert max(r["finished_at"] for r in rows[1:]) < rows[0]["finished_at"]
    assert fake_llm.stats()["max_in_flight"] == 30


def held_mid_way(workers: Any, fake_llm: Any, *, runs: int, calls: int, tag: str
                 ) -> tuple[Any, list[uuid.UUID], list[str]]:
    """Worker ``a`` (one pool process, ``calls`` in flight) holding ``runs`` runs of 40 queries, each mid-way."""
    fake_llm.configure(latency_ms=250)
    run_ids, queries = audits(runs, 40, tag)
    a = workers("a", concurrency=1, env={**ADAPTIVE, "DATAENGINE_CALLS_IN_FLIGHT": str(calls)})
    start(run_ids)
    wait_for(lambda: all(run_row(r)["completed_steps"] >= 4 for r in run_ids), timeout_s=60,
             what="every run to checkpoint 4 queries")
    return a, run_ids, queries


def test_runs_held_by_a_sigkilled_pool_process_all_resume_and_nothing_recorded_is_asked_again(workers, fake_llm):
    a, run_ids, queries = held_mid_way(workers, fake_llm, runs=6, calls=24, tag="kill")
    (child,) = a.children()
    os.kill(child, signal.SIGKILL)
    checkpointed = {q for r in run_ids for i, q in enumerate(audit_queries(r)) if i in results(r)}
    rows = wait_for(lambda: finished(run_ids), timeout_s=120, what="every run to finish after the kill")
    assert {r["status"] for r in rows} == {"completed"} and all(r["fencing_token"] >= 2 for r in rows)
    assert all(sorted(results(r)) == list(range(40)) for r in run_ids)
    counts = {q: answered(fake_llm, q) for q in queries}
    assert all(counts[q] == 1 for q in checkpointed)
    assert all(c >= 1 for c in counts.values())
    # Asked again: at most the calls that were in flight in the killed process.
    assert sum(c - 1 for c in counts.values()) <= 24
    assert a.proc.poll() is None


def test_a_warm_shutdown_hands_back_every_run_the_process_holds(workers, fake_llm):
    a, run_ids, queries = held_mid_way(workers, fake_llm, runs=4, calls=16, tag="warm")
    os.kill(a.pid, signal.SIGTERM)
    a.proc.wait(timeout=30)
    held = [run_row(r) for r in run_ids]
    assert all(r["lease_owner"] is None for r in held if r["status"] == "running"), held
    assert "handed back" in a.log_text()
    workers("b", concurrency=1, env=ADAPTIVE)
    rows = wait_for(lambda: finished(run_ids), timeout_s=120, what="worker b to finish the handed-back runs")
    assert {r["status"] for r in rows} == {"completed"}
    assert all(answered(fake_llm, q) == 1 for q in queries)  # handed back between steps: nothing paid twice


def audit_queries(run_id: uuid.UUID) -> list[str]:
    from dataengine.engine.jobs import get_job
    from dataengine.infra.db import session_scope

    with session_scope() as session:
        return [q for _, q in get_job("propertyaudit").load_steps(session, run_id, 0, 10_000)]


def test_a_second_delivery_to_the_process_executing_the_run_ends_with_the_run(workers, fake_llm):
    fake_llm.configure(latency_ms=200)
    (run_id,), queries = audits(1, 24, "twice")
    workers("a", concurrency=1)
    first = app.send_task("propertyaudit.run", kwargs={"run_id": str(run_id)})
    wait_for(lambda: run_row(run_id)["completed_steps"] >= 4, timeout_s=30, what="the first delivery to start")
    second = app.send_task("propertyaudit.run", kwargs={"run_id": str(run_id)}).get(timeout=60)
    # Not refused while the run was mid-way: told how the run ended, by the one process executing it.
    assert second["executed"] is False and second["status"] == "completed"
    assert f"as task {first.id}" in second["detail"] and "being executed by a@" in second["detail"]
    assert first.get(timeout=10)["status"] == "completed"
    assert all(answered(fake_llm, q) == 1 for q in queries)
