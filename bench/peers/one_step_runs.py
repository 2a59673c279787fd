"""One-step runs completed per second, from the submit to ``completed``: ours against a bare Celery task.

Ours: ``--runs`` ``instant.submit`` of one text each, sent with ``send_task`` as a producer that
cannot reach the database does; one worker (``celery -A dataengine worker``, prefork, 2 pool
processes, default settings) creates each run, starts it and completes it. The step returns at once
(``instant_job``: the peer makes no LLM call either), so the figure is the engine's own cost of a run:
its row, its checkpoint, its summary, its task. Clock: the database's, from just before the first
send to the ``finished_at`` of the last run.

Peer: as many sends of a bare Celery task (``bare_celery``: ``acks_late``, prefetch 1, JSON) that
does one SQLAlchemy ORM UPDATE and commits, to a worker with the same flags and pool; clock: from
just before the first send to the last commit. Both workers run side by side on their own queues
and take turns; one untimed warm-up each.

For context (no target), the same rounds also time one-query PropertyAudits (``propertyaudit.submit``)
whose step asks the stand-in LLM at zero latency through the OpenAI SDK.

Targets: ratio >= 0.6 and ours >= 200 runs/s (medians).
"""

from __future__ import annotations

import argparse
import json
import sys

import _peers  # first: it puts bench/ on sys.path
import bare_celery
from _peers import PEERS_DIR, _common

TARGET_RATIO = 0.6
TARGET_RUNS_PER_S = 200.0
WORKER_PROCESSES = 2
WARM_UP = 10
INSTANT = {"task": "instant.submit", "spec": {"texts": ["one"]}, "table": "instant_runs"}

_common.configure("peers_one_step_runs")
# Imported after configure(): the package reads its settings once, at import.
import instant_job  # noqa: E402

from dataengine.infra.db import get_engine  # noqa: E402
from dataengine.infra.settings import job_module_names  # noqa: E402
from dataengine.testing.processes import start_worker  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="runs (and bare tasks) per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.runs

    ours: list[float] = []
    audits: list[float] = []
    peer: list[float] = []
    with _common.bench_environment(llm_latency_ms=0):
        cfg = _common.config()
        bare_celery.Base.metadata.create_all(get_engine())  # the bare app's own table, in our database
        instant_job.create_tables(cfg.database_url)
        _common.header(
            "one-step runs completed per second, ours vs a bare Celery task",
            runs=n, rounds=args.rounds, worker=f"prefork, {WORKER_PROCESSES} pool processes, one each side",
            step="instant.submit: returns at once; propertyaudit.submit (context): stand-in at zero latency",
            logs=_common.LOG_DIR,
        )
        env = {"DATAENGINE_JOB_MODULES": json.dumps([*job_module_names(), "instant_job"]),
               "PYTHONPATH": str(PEERS_DIR)}
        workers = []
        try:
            workers.append(start_worker("ours", env=env, log_dir=_common.LOG_DIR, concurrency=WORKER_PROCESSES))
            workers.append(_peers.start_bare_worker("bare", concurrency=WORKER_PROCESSES))
            for worker in workers:
                worker.wait_ready(timeout_s=60)
            _peers.submit_runs(WARM_UP, **INSTANT)
            _peers.submit_audits(WARM_UP, queries=1)
            _peers.bare_updates(WARM_UP)
            for round_no in range(1, args.rounds + 1):
                before = _peers.cpu_s(workers[0]), _peers.cpu_s(workers[1])
                ours.append(n / _peers.submit_runs(n, **INSTANT))
                peer.append(n / _peers.bare_updates(n))
                after = _peers.cpu_s(workers[0]), _peers.cpu_s(workers[1])
                audits.append(n / _peers.submit_audits(n, queries=1))
                print(f"   round {round_no}: ours {ours[-1]:.1f} runs/s, bare Celery {peer[-1]:.1f} tasks/s;"
                      f" one-query PropertyAudits {audits[-1]:.1f} runs/s")
                print("      worker CPU ms per run / task: " + "; ".join(
                    f"{side} main {1000 * (a['main'] - b['main']) / n:.2f}, pool {1000 * (a['pool'] - b['pool']) / n:.2f}"
                    for side, b, a in (("ours", before[0], after[0]), ("bare", before[1], after[1]))))
        finally:
            for worker in workers:
                worker.stop()

    print()
    ratio = _peers.compare(_peers.Series("ours (submit -> completed)", ours),
                           _peers.Series("bare Celery (ORM UPDATE; COMMIT)", peer), unit="/s")
    print(f"   {_peers.Series('context: one-query PropertyAudits', audits).line('/s', 1)}")
    ok_ratio = _common.verdict("one-step runs/s vs bare Celery tasks/s", ratio >= TARGET_RATIO,
                               f"{ratio:.3f}x (target >= {TARGET_RATIO:g}x)")
    ours_median = _common.median(ours)
    ok_rate = _common.verdict("one-step runs/s", ours_median >= TARGET_RUNS_PER_S,
                              f"{ours_median:.1f} runs/s (target >= {TARGET_RUNS_PER_S:g})")
    return 0 if ok_ratio and ok_rate else 1


if __name__ == "__main__":
    sys.exit(main())
