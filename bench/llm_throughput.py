"""LLM throughput of a real fleet: at the provider's rate limit, calls in flight, before and after.

1. **At the limit.** 50 PropertyAudits of 40 queries (2 calls each: 4,000 calls), stand-in latency
   1 s with its own limit of 6,000 RPM, two workers with default settings and
   ``DATAENGINE_LLM_RPM=6000``. The bound the limit allows is 4,000 / 100 per second = 40 s.
   Targets: elapsed ≤ 1.15 × the bound; the most requests the stand-in admitted in any 60 s
   window ≤ 6,000; ≤ 1 % of the calls answered 429.
2. **In flight.** One worker (default pool size), no limit, stand-in latency 2 s, 100 runs of 20
   queries. Target: calls in flight per pool process, the mean from the first call to the end, ≥ 200;
   elapsed is printed against the bound that in-flight count × latency allows.
3. **Before and after.** The same smaller workload (``--before-runs`` runs of 20 queries, one
   worker, latency 1 s, no limit) on the engine of ``--before`` (a git worktree of the commit before
   this change) and on this one, in the same run: the speed-up.

The stand-in is sampled every 200 ms for its calls in flight (``_fleet.py``). The fleet limit
against a provider's token bucket, after a 429 and learned from its headers: ``fleet_limit.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parent.parent
#: The commit before the engine held many runs per process (issue 8).
BEFORE_COMMIT = "ce1701d"
TARGET_AT_LIMIT = 1.15
TARGET_IN_FLIGHT = 200
TARGET_429_SHARE = 0.01

_common.configure("llm_throughput")
from _fleet import stand_in, workload  # noqa: E402  after configure(): it imports the engine


def at_limit(llm: _common.FakeLLMProcess, rpm: int) -> bool:
    stand_in(llm, latency_ms=1000, rpm_limit=rpm)
    o = workload(llm, runs=50, queries=40, workers=2, env={"DATAENGINE_LLM_RPM": str(rpm)}, name="limit")
    bound = o.calls / (rpm / 60)
    print(f"   4,000 calls at RPM {rpm}: {o.elapsed_s:.1f} s against a bound of {bound:.1f} s "
          f"({o.elapsed_s / bound:.2f} ×); most in any 60 s: {o.max_in_60s}, in one second: {o.max_per_s} "
          f"(the rate: {rpm / 60:.0f}); 429s: {o.rate_limited} "
          f"of {o.calls}; calls in flight: mean {o.mean_in_flight:.0f}, max {o.max_in_flight}")
    ok = _common.verdict("at the limit", o.elapsed_s <= TARGET_AT_LIMIT * bound,
                         f"{o.elapsed_s / bound:.2f} × the bound (target ≤ {TARGET_AT_LIMIT})")
    ok &= _common.verdict("never over the limit", o.max_in_60s <= rpm, f"{o.max_in_60s} in the busiest 60 s")
    share = o.rate_limited / max(o.calls, 1)
    return ok & _common.verdict("429s", share <= TARGET_429_SHARE, f"{share:.2%} of the calls (target ≤ 1%)")


def in_flight(llm: _common.FakeLLMProcess, spy_s: float) -> bool:
    stand_in(llm, latency_ms=2000, rpm_limit=0)
    processes = os.cpu_count() or 2
    o = workload(llm, runs=100, queries=20, workers=1, env={}, name="inflight", spy_s=spy_s)
    per_process = o.mean_in_flight / processes
    bound = o.calls * 2.0 / max(o.mean_in_flight, 1)
    print(f"   {o.calls} calls of 2 s, one worker of {processes} pool processes: {o.elapsed_s:.1f} s "
          f"(in-flight × latency allows {bound:.1f} s); in flight: mean {o.mean_in_flight:.0f}, max {o.max_in_flight}; "
          + o.cpu_line())
    print("   in flight, every 2 s: " + " ".join(str(n) for n in o.samples[::10]))
    return _common.verdict("calls in flight per process", per_process >= TARGET_IN_FLIGHT,
                           f"mean {per_process:.0f} (target ≥ {TARGET_IN_FLIGHT})")


def before_after(llm: _common.FakeLLMProcess, commit: str, runs: int) -> bool:
    worktree = Path(_common.LOG_DIR) / "engine-before"
    if worktree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), commit], check=True,
                   capture_output=True)
    try:
        figures = {}
        for label, cwd in (("before", worktree), ("after", None)):
            stand_in(llm, latency_ms=1000, rpm_limit=0)
            figures[label] = workload(llm, runs=runs, queries=20, workers=1, env={}, name=label, cwd=cwd)
            o = figures[label]
            print(f"   {label}: {o.elapsed_s:.1f} s for {o.calls} calls; in flight: mean {o.mean_in_flight:.0f}, "
                  f"max {o.max_in_flight}; {o.cpu_line()}")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    speedup = figures["before"].elapsed_s / figures["after"].elapsed_s
    return _common.verdict("before and after", speedup > 1, f"{speedup:.1f} × faster than {commit}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=6000)
    parser.add_argument("--before", default=BEFORE_COMMIT, help="the commit to compare against (default %(default)s)")
    parser.add_argument("--before-runs", type=int, default=20)
    parser.add_argument("--only", choices=("limit", "inflight", "before"), help="run one part")
    parser.add_argument("--profile-s", type=float, default=8.0,
                        help="seconds of py-spy on a pool process during the in-flight part (0: none)")
    args = parser.parse_args()
    _common.header("LLM throughput", cpus=os.cpu_count(), rpm=args.rpm, before=args.before)
    ok = True
    with _common.bench_environment() as llm:
        assert llm is not None
        if args.only in (None, "limit"):
            ok &= at_limit(llm, args.rpm)
        if args.only in (None, "inflight"):
            ok &= in_flight(llm, args.profile_s)
        if args.only in (None, "before"):
            ok &= before_after(llm, args.before, args.before_runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
