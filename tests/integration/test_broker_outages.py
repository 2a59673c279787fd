"""The broker goes away (SIGKILL and a restart, or SIGSTOP: a stalled connection) under beat and
under a worker in the middle of a run; each keeps going and nothing is paid twice.

Each test runs its own ``redis-server`` (tests/redis_server.py) as the broker, so killing it
touches nothing else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import wait_for
from redis_server import RedisServer

from dataengine.infra.redis_keys import REDBEAT_KEY_PREFIX

pytestmark = pytest.mark.timeout(180)
TICK = "dataengine.tests.beat_tick"  # no such task: beat's messages for it just pile up in the queue


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that keeps what it acknowledged over a SIGKILL (an append-only file),
    unless parametrized with False. Ask for it before ``workers``, so that it outlives them."""
    with RedisServer(tmp_path / "redis", persist=getattr(request, "param", True)) as server:
        yield server


def ticks(url: str) -> int:
    """How many of beat's scheduled messages are in the queue (0 while the broker is away)."""
    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            items = client.lrange("celery", 0, -1)
    except (redis.ConnectionError, redis.TimeoutError):
        return 0
    return sum(json.loads(i)["headers"]["task"] == TICK for i in items)


def schedule_every_second(url: str) -> None:
    """A redbeat entry, stored in the broker's Redis as a producer would, that fires every second."""
    from celery import Celery
    from celery.schedules import schedule
    from redbeat import RedBeatSchedulerEntry

    app = Celery("beat-test", set_as_current=False)
    app.conf.update(redbeat_redis_url=url, redbeat_key_prefix=REDBEAT_KEY_PREFIX, broker_url=url)
    RedBeatSchedulerEntry("tick", TICK, schedule(run_every=1.0), app=app).save()
    app.redbeat_redis.close()


@pytest.fixture
def beat(broker: RedisServer, db_url: str, tmp_path: Path) -> Iterator[Any]:
    """celery beat (redbeat, with its sweeper thread) on the private broker, firing every second."""
    from dataengine.testing.processes import start_beat

    schedule_every_second(broker.url())
    proc = start_beat("beat", env={"DATABASE_URL": db_url, "REDIS_URL": broker.url()}, log_dir=tmp_path)
    proc.wait_ready(marker="beat: Starting")
    wait_for(lambda: ticks(broker.url()) >= 2, timeout_s=30, what="beat to fire twice")
    yield proc
    proc.stop()


def fires_again(beat: Any, broker: RedisServer, *, times: int = 3) -> None:
    """Beat is alive and sends ``times`` more scheduled messages."""
    before = ticks(broker.url())

    def more() -> bool:
        if beat.proc.poll() is not None:
            pytest.fail(f"beat exited with {beat.proc.returncode}:\n{beat.log_text()[-3000:]}")
        return ticks(broker.url()) >= before + times

    wait_for(more, timeout_s=45, interval_s=0.2, what=f"beat to fire {times} more times")


#: What beat's scheduler and the sweeper in beat log when they find the broker away (once an outage).
SCHEDULER_PAUSED, SWEEPER_CUT_OFF = "schedule paused by a broker error", "cannot check the broker for lost messages"


def logged_since(beat: Any, start: int, *lines: str) -> bool:
    """Every one of ``lines`` is in beat's log after its first ``start`` characters."""
    log = beat.log_text()[start:]
    return all(line in log for line in lines)


def test_beat_keeps_running_through_a_broker_restart(beat, broker):
    start = len(beat.log_text())
    broker.kill()
    wait_for(lambda: logged_since(beat, start, SCHEDULER_PAUSED, SWEEPER_CUT_OFF), timeout_s=15,
             what="beat's scheduler and its sweeper to meet the refused connections")
    broker.start()
    fires_again(beat, broker)
    assert beat.proc.poll() is None


def test_beat_keeps_running_through_a_stalled_broker(beat, broker):
    from dataengine.worker.broker_guards import BROKER_SOCKET_TIMEOUT_S

    broker.pause()
    time.sleep(BROKER_SOCKET_TIMEOUT_S + 2)  # the stall itself: longer than every socket timeout on beat's side
    broker.resume()
    fires_again(beat, broker)
    assert beat.proc.poll() is None


def test_beat_keeps_running_when_the_broker_comes_back_empty(beat, broker, tmp_path):
    empty = RedisServer(tmp_path / "redis-empty", port=broker.port)  # same port, no data
    broker.kill()
    empty.start()
    try:
        schedule_every_second(empty.url())  # dynamic entries are the producer's to store again
        fires_again(beat, empty)
        assert beat.proc.poll() is None
    finally:
        empty.stop()


def test_beat_started_while_the_broker_is_down_waits_for_it(broker, db_url, tmp_path):
    from dataengine.testing.processes import start_beat
    from dataengine.worker.beat import RETRY_S

    schedule_every_second(broker.url())
    broker.kill()
    beat = start_beat("beat", env={"DATABASE_URL": db_url, "REDIS_URL": broker.url()}, log_dir=tmp_path)
    try:
        beat.wait_ready(marker="beat: Starting")
        wait_for(lambda: logged_since(beat, 0, SCHEDULER_PAUSED) or beat.proc.poll() is not None, timeout_s=15,
                 what="beat to find the broker away")
        time.sleep(2 * RETRY_S)  # from its first failure, a window of retries that beat must live through
        assert beat.proc.poll() is None, beat.log_text()[-3000:]
        broker.start()
        fires_again(beat, broker)
    finally:
        beat.stop()


def test_the_sweeper_in_beat_still_takes_runs_back_after_a_broker_restart(beat, broker):
    from helpers import create_audit, expire_lease

    broker.restart()
    fires_again(beat, broker, times=1)
    run_id = create_audit(3)
    expire_lease(run_id)

    def requeued() -> bool:
        with redis.Redis.from_url(broker.url()) as client:
            return any(str(run_id) in i.decode() for i in client.lrange("celery", 0, -1))

    wait_for(requeued, timeout_s=20, what="beat's sweeper to re-enqueue the run")


def test_the_scheduler_takes_its_lock_back_and_restores_static_entries_when_redis_comes_back_empty(tmp_path):
    from celery import Celery
    from redbeat import RedBeatSchedulerEntry

    from dataengine.worker.beat import RETRY_S, Scheduler

    broker = RedisServer(tmp_path / "redis").start()  # not persisted: a restart comes back empty
    app = Celery("beat-unit", set_as_current=False)
    app.conf.update(broker_url=broker.url(), redbeat_redis_url=broker.url(), redbeat_key_prefix="t:redbeat:",
                    beat_schedule={"static": {"task": TICK, "schedule": 3600.0}}, beat_max_loop_interval=5)
    scheduler = Scheduler(app=app, lazy=False)
    scheduler.lock = scheduler._new_lock()
    assert scheduler.lock.acquire(blocking=False)
    entry_key = RedBeatSchedulerEntry.generate_key(app, "static")
    client = redis.Redis.from_url(broker.url())
    try:
        assert scheduler.tick() > 0 and client.exists(entry_key)

        broker.kill()
        assert scheduler.tick() == RETRY_S  # no exception: beat goes on
        broker.start()  # empty: no lock, no entries
        assert not client.exists(entry_key, scheduler.lock_key)
        scheduler.tick()
        assert client.exists(entry_key) and scheduler.lock.owned()

        other = scheduler._new_lock()  # a second beat, while this one's lock has been lost
        client.delete(scheduler.lock_key)
        assert other.acquire(blocking=False)
        assert scheduler.tick() == RETRY_S and scheduler.tick() == scheduler.max_interval  # stands by
        other.release()
        scheduler.tick()
        assert scheduler.lock is not None and scheduler.lock.owned()
    finally:
        scheduler.close()
        client.close()
        app.redbeat_redis.close()
        app.close()
        broker.stop()


RUN = "propertyaudit.run"


def progressed(run_id: Any, steps: int) -> dict[str, Any] | None:
    """The run row once it has ``steps`` checkpointed steps, else None."""
    from helpers import run_row

    row = run_row(run_id)
    return row if row["completed_steps"] >= steps else None


def ended(run_id: Any) -> dict[str, Any] | None:
    """The run row once the run has ended, else None."""
    from helpers import run_row

    row = run_row(run_id)
    return row if row["status"] in ("completed", "failed", "cancelled") else None


@pytest.fixture
def producer(broker: RedisServer) -> Iterator[Any]:
    """A Celery client of the private broker, as a web app would hold one."""
    from celery import Celery

    app = Celery("producer", broker=broker.url(), backend=broker.url(), set_as_current=False)
    yield app
    app.close()


def audit_on_worker(workers: Any, fake_llm: Any, broker: RedisServer, producer: Any, n: int) -> tuple[Any, Any, list]:
    """A worker on the private broker, working a PropertyAudit of ``n`` queries that has 8 done."""
    from helpers import audit_spec, create_audit

    fake_llm.configure(latency_ms=100)
    worker = workers("a", env={"REDIS_URL": broker.url()})
    run_id = create_audit(n)
    task = producer.send_task(RUN, kwargs={"run_id": str(run_id)})
    wait_for(lambda: progressed(run_id, 8), timeout_s=30, what="8 checkpointed queries")
    return worker, (run_id, task), audit_spec(n)["queries"]


def a_new_run_completes(producer: Any) -> None:
    """The worker consumes again: a run sent now is done, and its caller gets the result."""
    from helpers import create_audit

    run_id = create_audit(3, tag="after")
    assert producer.send_task(RUN, kwargs={"run_id": str(run_id)}).get(timeout=60)["status"] == "completed"


def assert_each_asked_once(fake_llm: Any, queries: list[str]) -> None:
    from helpers import answered

    counts = {q: answered(fake_llm, q) for q in queries}
    assert all(c == 1 for c in counts.values()), {q: c for q, c in counts.items() if c != 1}


@pytest.mark.parametrize("broker", [True, False], ids=["persisted", "back-empty"], indirect=True)
def test_a_run_goes_on_through_a_broker_restart_and_asks_nothing_twice(broker, producer, workers, fake_llm):
    from helpers import results

    worker, (run_id, task), queries = audit_on_worker(workers, fake_llm, broker, producer, 40)
    broker.restart()
    assert not progressed(run_id, 40), "the run was done before the restart; the test proves nothing"
    row = wait_for(lambda: ended(run_id), timeout_s=60, what="the run to finish")
    assert row["status"] == "completed" and sorted(results(run_id)) == list(range(40))
    assert_each_asked_once(fake_llm, queries)
    assert worker.proc.poll() is None and "Terminating it instead" not in worker.log_text()
    assert task.get(timeout=30)["status"] == "completed"  # the result reached the caller after all
    a_new_run_completes(producer)


def test_a_run_goes_on_while_the_broker_is_stalled(broker, producer, workers, fake_llm):
    from helpers import results

    from dataengine.worker.broker_guards import BROKER_SOCKET_TIMEOUT_S

    worker, (run_id, task), queries = audit_on_worker(workers, fake_llm, broker, producer, 40)
    broker.pause()
    paused_at = time.monotonic()
    try:
        # The run needs no broker while it works: it finishes with Redis frozen.
        row = wait_for(lambda: ended(run_id), timeout_s=60, what="the run to finish, broker stalled")
        time.sleep(max(0.0, paused_at + BROKER_SOCKET_TIMEOUT_S + 2 - time.monotonic()))  # past every socket timeout
    finally:
        broker.resume()
    assert row["status"] == "completed" and sorted(results(run_id)) == list(range(40))
    assert_each_asked_once(fake_llm, queries)
    assert task.get(timeout=60)["status"] == "completed"  # stored once the broker answered again
    a_new_run_completes(producer)
    assert worker.proc.poll() is None


def test_three_short_broker_cuts_during_one_slow_query_are_not_three_lost_workers(broker, producer, workers, fake_llm):
    """The run's resume point is held by a query that takes 12 s; the broker is cut three times
    for 2 s meanwhile. Nobody died: the run completes and no step is charged a loss."""
    from helpers import audit_spec, create_audit, results

    queries = audit_spec(20)["queries"]
    fake_llm.configure(latency_ms=50, hang_substrings=[queries[6]], hang_s=12)
    workers("a", env={"REDIS_URL": broker.url()})
    run_id = create_audit(20)
    producer.send_task(RUN, kwargs={"run_id": str(run_id)})
    wait_for(lambda: fake_llm.stats()["prompts"].get(queries[6]), timeout_s=30, what="the slow query to be asked")
    for _ in range(3):
        broker.kill()
        time.sleep(2)  # the cut itself
        broker.start()
    row = wait_for(lambda: ended(run_id), timeout_s=90, what="the run to finish")
    assert row["status"] == "completed" and row["step_losses"] == {}, row["error_message"]
    assert sorted(results(run_id)) == list(range(20))
    assert_each_asked_once(fake_llm, queries)
