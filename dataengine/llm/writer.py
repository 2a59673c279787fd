"""One writer thread per process for what LLM calls leave behind: the journal's answers and the cost
ledger's spends, committed in batches (group commit).

Many calls in flight share a round trip: the thread takes whatever is waiting, up to ``BATCH`` items,
and writes each kind in one statement. A journal entry's caller waits for its commit (``RECORD_WAIT_S``
at most), so the journal's statement goes first; a spend's caller does not wait.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from dataengine.infra.db import statement_scope

log = logging.getLogger(__name__)
#: How long a step waits for its answer to be recorded before it goes on regardless (the database
#: is away: it goes on, and only a crash before its checkpoint would ask the call again).
RECORD_WAIT_S = 10.0
#: Items one statement writes at most.
BATCH = 500


@dataclass(frozen=True)
class Writes:
    """How a kind of item is written: ``statement`` reads ``:rows``, which ``rows(items)`` makes (a JSON array)."""

    statement: str
    rows: Any


_kinds: dict[type, Writes] = {}


def register(kind: type, statement: str, rows: Any) -> None:
    """Items of ``kind`` are written by ``statement``, reading ``:rows`` bound to ``rows(items)``."""
    _kinds[kind] = Writes(statement, rows)


class _Writer:
    """This process's writer thread (a forked pool process starts its own)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[Any, threading.Event | None]] = queue.Queue()
        self.pid = os.getpid()
        threading.Thread(target=self._run, name="llm-records", daemon=True).start()

    def _run(self) -> None:
        while True:
            waiting = [self.queue.get()]
            while len(waiting) < BATCH:
                try:
                    waiting.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            # What a step waits for first (the journal's answers), so that its commit never waits on the
            # rest (the ledger's sums, whose rows every process of the fleet updates).
            kinds = sorted({type(item) for item, _ in waiting}, key=lambda k: not any(
                done is not None and type(item) is k for item, done in waiting))
            for kind in kinds:
                mine = [(item, done) for item, done in waiting if type(item) is kind]
                try:
                    _write(_kinds[kind], [item for item, _ in mine])
                except Exception as exc:  # the steps go on; a crash before their checkpoint would ask again
                    log.warning("could not record %d %s(s) of LLM calls: %s: %s", len(mine), kind.__name__,
                                type(exc).__name__, exc)
                for _, done in mine:
                    if done is not None:
                        done.set()


_writer: _Writer | None = None
_writer_lock = threading.Lock()


def _queue() -> queue.Queue[tuple[Any, threading.Event | None]]:
    global _writer
    with _writer_lock:
        if _writer is None or _writer.pid != os.getpid():
            _writer = _Writer()
        return _writer.queue


def put(item: Any) -> None:
    """Write ``item`` soon, without waiting."""
    _queue().put((item, None))


def put_and_wait(item: Any) -> None:
    """Write ``item``, returning once it is committed (or after ``RECORD_WAIT_S``)."""
    done = threading.Event()
    _queue().put((item, done))
    if not done.wait(RECORD_WAIT_S):
        log.warning("recording an LLM call took over %.0fs; the step goes on", RECORD_WAIT_S)


def _write(writes: Writes, items: list[Any]) -> None:
    with statement_scope() as conn:
        conn.execute(text(writes.statement), {"rows": writes.rows(items)})
