"""Real worker processes (``python -m dataengine.worker``, Celery's worker command), killed with real signals,
on real Redis and PostgreSQL.

Default engine settings throughout (lease 3 s, heartbeat 1 s, sweep every 1 s), so what is
tested is what users get.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from typing import Any

import pytest
from conftest import wait_for
from faults.fleet import Figures
from helpers import answered, audit_spec, create, create_audit, results, run_row, task_failure
from kinds import KINDS, Kind, assert_nothing_paid_twice

from dataengine import app
from dataengine.infra.settings import get_settings

pytestmark = pytest.mark.timeout(120)
RUN = "propertyaudit.run"


#: The crash tests: every job directly; PropertyAudit once more through PgBouncer in transaction
#: mode (what the pooler changes is the engine's, the same for every job).
CRASH_ROUTES = pytest.mark.parametrize(
    ("kind", "db_route"),
    [("propertyaudit", "direct"), ("propertyaudit", "pgbouncer"), ("reviewflow", "direct"), ("knowledge", "direct")],
    indirect=True,
)


@pytest.fixture(params=list(KINDS))
def kind(request: pytest.FixtureRequest) -> Kind:
    """Each job in turn: the crash tests hold for every job the engine runs."""
    return KINDS[request.param]


def enqueue(run_id: uuid.UUID, job: Any = None) -> Any:
    return app.send_task(job.task_name if job else RUN, kwargs={"run_id": str(run_id)})


def owned_by(run_id: uuid.UUID, worker: str, job: Any = None) -> dict[str, Any] | None:
    row = run_row(run_id, job=job)
    return row if (row["lease_owner"] or "").startswith(f"{worker}@") else None


def progressed(run_id: uuid.UUID, steps: int, job: Any = None) -> dict[str, Any] | None:
    row = run_row(run_id, job=job)
    return row if row["completed_steps"] >= steps else None


def events_of(run_id: uuid.UUID) -> list[tuple[str, str | None, int | None]]:
    """The run's history as (event, worker, fencing token)."""
    from dataengine.engine.events import history
    from dataengine.infra.db import session_scope

    with session_scope() as session:
        return [(e["event"], e["worker"], e["fencing_token"]) for e in history(session, run_id)]


def finished(run_id: uuid.UUID, job: Any = None) -> dict[str, Any] | None:
    row = run_row(run_id, job=job)
    return row if row["status"] in ("completed", "failed", "cancelled") else None


def run_on_worker_a(workers: Any, fake_llm: Any, n: int, *, latency_ms: float, kind: Kind = KINDS["propertyaudit"]
                    ) -> tuple[Any, list[str], uuid.UUID]:
    """Worker ``a`` started and working a run of ``n`` steps of ``kind``, each LLM call taking ``latency_ms``
    (scaled for the kind)."""
    fake_llm.configure(latency_ms=latency_ms * kind.latency_scale)
    a = workers("a")
    spec = kind.spec(n)
    run_id = create(spec, job=kind.job)
    enqueue(run_id, kind.job)
    return a, kind.prompts(spec), run_id


@CRASH_ROUTES
def test_a_run_survives_its_pool_process_being_sigkilled(workers, fake_llm, kind):
    job = kind.job
    a, prompts, run_id = run_on_worker_a(workers, fake_llm, 60, latency_ms=120, kind=kind)
    wait_for(lambda: progressed(run_id, 8, job), timeout_s=30, what="8 checkpointed steps")
    (child,) = a.children()
    os.kill(child, signal.SIGKILL)
    checkpointed = set(results(run_id, job=job))
    assert len(checkpointed) < 50, "the run was nearly done before the kill; the test proves nothing"
    row = wait_for(lambda: finished(run_id, job), timeout_s=60, what="the run to finish after the kill")
    assert row["status"] == "completed" and row["fencing_token"] >= 2
    assert sorted(results(run_id, job=job)) == list(range(60))
    assert_nothing_paid_twice(fake_llm, prompts, checkpointed, kind)
    assert a.proc.poll() is None  # the worker replaced its pool process and went on


STEPS_TO_TAKE_OVER = 160


@CRASH_ROUTES
def test_a_run_resumes_on_another_worker_within_seconds_of_a_main_process_sigkill(workers, fake_llm, kind):
    job = kind.job
    # Long enough that worker b's start (seconds on a busy machine) leaves most of it to take over.
    a, prompts, run_id = run_on_worker_a(workers, fake_llm, STEPS_TO_TAKE_OVER, latency_ms=120, kind=kind)
    wait_for(lambda: owned_by(run_id, "a", job), timeout_s=30, what="worker a to claim the run")
    workers("b")
    start = run_row(run_id, job=job)["completed_steps"]
    wait_for(lambda: progressed(run_id, start + 4, job), timeout_s=30, what="4 more checkpointed steps")
    killed_at = time.monotonic()
    a.kill_main()
    checkpointed = set(results(run_id, job=job))
    assert len(checkpointed) < STEPS_TO_TAKE_OVER - 10, "the run was nearly done before the kill; the test proves nothing"
    wait_for(lambda: owned_by(run_id, "b", job) and progressed(run_id, len(checkpointed) + 1, job), timeout_s=15,
             what="worker b to checkpoint a new step")
    resumed_after_s = time.monotonic() - killed_at
    row = wait_for(lambda: finished(run_id, job), timeout_s=60, what="the run to finish")
    assert row["status"] == "completed" and sorted(results(run_id, job=job)) == list(range(STEPS_TO_TAKE_OVER))
    assert resumed_after_s < 10, f"resumed only {resumed_after_s:.1f}s after the SIGKILL"
    assert_nothing_paid_twice(fake_llm, prompts, checkpointed, kind)


def test_a_dead_worker_is_known_by_its_closed_connection_long_before_its_heartbeat_goes_stale(workers, fake_llm):
    """A process that dies closes its PostgreSQL connection at once: the other worker's sweeper takes
    its runs back in about a second, although its heartbeat would count as stale only after 30 s."""
    lease = {"DATAENGINE_LEASE_S": "30"}
    fake_llm.configure(latency_ms=120)
    standing = {name: workers(name, env=lease) for name in ("a", "b")}
    run_id = create_audit(200)
    enqueue(run_id)
    row = wait_for(lambda: progressed(run_id, 4), timeout_s=30, what="4 checkpointed steps")
    owner = row["lease_owner"].split("@")[0]
    (other,) = set(standing) - {owner}
    killed_at = time.monotonic()
    standing[owner].kill_main()
    done = len(results(run_id))
    assert done < 150, "the run was nearly done before the kill; the test proves nothing"
    wait_for(lambda: owned_by(run_id, other) and progressed(run_id, done + 1), timeout_s=25,
             what=f"worker {other} to checkpoint a new step")
    assert time.monotonic() - killed_at < 15, "taken back by the heartbeat's age, not the closed connection"
    row = wait_for(lambda: finished(run_id), timeout_s=60, what="the run to finish")
    assert row["status"] == "completed" and sorted(results(run_id)) == list(range(200))


@pytest.mark.faults
@CRASH_ROUTES
def test_a_sigstopped_worker_that_wakes_after_a_takeover_writes_nothing(workers, fake_llm, kind, report):
    """6. A worker SIGSTOPped past its lease, its run taken over, the worker resumed: its writes are
    refused and it stops; what it recorded before the freeze stays, nothing else of it does."""
    job = kind.job
    # Slow calls while worker b starts (seconds on a busy machine): a short run could otherwise end
    # before the freeze, leaving nothing to take over.
    a, prompts, run_id = run_on_worker_a(workers, fake_llm, 80, latency_ms=1000, kind=kind)
    wait_for(lambda: owned_by(run_id, "a", job), timeout_s=30, what="worker a to claim the run")
    workers("b")
    fake_llm.configure(latency_ms=150 * kind.latency_scale)
    wait_for(lambda: progressed(run_id, 4, job), timeout_s=30, what="4 checkpointed steps")
    a.freeze()  # counted once it has stopped: a step it started before freezing may have logged meanwhile
    assert run_row(run_id, job=job)["completed_steps"] < 60, "the run was nearly done before the freeze"
    logged_at_freeze = len(processing(a, job))
    a_token = run_row(run_id, job=job)["fencing_token"]
    # What a's last checkpoints recorded as in flight: steps it started, maybe not yet logged.
    in_flight_by_a: set[int] = set()

    def taken_over() -> dict[str, Any] | None:
        row = run_row(run_id, job=job)
        if (row["lease_owner"] or "").startswith("a@"):
            in_flight_by_a.update(row["in_flight_steps"])
            return None
        return owned_by(run_id, "b", job)

    taken = wait_for(taken_over, timeout_s=15, what="worker b to take the run over")
    # Read only now: a checkpoint a sent just before it froze is a single statement, which the server
    # finishes (under the run row's lock, which b's claim waits for) even with its sender stopped.
    written_by_a = {i for i, r in results(run_id, job=job).items() if r["fencing_token"] == a_token}
    wait_for(lambda: progressed(run_id, len(written_by_a) + 2, job), timeout_s=15, what="worker b to make progress")
    a.signal_group(signal.SIGCONT)
    row = wait_for(lambda: finished(run_id, job), timeout_s=60, what="the run to finish")
    recorded = results(run_id, job=job)
    assert {i for i, r in recorded.items() if r["fencing_token"] == a_token} == written_by_a
    assert {r["fencing_token"] for r in recorded.values()} <= {a_token, taken["fencing_token"]}
    assert row["status"] == "completed" and row["fencing_token"] == taken["fencing_token"]
    assert sorted(recorded) == list(range(80)) and row["completed_steps"] == 80
    wait_for(lambda: "taken over by another worker" in a.log_text(), timeout_s=10, what="worker a to notice")
    # Waking up, it started no step before noticing: what it logged since the freeze is only steps
    # it had started before (checkpointed as in flight, frozen before their log line).
    assert set(processing(a, job)[logged_at_freeze:]) <= in_flight_by_a
    # Its history says so: b resumed it, and a recorded its lost claim, with its own token.
    lost = wait_for(lambda: [e for e in events_of(run_id) if e[0] == "lease_lost"], timeout_s=10,
                    what="worker a to record its lost claim")
    assert len(lost) == 1 and lost[0][1].startswith("a@") and lost[0][2] == a_token, lost
    assert ("resumed", taken["lease_owner"], taken["fencing_token"]) in events_of(run_id)
    asked = [kind.asked(fake_llm, p) for p in prompts]
    report(Figures(runs=1, steps=80, faults=1, extra_calls=sum(n - 1 for n in asked), most_asked=max(asked),
                   stale_writes=0))


def processing(worker: Any, job: Any) -> list[int]:
    """The indexes of the steps ``worker`` logged as started, in order."""
    return [int(n) - 1 for n in re.findall(rf"Processing {job.step_noun} (\d+)/", worker.log_text())]


def test_a_run_enqueued_twice_has_one_executor(workers, fake_llm, kind):
    job = kind.job
    fake_llm.configure(latency_ms=100 * kind.latency_scale)
    spec = kind.spec(40)
    workers("a", concurrency=2)
    run_id = create(spec, job=job)
    first = enqueue(run_id, job)
    wait_for(lambda: owned_by(run_id, "a", job), timeout_s=30, what="the first delivery to claim the run")
    second = enqueue(run_id, job).get(timeout=60)  # delivered to the other pool process while the first works
    assert second["executed"] is False and "being executed by a@" in second["detail"]
    assert first.get(timeout=60)["status"] == "completed"
    assert all(kind.asked(fake_llm, p) == 1 for p in kind.prompts(spec))
    answered_calls = fake_llm.stats()["answered"]
    again = enqueue(run_id, job).get(timeout=30)
    assert again["executed"] is False and "already completed" in again["detail"]
    assert fake_llm.stats()["answered"] == answered_calls


def test_submit_creates_the_run_once_per_idempotency_key(workers, fake_llm):
    workers("a")
    spec = audit_spec(5, key="order-42")
    first = app.send_task("propertyaudit.submit", kwargs=spec).get(timeout=30)
    second = app.send_task("propertyaudit.submit", kwargs=spec).get(timeout=30)
    assert first == second and uuid.UUID(first)
    row = wait_for(lambda: finished(uuid.UUID(first)), timeout_s=30, what="the submitted run to finish")
    assert row["status"] == "completed" and row["total_queries"] == 5 and row["idempotency_key"] == "order-42"
    assert all(answered(fake_llm, q) == 1 for q in spec["queries"])


def test_the_ordinary_celery_command_starts_the_same_worker_as_the_launcher(workers, fake_llm):
    """``celery -A dataengine worker`` (the public contract) and ``python -m dataengine.worker`` (what the other
    tests start): the same worker, serving the same tasks."""
    ordinary, lean = workers("a", ordinary=True), workers("b")
    assert "/celery -A dataengine worker " in " ".join(ordinary.proc.args)
    assert " -m dataengine.worker " in " ".join(lean.proc.args)
    served = [re.findall(r"^  \. (\S+)$", w.log_text(), re.M) for w in (ordinary, lean)]
    assert served[0] == served[1] and "propertyaudit.run" in served[0]
    lean.stop()
    run_id = uuid.UUID(app.send_task("propertyaudit.submit", kwargs=audit_spec(3)).get(timeout=30))
    assert wait_for(lambda: finished(run_id), timeout_s=30, what="the run to finish")["status"] == "completed"
    assert "Task propertyaudit.submit[" in ordinary.log_text()


def test_a_submitted_run_starts_where_it_was_submitted_and_resumes_elsewhere_after_a_sigkill(workers, fake_llm):
    """``propertyaudit.submit`` creates its run claimed by the worker that took it and works it there:
    one message, no run task. Killed there, the run is a run like any other: another worker takes it
    over from its checkpoint, and nothing recorded is asked again."""
    fake_llm.configure(latency_ms=120)
    a = workers("a")
    spec = audit_spec(STEPS_TO_TAKE_OVER)
    submitted = app.send_task("propertyaudit.submit", kwargs=spec)
    run_id = uuid.UUID(submitted.get(timeout=30))  # the submit's result is the run id, while the run goes on
    row = wait_for(lambda: owned_by(run_id, "a"), timeout_s=10, what="worker a to hold the run")
    assert row["task_id"] == submitted.id and row["fencing_token"] == 1  # claimed by its creation
    workers("b")
    wait_for(lambda: progressed(run_id, 8), timeout_s=30, what="8 checkpointed steps")
    assert f"Task {RUN}[" not in a.log_text()  # no second message
    a.kill_main()
    checkpointed = set(results(run_id))
    assert len(checkpointed) < STEPS_TO_TAKE_OVER - 10, "the run was nearly done before the kill; the test proves nothing"
    row = wait_for(lambda: finished(run_id), timeout_s=60, what="the run to finish on worker b")
    assert row["status"] == "completed" and row["fencing_token"] >= 2
    assert sorted(results(run_id)) == list(range(STEPS_TO_TAKE_OVER))
    assert_nothing_paid_twice(fake_llm, spec["queries"], checkpointed)


def test_rate_limits_and_outages_are_ridden_out_and_logs_carry_run_and_task_ids(workers, fake_llm):
    fake_llm.configure(fail_429_every=4, retry_after_s=0.05)
    worker = workers("a", env={"OPENAI_MAX_RETRIES": "0"})  # every 4th call fails past the SDK's retries
    run_id = create_audit(6)
    task = enqueue(run_id)
    wait_for(lambda: "Retry in" in worker.log_text(), timeout_s=30, what="Celery to schedule a retry")
    fake_llm.configure(fail_429_every=0)
    row = wait_for(lambda: finished(run_id), timeout_s=60, what="the run to finish after the retry")
    assert row["status"] == "completed" and len(results(run_id)) == 6
    assert fake_llm.stats()["requests"] > fake_llm.stats()["answered"]
    log = worker.log_text()
    assert f"[PropertyAudit] Processing query 1/6 run_id={run_id} task_id={task.id}" in log
    assert "sk-test" not in log


@pytest.mark.slow  # a beat process of its own
def test_beat_alone_takes_back_a_run_whose_worker_died(engine_env, tmp_path):
    from helpers import expire_lease

    from dataengine.testing.processes import start_beat

    run_id = create_audit(3)
    expire_lease(run_id)
    beat = start_beat("beat", env=engine_env, log_dir=tmp_path)
    try:
        import redis

        queue = redis.Redis.from_url(engine_env["REDIS_URL"])
        # The sweeper commits the takeover, then sends: wait for the message itself.
        queued = wait_for(lambda: queue.lrange("celery", 0, -1), timeout_s=20, what="beat's sweeper to re-enqueue")
        assert len(queued) == 1 and str(run_id) in queued[0].decode()
        assert run_row(run_id)["lease_owner"] is None
    finally:
        beat.stop()


def test_a_run_whose_resent_message_a_dying_worker_took_is_sent_again_within_seconds(workers, fake_llm, redis_url):
    """In a crash storm the worker that takes a re-enqueued run's message may die before it claims the
    run: the message is then out of the queue, in Redis' hands for its visibility timeout (a day). The
    run is sent again ``unclaimed_recheck_s`` (15 s) after, not ``redispatch_after_s`` (5 min)."""
    import redis
    from helpers import expire_lease

    s = get_settings()
    fake_llm.configure(latency_ms=20)
    a = workers("a")
    (pool,) = a.children()
    os.kill(pool, signal.SIGSTOP)  # a's main process takes the message; its pool never claims the run
    run_id = create_audit(4)
    expire_lease(run_id)  # its worker died: a's sweeper takes it back and re-enqueues it
    queue = redis.Redis.from_url(redis_url)
    wait_for(lambda: "Re-enqueued run whose worker dead-worker/1" in a.log_text() and queue.llen("celery") == 0,
             timeout_s=30, what="worker a to take back the run and take its message")
    a.signal_group(signal.SIGKILL)
    a.proc.wait()
    assert run_row(run_id)["lease_owner"] is None, "worker a claimed the run: the test proves nothing"
    killed = time.monotonic()
    b = workers("b")
    row = wait_for(lambda: finished(run_id), timeout_s=s.unclaimed_recheck_s + 30, what="the run to finish")
    assert row["status"] == "completed" and time.monotonic() - killed < s.redispatch_after_s / 5
    assert f"Re-enqueued run that no worker claimed, at query 1 run_id={run_id}" in b.log_text()
    assert row["fencing_token"] == 2  # one takeback from the dead worker, one claim: the resend fenced nobody


def test_a_warm_shutdown_hands_the_run_over_without_waiting_for_it_or_paying_twice(workers, fake_llm):
    a, queries, run_id = run_on_worker_a(workers, fake_llm, 60, latency_ms=100)
    wait_for(lambda: progressed(run_id, 6), timeout_s=30, what="6 checkpointed queries")
    os.kill(a.pid, signal.SIGTERM)  # what `docker stop` or a deploy sends: the main process only
    a.proc.wait(timeout=15)
    row = run_row(run_id)
    assert row["status"] == "running" and row["lease_owner"] is None and row["completed_steps"] < 60
    assert "handed back at query" in a.log_text()
    workers("b")
    row = wait_for(lambda: finished(run_id), timeout_s=60, what="worker b to finish the run")
    assert row["status"] == "completed" and row["step_losses"] == {}
    assert all(answered(fake_llm, q) == 1 for q in queries)  # in-flight steps finished before handing over
    events = [(e, (w or "").split("@")[0]) for e, w, _ in events_of(run_id)]
    assert events[-3:] == [("handed_back", "a"), ("resumed", "b"), ("completed", "b")], events


def test_a_step_that_keeps_killing_its_worker_fails_the_run_after_three_losses(workers, fake_llm):
    spec = audit_spec(5)
    poison = spec["queries"][2]
    fake_llm.configure(hang_substrings=[poison])  # the step never returns: its pool process is killed each time
    a = workers("a")  # 4 steps in flight: the loss is charged to the poison step, not to the resume point
    run_id = create_audit(5)
    enqueue(run_id)
    for attempt in (1, 2, 3):
        wait_for(lambda n=attempt: fake_llm.stats()["prompts"].get(poison, 0) >= n, timeout_s=30,
                 what=f"attempt {attempt} at the poison query")
        (child,) = a.children()
        os.kill(child, signal.SIGKILL)
    row = wait_for(lambda: finished(run_id), timeout_s=30, what="the run to be given up")
    assert row["status"] == "failed" and "worker lost 3 times at query 3" in row["error_message"]
    assert poison in row["error_message"] and fake_llm.stats()["prompts"][poison] == 3
    # Steps in flight beside it were charged too, but never up to the limit: the poison step alone ends the run.
    assert row["step_losses"]["2"] == 3 and all(n < 3 for i, n in row["step_losses"].items() if i != "2")
    assert 2 not in results(run_id)


def test_a_step_still_failing_after_the_last_retry_fails_the_run_saying_so(workers, fake_llm):
    fake_llm.configure(fail_5xx_every=1)
    worker = workers("a", env={"OPENAI_MAX_RETRIES": "0", "DATAENGINE_TASK_MAX_RETRIES": "1"})
    run_id = create_audit(3)
    failure = task_failure(enqueue(run_id))
    row = run_row(run_id)
    assert row["status"] == "failed" and "no retries left: at most 1 retries" in row["error_message"]
    assert "InternalServerError" in failure and "Retry in" in worker.log_text()


def test_a_running_run_of_any_job_is_cancelled_between_steps(workers, fake_llm, kind):
    from dataengine.engine.runs import request_cancel
    from dataengine.infra.db import session_scope

    job = kind.job
    a, prompts, run_id = run_on_worker_a(workers, fake_llm, 60, latency_ms=120, kind=kind)
    wait_for(lambda: progressed(run_id, 4, job), timeout_s=30, what="4 checkpointed steps")
    with session_scope() as session:
        assert request_cancel(session=session, job=job, run_id=run_id) == "running"
    row = wait_for(lambda: finished(run_id, job), timeout_s=30, what="the run to stop")
    assert row["status"] == "cancelled" and row["finished_at"] is not None and row["lease_owner"] is None
    assert 4 <= row["completed_steps"] < 60 and len(results(run_id, job=job)) == row["completed_steps"]
    asked = sum(kind.asked(fake_llm, p) > 0 for p in prompts)
    assert asked <= row["completed_steps"] + get_settings().step_concurrency * kind.group  # nothing started after
    assert a.proc.poll() is None and "Run cancelled" in a.log_text()


#: How soon a cancel must take effect, whatever the steps in flight wait on (issue 22).
CANCEL_WITHIN_S = 2.0


def test_a_cancel_does_not_wait_for_hung_steps_and_never_records_them(workers, fake_llm):
    """A run whose LLM calls hang is cancelled within ``CANCEL_WITHIN_S`` of the request; the hung steps are
    abandoned, their late results never written, and the worker runs another run on the same step threads
    (as many as the run keeps in flight: a thread or a count lost to the abandoned steps would stall it)."""
    from dataengine.engine.events import history
    from dataengine.engine.runs import request_cancel
    from dataengine.infra.db import session_scope
    from tasks.propertyaudit import JOB

    spec = audit_spec(6)
    hung = spec["queries"][2:4]
    fake_llm.configure(hang_substrings=hung)
    a = workers("a", env={"DATAENGINE_CALLS_IN_FLIGHT": os.environ["DATAENGINE_STEP_CONCURRENCY"]})
    run_id = create(spec)
    enqueue(run_id)
    wait_for(lambda: progressed(run_id, 4) and all(q in fake_llm.stats()["prompts"] for q in hung), timeout_s=10,
             what="4 steps recorded and 2 hung")
    requested = time.monotonic()
    with session_scope() as session:
        assert request_cancel(session=session, job=JOB, run_id=run_id) == "running"
    row = wait_for(lambda: finished(run_id), timeout_s=CANCEL_WITHIN_S, what="the cancel to take effect")
    assert time.monotonic() - requested < CANCEL_WITHIN_S
    assert row["status"] == "cancelled" and row["lease_owner"] is None and row["in_flight_steps"] == []
    assert sorted(results(run_id)) == [0, 1, 4, 5] and row["completed_steps"] == 4
    with session_scope() as session:
        ended = history(session, run_id)[-1]
    assert (ended["event"], ended["detail"]) == ("cancelled", "cancelled by request")

    # The hung calls still hold two of the worker's step threads: another run goes on with the others.
    other = create(audit_spec(6, tag="s"))
    enqueue(other)
    row = wait_for(lambda: finished(other), timeout_s=10, what="another run to finish on worker a")
    assert row["status"] == "completed" and sorted(results(other)) == list(range(6))

    fake_llm.configure(hang_substrings=[])  # the abandoned steps get their answers and end now
    wait_for(lambda: journaled(run_id, {2, 3}) == 4, timeout_s=10, what="the abandoned steps' late answers")
    assert sorted(results(run_id)) == [0, 1, 4, 5] and run_row(run_id)["completed_steps"] == 4
    assert a.proc.poll() is None


def journaled(run_id: uuid.UUID, steps: set[int]) -> int:
    """How many LLM answers the journal holds for ``steps`` of the run."""
    from sqlalchemy import func, select

    from dataengine.infra.db import session_scope
    from models.journal import LLMResponse

    t = LLMResponse.__table__
    with session_scope() as session:
        return session.scalar(select(func.count()).where(t.c.run_id == run_id, t.c.step_index.in_(steps)))
