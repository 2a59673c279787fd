"""Scenarios 1-3: the broker restarted with its data, restarted empty, and cut off for a minute.

Each runs one run of 100 steps of every job on workers whose broker is a private
``redis-server`` (and, in scenario 3, a loopback proxy in front of it), and checks the fleet's
promises (``fleet.Fleet.check``): every step recorded once, nothing recorded asked again, at most
one more call per step in flight at the fault, no write from a stale claim.
"""

from __future__ import annotations

import time

import pytest
from conftest import wait_for
from faults.faultkit import messages_for, sender
from helpers import run_row, scrape, value
from kinds import KINDS
from redis_server import free_port
from tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(240)
#: A worker process holds this many runs; the runs after them wait in the queue, a backlog.
HELD = "3"
#: What the sweeper logs when it notices the broker lost its messages.
LOST = "came back without its messages"


def start(workers, broker, fake_llm, *, latency_ms: float = 400, **env: str):
    fake_llm.configure(latency_ms=latency_ms)
    return workers("a", env={"REDIS_URL": broker.url(), "DATAENGINE_RUNS_PER_PROCESS": HELD, **env})


def sweeps(port: int) -> float:
    """How many sweeps the sweeper of the worker serving its metrics on ``port`` has made."""
    return value(scrape(f"http://127.0.0.1:{port}/metrics"), "dataengine_sweeps_total")


@pytest.mark.parametrize("broker", [True], indirect=True, ids=["aof"])
def test_redis_restarted_with_its_data_mid_run(broker, producer, workers, fake_llm, db_url, fleet_on, report):
    """1. Redis restarted with its data (AOF): the workers reconnect and keep consuming; the queued
    backlog is neither lost nor sent twice."""
    port = free_port()
    worker = start(workers, broker, fake_llm, DATAENGINE_WORKER_METRICS_PORT=str(port))
    fleet = fleet_on(db_url, sender(producer))
    running = fleet.submit()
    backlog = fleet.submit(steps=10)  # behind the three the process holds
    fleet.wait_progressed(15, running)
    fleet.fault("redis restarted with its data")
    broker.restart()
    restarted = time.monotonic()
    # Two sweeps begun after the restart, while the process still holds the three long runs: none may
    # resend the backlog.
    swept = sweeps(port)
    wait_for(lambda: sweeps(port) >= swept + 2, timeout_s=30, what="the sweeper to sweep twice after the restart")
    assert all(row["status"] == "queued" for row in fleet.rows(backlog)), [(x["status"], x["lease_owner"], x["completed_steps"], x["created_at"], x["last_updated_at"]) for x in fleet.rows()]
    assert messages_for(broker.url(), [r.run_id for r in backlog]) == {str(r.run_id): 1 for r in backlog}
    recovered = fleet.wait_recovered(restarted, runs=running)
    figures = fleet.check()
    assert worker.log_text().count(LOST) <= 1, "the broker kept its data, yet the sweeper resent the backlog"
    assert worker.proc.poll() is None
    report(figures, recovery_s=recovered, backlog_runs=len(backlog), backlog_resent=0)


@pytest.mark.parametrize("broker", [False], indirect=True, ids=["no-persistence"])
def test_redis_restarted_empty_resends_the_lost_backlog_within_seconds(broker, producer, workers, fake_llm, db_url,
                                                                      fleet_on, report):
    """2. Redis restarted empty (no persistence, or a failover to an empty replica): running runs go
    on; runs queued and not yet claimed are sent again within 10 s, each once."""
    worker = start(workers, broker, fake_llm)
    wait_for(lambda: LOST in worker.log_text(), timeout_s=10, what="the sweeper to mark the new broker")
    fleet = fleet_on(db_url, sender(producer))
    running = fleet.submit()
    backlog = fleet.submit(steps=10)
    fleet.wait_progressed(15, running)
    fleet.fault("redis restarted empty")
    broker.restart()
    restarted = time.monotonic()

    def back() -> bool:
        queued = messages_for(broker.url(), [r.run_id for r in backlog])
        return all(queued[str(r.run_id)] or run_row(r.run_id, job=r.kind.job)["lease_owner"] for r in backlog)

    wait_for(back, timeout_s=10, interval_s=0.1, what="the lost backlog to be sent again")
    resent_after_s = time.monotonic() - restarted
    recovered = fleet.wait_recovered(restarted, runs=running)
    figures = fleet.check()
    log = worker.log_text()
    resent = {str(r.run_id): log.count(f"that no worker claimed, at {r.kind.job.step_noun} 1 run_id={r.run_id}")
              for r in backlog}
    assert all(n <= 1 for n in resent.values()), f"a lost run was sent more than once: {resent}"
    assert worker.proc.poll() is None
    report(figures, recovery_s=recovered, resent_after_s=round(resent_after_s, 2), backlog_runs=len(backlog),
           backlog_resent=sum(resent.values()))


CUT_S = 60


def test_the_broker_connection_cut_for_a_minute(broker, producer, workers, fake_llm, db_url, fleet_on, report):
    """3. The broker connection cut for 60 s (a partition between a worker and Redis): the worker's
    runs go on from their checkpoints, no other worker takes them while it is cut off, and it
    consumes again once the broker is back."""
    proxy = TcpProxy(("127.0.0.1", broker.port))
    try:
        fake_llm.configure(latency_ms=600)
        a = workers("a", env={"REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"})
        fleet = fleet_on(db_url, sender(producer))
        on_a = fleet.submit()
        fleet.wait_progressed(10, on_a)
        assert all(row["lease_owner"].startswith("a@") for row in fleet.rows(on_a)), fleet.rows(on_a)
        b = workers("b", env={"REDIS_URL": broker.url()})  # a live worker that could take a's runs
        fleet.fault("broker connection cut")
        tokens = {row["id"]: row["fencing_token"] for row in fleet.rows(on_a)}
        proxy.cut()
        time.sleep(CUT_S)  # the cut itself: no other worker may take a's runs meanwhile
        still = {row["id"]: (row["fencing_token"], row["lease_owner"]) for row in fleet.rows(on_a)}
        assert all(still[i][0] == tokens[i] for i in tokens), f"a run was taken from the cut-off worker: {still}"
        proxy.restore()
        figures = fleet.check(timeout_s=120)
        b.stop()
        after = fleet.submit([KINDS["propertyaudit"]], steps=5)  # only a is left to take it
        wait_for(lambda: run_row(after[0].run_id)["status"] == "completed", timeout_s=60,
                 what="worker a to consume again after the cut")
        assert a.proc.poll() is None
        report(figures, cut_s=CUT_S, taken_over=0)
    finally:
        proxy.close()
