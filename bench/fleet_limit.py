"""The fleet's LLM limit against a provider's token bucket: at its rate at once, after a 429, and learned.

The provider (the stand-in) allows 20 requests a second: 1,200 RPM as OpenAI counts them, a token
bucket holding one second (20 at once, refilled continuously), full at the start; every answer
carries its ``x-ratelimit-*`` headers. Two workers with default settings (2 pool processes each) run
15 PropertyAudits of 20 queries (600 calls of 2 s each). The bound the limit allows: 600 / 20 a
second = 30 s.

1. **Configured.** ``DATAENGINE_LLM_RPM=1200``. Targets: elapsed ≤ 1.15 × the bound, 0 × 429.
2. **After a 429.** The same, and the stand-in answers its 350th request with a 429 (``Retry-After:
   1``). Target: the fleet is back at ≥ 90 % of the rate (18 admitted in a whole second of the
   stand-in's clock) within 5 s of the Retry-After's end.
3. **Learned.** No configured limit: the fleet learns it from the answers' headers. Targets: the rate
   from the third second to the last ≥ 0.9 of the provider's, ≤ 1 % of the calls answered 429.

``--engine DIR`` runs the workers from another checkout of the engine (a git worktree of an older
commit), against the same stand-in: the before of a before-and-after.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import _common

RPM = 1200
RATE = RPM / 60
RUNS, QUERIES, LATENCY_MS = 15, 20, 2000
TARGET_ELAPSED = 1.15
TARGET_BACK_S = 5.0
TARGET_SHARE = 0.9
TARGET_429_SHARE = 0.01

_common.configure("fleet_limit")
import redis  # noqa: E402
from _fleet import Outcome, stand_in, workload  # noqa: E402  after configure(): it imports the engine

from dataengine.llm.limits import KEY_PREFIX  # noqa: E402

#: Where the workers' engine is checked out (``--engine``); None: this one.
ENGINE: Path | None = None


def run(llm: _common.FakeLLMProcess, name: str, env: dict[str, str], fail_429_every: int = 0) -> Outcome:
    """One scenario from a fleet that knows nothing yet: the limiter's keys (pauses, learned limits) removed."""
    client = redis.Redis.from_url(_common.REDIS_URL)
    client.delete(*client.keys(f"{KEY_PREFIX}*"), "-")  # "-": so the list is never empty
    stand_in(llm, latency_ms=LATENCY_MS, rpm_limit=RPM, limit_bucket_s=1, fail_429_every=fail_429_every,
             retry_after_s=1)
    o = workload(llm, runs=RUNS, queries=QUERIES, workers=2, env=env, name=name, cwd=ENGINE)
    seconds = range(min(o.per_second), max(o.per_second) + 1)
    print(f"   {name}: {o.elapsed_s:.1f} s for {o.calls} requests ({o.elapsed_s / bound(o):.2f} × the bound of "
          f"{bound(o):.1f} s); 429s: {o.rate_limited} of the limit, {len(o.answered_429_at)} in all; "
          f"most in one second {o.max_per_s}, in any 60 s {o.max_in_60s}")
    print("   admitted each second: " + " ".join(str(o.per_second.get(s, 0)) for s in seconds))
    return o


def bound(o: Outcome) -> float:
    return (o.calls - len(o.answered_429_at)) / RATE


def configured(llm: _common.FakeLLMProcess) -> bool:
    o = run(llm, "configured", {"DATAENGINE_LLM_RPM": str(RPM)})
    ok = _common.verdict("configured: elapsed", o.elapsed_s <= TARGET_ELAPSED * bound(o),
                         f"{o.elapsed_s / bound(o):.2f} × the bound (target ≤ {TARGET_ELAPSED})")
    return ok & _common.verdict("configured: 429s", not o.answered_429_at, f"{len(o.answered_429_at)} (target 0)")


def after_a_429(llm: _common.FakeLLMProcess) -> bool:
    o = run(llm, "after-429", {"DATAENGINE_LLM_RPM": str(RPM)}, fail_429_every=350)
    if not o.answered_429_at:
        return _common.verdict("after a 429", False, "the stand-in answered no 429")
    resumed = o.answered_429_at[0] + 1.0
    around = [s for s in sorted(o.per_second) if resumed - 3 <= s <= resumed + 8]
    print("   admitted per second around it (the 429 at "
          f"{o.answered_429_at[0] - min(o.per_second):.1f} s): " + " ".join(str(o.per_second[s]) for s in around))
    back = next((s + 1 - resumed for s in sorted(o.per_second) if s >= math.floor(resumed)
                 and o.per_second[s] >= 0.9 * RATE), math.inf)
    return _common.verdict("after a 429: back at the rate", back <= TARGET_BACK_S,
                           f"{back:.1f} s after the Retry-After (target ≤ {TARGET_BACK_S:g} s)")


def learned(llm: _common.FakeLLMProcess) -> bool:
    o = run(llm, "learned", {})
    seconds = sorted(o.per_second)[2:-1]  # from the third second to the last whole one
    reached = sum(o.per_second[s] for s in seconds) / max(len(seconds), 1) / RATE
    share = len(o.answered_429_at) / max(o.calls, 1)
    ok = _common.verdict("learned: rate", reached >= TARGET_SHARE,
                         f"{reached:.2f} of the provider's from the third second (target ≥ {TARGET_SHARE})")
    return ok & _common.verdict("learned: 429s", share <= TARGET_429_SHARE, f"{share:.1%} of the requests (target ≤ 1%)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("configured", "429", "learned"), help="run one part")
    parser.add_argument("--engine", type=Path, help="run the workers from this checkout of the engine")
    args = parser.parse_args()
    global ENGINE
    ENGINE = args.engine
    _common.header("Fleet limit", cpus=os.cpu_count(), rpm=RPM, runs=RUNS, queries=QUERIES, latency_ms=LATENCY_MS,
                   engine=args.engine or "this checkout")
    ok = True
    with _common.bench_environment() as llm:
        assert llm is not None
        if args.only in (None, "configured"):
            ok &= configured(llm)
        if args.only in (None, "429"):
            ok &= after_a_429(llm)
        if args.only in (None, "learned"):
            ok &= learned(llm)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
