"""A process's step threads: as many as steps in flight, up to the limit, and none kept idle."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import wait_for
from helpers import Concurrency

from dataengine.engine import stepthreads
from dataengine.engine.stepthreads import StepThreads


@pytest.fixture(autouse=True)
def short_idle(monkeypatch):
    monkeypatch.setattr(stepthreads, "IDLE_S", 0.2)


def test_steps_run_at_once_up_to_the_limit_then_wait_for_a_thread():
    pool, release, gauge = StepThreads(8), threading.Event(), Concurrency()

    def step(n):
        with gauge:
            release.wait(5)
        return n * 2

    futures = [pool.submit(step, n) for n in range(20)]
    wait_for(lambda: gauge.live == 8, timeout_s=5, interval_s=0.01, what="8 steps running")
    assert pool.threads == 8  # the other 12 wait for a thread, none is started past the limit
    release.set()
    assert [f.result(timeout=5) for f in futures] == [n * 2 for n in range(20)]
    assert gauge.peak == 8


def test_idle_threads_end_and_a_later_burst_starts_them_again():
    pool = StepThreads(64)
    release = threading.Event()
    futures = [pool.submit(release.wait, 5) for _ in range(40)]
    wait_for(lambda: pool.threads == 40, timeout_s=5, interval_s=0.01, what="40 threads")
    release.set()
    assert all(f.result(timeout=5) for f in futures)
    wait_for(lambda: pool.threads == 0, timeout_s=5, interval_s=0.01, what="idle threads to end")  # not kept
    assert [pool.submit(lambda n=n: n).result(timeout=5) for n in range(5)] == list(range(5))
    errors = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        errors.result(timeout=5)


def test_a_step_cancelled_while_queued_never_runs_and_steps_keep_flowing_under_churn():
    pool, ran = StepThreads(2), []
    gate = threading.Event()
    first = [pool.submit(gate.wait, 5) for _ in range(2)]
    queued = pool.submit(ran.append, "cancelled")
    assert queued.cancel()
    gate.set()
    assert all(f.result(timeout=5) for f in first)
    # Submits racing idle threads that are ending: every step still runs, on at most 2 threads.
    for _ in range(30):
        futures = [pool.submit(ran.append, n) for n in range(3)]
        for f in futures:
            f.result(timeout=5)
        time.sleep(0.2 if _ % 5 == 0 else 0)  # now and then IDLE_S: the next submits race threads ending (the churn)
    assert "cancelled" not in ran and len(ran) == 90 and pool.threads <= 2


def test_the_heap_is_trimmed_once_when_the_last_thread_of_a_burst_ends(monkeypatch):
    def earlier_threads_ended() -> bool:  # earlier tests' pools trim when their last thread ends
        return not any(t.name.startswith("trim-") or t.name.startswith("step-") for t in threading.enumerate())

    wait_for(earlier_threads_ended, timeout_s=5, interval_s=0.02, what="earlier tests' step threads to end")
    trims: list[int] = []  # the threads still counted in the pool at each trim
    pool, release = StepThreads(16, name="trim"), threading.Event()
    monkeypatch.setattr(stepthreads.malloc, "trim", lambda: trims.append(pool.threads) or True)
    futures = [pool.submit(release.wait, 5) for _ in range(10)]
    release.set()
    for f in futures:
        f.result(timeout=5)
    # The last thread trims just after it counts itself out, never while another of the burst is alive;
    # none is left to trim again. (Whether the threads are still idle here depends on the machine's load.)
    wait_for(lambda: pool.threads == 0 and trims, timeout_s=5, interval_s=0.02, what="every thread to end, and a trim")
    wait_for(lambda: not any(t.name.startswith("trim-") for t in threading.enumerate()), timeout_s=5,
             interval_s=0.02, what="the burst's threads to end")
    assert trims == [0]


def test_the_malloc_controls_work_on_this_platform():
    from dataengine.infra import malloc

    assert malloc.limit_arenas(8) is True  # glibc: the worker's pool processes cap their arenas
    assert isinstance(malloc.trim(), bool)
