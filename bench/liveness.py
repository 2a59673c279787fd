"""Liveness writes per worker process with 1 run and with 100, and a soak on a saturated machine.

1. **Writes**: one worker (prefork, 1 pool process, default settings) holds 1 PropertyAudit, then
   100, against a stand-in slow enough that no step ends during the window (so no checkpoint is
   written either). Over ``--window-s`` it counts the process's heartbeat writes (the row's
   ``beats`` counter) and every row the run table took (``pg_stat_user_tables``: none expected,
   as no run's lease is renewed on its own any more).
2. **Soak**: ``--soak-s`` (60) with both cores saturated, by CPU burners (one per core) and by the
   workers' own steps (two workers, 2 pool processes each, 40 runs of 20-ms steps): no run may be
   taken over while its worker lives. Every claim bumps a run's fencing token, so a run's token
   above 1 at the end is a takeover (nobody is killed here).

Targets: <= 5 liveness writes per second per process, with 1 run and with 100; no run row write
besides claims; no takeover in the soak.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

import _common

MAX_WRITES_PER_S = 5.0
_common.configure("liveness")
# Imported after configure(): the package reads its settings once, at import.
from sqlalchemy import text  # noqa: E402

from dataengine.engine.submitting import submit_run  # noqa: E402
from dataengine.infra.db import get_engine, session_scope  # noqa: E402
from dataengine.infra.settings import get_settings  # noqa: E402
from dataengine.testing.processes import CeleryProcess, start_worker  # noqa: E402
from dataengine.worker.app import enqueue  # noqa: E402
from tasks.propertyaudit import JOB  # noqa: E402

BEATS = text("SELECT worker_id, beats FROM worker_heartbeats")
RUN_ROW_WRITES = text("SELECT n_tup_upd + n_tup_ins FROM pg_stat_user_tables WHERE relname = 'geo_runs'")
RUNNING = text("SELECT count(*) FROM geo_runs WHERE status = 'running' AND lease_owner IS NOT NULL")
TAKEN_OVER = text("SELECT count(*) FROM geo_runs WHERE fencing_token > 1 AND id = ANY(CAST(:ids AS uuid[]))")
COMPLETED = text("SELECT count(*) FROM geo_runs WHERE status = 'completed' AND id = ANY(CAST(:ids AS uuid[]))")


def scalar(query: text, **params: object) -> int:  # type: ignore[valid-type]
    with session_scope() as session:
        return int(session.scalar(query, params) or 0)


def wait_for(query: text, at_least: int, timeout_s: float) -> None:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout_s
    while scalar(query) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {at_least} after {timeout_s}s")
        time.sleep(0.2)


def beats() -> dict[str, int]:
    with session_scope() as session:
        return {row.worker_id: row.beats for row in session.execute(BEATS)}


def stat_snapshot() -> int:
    """The run table's row writes as the statistics collector counts them (flushed about once a second)."""
    with session_scope() as session:
        session.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(session.scalar(RUN_ROW_WRITES) or 0)


def writes_while_holding(runs: int, window_s: float) -> tuple[float, int]:
    """(heartbeat writes per second per process, run-row writes) while one worker holds ``runs`` runs."""
    # One process holds at most runs_per_process runs (64 by default): raised for the 100.
    worker = start_worker(f"hold{runs}", env={"DATAENGINE_RUNS_PER_PROCESS": str(max(runs, 64))},
                          log_dir=_common.LOG_DIR, concurrency=1)
    try:
        worker.wait_ready(timeout_s=60)
        for _ in range(runs):
            submit_run(job=JOB, spec=_common.audit_spec(5), send=enqueue)
        wait_for(RUNNING, runs, timeout_s=60)
        time.sleep(1.5)  # the claims' own row writes reach the statistics first
        rows0, beats0, t0 = stat_snapshot(), beats(), time.monotonic()
        time.sleep(window_s)
        rows1, beats1, t1 = stat_snapshot(), beats(), time.monotonic()
    finally:
        worker.kill_main()  # its steps wait two minutes on the stand-in: a warm shutdown would too
        worker.stop()
    per_process = [(beats1[w] - beats0.get(w, 0)) / (t1 - t0) for w in beats1]
    return max(per_process), rows1 - rows0


def burn(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


def soak(seconds: float) -> tuple[int, int, int]:
    """(runs, runs completed, runs taken over) after ``seconds`` of saturated cores (the runs of the
    writes' part, taken back from the workers killed there, are not counted)."""
    workers: list[CeleryProcess] = []
    burners = [multiprocessing.Process(target=burn, args=(time.monotonic() + seconds,), daemon=True)
               for _ in range(os.cpu_count() or 2)]
    try:
        for name in ("soak-a", "soak-b"):
            workers.append(start_worker(name, env={}, log_dir=_common.LOG_DIR, concurrency=2))
        for worker in workers:
            worker.wait_ready(timeout_s=60)
        for burner in burners:
            burner.start()
        started = time.monotonic()
        ids = [submit_run(job=JOB, spec=_common.audit_spec(400), send=enqueue) for _ in range(40)]
        while time.monotonic() - started < seconds:
            time.sleep(1)
        return len(ids), scalar(COMPLETED, ids=ids), scalar(TAKEN_OVER, ids=ids)
    finally:
        for burner in burners:
            burner.terminate()
        for worker in workers:
            worker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--soak-s", type=float, default=60.0)
    args = parser.parse_args()
    s = get_settings()
    verdicts = []
    with _common.bench_environment(llm_latency_ms=120_000) as llm:
        _common.header("liveness", lease_s=s.lease_s, heartbeat_interval_s=s.heartbeat_interval_s,
                       window_s=args.window_s, soak_s=args.soak_s, logs=_common.LOG_DIR)
        figures = {}
        for runs in (1, 100):
            with session_scope() as session:
                session.execute(text("UPDATE geo_runs SET cancel_requested = true WHERE status IN ('queued', 'running')"))
            figures[runs] = writes_while_holding(runs, args.window_s)
            print(f"   holding {runs:3d} run(s): {figures[runs][0]:.2f} heartbeat writes/s per process, "
                  f"{figures[runs][1]} run-row writes in {args.window_s:g} s")
        for runs, (rate, rows) in figures.items():
            verdicts.append(_common.verdict(f"liveness writes, {runs} run(s)", rate <= MAX_WRITES_PER_S,
                                            f"{rate:.2f}/s per process (target <= {MAX_WRITES_PER_S:g})"))
            verdicts.append(_common.verdict(f"run-row writes while holding {runs}", rows == 0, f"{rows} (target 0)"))
        assert llm is not None
        llm.stop()
        llm.latency_ms = 20
        llm.start()
        get_engine().dispose()
        total, completed, taken = soak(args.soak_s)
        print(f"   soak: {total} runs on 2 workers x 2 processes, {os.cpu_count()} CPU burners, {args.soak_s:g} s: "
              f"{completed} completed, {taken} taken over")
        verdicts.append(_common.verdict("takeovers of live workers in the soak", taken == 0, f"{taken} (target 0)"))
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
