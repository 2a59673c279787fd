"""Time to the first new step of a run resumed at step 10,000: ours against a recovered DBOS workflow.

Ours: ``resume_cost``'s crashed run (10,000 results bulk-inserted with SQL, left ``running``
with no lease) and its clock, from the ``execute_run`` call to the first call of the step; the
run is put back to its resume point after each round.

DBOS: a workflow of 10,010 steps ran in a process of its own (its own executor id), which
SIGKILLed itself as step 10,000 began: 10,000 step outputs are recorded and the workflow is
``PENDING``. This process, DBOS launched with the same application version, recovers it with
``DBOS._recover_pending_workflows([that executor])`` (what ``DBOS.launch()`` does for its own
executor id, and DBOS's admin endpoint for another's): the workflow is re-enqueued, dequeued by
DBOS's queue thread (which polls about once a second), run again from the top with its 10,000
recorded steps replayed, and the clock stops as step 10,000 begins. A recovered workflow goes
on to finish, so each round has one of its own, all crashed up front in parallel. Also printed:
the part from the workflow's re-entry to that step (the replay alone).

The rounds alternate, after a warm-up each (DBOS: a workflow crashed at step 10).
Target (the issue names no figure): ours faster than DBOS, ratio < 1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

import _peers  # first: it puts bench/ on sys.path
import dbos_app
import resume_cost  # configures the engine as that benchmark does (runs of up to 20,000 queries)
from _peers import _common
from dbos import DBOS

TARGET_RATIO = 1.0
REMAINING = 10
CRASH_TIMEOUT_S = 300.0


def crash_dbos_workflows(database_url: str, done_by_executor: dict[str, int]) -> None:
    """For each executor id, a workflow of the same id that recorded ``done`` steps and died as the next began."""
    procs = {
        executor: _peers.start_dbos_process(
            f"dbos-{executor}", "--database-url", database_url, "--executor-id", executor,
            "--start", executor, "--steps", str(done + REMAINING), "--die-at-step", str(done),
        )
        for executor, done in done_by_executor.items()
    }
    try:
        for executor, proc in procs.items():
            if proc.wait(CRASH_TIMEOUT_S) != -signal.SIGKILL:
                raise RuntimeError(f"{executor} ended with {proc.returncode}, not its own SIGKILL; see {_common.LOG_DIR}")
    finally:
        for proc in procs.values():
            _peers.kill(proc)


def time_dbos_resume(executor_id: str, done: int) -> tuple[float, float]:
    """Seconds from the recovery request to the first new step, and from the workflow's re-entry to it."""
    reached = threading.Event()
    first: list[tuple[float, int]] = []

    def on_step(index: int) -> None:
        if not reached.is_set():
            first.append((time.perf_counter(), index))
            reached.set()

    dbos_app.PROBE.on_step = on_step
    started = time.perf_counter()
    handles = DBOS._recover_pending_workflows([executor_id])
    if len(handles) != 1 or not reached.wait(CRASH_TIMEOUT_S):
        raise RuntimeError(f"{executor_id}: {len(handles)} workflows recovered, first new step reached: {reached.is_set()}")
    [(at, index)] = first
    if index != done or dbos_app.PROBE.entered is None:
        raise RuntimeError(f"{executor_id} resumed at step {index}, not {done}")
    entered = dbos_app.PROBE.entered
    handles[0].get_result()  # the last steps finish before the next round
    return at - started, at - entered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--done", type=int, default=10_000, help="steps recorded before the resume")
    args = parser.parse_args()
    # resume_cost's deliberate stop logs an error per round; it is not news.
    logging.getLogger("dataengine.run").setLevel(logging.CRITICAL)

    ours: list[float] = []
    peer: list[float] = []
    replay: list[float] = []
    with _common.bench_environment(with_llm=False), _peers.dbos_database() as dbos_url:
        _common.header(
            "resume cost, ours vs DBOS", rounds=args.rounds, resume_at=args.done, remaining_steps=REMAINING,
            measured="ours: execute_run() -> first new step; DBOS: recovery request -> first new step",
            dbos=_peers.dbos_version(dbos_url),
        )
        executors = [f"crashed-{i}" for i in range(1, args.rounds + 1)]
        started = time.perf_counter()
        crash_dbos_workflows(dbos_url, {"crashed-warm-up": 10} | {executor: args.done for executor in executors})
        print(f"   DBOS workflows crashed at step {args.done} in {time.perf_counter() - started:.1f}s")
        run_id = resume_cost.crashed_run(args.done, REMAINING)
        clock = resume_cost.FirstStepClock()
        dbos_app.launch(database_url=dbos_url, executor_id="bench")
        try:
            clock.time_resume(run_id, args.done)  # warm-ups
            time_dbos_resume("crashed-warm-up", 10)
            for round_no, executor in enumerate(executors, 1):
                ours.append(clock.time_resume(run_id, args.done))
                total, replayed = time_dbos_resume(executor, args.done)
                peer.append(total)
                replay.append(replayed)
                print(f"   round {round_no}: ours {1000 * ours[-1]:.1f} ms, DBOS {1000 * total:.1f} ms "
                      f"(replay {1000 * replayed:.1f} ms)")
        finally:
            DBOS.destroy()

    print()
    ms = [1000 * t for t in peer]
    ratio = _peers.compare(_peers.Series(f"ours, resume at {args.done}", [1000 * t for t in ours]),
                           _peers.Series(f"DBOS, recover at {args.done}", ms), unit="ms")
    print(f"   {_peers.Series('DBOS, of which replay', [1000 * t for t in replay]).line('ms', 1)}")
    ok = _common.verdict(f"resume at step {args.done}, ours vs DBOS", ratio < TARGET_RATIO,
                         f"{ratio:.4f}x (target < {TARGET_RATIO:g}x: the issue names no figure)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
