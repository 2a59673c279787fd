"""Steps per second of one long run whose step returns at once: ours against a DBOS workflow of as many steps.

Ours: ``execute_run`` in this process on a PropertyAudit run whose step returns a recorded
outcome at once (``checkpoint_throughput``'s "engine, no LLM": its settings, its job), each step
checkpointed in PostgreSQL. DBOS: ``steps_workflow(n)`` called in this process, ``n``
``@DBOS.step`` steps that return at once, each recorded in DBOS's own system database on the
same server. Rounds alternate, after one untimed warm-up each.

Target: ours >= 8 x DBOS (medians).
"""

from __future__ import annotations

import argparse
import functools
import sys

import _peers  # first: it puts bench/ on sys.path
import checkpoint_throughput  # configures the engine as that benchmark does (step_concurrency 4)
import dbos_app
from _peers import _common
from dbos import DBOS

from dataengine.infra.settings import get_settings
from tasks.propertyaudit import JOB

TARGET_RATIO = 8.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps of each run and each workflow")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.steps

    ours: list[float] = []
    peer: list[float] = []
    with _common.bench_environment(llm_latency_ms=0), _peers.dbos_database() as dbos_url:
        dbos_app.launch(database_url=dbos_url, executor_id="bench")
        try:
            _common.header(
                "steps per second of one long run, ours vs DBOS",
                steps=n, rounds=args.rounds, step_concurrency=get_settings().step_concurrency,
                step="returns at once (ours: a recorded outcome; DBOS: its index)",
                dbos=_peers.dbos_version(dbos_url),
            )
            dummy = _common.new_audit_run(1)
            # A real step through the stand-in once, for a realistic recorded outcome.
            sample = JOB.execute_step(JOB.prepare(checkpoint_throughput.run_row(dummy)), 0, "warm-up query")
            canned = checkpoint_throughput.canned_job(sample)
            checkpoint_throughput.run_engine(canned, _common.new_audit_run(100))  # warm-ups
            dbos_app.steps_workflow(100)
            for round_no in range(1, args.rounds + 1):
                run_id = _common.new_audit_run(n)  # created outside the timed part
                ours.append(_peers.per_s(n, functools.partial(checkpoint_throughput.run_engine, canned, run_id)))
                peer.append(_peers.per_s(n, functools.partial(dbos_app.steps_workflow, n)))
                print(f"   round {round_no}: ours {ours[-1]:.1f} steps/s, DBOS {peer[-1]:.1f} steps/s")
        finally:
            DBOS.destroy()

    print()
    ratio = _peers.compare(_peers.Series("ours (execute_run)", ours), _peers.Series("DBOS (@DBOS.step)", peer),
                           unit="steps/s")
    ok = _common.verdict("steps/s of one long run, ours vs DBOS", ratio >= TARGET_RATIO,
                         f"{ratio:.2f}x (target >= {TARGET_RATIO:g}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
