"""How a process's step threads are shared by the runs it executes (``dataengine.engine.stepbudget``)."""

from __future__ import annotations

import threading
import uuid

import pytest

from dataengine.engine.stepbudget import StepBudget
from dataengine.infra.settings import get_settings


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DATAENGINE_CALLS_IN_FLIGHT", "12")
    monkeypatch.setenv("DATAENGINE_STEP_CONCURRENCY", "")
    get_settings.cache_clear()
    yield StepBudget()
    get_settings.cache_clear()


def test_a_run_alone_may_take_the_whole_budget_and_several_share_it(budget):
    runs = [uuid.uuid4() for _ in range(3)]
    assert budget.reserve(runs[0])
    assert budget.room(0, runs[0]) == 12
    assert budget.reserve(runs[1]) and budget.reserve(runs[2])
    assert budget.room(0, runs[0]) == 4  # the others have steps to start: each is owed its share
    budget.room(0, runs[1], hungry=False)
    budget.room(0, runs[2], hungry=False)
    assert budget.room(0, runs[0]) == 12  # they have nothing more to start: idle threads are anyone's
    release = threading.Event()
    futures = [budget.submit(release.wait, run_id=runs[0]) for _ in range(12)]
    assert budget.room(0, runs[1]) == 4 and budget.room(3, runs[1]) == 1 and budget.room(4, runs[1]) == 0
    assert budget.room(12, runs[0]) == 0  # over its share, with nothing idle: it waits
    release.set()
    for f in futures:
        f.result(timeout=5)
    budget.room(0, runs[1], hungry=False)
    assert budget.room(0, runs[0]) == 12


def test_a_run_is_reserved_once_and_step_concurrency_caps_it(budget, monkeypatch):
    run = uuid.uuid4()
    assert budget.reserve(run) and not budget.reserve(run)  # a second delivery in this process
    assert budget.executing(run)
    budget.release(run)
    assert not budget.executing(run) and budget.reserve(run)
    monkeypatch.setenv("DATAENGINE_STEP_CONCURRENCY", "3")
    get_settings.cache_clear()
    assert budget.room(0) == 3 and budget.room(2) == 1


def test_workspaces_share_the_budget_equally_then_their_runs(budget):
    big = [uuid.uuid4() for _ in range(3)]
    small = uuid.uuid4()
    for run in big:
        assert budget.reserve(run)
        budget.belongs(run, "ws-big")
    assert budget.reserve(small)
    assert budget.room(0, small) == 6  # its part: the big workspace's runs are owed the other half
    budget.belongs(small, "ws-small")
    release = threading.Event()
    futures = [budget.submit(release.wait, run_id=big[i % 3]) for i in range(12)]
    assert budget.room(0, small) == 6  # half the budget: one of two workspaces, its only run
    assert budget.room(4, big[0]) == 0  # the other half, split between three runs: 2 each, it has 4
    budget.release(big[0])
    budget.release(big[1])
    assert budget.room(0, big[2]) == 6
    budget.release(small)
    assert budget.room(0, big[2]) == 12  # a workspace alone has it all
    release.set()
    for f in futures:
        f.result(timeout=5)


def test_a_thread_freed_by_a_run_over_its_share_is_kept_for_a_run_under_it(budget):
    greedy, late = uuid.uuid4(), uuid.uuid4()
    budget.reserve(greedy)
    release = [threading.Event() for _ in range(12)]
    futures = [budget.submit(e.wait, run_id=greedy) for e in release]  # alone: all 12 threads
    budget.reserve(late)  # joins with steps to start: its share is 6
    release[0].set()
    futures[0].result(timeout=5)
    assert budget.room(11, greedy) == 0  # over its share: the freed thread is owed to the late run
    assert budget.room(0, late, hungry=False) == 6  # the late run has nothing more to start after its share:
    assert budget.room(11, greedy) == 1  # the idle thread is anyone's again
    for e in release:
        e.set()
    for f in futures:
        f.result(timeout=5)


def test_tiers_share_the_budget_by_weight_then_their_workspaces(budget):
    """12 threads; a high run (weight 9) among normal runs (3) of two workspaces gets 9 of them at once,
    the normal tier 3, split between its workspaces; a low run alone with them keeps its weight's part."""
    normal = [uuid.uuid4() for _ in range(4)]
    for i, run in enumerate(normal):
        assert budget.reserve(run)
        budget.belongs(run, f"ws-{i % 2}")
    urgent = uuid.uuid4()
    assert budget.reserve(urgent)
    budget.belongs(urgent, "ws-0", "high")
    release = threading.Event()
    futures = [budget.submit(release.wait, run_id=normal[i % 4]) for i in range(12)]  # every thread busy
    assert budget.room(0, urgent) == 9  # 12 * 9/12: the runs below their share are owed the rest
    assert budget.room(0, normal[0]) == 1  # 12 * 3/12 / 2 workspaces, over its 2 runs: the floor of one
    budget.release(urgent)
    late = uuid.uuid4()
    assert budget.reserve(late)
    budget.belongs(late, "ws-9", "low")
    assert budget.room(0, late) == 3  # 12 * 1/4 (normal 3, low 1): never starved by the normal runs
    release.set()
    for f in futures:
        f.result(timeout=5)
