"""Scenarios 7 and 8: many sweepers at once, and a minute of random SIGKILLs.

(Scenario 6, a worker SIGSTOPped past its lease and woken after a takeover, is
``tests/integration/test_workers.py::test_a_sigstopped_worker_that_wakes_after_a_takeover_writes_nothing``,
for every job and through PgBouncer; it carries this suite's marker.)
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections import Counter

import pytest
from helpers import expire_lease
from kinds import KINDS

pytestmark = pytest.mark.timeout(300)


def test_two_beats_and_three_workers_sweeping_at_once_take_each_expired_run_once(engine_env, workers, fake_llm,
                                                                               db_url, fleet_on, tmp_path, report):
    """7. Two beats and three workers sweeping at once: each run whose worker died is re-enqueued once
    (one takeback, one message, one executor), and completes."""
    from dataengine.testing.processes import start_beat

    fleet = fleet_on(db_url)
    runs = fleet.submit(send=False, latency_ms=100)
    runs += fleet.submit([k for k in KINDS.values() for _ in range(9)], steps=10, send=False, latency_ms=100)
    for r in runs:
        expire_lease(r.run_id, owner="dead-worker/1", job=r.kind.job)
    beats = [start_beat(f"beat{i}", env=engine_env, log_dir=tmp_path) for i in (1, 2)]
    try:
        standing = [workers(name, ready=False) for name in ("a", "b", "c")]
        figures = fleet.check(timeout_s=120)
        logs = "".join(p.log_text() for p in [*beats, *standing])
    finally:
        for b in beats:
            b.stop()
    taken = Counter(re.findall(r"Re-enqueued run whose worker dead-worker/1 stopped answering.*run_id=(\S+)", logs))
    assert taken == {str(r.run_id): 1 for r in runs}, {k: n for k, n in taken.items() if n != 1}
    # One takeback (token 1), one claim (token 2): a second takeback or executor would show.
    assert {row["fencing_token"] for row in fleet.rows()} == {2}
    report(figures, sweepers=5, expired_runs=len(runs), requeued_twice=0)


CHAOS_S = 60


@pytest.mark.timeout(480)  # a minute of kills, then every run to its end, with the suite's other processes busy
@pytest.mark.parametrize("db_route", ["direct", "pgbouncer"], indirect=True)
def test_random_sigkills_of_worker_processes_for_a_minute(db_route, workers, fake_llm, db_url, fleet_on, report):
    """8. Random SIGKILLs of worker main and pool processes every few seconds for a minute, 20 runs of
    mixed kinds across 3 workers (a killed worker is started again, as a supervisor would): every
    run completes, nothing recorded is asked again, at most one more call per step per kill."""
    rng = random.Random(int(os.environ.get("DATAENGINE_CHAOS_SEED", "8")))
    # A step in flight at several kills is not what kills them: only the kills count here.
    env = {"DATAENGINE_MAX_LOSSES_PER_STEP": "1000"}
    names = iter(f"w{i}" for i in range(100))
    standing = [workers(next(names), concurrency=2, env=env) for _ in range(3)]
    fleet = fleet_on(db_url)
    fleet.submit([k for _ in range(7) for k in KINDS.values()][:20], latency_ms=800)
    fleet.wait_progressed(4)
    kills = Counter()

    def supervise() -> None:
        # Celery ends a worker whose pool process is killed while the pool is still starting
        # ("Could not start worker processes"): its supervisor starts it again, as for a killed one.
        for worker in [w for w in standing if w.proc.poll() is not None]:
            standing.remove(worker)
            standing.append(workers(next(names), concurrency=2, env=env, ready=False))
            kills["exited"] += 1

    ends = time.monotonic() + CHAOS_S
    while time.monotonic() < ends:
        time.sleep(rng.uniform(2, 5))  # the injector's random pause between kills
        supervise()
        alive = [w for w in standing if w.proc.poll() is None]
        victim = rng.choice(alive)
        pool = victim.children()
        fleet.fault(f"SIGKILL #{sum(kills.values()) + 1}", mid_run=not kills)
        if pool and rng.random() < 0.6:
            try:
                os.kill(rng.choice(pool), signal.SIGKILL)
                kills["pool"] += 1
            except ProcessLookupError:  # it had just exited (its worker replacing it, or ending)
                pass
        else:
            victim.kill_main()
            standing.remove(victim)
            standing.append(workers(next(names), concurrency=2, env=env, ready=False))
            kills["main"] += 1
    figures = fleet.check(timeout_s=240)
    report(figures, kills=dict(kills), chaos_s=CHAOS_S, route=db_route)
