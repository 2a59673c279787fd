"""Write docs/reliability.md from the figures the fault-injection suite measured.

Run by ``scripts/reliability_report.sh``, which runs ``pytest -m faults`` with
``DATAENGINE_FAULTS_REPORT_DIR`` set: each scenario writes one JSON file of figures there
(``tests/faults/faultkit.py``). This script turns them into the report's tables; the prose around
them (what each part promises, how to scale) is kept here, next to the tables it explains.
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

INTRO = """\
# Reliability: what the engine promises under faults, and what the suite measured

Three promises hold for every job (PropertyAudit, ReviewFlow, Knowledge Refresh):

- **Nothing lost.** A run ends with every step recorded once, whatever happened to the processes
  and servers under it.
- **Nothing paid twice.** A step recorded before a fault is never asked of the LLM again; a step in
  flight at a fault is asked at most once more per fault.
- **One executor.** A write from a claim that is no longer the run's is refused (fencing tokens):
  the suite installs a trigger that compares the token of every recorded result with the run's own
  at the moment of the insert, and counts the mismatches ("stale writes").

The fault-injection suite (`tests/faults/`, pytest marker `faults`) runs each scenario against real
worker processes, real Redis and PostgreSQL servers of the test's own (a private `redis-server`, a
private PostgreSQL cluster, or a loopback proxy the test cuts), the stand-in LLM server, and for
scenarios 4, 5 and 8 a second time through a real PgBouncer in transaction mode. In each, one run of
100 steps of every job (20 runs in scenario 8) is checked step by step. It is part of the test
command (`scripts/test.sh`, and CI).

Regenerate this file (about seven minutes): `bash scripts/reliability_report.sh`
"""

#: scenario number -> (title, what the product promises there).
SCENARIOS = {
    1: ("Redis restarted with its data (AOF)",
        "Workers reconnect and keep consuming; running runs never needed the broker; the queued backlog is "
        "neither lost nor sent twice."),
    2: ("Redis restarted empty",
        "Running runs go on. The broker's loss is noticed within a second (an epoch key is gone), and every "
        "run no worker holds is sent again unless its message is still queued: within 10 s, each once. "
        "Without the key, a lost backlog waited `DATAENGINE_REDISPATCH_AFTER_S` (300 s)."),
    3: ("The broker connection cut for 60 s",
        "The cut-off worker's runs go on from their checkpoints; no other worker takes them (their leases "
        "live in PostgreSQL); it consumes again once the broker is back."),
    4: ("PostgreSQL restarted mid-run",
        "Steps finish, checkpoints retry with backoff, each run resumes at its last committed step; no worker "
        "dies or hangs and no lease is stolen (behind PgBouncer, its 15 s `server_login_retry` included)."),
    5: ("The database unreachable for 30 s",
        "Nothing recorded is lost, workers keep running, and no lease is stolen from a live worker: a "
        "sweeper takes runs back only after a moment of unbroken contact with the database "
        "(`Sweeper.in_contact`), so live workers beat again first. A run waits out an outage of up to "
        "`DATAENGINE_DB_RETRY_LIMIT_S` (120 s) where it is, then is handed back to a Celery retry."),
    6: ("A worker SIGSTOPped past its lease, taken over, then resumed",
        "Its writes are refused (fencing) and it stops; what it recorded before the freeze stays."),
    7: ("Two beats and three workers sweeping at once",
        "Each run whose worker died is taken back once, sent once, and executed once."),
    8: ("Random SIGKILLs for a minute (20 runs, 3 workers)",
        "Every run completes; nothing recorded is asked again; at most one more call per step per kill. A run "
        "re-enqueued whose message a worker took and was killed before its claim is sent again after "
        "`DATAENGINE_UNCLAIMED_RECHECK_S` (15 s); it used to wait `DATAENGINE_REDISPATCH_AFTER_S` (300 s), "
        "which is how this scenario once timed out (the case alone: `tests/integration/test_workers.py::"
        "test_a_run_whose_resent_message_a_dying_worker_took_is_sent_again_within_seconds`)."),
    9: ("The LLM provider down for 2 minutes (connection refused)",
        "Runs wait with backoff (at most `DATAENGINE_RETRY_BACKOFF_MAX_S`, 60 s, between tries) and complete; "
        "a run fails for a transient cause only after `DATAENGINE_TRANSIENT_RETRY_WINDOW_S` (900 s) without "
        "recording a step."),
}

#: Test function name -> scenario number.
TESTS = {
    "test_redis_restarted_with_its_data_mid_run": 1,
    "test_redis_restarted_empty_resends_the_lost_backlog_within_seconds": 2,
    "test_the_broker_connection_cut_for_a_minute": 3,
    "test_postgresql_restarted_mid_run": 4,
    "test_the_database_unreachable_for_30_seconds": 5,
    "test_a_sigstopped_worker_that_wakes_after_a_takeover_writes_nothing": 6,
    "test_two_beats_and_three_workers_sweeping_at_once_take_each_expired_run_once": 7,
    "test_random_sigkills_of_worker_processes_for_a_minute": 8,
    "test_the_llm_provider_down_for_two_minutes": 9,
}

SCALING = """\
## Past one machine, and what each part's failure does

More throughput is more workers: start `celery -A dataengine worker` on more machines against the
same Redis and PostgreSQL. Nothing is configured per worker: each process names itself
(`host/pid/boot/random`), beats into `worker_heartbeats`, and every worker's main process (and beat)
runs the recovery sweeper, so recovery never hinges on one machine. A run is claimed in PostgreSQL
with a fencing token, so a message delivered twice, or to two machines, still has one executor.

| Part | When it fails | What happens |
|---|---|---|
| A worker process (OOM, SIGKILL, a machine lost) | Its PostgreSQL connection closes | Another worker's sweeper takes its runs back in about a second (its heartbeat would count as stale after `DATAENGINE_LEASE_S`, 3 s); they resume at their last checkpoint; only steps in flight are asked again. |
| A worker frozen (VM pause, SIGSTOP) | Its heartbeat stops | Its runs are taken over after the lease; waking, its writes are refused and it stops. |
| Redis (broker) restarted with AOF | Connections drop | Workers and beat reconnect; runs in progress never needed it. |
| Redis lost its data (no persistence, failover to an empty replica) | The epoch key `dataengine:broker:epoch` is gone | Runs no worker holds are sent again within seconds, unless their message is still queued. Results of finished tasks stored in it are lost; the run rows keep them. |
| Redis unreachable | Publishing and consuming stop | Runs in progress go on and checkpoint; new work waits; beat pauses its schedule and resumes. |
| PostgreSQL restarted or failed over | Every connection drops | Checkpoints retry with backoff for up to `DATAENGINE_DB_RETRY_LIMIT_S` (120 s); no new step starts while a run cannot confirm its lease; sweepers wait for live workers to beat again before taking anything back. |
| PgBouncer in front of PostgreSQL | Refuses logins for `server_login_retry` (15 s) after the server came back | Counted as the same outage (the driver's errors are recognised even when raised outside SQLAlchemy). |
| The LLM provider down | Calls fail (refused, 5xx, 429) | The step fails, the run is handed back and retried with backoff for `DATAENGINE_TRANSIENT_RETRY_WINDOW_S`; recorded steps are never asked again. |
| Beat | The schedule pauses | Every worker's sweeper still recovers runs; two beats fire each tick once (redbeat's lock). |

**Redis Sentinel for the broker.** For a broker that fails over, point `REDIS_URL` at a Sentinel
set: kombu's `sentinel://` transport (`sentinel://host1:26379;sentinel://host2:26379` with
`broker_transport_options = {"master_name": "mymaster"}`) for Celery, and the same for the result
backend. A failover to a replica that had not received the last writes is scenario 2: the queued
messages it lacks are noticed gone and sent again; runs in progress are unaffected. Use
`appendonly yes` on the primary so that a restart alone (scenario 1) loses nothing.
"""


def load(directory: Path) -> list[dict]:
    figures = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        name = data["test"].split("::")[-1].split("[")[0]
        data["scenario"] = TESTS.get(name, 0)
        data["variant"] = data["test"].split("[", 1)[1].rstrip("]") if "[" in data["test"] else ""
        figures.append(data)
    return sorted(figures, key=lambda d: (d["scenario"], d["variant"]))


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def render(figures: list[dict], when: str) -> str:
    lines = [INTRO, f"Measured on {when} ({platform.machine()}, {platform.python_implementation()} "
             f"{platform.python_version()}), {len(figures)} scenario runs.\n", "## The figures\n",
             "| # | Scenario | Variant | Runs | Steps | Faults | Extra calls | Most asked | Stale writes "
             "| Recovery (s) | Other |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in figures:
        title = SCENARIOS.get(d["scenario"], ("?", ""))[0]
        other = {k: v for k, v in d.get("extra", {}).items() if k not in ("recovery_s", "route")}
        lines.append(
            f"| {d['scenario']} | {title} | {d['variant'] or 'direct'} | {d['runs']} | {d['steps']} | {d['faults']} "
            f"| {d['extra_calls']} | {d['most_asked']} | {d['stale_writes']} | {_fmt(d.get('recovery_s'))} "
            f"| {_fmt(other)} |")
    lines += ["", "*Extra calls*: LLM calls asked again because their step was in flight at a fault (summed "
              "over the runs). *Most asked*: the most calls any one step needed (1 + the faults it was in "
              "flight at). *Recovery*: seconds from the end of the fault until every unfinished run had "
              "checkpointed a new step.", "", "## What each scenario promises\n"]
    seen = {d["scenario"] for d in figures}
    for n, (title, promise) in SCENARIOS.items():
        tests = sorted({d["test"].split("[")[0] for d in figures if d["scenario"] == n})
        where = ", ".join(f"`{t}`" for t in tests) if tests else "not measured in this run"
        lines.append(f"{n}. **{title}.** {promise} ({where})" + ("" if n in seen else " **(missing)**"))
    lines += ["", SCALING]
    return "\n".join(lines)


def main() -> int:
    directory, out = Path(sys.argv[1]), Path(sys.argv[2])
    figures = load(directory)
    if not figures:
        print(f"no figures in {directory}: did the fault suite run?", file=sys.stderr)
        return 1
    missing = sorted(set(SCENARIOS) - {d["scenario"] for d in figures})
    out.write_text(render(figures, datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")))
    print(f"wrote {out} from {len(figures)} scenario runs" + (f"; missing scenarios {missing}" if missing else ""))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
