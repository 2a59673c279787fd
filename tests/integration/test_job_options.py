"""What a new job can ask of the engine, on the engine tests' own job (Echo): result columns
with server defaults, its own transient errors, a step timeout, a record-and-go-on policy for
failed steps, and rows of its own written inside the fenced checkpoint."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest
from enginejob import CHUNKS, ECHO, HANG_S
from helpers import create, results, run_row
from sqlalchemy import func, select

from dataengine.engine.jobs import StepOutcome
from dataengine.engine.runloop import execute_run
from dataengine.infra.db import session_scope
from dataengine.infra.errors import StepFailed, TransientStepError

pytestmark = pytest.mark.usefixtures("echo")


def texts(*items: str) -> uuid.UUID:
    return create({"texts": list(items)}, job=ECHO)


def run(run_id: uuid.UUID, job=ECHO):
    return execute_run(job=job, run_id=run_id, worker_id="w/1", task_id=None)


def chunks(run_id: uuid.UUID) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(CHUNKS).where(CHUNKS.c.run_id == run_id))


def test_result_columns_a_step_leaves_out_take_their_server_defaults():
    run_id = texts("a b", "c")
    assert run(run_id).status == "completed"
    recorded = results(run_id, job=ECHO)
    assert {i: (r["echoed"], r["label"], r["meta"]) for i, r in recorded.items()} == {
        0: ("A B", "pending", {"source": "echo"}),
        1: ("C", "pending", {"source": "echo"}),
    }


def test_the_jobs_own_rows_are_written_with_the_checkpoint_and_summed_up():
    run_id = texts("one two three", "four")
    run(run_id)
    assert chunks(run_id) == 4 and run_row(run_id, job=ECHO)["summary"] == {"chunks": 4}


def test_the_jobs_own_rows_and_the_results_commit_together_or_not_at_all():
    def broken(session, run_id, done):
        if any(index == 1 for index, _ in done):
            raise RuntimeError("chunk store refused the batch")
        ECHO.record_step_rows(session, run_id, done)

    job = dataclasses.replace(ECHO, record_step_rows=broken)
    run_id = texts("a", "b c", "d")
    with pytest.raises(RuntimeError, match="chunk store refused"):
        execute_run(job=job, run_id=run_id, worker_id="w/1", task_id=None)
    recorded = set(results(run_id, job=ECHO))
    assert 1 not in recorded  # the batch with step 1 left neither results nor chunks
    with session_scope() as session:
        indexes = set(session.scalars(select(CHUNKS.c.query_index).where(CHUNKS.c.run_id == run_id)))
    assert indexes == recorded


def test_a_jobs_own_transient_error_hands_the_run_back_for_a_retry():
    run_id = texts("a", "later:echo service restarting", "c")
    with pytest.raises(TransientStepError, match="EchoUnavailable: echo service restarting"):
        run(run_id)
    row = run_row(run_id, job=ECHO)
    assert row["status"] == "running" and row["lease_owner"] is None and "text 2/3" in row["error_message"]


def test_a_step_failing_for_good_fails_the_run_under_the_default_policy():
    run_id = texts("a", "fail:unreadable", "c")
    with pytest.raises(StepFailed, match="text 2/3 failed: ValueError: unreadable"):
        run(run_id)
    assert run_row(run_id, job=ECHO)["status"] == "failed"


def test_under_the_record_policy_a_failed_step_is_recorded_and_the_run_goes_on():
    job = dataclasses.replace(
        ECHO,
        step_error_policy="record",
        failed_step_values=lambda index, item, exc: {"error": f"{type(exc).__name__}: {exc}"},
    )
    run_id = texts("a", "fail:unreadable", "c")
    assert run(run_id, job).status == "completed"
    recorded = results(run_id, job=ECHO)
    assert [(r["echoed"], r["error"]) for _, r in sorted(recorded.items())] == [
        ("A", None), (None, "ValueError: unreadable"), ("C", None)
    ]
    assert run_row(run_id, job=ECHO)["completed_steps"] == 3


def test_the_record_policy_needs_the_failed_steps_values():
    with pytest.raises(ValueError, match="needs failed_step_values"):
        dataclasses.replace(ECHO, step_error_policy="record")


def test_a_step_that_hangs_is_abandoned_after_the_step_timeout(monkeypatch):
    from conftest import reload_settings

    monkeypatch.setenv("DATAENGINE_STEP_TIMEOUT_S", "0.5")
    reload_settings()
    run_id = texts("a", "hang", "c")
    started = time.monotonic()
    with pytest.raises(TransientStepError, match="text 2/3 failed: StepTimedOut"):
        run(run_id)
    assert time.monotonic() - started < HANG_S  # the run did not wait for the hung step
    row = run_row(run_id, job=ECHO)
    assert row["lease_owner"] is None and set(results(run_id, job=ECHO)) <= {0, 2}


def grouping(calls: list[list[int]], *, size: int = 3, fail_with: BaseException | None = None):
    """Echo with short texts sharing one call, ``size`` at most (long texts go alone)."""

    def execute_group(ctx, steps):
        calls.append([index for index, _ in steps])
        if fail_with is not None:
            raise fail_with
        return [StepOutcome({"echoed": item.upper()}) for _, item in steps]

    def execute_step(ctx, index, item):
        calls.append([index])
        return ECHO.execute_step(ctx, index, item)

    return dataclasses.replace(ECHO, execute_group=execute_group, execute_step=execute_step,
                               groupable=lambda item: len(item) < 10, group_size=size)


def test_small_steps_share_a_call_and_each_is_still_recorded_once():
    calls: list[list[int]] = []
    run_id = texts("a", "b", "c", "d", "a much longer text", "e", "f")
    assert run(run_id, grouping(calls)).status == "completed"
    assert sorted(calls) == [[0, 1, 2], [3], [4], [5, 6]]  # a long text breaks a group and goes alone
    assert [r["echoed"] for _, r in sorted(results(run_id, job=ECHO).items())] == [
        "A", "B", "C", "D", "A MUCH LONGER TEXT", "E", "F"]
    assert run_row(run_id, job=ECHO)["completed_steps"] == 7


def test_a_failed_group_records_each_of_its_steps_under_the_record_policy():
    calls: list[list[int]] = []
    job = dataclasses.replace(
        grouping(calls, fail_with=ValueError("the model mixed the reviews up")),
        step_error_policy="record", failed_step_values=lambda index, item, exc: {"error": str(exc)},
    )
    run_id = texts("a", "b", "c")
    assert run(run_id, job).status == "completed"
    assert {r["error"] for r in results(run_id, job=ECHO).values()} == {"the model mixed the reviews up"}


@pytest.mark.parametrize("deaths", [1, 2])
def test_steps_one_loss_from_failing_the_run_never_share_a_call(deaths):
    """Steps in flight at a worker's death share calls as before; once their next loss would fail the run
    (``max_losses_per_step``, 3) each goes alone, so a poison one is the only one charged."""
    from echoruns import claim, expire_lease, record

    from dataengine.engine.sweeper import sweep_job

    run_id = texts("a", "b", "c", "d", "e", "f")
    for death in range(deaths):
        record(claim(run_id, f"w/{death}"), [], 0, in_flight=(1, 2))
        expire_lease(run_id, owner=f"w/{death}")
        sweep_job(job=ECHO, send=lambda name, kwargs, queue=None: None)  # the lost worker is charged for steps 1 and 2
    calls: list[list[int]] = []
    assert run(run_id, grouping(calls)).status == "completed"
    assert sorted(calls) == ([[0, 1, 2], [3, 4, 5]] if deaths == 1 else [[0], [1], [2], [3, 4, 5]])
