"""One heartbeat per process: a thread renews the leases of every run the process executes, in one
statement per job each beat, so liveness writes do not grow with the runs a process holds.

A run's loop watches its ``Lease``: ``lost`` once the run was taken over, taken back, handed back
or finished elsewhere; ``cancel`` once cancellation was requested. A database that does not answer
is retried at every beat for as long as the run goes on (the loop starts no step meanwhile and
gives up after ``db_retry_limit_s``).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import defaultdict

from dataengine.db import statement_scope
from dataengine.jobs import Job
from dataengine.logs import RunLogger
from dataengine.runs import Claim, renew_leases
from dataengine.settings import get_settings


class Lease:
    """A run's lease as the heartbeat keeps it."""

    def __init__(self, *, job: Job, claim: Claim, log: RunLogger) -> None:
        self.job, self.claim, self.log = job, claim, log
        self.lost, self.cancel = threading.Event(), threading.Event()
        self.failing = False

    def start(self) -> None:
        """Renewed from now on, at every beat."""
        heartbeats().add(self)

    def stop(self) -> None:
        """No longer renewed; returns once a renewal in flight has ended (it must not outlive the run),
        or after ``lease_s`` if the database does not answer it (a late renewal revives nothing)."""
        heartbeats().remove(self, wait_s=get_settings().lease_s)

    def renewed(self, cancel: bool) -> None:
        if self.failing:
            self.log.info("[%s] heartbeat renewed the lease again", self.job.name)
        self.failing = False
        if cancel:
            self.cancel.set()

    def failed(self, exc: BaseException) -> None:
        if not self.failing:
            self.log.warning("[%s] heartbeat failed, retrying: %s: %s", self.job.name, type(exc).__name__, exc)
        self.failing = True


class Heartbeats(threading.Thread):
    """The process's heartbeat thread and the leases it renews."""

    def __init__(self) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self._leases: dict[uuid.UUID, Lease] = {}
        self._lock = threading.Lock()
        self._beating = threading.Lock()  # held while a renewal is in flight

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._leases[lease.claim.run_id] = lease

    def remove(self, lease: Lease, *, wait_s: float) -> None:
        beat_over = self._beating.acquire(timeout=wait_s)
        try:
            with self._lock:
                if self._leases.get(lease.claim.run_id) is lease:
                    del self._leases[lease.claim.run_id]
        finally:
            if beat_over:
                self._beating.release()

    def run(self) -> None:
        while True:
            time.sleep(get_settings().heartbeat_interval_s)
            self.beat()

    def beat(self) -> None:
        """Renew every lease, one statement per job."""
        with self._beating:
            self._renew()

    def _renew(self) -> None:
        by_job: dict[str, list[Lease]] = defaultdict(list)
        with self._lock:
            for lease in self._leases.values():
                by_job[lease.job.key].append(lease)
        for leases in by_job.values():
            try:
                with statement_scope() as conn:
                    held = renew_leases(conn=conn, job=leases[0].job, claims=[lease.claim for lease in leases])
            except Exception as exc:
                for lease in leases:
                    lease.failed(exc)
                continue
            for lease in leases:
                if lease.claim.run_id in held:
                    lease.renewed(held[lease.claim.run_id])
                else:
                    lease.lost.set()


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
