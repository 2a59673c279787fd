"""A fleet of real workers on PropertyAudits against the stand-in: the workload and its figures, shared by
the LLM benchmarks (``llm_throughput.py``, ``fleet_limit.py``).

Import after ``_common.configure()``: it imports the engine, which reads its settings once. Workers are
real ``celery worker`` processes started and stopped by pid; logs go to ``$TMPDIR/de_bench_logs``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import _common
import httpx
from sqlalchemy import text

from dataengine.infra.db import session_scope
from dataengine.testing.processes import CeleryProcess, start_worker
from dataengine.worker.app import enqueue


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
    #: Requests the stand-in admitted in each whole second of its clock, and the clock's time of each 429.
    per_second: dict[int, int]
    answered_429_at: list[float]
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
                   rate_limited=stats["rate_limited"], samples=busy, cpu_s=cpu, llm_cpu_s=llm_cpu,
                   per_second={int(s): n for s, n in stats["requests_per_second"].items()},
                   answered_429_at=stats["answered_429_at"])


def env_of(extra: dict[str, str], cwd: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(("DATABASE_URL", "REDIS_URL", "OPENAI_"))}
    env.update(extra)
    if cwd is not None:  # the old engine's packages first
        env["PYTHONPATH"] = str(cwd)
    return env
