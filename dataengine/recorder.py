"""One writer thread per process for what LLM calls leave behind: the journal's answers and the cost
ledger's spends, committed in batches (group commit).

Many calls in flight share a round trip: the thread takes whatever is waiting, up to ``BATCH`` items,
and writes it in one statement (the journal's insert and the ledger's upsert as one data-modifying
CTE). A journal entry's caller waits for its commit (``RECORD_WAIT_S`` at most); a spend's does not.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text

from dataengine.db import statement_scope

log = logging.getLogger(__name__)
#: How long a step waits for its answer to be recorded before it goes on regardless (the database
#: is away: it goes on, and only a crash before its checkpoint would ask the call again).
RECORD_WAIT_S = 10.0
#: Items one statement writes at most.
BATCH = 500


@dataclass(frozen=True)
class Writes:
    """What one batch writes: ``statement`` is an INSERT reading ``:rows`` (a JSON array), ``rows`` a
    function of the batch's items of that kind."""

    statement: str
    rows: Any


_kinds: dict[type, Writes] = {}


def register(kind: type, statement: str, rows: Any) -> None:
    """Items of ``kind`` are written by ``statement`` (reading ``:<name>`` bound to ``rows(items)``)."""
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
            try:
                _write([item for item, _ in waiting])
            except Exception as exc:  # the steps go on; a crash before their checkpoint would ask again
                log.warning("could not record %d LLM call(s): %s: %s", len(waiting), type(exc).__name__, exc)
            for _, done in waiting:
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


def _write(items: list[Any]) -> None:
    """The batch in one statement: each kind's insert, all but the last as CTEs of the last."""
    parts: list[str] = []
    params: dict[str, str] = {}
    for kind, writes in _kinds.items():
        mine = [item for item in items if type(item) is kind]
        if mine:
            name = f"rows_{len(parts)}"
            parts.append(writes.statement.replace(":rows", f":{name}"))
            params[name] = writes.rows(mine)
    if not parts:
        return
    ctes = ", ".join(f"w{i} AS ({part})" for i, part in enumerate(parts[:-1]))
    with statement_scope() as conn:
        conn.execute(text(f"WITH {ctes} {parts[-1]}" if ctes else parts[-1]), params)
