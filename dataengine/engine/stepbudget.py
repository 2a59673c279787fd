"""The steps one process keeps in flight, shared fairly by the workspaces and runs it executes.

A step spends nearly all its time waiting on the LLM, so one process can keep hundreds in flight:
every run of the process submits its steps to one thread pool of ``calls_in_flight`` threads, and
each run keeps its fair share in flight: the budget is split equally between the workspaces whose
runs the process holds (runs without a workspace are one workspace of their own), and a workspace's
part equally between its runs; a run alone has the whole budget (``step_concurrency`` caps it
further), and any run more while the others leave threads idle. A run that joins makes the others'
shares smaller at once; they start no new step until they are back under it, so nobody starves and
the pool's queue stays short. So a workspace with forty runs in the process has the same part as
one with a single run.

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
from typing import Any

from dataengine.engine.stepthreads import StepThreads
from dataengine.infra.settings import get_settings


class StepBudget:
    """This process's step threads and the runs sharing them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[uuid.UUID, str] = {}  # run -> its workspace ("-": none, or not known yet)
        self._per_workspace: Counter[str] = Counter()
        self._in_flight = 0  # steps submitted and not yet ended, every run's
        self._pool: StepThreads | None = None
        self._pool_pid: int | None = None

    def room(self, mine: int, workspace: str = "-") -> int:
        """Steps a run of ``workspace`` with ``mine`` in flight may start now: up to its fair share (its
        workspace's part of the budget, split between the workspace's runs), and past it into what the
        process leaves idle (never past the process's budget that way); at most ``step_concurrency`` in all."""
        s = get_settings()
        workspaces, siblings = len(self._per_workspace), self._per_workspace.get(workspace, 0)
        fair = max(1, s.calls_in_flight // max(workspaces, 1) // max(siblings, 1))
        room = max(fair - mine, s.calls_in_flight - self._in_flight, 0)
        return min(room, s.step_concurrency - mine) if s.step_concurrency else room

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
            self._runs[run_id] = "-"
            self._per_workspace["-"] += 1
            return True

    def belongs(self, run_id: uuid.UUID, workspace: str) -> None:
        """``run_id`` (reserved) is a run of ``workspace``, as its claimed row says."""
        with self._lock:
            before = self._runs.get(run_id)
            if before is None or before == workspace:
                return
            self._forget(before)
            self._runs[run_id] = workspace
            self._per_workspace[workspace] += 1

    def release(self, run_id: uuid.UUID) -> None:
        """``run_id`` no longer executes here."""
        with self._lock:
            workspace = self._runs.pop(run_id, None)
            if workspace is not None:
                self._forget(workspace)

    def _forget(self, workspace: str) -> None:
        self._per_workspace[workspace] -= 1
        if self._per_workspace[workspace] <= 0:
            del self._per_workspace[workspace]

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run a step on one of this process's step threads (queued while all are busy)."""
        with self._lock:
            self._in_flight += 1
        future = self._threads().submit(fn, *args)
        future.add_done_callback(self._ended)
        return future

    def _ended(self, _: Future[Any]) -> None:
        with self._lock:
            self._in_flight -= 1

    def _threads(self) -> StepThreads:
        # A forked pool process inherits the object but none of its threads: it builds its own.
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = StepThreads(get_settings().calls_in_flight)
                self._pool_pid = os.getpid()
            return self._pool

    def reset(self) -> None:
        """Forget the step threads, so the next step builds them from the settings (tests change
        them); idle ones end on their own."""
        with self._lock:
            self._pool, self._pool_pid = None, None


#: The process's budget.
budget = StepBudget()
