"""ReviewFlow reviews per second against PropertyAudit steps per second, and tokens per review with and
without grouping.

Each round runs, in this process with ``execute_run`` against the stand-in LLM (zero latency, its
own process), a PropertyAudit of ``--queries`` queries (the baseline: steps per second of the
job the engine was measured on), a ReviewFlow of ``--reviews`` reviews as shipped (short reviews
grouped 4 to a call) and the same ReviewFlow with grouping off. Rounds interleave so all three
see the same machine load.

Targets: grouped reviews/s >= 1x PropertyAudit steps/s (a review is one call or a quarter of
one; a query is two calls); tokens per review grouped <= 0.7x ungrouped.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

import _common

RATE_TARGET = 1.0
TOKENS_TARGET = 0.7
_common.configure("reviewflow_throughput", step_concurrency=4, max_reviews=100_000)
# Imported after configure(): the package reads its settings once, at import.
from dataengine.engine.jobs import Job, get_job, load_jobs  # noqa: E402
from dataengine.engine.runloop import execute_run  # noqa: E402
from dataengine.engine.submitting import create_run, validate_spec  # noqa: E402
from dataengine.infra.db import session_scope  # noqa: E402
from dataengine.infra.settings import get_settings  # noqa: E402

SENTENCES = (
    "Great location and friendly staff, I love the rooftop pool.",
    "The hallway is dirty and the neighbours are loud every night.",
    "There is a leak under the sink and mold on the wall.",
    "El departamento es muy limpio y el personal es amable.",
    "Parking is fine, rent went up again.",
    "The gym is quiet and clean, I recommend it.",
)


def review_spec(n: int, tag: str) -> dict[str, Any]:
    """A ReviewFlow spec of ``n`` distinct short reviews."""
    reviews = [{"text": f"{SENTENCES[i % len(SENTENCES)]} ({tag} #{i})", "rating": 1 + i % 5} for i in range(n)]
    return {"property": {"name": "Cedar Flats", "city": "Austin"}, "reviews": reviews}


def new_run(job: Job, spec: dict[str, Any]) -> str:
    """A queued run (created outside the timed part)."""
    validated, options = validate_spec(job, spec)
    with session_scope() as session:
        run_id, _ = create_run(session=session, job=job, spec=validated, options=options)
    return str(run_id)


def timed_run(job: Job, run_id: str, steps: int) -> tuple[float, int]:
    """Steps per second of a run worked to the end here, and the tokens it used."""
    started = time.perf_counter()
    outcome = execute_run(job=job, run_id=run_id, worker_id="bench/reviewflow", task_id=None)
    elapsed = time.perf_counter() - started
    if outcome.status != "completed":
        raise RuntimeError(f"run {run_id} ended {outcome.status}: {outcome.detail}")
    t = job.runs
    with session_scope() as session:
        row = session.execute(t.select().where(t.c.id == run_id)).one()
    return steps / elapsed, row.prompt_tokens + row.completion_tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    load_jobs()
    audit, reviews = get_job("propertyaudit"), get_job("reviewflow")
    ungrouped = dataclasses.replace(reviews, execute_group=None)

    with _common.bench_environment(llm_latency_ms=0):
        _common.header("reviewflow throughput", reviews=args.reviews, queries=args.queries, rounds=args.rounds,
                       step_concurrency=get_settings().step_concurrency, group_size=reviews.group_size,
                       stand_in="zero latency, own process", cpus=os.cpu_count())
        timed_run(reviews, new_run(reviews, review_spec(8, "warm-up")), 8)  # warms the SDK client and the plans
        rates: dict[str, list[float]] = {"audit": [], "grouped": [], "ungrouped": []}
        tokens: dict[str, list[float]] = {"grouped": [], "ungrouped": []}
        for round_no in range(1, args.rounds + 1):
            rate, _ = timed_run(audit, _common.new_audit_run(args.queries), args.queries)
            rates["audit"].append(rate)
            for key, job in (("grouped", reviews), ("ungrouped", ungrouped)):
                run_id = new_run(reviews, review_spec(args.reviews, f"{key}-{round_no}"))
                rate, used = timed_run(job, run_id, args.reviews)
                rates[key].append(rate)
                tokens[key].append(used / args.reviews)
            print(f"   round {round_no}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in rates.items())
                  + ", tokens/review " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in tokens.items()))

    med = {k: _common.median(v) for k, v in rates.items()}
    tok = {k: _common.median(v) for k, v in tokens.items()}
    print()
    print(f"   PropertyAudit steps/s          {med['audit']:8.1f}  {_common.fmt_list(rates['audit'], digits=1)}")
    print(f"   ReviewFlow reviews/s, grouped  {med['grouped']:8.1f}  {_common.fmt_list(rates['grouped'], digits=1)}")
    print(f"   ReviewFlow reviews/s, alone    {med['ungrouped']:8.1f}  {_common.fmt_list(rates['ungrouped'], digits=1)}")
    print(f"   tokens per review: grouped {tok['grouped']:.1f}, alone {tok['ungrouped']:.1f}")
    verdicts = [
        _common.verdict("ReviewFlow reviews/s (grouped) vs PropertyAudit steps/s", med["grouped"] / med["audit"] >= RATE_TARGET,
                        f"{med['grouped']:.1f} / {med['audit']:.1f} = {med['grouped'] / med['audit']:.2f}x "
                        f"(target >= {RATE_TARGET}x; alone {med['ungrouped'] / med['audit']:.2f}x)"),
        _common.verdict("tokens per review, grouped vs alone", tok["grouped"] / tok["ungrouped"] <= TOKENS_TARGET,
                        f"{tok['grouped']:.1f} / {tok['ungrouped']:.1f} = {tok['grouped'] / tok['ungrouped']:.2f}x "
                        f"(target <= {TOKENS_TARGET}x)"),
    ]
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
