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
    assert budget.room(0) == 12
    assert budget.reserve(runs[1]) and budget.reserve(runs[2])
    assert budget.room(0) == 12  # nothing in flight: idle threads are anyone's
    release = threading.Event()
    futures = [budget.submit(release.wait) for _ in range(12)]
    assert budget.room(0) == 4 and budget.room(3) == 1 and budget.room(4) == 0  # the fair share: 12 / 3
    assert budget.room(8) == 0  # over its share, with nothing idle: it waits
    release.set()
    for f in futures:
        f.result(timeout=5)
    assert budget.room(0) == 12


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
    assert budget.room(0, "-") == 12  # nothing in flight: idle threads are anyone's
    budget.belongs(small, "ws-small")
    release = threading.Event()
    futures = [budget.submit(release.wait) for _ in range(12)]
    assert budget.room(0, "ws-small") == 6  # half the budget: one of two workspaces, its only run
    assert budget.room(0, "ws-big") == 2  # the other half, split between three runs
    budget.release(big[0])
    budget.release(big[1])
    assert budget.room(0, "ws-big") == 6
    budget.release(small)
    assert budget.room(0, "ws-big") == 12  # a workspace alone has it all
    release.set()
    for f in futures:
        f.result(timeout=5)
