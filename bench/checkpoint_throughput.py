"""Checkpointed steps per second of a PropertyAudit run, against raw single-row ``UPDATE; COMMIT``.

The engine runs a whole PropertyAudit in this process (``execute_run``), its steps asking the
stand-in LLM (zero latency, its own process) through the real OpenAI SDK. The baseline is a
loop of one-row ``UPDATE geo_runs ...; COMMIT`` on the same database through the same driver
(SQLAlchemy + psycopg). Rounds interleave so both see the same machine load.

Two more figures, measured in the same rounds, say where the time goes: the same steps
through the SDK with no database ("LLM only": the ceiling the stand-in and SDK allow), and
the engine with a canned step and no LLM ("engine, no LLM": the checkpoint path alone).

Targets, both >= 0.5x:
- engine with a step that costs nothing (an LLM at zero latency *and* zero client CPU) against
  raw commits: what the checkpoint path itself costs;
- engine through the SDK and the stand-in against the same steps with no database: what
  checkpointing costs a real run.
Engine through the SDK against raw commits is printed too, for the record: on this machine the
OpenAI SDK's own CPU per call (2-4 ms) caps it near 0.07x whatever the engine does.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import _common

TARGET_RATIO = 0.5
_common.configure("checkpoint_throughput", step_concurrency=4)
# Imported after configure(): the package reads its settings once, at import.
from sqlalchemy import distinct, func, select, text  # noqa: E402

from dataengine.engine.jobs import Job, StepOutcome  # noqa: E402
from dataengine.engine.runloop import execute_run  # noqa: E402
from dataengine.infra.db import get_engine, session_scope  # noqa: E402
from dataengine.infra.settings import get_settings  # noqa: E402
from tasks.propertyaudit import JOB  # noqa: E402


@dataclasses.dataclass
class Measure:
    """One timed pass: steps (or commits) per second and the CPU each step cost, here and in the stand-in."""

    per_s: float
    cpu_ms: float = 0.0
    llm_cpu_ms: float = 0.0
    checkpoints: int = 0


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (Linux ``/proc``)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(n: int, llm_pid: int, fn: Callable[[], object]) -> Measure:
    """Time ``fn()`` doing ``n`` steps, with this process's and the stand-in's CPU per step."""
    cpu0, llm0, started = time.process_time(), _process_cpu_s(llm_pid), time.perf_counter()
    fn()
    return Measure(
        per_s=n / (time.perf_counter() - started),
        cpu_ms=1000 * (time.process_time() - cpu0) / n,
        llm_cpu_ms=1000 * (_process_cpu_s(llm_pid) - llm0) / n,
    )


def raw_commits(run_id: str, n: int) -> None:
    """The baseline: ``n`` single-row updates, each committed on its own."""
    bump = text("UPDATE geo_runs SET completed_steps = completed_steps + 1, last_updated_at = now() WHERE id = :id")
    with get_engine().connect() as conn:
        for _ in range(n):
            conn.execute(bump, {"id": run_id})
            conn.commit()


def run_engine(job: Job, run_id: str) -> None:
    """Work a created run to the end in this process, as a worker's task would."""
    outcome = execute_run(job=job, run_id=run_id, worker_id="bench/checkpoint", task_id=None)
    if outcome.status != "completed":
        raise RuntimeError(f"run {run_id} ended {outcome.status}: {outcome.detail}")


def checkpoints_of(run_id: str) -> int:
    """Checkpoint transactions a run took: its result rows carry their transaction's ``now()``."""
    r = JOB.results
    with session_scope() as session:
        return session.scalar(select(func.count(distinct(r.c.created_at))).where(r.c.run_id == run_id))


def llm_only(context: Any, n: int) -> None:
    """The same steps through the SDK and the stand-in, ``step_concurrency`` at a time, no database."""
    with ThreadPoolExecutor(max_workers=get_settings().step_concurrency) as pool:
        list(pool.map(lambda i: JOB.execute_step(context, i, f"bench query #{i}"), range(n)))


def run_row(run_id: str) -> Any:
    """The run row, as ``JOB.prepare`` reads it."""
    t = JOB.runs
    with session_scope() as session:
        return session.execute(select(t).where(t.c.id == run_id)).one()


def canned_job(sample: StepOutcome) -> Job:
    """PropertyAudit with a step that returns a recorded outcome at once: only the engine is left."""

    def step(_: Any, index: int, query: str) -> StepOutcome:
        return StepOutcome(values={**sample.values, "query_text": query}, usage=sample.usage)

    return dataclasses.replace(JOB, execute_step=step)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="queries per run (and commits per baseline pass)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.steps

    with _common.bench_environment(llm_latency_ms=0) as llm:
        assert llm is not None and llm.proc is not None
        pid = llm.proc.pid
        _common.header(
            "checkpoint throughput",
            steps=n, rounds=args.rounds, step_concurrency=get_settings().step_concurrency,
            stand_in="zero latency, own process", cpus=os.cpu_count(),
        )
        dummy = _common.new_audit_run(1)
        context = JOB.prepare(run_row(dummy))
        sample = JOB.execute_step(context, 0, "warm-up query")  # also warms the SDK client
        canned = canned_job(sample)
        raw_commits(dummy, 50)  # warm the pool and the plans

        results: dict[str, list[Measure]] = {"raw": [], "engine": [], "llm_only": [], "engine_no_llm": []}
        for round_no in range(1, args.rounds + 1):
            results["raw"].append(_measure(n, pid, lambda: raw_commits(dummy, n)))
            for key, job in (("engine", JOB), ("engine_no_llm", canned)):
                run_id = _common.new_audit_run(n)  # created outside the timed part
                measure = _measure(n, pid, functools.partial(run_engine, job, run_id))
                measure.checkpoints = checkpoints_of(run_id)
                results[key].append(measure)
            results["llm_only"].append(_measure(n, pid, lambda: llm_only(context, n)))
            print(f"   round {round_no}: " + ", ".join(f"{k} {v[-1].per_s:.1f}/s" for k, v in results.items()))

    med = {k: _common.median([m.per_s for m in v]) for k, v in results.items()}
    print()
    print(f"   {'':<19}{'median/s':>10}{'rounds':>28}{'cpu ms/step':>13}{'stand-in cpu':>14}{'steps/ckpt':>12}")
    labels = {"raw": "raw UPDATE;COMMIT", "engine": "engine (LLM)", "llm_only": "LLM only", "engine_no_llm": "engine, no LLM"}
    for key, label in labels.items():
        ms = results[key]
        per_ckpt = f"{n / _common.median([m.checkpoints for m in ms]):.2f}" if ms[0].checkpoints else "-"
        llm_cpu = f"{_common.median([m.llm_cpu_ms for m in ms]):.2f}" if key in ("engine", "llm_only") else "-"
        print(
            f"   {label:<19}{med[key]:>10.1f}{_common.fmt_list([m.per_s for m in ms], digits=1):>28}"
            f"{_common.median([m.cpu_ms for m in ms]):>13.2f}{llm_cpu:>14}{per_ckpt:>12}"
        )
    print()
    print(f"   engine (LLM) / raw     = {med['engine'] / med['raw']:.3f}  (for the record: bounded by LLM only / raw)")
    print(f"   LLM only / raw         = {med['llm_only'] / med['raw']:.3f}  (the ceiling the SDK + stand-in allow)")
    checks = (
        ("checkpointed steps/s (zero-cost step) vs raw commits/s", med["engine_no_llm"], med["raw"]),
        ("checkpointed steps/s through the SDK vs the same steps without a database", med["engine"], med["llm_only"]),
    )
    verdicts = [
        _common.verdict(label, mine / base >= TARGET_RATIO,
                        f"{mine:.1f} / {base:.1f} = {mine / base:.2f}x (target >= {TARGET_RATIO}x)")
        for label, mine, base in checks
    ]
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
