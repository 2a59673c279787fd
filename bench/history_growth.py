"""How the engine's reads grow with history: each hot statement and operator view timed on a small and a
large history, side by side. Target: every one within 1.5 x from the small history to the large one.

The large history is issue 24's: 100,000 PropertyAudits with 1,000,000 results (and their 1,000,000
queries), 20,000 ReviewFlows, 720,000 run events and 154,000 ledger rows over 90 days, 250 runs running
across the fleet; the small one is the same divided by 100, over 0.9 days: the same fleet, a hundredth of
its history (so "the last day" holds about as much at both, and whole-history reports cannot stay flat).
Both are written with bulk SQL (``generate_series``), not through the engine, in databases of their own.
Each figure is the median of ``--repeat`` timings after two warm-ups; the heartbeat is that of a process
holding 4 runs (of 4 running in the small fleet, of 250 in the large). Events older than two thirds of
the history are pruned.

    .venv/bin/python bench/history_growth.py               # both scales, ~3 min
    .venv/bin/python bench/history_growth.py --factor 0.1  # a tenth of each: a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import bench_environment, configure, header, median, verdict  # noqa: E402

LARGE = {"audits": 100_000, "reviewflows": 20_000, "ledger_rows": 154_000, "running": 250, "hours": 90 * 24}
STEPS_PER_AUDIT = 10
EVENTS_PER_RUN = 6
HELD = 4


def populate(conn: Any, *, audits: int, reviewflows: int, ledger_rows: int, running: int, hours: int) -> None:
    """Bulk-write a history: finished runs over ``hours`` (94 % completed, 5 % failed, 1 % cancelled),
    ``running`` of them still running under leases of live processes, their steps, events and costs."""
    from sqlalchemy import text

    conn.execute(text("""
        INSERT INTO geo_runs (id, status, current_query_index, total_steps, completed_steps, total_queries,
                              progress_pct, created_at, last_updated_at, started_at, finished_at, error_message,
                              property_name, property_city, model, cost_usd, prompt_tokens, completion_tokens)
        SELECT gen_random_uuid(), s.status, :steps, :steps, :steps, :steps, 100, s.at, s.at, s.at,
               CASE WHEN s.status = 'running' THEN NULL ELSE s.at + interval '2 minutes' END,
               CASE s.status WHEN 'failed' THEN 'the provider refused the key' END,
               'Property ' || (i % 5000), 'Austin', 'gpt-4o-mini', 0.012, 4000, 1200
        FROM generate_series(1, :n) AS i,
             LATERAL (SELECT now() - (i * interval '1 hour' * :hours / :n) AS at,
                             CASE WHEN i <= :running THEN 'running' WHEN i % 20 = 0 THEN 'failed'
                                  WHEN i % 100 = 1 THEN 'cancelled' ELSE 'completed' END AS status) AS s
    """), {"n": audits, "steps": STEPS_PER_AUDIT, "running": running, "hours": hours})
    conn.execute(text("""
        UPDATE geo_runs SET lease_owner = 'bench@host/' || (abs(hashtext(id::text)) % 60) || '/ns/x',
                            lease_expires_at = now() + interval '1 hour', fencing_token = 1
        WHERE status = 'running'
    """))
    conn.execute(text("""
        INSERT INTO geo_queries (run_id, query_index, query_text)
        SELECT r.id, q, 'best apartments near downtown Austin #' || q FROM geo_runs r, generate_series(0, :steps - 1) q
    """), {"steps": STEPS_PER_AUDIT})
    conn.execute(text("""
        INSERT INTO geo_query_results (run_id, query_index, fencing_token, query_text, answer, evaluation, mentioned,
                                       prompt_tokens, completion_tokens, cost_usd, latency_ms, created_at)
        SELECT r.id, q, 1, 'best apartments near downtown Austin #' || q, 'An answer of a few words.',
               '{"mentioned": true}', q % 3 = 0, 400, 120, 0.0012, 900, r.created_at
        FROM geo_runs r, generate_series(0, :steps - 1) q
    """), {"steps": STEPS_PER_AUDIT})
    conn.execute(text("""
        INSERT INTO reviewflow_analysis_runs (id, status, total_steps, completed_steps, total_reviews, progress_pct,
                                              created_at, last_updated_at, started_at, finished_at, property_name)
        SELECT gen_random_uuid(), 'completed', 20, 20, 20, 100, now() - (i * interval '1 hour' * :hours / :n),
               now() - (i * interval '1 hour' * :hours / :n), now() - (i * interval '1 hour' * :hours / :n),
               now() - (i * interval '1 hour' * :hours / :n) + interval '1 minute', 'Property ' || (i % 5000)
        FROM generate_series(1, :n) AS i
    """), {"n": reviewflows, "hours": hours})
    for table, job in (("geo_runs", "propertyaudit"), ("reviewflow_analysis_runs", "reviewflow")):
        conn.execute(text(f"""
            INSERT INTO run_events (run_id, job, event, at, worker, fencing_token, step_index)
            SELECT r.id, :job, (ARRAY['submitted', 'claimed', 'step_failed', 'handed_back', 'resumed', 'completed'])[e],
                   r.created_at + e * interval '10 seconds', CASE WHEN e > 1 THEN 'bench@host/1/ns/x' END, e, e
            FROM {table} r, generate_series(1, :events) e
        """), {"job": job, "events": EVENTS_PER_RUN})
    conn.execute(text("""
        INSERT INTO llm_costs (hour, job, model, property, workspace_id, calls, prompt_tokens, completion_tokens,
                               cost_usd)
        SELECT date_trunc('hour', now()) - (i % :hours) * interval '1 hour',
               CASE WHEN i % 3 = 0 THEN 'reviewflow' ELSE 'propertyaudit' END, 'gpt-4o-mini',
               'Property ' || (i % 5000), '', 20, 8000, 2400, 0.0024
        FROM generate_series(1, :n) AS i
    """), {"n": ledger_rows, "hours": hours})
    conn.execute(text("ANALYZE"))


def timed(fn: Callable[[], object], repeat: int) -> float:
    """The median of ``repeat`` timings of ``fn`` in milliseconds, after two warm-ups."""
    fn()
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return median(samples)


def measure(repeat: int, retention: timedelta) -> dict[str, float]:
    """Each read, in milliseconds, on the history the engine is pointed at now."""
    from sqlalchemy import text

    from dataengine.engine.events import history, prune
    from dataengine.engine.jobs import all_jobs, load_jobs
    from dataengine.engine.liveness import beat_sql, lease_param
    from dataengine.engine.operator_views import cost_report, list_runs
    from dataengine.engine.run_views import find_run, latest_runs
    from dataengine.infra.db import get_engine, session_scope

    load_jobs()
    with session_scope() as session:
        oldest = session.execute(text("SELECT id FROM geo_runs ORDER BY created_at LIMIT 1")).scalar_one()
        held = session.execute(text("SELECT id, lease_owner FROM geo_runs WHERE status = 'running' LIMIT :n"),
                               {"n": HELD}).all()
        session.execute(text("UPDATE geo_runs SET lease_owner = 'bench@me/1/ns/x' WHERE id = ANY(:ids)"),
                        {"ids": [r.id for r in held]})
    beat = beat_sql(tuple(sorted(all_jobs(), key=lambda j: j.key)))
    params = {"owners": ["bench@me/1/ns/x"], "held": [r.id for r in held], "tokens": [1] * len(held),
              "holders": ["bench@me/1/ns/x"] * len(held), **lease_param()}

    def heartbeat() -> None:
        with get_engine().begin() as conn:
            conn.execute(beat, params).all()

    def one_history() -> None:
        with session_scope() as session:
            history(session, oldest)

    pruned: list[int] = []

    def prune_batch() -> None:
        with session_scope() as session:
            pruned.append(prune(session, older_than=retention))

    figures = {
        "run lookup (find_run)": timed(lambda: find_run(oldest), repeat),
        "newest runs page (latest_runs)": timed(lambda: latest_runs(50), repeat),
        "a run's history": timed(one_history, repeat),
        "heartbeat, a process holding 4": timed(heartbeat, repeat),
        "runs --status failed --since 1d": timed(lambda: list_runs(status="failed", since=timedelta(days=1)), repeat),
        "runs --status failed": timed(lambda: list_runs(status="failed"), repeat),
        # The command's first page (--limit 50: it asks for one more line, to know whether more follow).
        "costs --by day": timed(lambda: cost_report(by="day", limit=51), repeat),
        "costs --by property": timed(lambda: cost_report(by="property", limit=51), repeat),
        "costs --by model --since 1d": timed(lambda: cost_report(by="model", since=timedelta(days=1), limit=51), repeat),
    }
    start = time.perf_counter()
    prune_batch()
    elapsed = time.perf_counter() - start
    figures["event pruning, per 1,000 rows"] = elapsed * 1000 / max(pruned[-1], 1) * 1000
    figures["event pruning, rows a minute"] = pruned[-1] / elapsed * 60
    return figures


def one_scale(label: str, factor: float, repeat: int) -> dict[str, float]:
    """Build the history ``factor`` times the large one in a database of its own, and measure it."""
    sizes = {k: max(1, int(v * factor)) for k, v in LARGE.items()}
    sizes["running"] = max(HELD, sizes["running"])
    configure(f"history_{label}")
    from sqlalchemy import text

    from dataengine.infra.db import get_engine

    with bench_environment(with_llm=False):
        start = time.perf_counter()
        with get_engine().begin() as conn:
            populate(conn, **sizes)
        from dataengine.llm.ledger import roll_up

        roll_up()  # as the sweepers do every 5 minutes: every hour before the last is in the totals
        with get_engine().begin() as conn:
            conn.execute(text("ANALYZE"))
        print(f"   {label}: {sizes} written in {time.perf_counter() - start:.1f} s", flush=True)
        return measure(repeat, retention=timedelta(hours=sizes["hours"] * 2 / 3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=float, default=1.0, help="the large history's size, as a share of issue 24's")
    parser.add_argument("--repeat", type=int, default=7, help="timings per figure")
    args = parser.parse_args()
    header("history growth", large=f"{args.factor:g} x {LARGE}", small="the large / 100", repeat=args.repeat)
    small = one_scale("small", args.factor / 100, args.repeat)
    large = one_scale("large", args.factor, args.repeat)
    print(f"\n   {'read':40} {'small':>10} {'large':>10} {'ratio':>8}")
    ok = True
    for name in small:
        if name.endswith("a minute"):
            print(f"   {name:40} {small[name]:>10,.0f} {large[name]:>10,.0f}")
            continue
        ratio = large[name] / small[name]
        print(f"   {name:40} {small[name]:>10.2f} {large[name]:>10.2f} {ratio:>7.2f}x  ms")
        ok &= ratio <= 1.5
    pruning = large["event pruning, rows a minute"]
    verdict("every read within 1.5 x from the small history to the large one", ok, "see the table")
    verdict("event pruning on the large history", pruning >= 100_000, f"{pruning:,.0f} rows a minute (target >= 100,000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
