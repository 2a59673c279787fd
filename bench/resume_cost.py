"""Time to the first new step when resuming a run at step 10,000, against resuming one at step 10.

Two PropertyAudit runs (10,010 and 20 queries) get their first 10,000 / 10 results written
directly with SQL, as if a worker had checkpointed them and died (status running, no lease).
Each repetition times ``execute_run`` from the call to the first call of the job's step
(the job's ``execute_step`` wrapped via ``dataclasses.replace``); the wrapper then stops the
run by failing, and the run is put back to its resume point for the next repetition. The
two runs alternate, after one untimed warm-up each.

Target: median(resume at 10,000) <= 1.5 x median(resume at 10).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from typing import Any

import _common

TARGET_RATIO = 1.5
_common.configure("resume_cost", max_queries=20_000)  # the big run is above the default 10,000-query limit
# Imported after configure(): the package reads its settings once, at import.
from sqlalchemy import text  # noqa: E402

from dataengine.engine.jobs import Job, StepOutcome  # noqa: E402
from dataengine.engine.runloop import execute_run  # noqa: E402
from dataengine.infra.db import session_scope  # noqa: E402
from dataengine.infra.errors import StepFailed  # noqa: E402
from tasks.propertyaudit import JOB  # noqa: E402

RECORD_RESULTS = text(
    """
    INSERT INTO geo_query_results (run_id, query_index, fencing_token, query_text, answer, evaluation,
                                   mentioned, rank, sentiment, prompt_tokens, completion_tokens, cost_usd, latency_ms)
    SELECT q.run_id, q.query_index, 1, q.query_text,
           '1. **Cedar Flats** - walkable to shops and transit' || chr(10) || '2. **Aspen Court** - quiet setting',
           '{"mentioned": true, "rank": 1, "sentiment": "positive", "competitors": ["Aspen Court"],
             "citations": ["https://www.cedar-flats.example"]}'::jsonb,
           true, 1, 'positive', 120, 80, 0.000066, 12
    FROM geo_queries q WHERE q.run_id = :id AND q.query_index < :done
    """
)
# A crashed worker's run: running, no lease (the sweeper took it back), resume point at ``done``.
AT_RESUME_POINT = text(
    """
    UPDATE geo_runs SET status = 'running', current_query_index = :done, completed_steps = :done,
           progress_pct = round(100.0 * :done / total_steps, 2), prompt_tokens = 120 * :done,
           completion_tokens = 80 * :done, cost_usd = 0.000066 * :done, started_at = now() - interval '1 hour',
           finished_at = NULL, error_message = NULL, eta_s = NULL, lease_owner = NULL, lease_expires_at = NULL,
           fencing_token = 1, step_losses = '{}', in_flight_steps = '{}', cancel_requested = false
    WHERE id = :id
    """
)
FORGET_NEW_RESULTS = text("DELETE FROM geo_query_results WHERE run_id = :id AND query_index >= :done")


class FirstStepReached(Exception):
    """The benchmark stops the run at its first new step: what it measures has happened."""


class FirstStepClock:
    """A job whose step records when it is first called, then stops the run."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.index: int | None = None
        self.job: Job = dataclasses.replace(JOB, execute_step=self._step)

    def _step(self, _: Any, index: int, __: Any) -> StepOutcome:
        if self.first is None:
            self.first, self.index = time.perf_counter(), index
        raise FirstStepReached(f"stopped at step {index}")

    def time_resume(self, run_id: str, done: int) -> float:
        """Seconds from ``execute_run`` to the first new step of a run resumed at ``done``."""
        self.first = self.index = None
        started = time.perf_counter()
        try:
            execute_run(job=self.job, run_id=run_id, worker_id="bench/resume", task_id=None, may_retry=False)
        except StepFailed:
            pass  # our own stop; anything else is a real failure
        if self.first is None or self.index is None or self.index < done:
            raise RuntimeError(f"run {run_id} did not resume at step {done} (first step: {self.index})")
        reset(run_id, done)
        return self.first - started


def reset(run_id: str, done: int) -> None:
    """Put the run back at its resume point, as a crash would leave it."""
    with session_scope() as session:
        session.execute(FORGET_NEW_RESULTS, {"id": run_id, "done": done})
        session.execute(AT_RESUME_POINT, {"id": run_id, "done": done})


def crashed_run(done: int, remaining: int) -> str:
    """A run of ``done + remaining`` queries whose first ``done`` results are recorded."""
    run_id = _common.new_audit_run(done + remaining)
    with session_scope() as session:
        session.execute(RECORD_RESULTS, {"id": run_id, "done": done})
    reset(run_id, done)
    with session_scope() as session:  # plans as a long-lived database would have them
        for table in ("geo_runs", "geo_queries", "geo_query_results"):
            session.execute(text(f"ANALYZE {table}"))
    return run_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--big", type=int, default=10_000, help="steps recorded before the big resume")
    parser.add_argument("--small", type=int, default=10, help="steps recorded before the small resume")
    parser.add_argument("--remaining", type=int, default=10, help="steps left after the resume point")
    args = parser.parse_args()
    # The deliberate stop logs an error per repetition; it is not news.
    logging.getLogger("dataengine.run").setLevel(logging.CRITICAL)

    with _common.bench_environment(with_llm=False):
        _common.header("resume cost", repeats=args.repeats, resume_points=f"{args.big} vs {args.small}",
                       remaining_steps=args.remaining, measured="execute_run() call -> first new step starts")
        runs = {args.big: crashed_run(args.big, args.remaining), args.small: crashed_run(args.small, args.remaining)}
        clock = FirstStepClock()
        for done, run_id in runs.items():
            clock.time_resume(run_id, done)  # warm-up: first statements compiled, pool filled
        times: dict[int, list[float]] = {done: [] for done in runs}
        for i in range(args.repeats):
            order = list(runs.items()) if i % 2 == 0 else list(reversed(runs.items()))
            for done, run_id in order:
                times[done].append(clock.time_resume(run_id, done))

    med = {done: _common.median(ts) for done, ts in times.items()}
    print()
    for done, ts in times.items():
        print(f"   resume at {done:>6}: median {1000 * med[done]:.1f} ms  {_common.fmt_list([1000 * t for t in ts], 'ms', 1)}")
    ratio = med[args.big] / med[args.small]
    ok = _common.verdict(
        f"resume at {args.big} vs at {args.small}", ratio <= TARGET_RATIO,
        f"{1000 * med[args.big]:.1f} / {1000 * med[args.small]:.1f} ms = {ratio:.2f}x (target <= {TARGET_RATIO}x)",
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
