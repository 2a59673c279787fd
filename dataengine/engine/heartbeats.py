"""One heartbeat per process: a thread writes the process's heartbeat row a few times a second
(``heartbeat_interval_s``), one statement however many runs the process holds, so liveness writes
do not grow with its runs (``dataengine.engine.liveness``).

The same statement reads what became of each run it holds, for the run's loop (its ``Lease``):
``lost`` once the run was taken over, taken back, handed back or finished elsewhere; ``cancel``
once cancellation was requested. A database that does not answer is retried at every beat, on a
new connection, for as long as the run goes on (the loop starts no step meanwhile and gives up
after ``db_retry_limit_s``). When a process's last run under an owner name ends, the owner beats on
for ``IDLE_FORGET_S`` and its row is then deleted: an idle process writes nothing, and one that
starts runs one after another (one-step runs) writes no row per run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

from sqlalchemy import Connection, Engine

from dataengine.engine.jobs import Job, all_jobs
from dataengine.engine.liveness import beat_sql, forget, lease_param
from dataengine.engine.runs import Claim
from dataengine.infra.db import get_engine, statement_scope
from dataengine.infra.logs import RunLogger
from dataengine.infra.settings import get_settings

log = logging.getLogger("dataengine.engine.heartbeats")

#: Seconds an owner with no run left keeps beating before its heartbeat row is deleted.
IDLE_FORGET_S = 1.0


class Lease:
    """A run's lease as the heartbeat keeps it."""

    def __init__(self, *, job: Job, claim: Claim, log: RunLogger) -> None:
        self.job, self.claim, self.log = job, claim, log
        self.lost, self.cancel = threading.Event(), threading.Event()
        self.failing = False

    def start(self) -> None:
        """Vouched for by the process's heartbeat from now on (its row is written at once)."""
        heartbeats().add(self)

    def stop(self) -> None:
        """No longer vouched for; returns once a beat in flight has ended, or after ``lease_s`` if the
        database does not answer it."""
        heartbeats().remove(self, wait_s=get_settings().lease_s)

    def held(self, cancel: bool) -> None:
        if self.failing:
            self.log.info("[%s] heartbeat reached the database again", self.job.name)
        self.failing = False
        if cancel:
            self.cancel.set()

    def failed(self, exc: BaseException) -> None:
        if not self.failing:
            self.log.warning("[%s] heartbeat failed, retrying: %s: %s", self.job.name, type(exc).__name__, exc)
        self.failing = True


class Heartbeats(threading.Thread):
    """The process's heartbeat thread, its own database connection, and the leases it vouches for."""

    def __init__(self) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self._leases: dict[uuid.UUID, Lease] = {}
        self._lock = threading.Lock()
        #: Owners left with no lease here, and since when (they beat on for ``IDLE_FORGET_S``).
        self._idle: dict[str, float] = {}
        self._beating = threading.Lock()  # held while a beat is in flight
        self._wake = threading.Event()
        # Its own connection, not the pool's: the connection a sweeper looks for stays the same for
        # the process's life (a pooled one may be closed while the process lives on).
        self._conn: Connection | None = None
        self._engine: Engine | None = None

    def add(self, lease: Lease) -> None:
        """Vouch for ``lease``; a beat is written at once if its owner has no fresh row yet."""
        owner = lease.claim.worker_id
        with self._lock:
            beating = self._idle.pop(owner, None) is not None or owner in self._owners()
            self._leases[lease.claim.run_id] = lease
        if not beating:
            self._wake.set()

    def remove(self, lease: Lease, *, wait_s: float) -> None:
        """Stop vouching for ``lease``, once a beat in flight has ended (``wait_s`` at most); an owner
        left with no lease beats on for ``IDLE_FORGET_S``, then its row goes (``forget_idle``)."""
        beat_over = self._beating.acquire(timeout=wait_s)
        try:
            owner = lease.claim.worker_id
            with self._lock:
                if self._leases.get(lease.claim.run_id) is lease:
                    del self._leases[lease.claim.run_id]
                if owner not in self._owners():
                    self._idle.setdefault(owner, time.monotonic())
        finally:
            if beat_over:
                self._beating.release()

    def _owners(self) -> set[str]:
        return {lease.claim.worker_id for lease in self._leases.values()}

    def forget_idle(self, *, after_s: float = IDLE_FORGET_S) -> None:
        """Delete the heartbeat rows of owners that have held no lease for ``after_s``."""
        now = time.monotonic()
        with self._lock:
            idle = [owner for owner, since in self._idle.items() if now - since >= after_s]
            for owner in idle:
                del self._idle[owner]
        for owner in idle:
            try:
                with statement_scope() as conn:
                    forget(conn, owner)
            except Exception as exc:  # the row goes stale, and a sweeper deletes it
                log.warning("could not delete the heartbeat of %s: %s: %s", owner, type(exc).__name__, exc)

    def run(self) -> None:
        interval = 0.25
        while True:
            # Nothing may end this thread: without it every lease of the process would lapse.
            try:
                interval = get_settings().heartbeat_interval_s
            except Exception as exc:  # settings refused after the start (changed under a live process): keep the last
                log.warning("heartbeat keeps its interval: the settings are refused now (%s)", type(exc).__name__)
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self.beat()
                self.forget_idle()
            except Exception as exc:
                log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)

    def beat(self) -> None:
        """Write the heartbeat of every owner with a lease here, or that had one moments ago, in one statement."""
        with self._beating:
            with self._lock:
                leases = list(self._leases.values())
                idle = sorted(self._idle)
            if leases or idle:
                self._beat(leases, idle)

    def _beat(self, leases: list[Lease], idle: list[str]) -> None:
        jobs = {job.key: job for job in all_jobs()} | {lease.job.key: lease.job for lease in leases}
        params = {
            "owners": sorted({lease.claim.worker_id for lease in leases} | set(idle)),
            "held": [lease.claim.run_id for lease in leases],
            "tokens": [lease.claim.token for lease in leases],
            "holders": [lease.claim.worker_id for lease in leases],
            **lease_param(),
        }
        try:
            rows = self._connection().execute(beat_sql(tuple(jobs[k] for k in sorted(jobs))), params).all()
        except Exception as exc:
            self._disconnect()
            for lease in leases:
                lease.failed(exc)
            return
        held = {row.id: bool(row.cancel_requested) for row in rows}
        for lease in leases:
            if lease.claim.run_id in held:
                lease.held(held[lease.claim.run_id])
            else:
                lease.lost.set()

    def _connection(self) -> Connection:
        engine = get_engine()
        if self._conn is None or self._engine is not engine:
            self._disconnect()
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            conn.detach()  # never returned to the pool, so never recycled or closed by it
            self._conn, self._engine = conn, engine
        return self._conn

    def close(self) -> None:
        """Delete the rows of owners left with no lease and close the heartbeat's connection (a process
        ending; a heartbeat that is not started, in tests)."""
        self.forget_idle(after_s=0)
        self._disconnect()

    def _disconnect(self) -> None:
        conn, self._conn, self._engine = self._conn, None, None
        if conn is not None:
            try:
                conn.close()  # detached: closes the connection itself
            except Exception:  # noqa: S110  already broken: nothing more to close
                pass


_heartbeats: Heartbeats | None = None
_heartbeats_pid: int | None = None
_heartbeats_lock = threading.Lock()


def heartbeats() -> Heartbeats:
    """This process's heartbeat, started on first use (a forked pool process starts its own)."""
    global _heartbeats, _heartbeats_pid
    with _heartbeats_lock:
        if _heartbeats is None or _heartbeats_pid != os.getpid():
            _heartbeats, _heartbeats_pid = Heartbeats(), os.getpid()
            _heartbeats.start()
        return _heartbeats


def close_heartbeats() -> None:
    """This process is ending: delete the rows of its owners that hold no run (if it ever beat)."""
    with _heartbeats_lock:
        beating = _heartbeats if _heartbeats_pid == os.getpid() else None
    if beating is not None:
        beating.close()
