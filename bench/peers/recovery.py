"""Seconds from SIGKILL to the first new step elsewhere: ours against DBOS and against plain Celery (acks_late).

Each round runs the three in turn, on the same Redis and PostgreSQL:
- ours: one round of ``recovery_latency`` (its workers, settings and clock: SIGKILL of the main
  process of the worker holding a long PropertyAudit, stand-in at 40 ms, until a checkpoint by
  the idle standby);
- DBOS: its executor process runs one long workflow (steps of 40 ms, one after another); it is
  SIGKILLed and started again at once, as a supervisor would, with the same executor id and
  application version, so ``DBOS.launch()`` recovers the workflow; the clock stops when a new
  step output appears in its system database (polled every 50 ms). The new process replays
  every recorded step first, so this grows with the workflow's progress (printed per round);
- plain Celery: a bare app (``bare_celery``, ``acks_late=True``, everything else its defaults)
  with two workers of one pool process; the one running a long task has its main process
  SIGKILLed, and the clock stops when the task is delivered again, to the standby or a fresh
  worker, or after ``--celery-cap-s`` ("none within N s").

Target: ours faster than both (medians; a peer with no recovery within its cap counts as slower).
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
import uuid

import _peers  # first: it puts bench/ on sys.path
import bare_celery
import recovery_latency  # configures the engine as that benchmark does
import redis
from _peers import _common
from sqlalchemy import create_engine, text

from dataengine.infra.settings import get_settings

POLL_S = 0.05
#: The longest run a spec allows: each of our rounds waits for the peers' rounds in between.
OUR_QUERIES = 10_000
DBOS_WORKFLOW = "recovery"
DBOS_STEP_MS = recovery_latency.LLM_LATENCY_MS
#: Celery's task outlives every wait for its redelivery.
CELERY_TASK_S = 600.0
STEP_OUTPUTS = text("SELECT count(*) FROM dbos.operation_outputs WHERE workflow_uuid = :id")


class DbosExecutor:
    """The DBOS process running the long workflow; killed and restarted each round."""

    def __init__(self, database_url: str) -> None:
        self.args = ("--database-url", database_url, "--executor-id", "recovery")
        self.engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
        self.starts = itertools.count(1)
        self.proc = _peers.start_dbos_process(
            "dbos-recovery-1", *self.args, "--start", DBOS_WORKFLOW, "--sleep-ms", str(DBOS_STEP_MS)
        )
        next(self.starts)

    def recorded_steps(self) -> int:
        """Step outputs of the workflow in the system database."""
        with self.engine.connect() as conn:
            return conn.execute(STEP_OUTPUTS, {"id": DBOS_WORKFLOW}).scalar_one()

    def kill_and_restart(self, rng: random.Random) -> tuple[float, int]:
        """Once the workflow makes progress: SIGKILL, restart; the seconds until a new step is recorded, and the
        steps recorded at the kill (the restarted process replays them first)."""
        before = self.recorded_steps()
        if _peers.wait_for(lambda: self.recorded_steps() > before, timeout_s=60, poll_s=POLL_S) is None:
            raise TimeoutError("the DBOS workflow made no progress within 60s")
        time.sleep(rng.uniform(0.5, 1.5))
        killed_at = time.monotonic()
        _peers.kill(self.proc)
        done = self.recorded_steps()
        self.proc = _peers.start_dbos_process(f"dbos-recovery-{next(self.starts)}", *self.args)
        stepped_at = _peers.wait_for(lambda: self.recorded_steps() > done, timeout_s=60, poll_s=POLL_S)
        if stepped_at is None:
            raise TimeoutError("no new DBOS step within 60s of the restart")
        return stepped_at - killed_at, done

    def stop(self) -> None:
        """Kill the executor process and close our connections."""
        _peers.kill(self.proc)
        self.engine.dispose()


class CeleryPair:
    """Two bare Celery workers of one pool process: one runs the long task, one stands by."""

    def __init__(self) -> None:
        self.names = (f"bare{i}" for i in itertools.count())
        self.workers = {}
        self.redis = redis.Redis.from_url(_common.REDIS_URL)
        for _ in range(2):
            self.start_standby()

    def start_standby(self) -> None:
        """A fresh worker, once it is ready."""
        name = next(self.names)
        self.workers[name] = _peers.start_bare_worker(name, concurrency=1)
        self.workers[name].wait_ready(timeout_s=60)

    def deliveries(self, task_id: str) -> list[str]:
        """Worker names that received the task, in order."""
        key = bare_celery.DELIVERIES_KEY.format(task_id=task_id)
        return [host.decode().split("@", 1)[0] for host in self.redis.lrange(key, 0, -1)]

    def kill_and_wait(self, rng: random.Random, cap_s: float) -> float | None:
        """Send a long task, SIGKILL the main process of the worker running it; seconds until it is delivered
        again, or None within ``cap_s``."""
        task_id = str(uuid.uuid4())
        bare_celery.long_task.apply_async(args=[CELERY_TASK_S], task_id=task_id)
        if _peers.wait_for(lambda: self.deliveries(task_id), timeout_s=60, poll_s=POLL_S) is None:
            raise TimeoutError("no bare Celery worker took the task within 60s")
        time.sleep(rng.uniform(0.5, 1.5))
        victim = self.workers.pop(self.deliveries(task_id)[0])
        killed_at = time.monotonic()
        victim.kill_main()
        redelivered_at = _peers.wait_for(lambda: len(self.deliveries(task_id)) > 1, timeout_s=cap_s, poll_s=POLL_S)
        victim.stop()  # reaps it; its pool process died with it (Celery's parent-death signal)
        self.start_standby()
        return None if redelivered_at is None else redelivered_at - killed_at

    def stop(self) -> None:
        """Stop every worker we started (by pid)."""
        for worker in self.workers.values():
            worker.stop()
        self.redis.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--celery-cap-s", type=float, default=30.0, help="longest wait for Celery's redelivery")
    parser.add_argument("--seed", type=int, default=7, help="seeds the pause before each kill")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    s = get_settings()

    ours: list[float] = []
    dbos: list[float] = []
    celery: list[float | None] = []
    with _common.bench_environment(llm_latency_ms=recovery_latency.LLM_LATENCY_MS), \
            _peers.dbos_database() as dbos_url:
        _common.header(
            "recovery after SIGKILL, ours vs DBOS vs plain Celery",
            rounds=args.rounds,
            ours=f"recovery_latency's round; heartbeat {s.heartbeat_interval_s:g}s, lease {s.lease_s:g}s, "
                 f"sweep {s.sweep_interval_s:g}s",
            dbos=f"{_peers.dbos_version(dbos_url)}; executor restarted at once; steps of {DBOS_STEP_MS:g} ms",
            celery=f"acks_late, Redis visibility timeout {recovery_latency.CELERY_DEFAULT_VISIBILITY_S}s (default); "
                   f"cap {args.celery_cap_s:g}s",
            logs=_common.LOG_DIR,
        )
        executor = DbosExecutor(dbos_url)
        pair: CeleryPair | None = None
        try:
            pair = CeleryPair()
            rounds = recovery_latency.recovery_rounds(
                rounds=args.rounds, queries=OUR_QUERIES, rng=random.Random(args.seed)
            )
            for round_no, result in enumerate(rounds, 1):
                ours.append(result.checkpoint_s)
                dbos_s, dbos_done = executor.kill_and_restart(rng)
                dbos.append(dbos_s)
                celery.append(pair.kill_and_wait(rng, args.celery_cap_s))
                redelivered = "none" if celery[-1] is None else f"{celery[-1]:.2f}s"
                print(f"   round {round_no}: ours {ours[-1]:.2f}s (killed at step {result.completed_at_kill}), "
                      f"DBOS {dbos_s:.2f}s (killed at step {dbos_done}), Celery {redelivered}")
        finally:
            executor.stop()
            if pair is not None:
                pair.stop()

    print()
    ratio = _peers.compare(_peers.Series("ours (standby worker)", ours), _peers.Series("DBOS (process restarted)", dbos),
                           unit="s", digits=2)
    redelivered = [t for t in celery if t is not None]
    celery_median = _common.median([math.inf if t is None else t for t in celery])
    print(f"   plain Celery (acks_late): redelivered in {len(redelivered)} of {len(celery)} rounds"
          + (f", {_common.fmt_list(redelivered, 's')}" if redelivered else f": none within {args.celery_cap_s:g}s"))
    ours_median = _common.median(ours)
    ok_dbos = _common.verdict("recovery, ours vs DBOS", ratio < 1, f"{ours_median:.2f}s vs {_common.median(dbos):.2f}s "
                              f"= {ratio:.2f}x (target: faster, < 1x)")
    ok_celery = _common.verdict(
        "recovery, ours vs plain Celery", ours_median < celery_median,
        f"{ours_median:.2f}s vs " + (f"{celery_median:.2f}s" if redelivered and math.isfinite(celery_median)
                                     else f"none within {args.celery_cap_s:g}s") + " (target: faster)",
    )
    return 0 if ok_dbos and ok_celery else 1


if __name__ == "__main__":
    sys.exit(main())
