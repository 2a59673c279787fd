"""Resident memory of a worker after 10,000 steps against the same worker idle after start-up.

Each round starts a fresh worker of ours (``python -m dataengine.worker``, as ``dataengine-worker``
starts it: Celery's worker command without the ``celery`` command; prefork, 2 pool processes,
default settings) and, beside it, one of the bare Celery app with the same flags (``celery -A
bare_celery worker``, as its users would start it); reads the RSS of each process (main and pool,
Linux ``/proc``) once both are ready and have settled; then has ours run 10,000 steps (``--runs`` PropertyAudits submitted with
``propertyaudit.submit``, the stand-in LLM at zero latency) and the bare one 10,000 tasks of one
ORM UPDATE each; and reads the RSS again. The bare worker is context for how much a worker
grows by doing nothing of ours.

Targets, for each process of ours (median of the rounds' largest figure): after / idle <= 1.3,
and every process < 150 MB after.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import _peers  # first: it puts bench/ on sys.path
import bare_celery
from _peers import _common

TARGET_GROWTH = 1.3
TARGET_MB = 150.0
WORKER_PROCESSES = 2
STEPS = 10_000
#: Quiet time before each reading, for the logs, timers and connections a worker keeps.
SETTLE_S = 2.0

_common.configure("peers_worker_memory")
# Imported after configure(): the package reads its settings once, at import.
from dataengine.infra.db import get_engine  # noqa: E402
from dataengine.testing.processes import CeleryProcess, start_worker  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def worker_rss(worker: CeleryProcess) -> dict[str, float]:
    """MB of the main process and of each pool process (by its place in the pool)."""
    pool = sorted(worker.children())
    if len(pool) != WORKER_PROCESSES:
        raise RuntimeError(f"{worker.name} has {len(pool)} pool processes, not {WORKER_PROCESSES}")
    return {"main": rss_mb(worker.pid)} | {f"pool {i}": rss_mb(pid) for i, pid in enumerate(pool, 1)}


@dataclass(frozen=True)
class Reading:
    """One worker's processes, idle and after the work."""

    idle: dict[str, float]
    after: dict[str, float]

    @property
    def growth(self) -> float:
        """The largest after / idle of its processes."""
        return max(self.after[p] / self.idle[p] for p in self.idle)

    @property
    def largest_mb(self) -> float:
        """The largest process after the work."""
        return max(self.after.values())

    def line(self, label: str) -> str:
        """Per process: idle -> after MB."""
        return f"{label}: " + ", ".join(f"{p} {self.idle[p]:.1f} -> {self.after[p]:.1f} MB" for p in self.idle)


def one_round(runs: int) -> tuple[Reading, Reading]:
    """Fresh workers side by side: ours' and the bare one's readings."""
    ours = start_worker("ours-memory", env={}, log_dir=_common.LOG_DIR, concurrency=WORKER_PROCESSES)
    bare = _peers.start_bare_worker("bare-memory", concurrency=WORKER_PROCESSES)
    try:
        for worker in (ours, bare):
            worker.wait_ready(timeout_s=60)
        time.sleep(SETTLE_S)
        idle = {worker.name: worker_rss(worker) for worker in (ours, bare)}
        _peers.submit_audits(runs, queries=STEPS // runs)
        _peers.bare_updates(STEPS)
        time.sleep(SETTLE_S)
        return Reading(idle[ours.name], worker_rss(ours)), Reading(idle[bare.name], worker_rss(bare))
    finally:
        ours.stop()
        bare.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20, help=f"PropertyAudits sharing the {STEPS:,} steps")
    args = parser.parse_args()

    ours: list[Reading] = []
    peer: list[Reading] = []
    with _common.bench_environment(llm_latency_ms=0):
        bare_celery.Base.metadata.create_all(get_engine())  # the bare app's own table, in our database
        _common.header(
            "worker memory after 10,000 steps vs idle", rounds=args.rounds,
            ours=f"{args.runs} runs of {STEPS // args.runs} queries, stand-in at zero latency",
            bare=f"{STEPS:,} ORM UPDATE tasks", worker=f"prefork, {WORKER_PROCESSES} pool processes, fresh each round",
        )
        for round_no in range(1, args.rounds + 1):
            reading, bare_reading = one_round(args.runs)
            ours.append(reading)
            peer.append(bare_reading)
            print(f"   round {round_no}: {reading.line('ours')}")
            print(f"            {bare_reading.line('bare')}")

    print()
    ratio = _peers.compare(_peers.Series("ours, largest after / idle", [r.growth for r in ours]),
                           _peers.Series("bare Celery, largest after / idle", [r.growth for r in peer]),
                           unit="x", digits=3)
    largest = max(r.largest_mb for r in ours)
    print(f"   ours: largest process after the work {largest:.1f} MB (bare: {max(r.largest_mb for r in peer):.1f} MB); "
          f"growth ours / bare = {ratio:.2f}")
    growth = _common.median([r.growth for r in ours])
    ok_growth = _common.verdict("worker RSS after 10,000 steps vs idle", growth <= TARGET_GROWTH,
                                f"{growth:.3f}x, largest of its processes (target <= {TARGET_GROWTH:g}x)")
    ok_size = _common.verdict("worker RSS per process", largest < TARGET_MB,
                              f"{largest:.1f} MB at most (target < {TARGET_MB:g} MB)")
    return 0 if ok_growth and ok_size else 1


if __name__ == "__main__":
    sys.exit(main())
