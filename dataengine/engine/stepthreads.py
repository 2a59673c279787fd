"""The threads that run a process's steps: as many as there are steps to run, up to a limit, each
ending after ``IDLE_S`` without work.

``concurrent.futures.ThreadPoolExecutor`` keeps every thread it ever started until shutdown: a
burst of 512 steps in flight left a pool process with 512 idle threads, whose touched stacks held
most of its memory growth (``bench/peers/worker_memory.py``). Here an idle thread ends, and a
later burst starts threads again (a few tens of microseconds each). When the last one ends, the
heap's free pages go back to the system (``dataengine.infra.malloc``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from dataengine.infra import malloc

#: Seconds a step thread waits for work before it ends.
IDLE_S = 1.0

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class StepThreads:
    """Up to ``limit`` threads taking steps from one queue; an idle one ends after ``IDLE_S``."""

    def __init__(self, limit: int, *, name: str = "step") -> None:
        self.limit, self.name = limit, name
        self._queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for work that no submit has counted on yet
        self._backlog = 0  # steps queued while every thread was busy, for the next one free
        self._started = 0

    @property
    def threads(self) -> int:
        """Threads alive now."""
        return self._threads

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on a step thread (queued while ``limit`` of them are busy)."""
        future: Future[Any] = Future()
        self._queue.put((future, fn, args))
        with self._lock:
            if self._idle:
                self._idle -= 1  # a waiting thread takes it
                return future
            if self._threads >= self.limit:
                self._backlog += 1
                return future
            self._threads += 1
            self._started += 1
            name = f"{self.name}-{self._started}"
        threading.Thread(target=self._work, name=name, daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            try:
                future, fn, args = self._queue.get(timeout=IDLE_S)
            except queue.Empty:
                with self._lock:
                    ending = self._queue.empty()  # else a submit counted on a waiting thread: stay for it
                    if ending:
                        self._idle -= 1
                        self._threads -= 1
                        last = self._threads == 0
                if not ending:
                    continue
                if last:
                    malloc.trim()  # the burst is over: what its threads freed goes back to the system
                return
            if future.set_running_or_notify_cancel():  # not cancelled while queued
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)
            del future, fn, args  # nothing of the step stays alive with the idle thread
            with self._lock:
                if self._backlog:
                    self._backlog -= 1  # it takes a step that waited for a thread
                else:
                    self._idle += 1
