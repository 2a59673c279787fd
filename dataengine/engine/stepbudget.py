"""The steps one process keeps in flight, shared fairly by the workspaces and runs it executes.

A step spends nearly all its time waiting on the LLM, so one process can keep hundreds in flight:
every run of the process submits its steps to one thread pool of ``calls_in_flight`` threads, and
each run keeps its fair share in flight: the budget is split between the priority tiers of the runs
the process holds by weight (``dataengine.infra.tiers``), a tier's part equally between its
workspaces (runs without a workspace are one workspace of their own), and a workspace's part equally
between its runs; a run alone has the whole budget (``step_concurrency`` caps it
further), and any run more while the others leave threads idle. Idle threads are idle only past what
the runs below their share and with steps to start are owed: a run over its share does not take the
thread another run's step just freed while a run under its share waits for it. A run that joins
makes the others' shares smaller at once; they start no new step until they are back under it, so
nobody starves and the pool's queue stays short. So a workspace with forty runs in the process has
the same part as one with a single run.

Each workspace's steps (of each tier) run on threads of their own (``StepThreads`` each, ending when
idle): the steps a workspace queued while it was alone wait behind each other, not in front of another
workspace's first ones.

It also knows which runs this process is executing, so a second delivery of one of them is
refused here instead of being mistaken for this process's own abandoned lease.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from dataengine.engine.stepthreads import StepThreads
from dataengine.infra.settings import get_settings
from dataengine.infra.tiers import DEFAULT_TIER, weight_of

#: A run's group: its tier and its workspace ("-": none, or not known yet).
Group = tuple[str, str]
_UNKNOWN: Group = (DEFAULT_TIER, "-")


@dataclass
class _Share:
    """What the budget knows of one run."""

    group: Group = _UNKNOWN
    in_flight: int = 0  # its steps submitted and not yet ended
    hungry: bool = True  # it has steps to start, as it last said


class StepBudget:
    """This process's step threads and the runs sharing them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[uuid.UUID, _Share] = {}
        self._per_group: Counter[Group] = Counter()
        self._in_flight = 0  # steps submitted and not yet ended, every run's
        self._pools: dict[Group, StepThreads] = {}
        self._pool_pid: int | None = None

    def room(self, mine: int, run_id: uuid.UUID | None = None, *, hungry: bool = True) -> int:
        """Steps ``run_id`` with ``mine`` in flight may start now: up to its fair share (its workspace's part
        of the budget, split between the workspace's runs), and past it into what the process leaves idle
        beyond what the other runs below their share are owed (never past the process's budget that way);
        at most ``step_concurrency`` in all. ``hungry``: whether it has steps to start after these."""
        s = get_settings()
        with self._lock:
            share = self._runs.get(run_id) if run_id is not None else None
            if share is not None:
                share.hungry = hungry
            fair = self._fair(share.group if share is not None else _UNKNOWN, s.calls_in_flight)
            owed = sum(max(0, self._fair(o.group, s.calls_in_flight) - o.in_flight)
                       for r, o in self._runs.items() if r != run_id and o.hungry)
            room = max(fair - mine, s.calls_in_flight - self._in_flight - owed, 0)
        return min(room, s.step_concurrency - mine) if s.step_concurrency else room

    def _fair(self, group: Group, budget: int) -> int:
        """A run's fair share of ``budget``: its tier's part by weight (of the tiers here), split equally
        between the tier's workspaces here, and the workspace's part between its runs here."""
        tiers = {tier for tier, _ in self._per_group}
        total = sum(weight_of(tier) for tier in tiers) or 1
        workspaces = sum(1 for tier, _ in self._per_group if tier == group[0]) or 1
        part = budget * weight_of(group[0]) // total // workspaces // max(self._per_group.get(group, 0), 1)
        return max(1, part)

    def executing(self, run_id: uuid.UUID) -> bool:
        """Whether this process is executing ``run_id`` now."""
        return run_id in self._runs

    @property
    def runs(self) -> int:
        """How many runs this process is executing."""
        return len(self._runs)

    def reserve(self, run_id: uuid.UUID) -> bool:
        """Count ``run_id`` among this process's runs, from its claim on; False if it already is."""
        with self._lock:
            if run_id in self._runs:
                return False
            self._runs[run_id] = _Share()
            self._per_group[_UNKNOWN] += 1
            return True

    def belongs(self, run_id: uuid.UUID, workspace: str, tier: str = DEFAULT_TIER) -> None:
        """``run_id`` (reserved) is a run of ``workspace`` and ``tier``, as its claimed row says."""
        with self._lock:
            share = self._runs.get(run_id)
            if share is None or share.group == (tier, workspace):
                return
            self._forget(share.group)
            share.group = (tier, workspace)
            self._per_group[share.group] += 1

    def release(self, run_id: uuid.UUID) -> None:
        """``run_id`` no longer executes here."""
        with self._lock:
            share = self._runs.pop(run_id, None)
            if share is not None:
                self._forget(share.group)

    def _forget(self, group: Group) -> None:
        self._per_group[group] -= 1
        if self._per_group[group] <= 0:
            del self._per_group[group]
            self._pools.pop(group, None)  # its threads, if any, end when idle

    def submit(self, fn: Callable[..., Any], *args: Any, run_id: uuid.UUID | None = None) -> Future[Any]:
        """Run a step (of ``run_id``) on one of this process's step threads (queued while all are busy)."""
        with self._lock:
            self._in_flight += 1
            share = self._runs.get(run_id) if run_id is not None else None
            if share is not None:
                share.in_flight += 1
        future = self._threads(share.group if share is not None else _UNKNOWN).submit(fn, *args)
        future.add_done_callback(lambda _: self._ended(share))
        return future

    def _ended(self, share: _Share | None) -> None:
        with self._lock:
            self._in_flight -= 1
            if share is not None:
                share.in_flight -= 1

    def _threads(self, group: Group) -> StepThreads:
        # A forked pool process inherits the object but none of its threads: it builds its own.
        with self._lock:
            if self._pool_pid != os.getpid():
                self._pools, self._pool_pid = {}, os.getpid()
            pool = self._pools.get(group)
            if pool is None:
                pool = self._pools[group] = StepThreads(get_settings().calls_in_flight, name=f"step-{group[0]}-{group[1]}")
            return pool

    def reset(self) -> None:
        """Forget the step threads, so the next step builds them from the settings (tests change
        them); idle ones end on their own."""
        with self._lock:
            self._pools, self._pool_pid = {}, None


#: The process's budget.
budget = StepBudget()
