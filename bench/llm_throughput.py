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

The stand-in is sampled every 200 ms for its calls in flight. Workers are real ``celery worker``
processes started and stopped by pid; logs go to ``$TMPDIR/de_bench_logs``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parent.parent
#: The commit before the engine held many runs per process (issue 8).
BEFORE_COMMIT = "ce1701d"
TARGET_AT_LIMIT = 1.15
TARGET_IN_FLIGHT = 200
TARGET_429_SHARE = 0.01

_common.configure("llm_throughput")
import httpx  # noqa: E402
from sqlalchemy import text  # noqa: E402

from dataengine.infra.db import session_scope  # noqa: E402
from dataengine.testing.processes import CeleryProcess, start_worker  # noqa: E402
from dataengine.worker.app import enqueue  # noqa: E402


@dataclass(frozen=True)
class Outcome:
    """One workload's figures."""

    elapsed_s: float
    calls: int
    mean_in_flight: float
    max_in_flight: int
    max_in_60s: int
    #: The most requests the stand-in admitted in one second of its clock.
    max_per_s: int
    rate_limited: int
    #: The stand-in's calls in flight, every 200 ms.
    samples: list[int]
    #: CPU seconds of the workers' processes (main and pool), and of the stand-in, over the workload.
    cpu_s: float
    llm_cpu_s: float

    def cpu_line(self) -> str:
        per = max(self.calls, 1) / 1000
        return f"CPU per call: workers {self.cpu_s / per:.2f} ms, stand-in {self.llm_cpu_s / per:.2f} ms"


class Sampler(threading.Thread):
    """Reads the stand-in's calls in flight every 200 ms, from the first call until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.samples, self.stop = url, [], threading.Event()

    def run(self) -> None:
        with httpx.Client() as client:
            while not self.stop.wait(0.2):
                n = client.get(f"{self.url}/_fake/in-flight").json()["in_flight"]
                if n or self.samples:  # from the first call on
                    self.samples.append(n)


def stand_in(llm: _common.FakeLLMProcess, **config: object) -> dict:
    httpx.post(f"{llm.url}/_fake/reset")
    return httpx.post(f"{llm.url}/_fake/config", json=config).json()


def unfinished(run_ids: list[str]) -> int:
    with session_scope() as session:
        return session.scalar(text("SELECT count(*) FROM geo_runs WHERE id = ANY(CAST(:ids AS uuid[])) "
                                   "AND status NOT IN ('completed', 'failed', 'cancelled')"), {"ids": run_ids})


def pids(procs: list[CeleryProcess]) -> list[int]:
    """The workers' main and pool processes."""
    return [p for proc in procs for p in (proc.pid, *proc.children())]


def cpu_s(processes: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes (Linux ``/proc``)."""
    total = 0
    for pid in processes:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def profile(pid: int, seconds: float) -> None:
    """py-spy on one pool process: where its CPU goes, by the innermost frame's package."""
    out = _common.LOG_DIR / f"py-spy-{pid}.txt"
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("   (no py-spy: pip install -e '.[bench]' to see where the CPU goes)")
        return
    subprocess.run([str(spy), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "--format", "raw", "--gil",
                    "-o", str(out), "--nonblocking"], check=False, capture_output=True)
    by_package: dict[str, int] = {}
    for line in out.read_text().splitlines() if out.exists() else []:
        stack, _, count = line.rpartition(" ")
        frame = stack.rsplit(";", 1)[-1]
        path = frame.rpartition("(")[2].rstrip(")").rpartition(":")[0]
        package = path.split("/")[0] if "/" in path else "stdlib"
        by_package[package] = by_package.get(package, 0) + int(count)
    total = sum(by_package.values()) or 1
    top = sorted(by_package.items(), key=lambda kv: -kv[1])[:8]
    print("   where a pool process's CPU goes (py-spy --gil, innermost frame): "
          + ", ".join(f"{k} {v / total:.0%}" for k, v in top))


def workload(llm: _common.FakeLLMProcess, *, runs: int, queries: int, workers: int, env: dict[str, str],
             name: str, cwd: Path | None = None, spy_s: float = 0) -> Outcome:
    """Start ``workers`` default workers, enqueue ``runs`` audits, time them to the last one finished."""
    run_ids = [_common.new_audit_run(queries) for _ in range(runs)]
    started: list[CeleryProcess] = []
    try:
        for w in range(workers):
            proc = start_worker(f"{name}{w}", env=env_of(env, cwd), log_dir=_common.LOG_DIR,
                                concurrency=os.cpu_count() or 2, cwd=cwd)
            started.append(proc)
        for proc in started:
            proc.wait_ready(timeout_s=60)
        sampler = Sampler(llm.url)
        assert llm.proc is not None
        cpu_before, llm_before = cpu_s(pids(started)), cpu_s([llm.proc.pid])
        began = time.monotonic()
        sampler.start()
        for run_id in run_ids:
            enqueue("propertyaudit.run", {"run_id": run_id})
        if spy_s:
            time.sleep(2.0)  # past the claims, into the steady state
            profile(started[0].children()[0], spy_s)
        while unfinished(run_ids):
            time.sleep(0.1)
        elapsed = time.monotonic() - began
        cpu, llm_cpu = cpu_s(pids(started)) - cpu_before, cpu_s([llm.proc.pid]) - llm_before
        sampler.stop.set()
        sampler.join()
    finally:
        for proc in started:
            proc.stop(timeout_s=10)
    stats = httpx.get(f"{llm.url}/_fake/stats").json()
    busy = sampler.samples or [0]
    return Outcome(elapsed_s=elapsed, calls=stats["requests"], mean_in_flight=statistics.fmean(busy),
                   max_in_flight=stats["max_in_flight"], max_in_60s=stats["max_requests_in_60s"],
                   max_per_s=max(stats["requests_per_second"].values(), default=0),
                   rate_limited=stats["rate_limited"], samples=busy, cpu_s=cpu, llm_cpu_s=llm_cpu)


def env_of(extra: dict[str, str], cwd: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(("DATABASE_URL", "REDIS_URL", "OPENAI_"))}
    env.update(extra)
    if cwd is not None:  # the old engine's packages first
        env["PYTHONPATH"] = str(cwd)
    return env


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
