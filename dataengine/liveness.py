"""Liveness per process: the heartbeat rows workers write, and how a sweeper tells a dead process.

A run's lease holds while its holder's heartbeat is fresh (``owner_alive``); fencing tokens stay
per claim. A process beats a few times a second, one statement however many runs it holds
(``beat_sql``): it writes its row, hands back runs it owns but no longer executes, and reads what
became of the runs it does (taken over, cancellation requested).

A sweeper finds dead processes two ways (``dead_owners``): a heartbeat older than ``lease_s``, or
one a little late (``grace_s``) whose PostgreSQL connection is gone: a process that dies closes its
connections at once, so most deaths are known in under a second. Behind a transaction pooler the
connection a beat came over is the pooler's, which outlives the process: only the age counts there.
For ``lease_s`` after PostgreSQL itself (re)started, no heartbeat counts as stale: the live
processes were waiting for it, not dead.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import Connection, TextClause, text

from dataengine.jobs import Job
from dataengine.settings import get_settings
from models.base import RunStatus

HEARTBEATS = "worker_heartbeats"
#: PostgreSQL has only just started: every heartbeat was interrupted by it, none is stale yet.
JUST_STARTED = "pg_postmaster_start_time() >= now() - :lease"


def grace_s() -> float:
    """How late a beat may be over a connection that is gone before its process counts as dead."""
    return 2 * get_settings().heartbeat_interval_s


def owner_alive(table: str) -> str:
    """SQL: the lease owner of ``table``'s row has a fresh heartbeat (``:lease`` bound to ``lease_s``)."""
    return (f"EXISTS (SELECT 1 FROM {HEARTBEATS} h WHERE h.worker_id = {table}.lease_owner"
            f" AND (h.beat_at >= now() - :lease OR {JUST_STARTED}))")


def lease_param() -> dict[str, Any]:
    return {"lease": timedelta(seconds=get_settings().lease_s)}


@cache
def beat_sql(jobs: tuple[Job, ...]) -> TextClause:
    """One process's beat: its heartbeat rows, its orphans handed back, the state of the runs it holds.

    An orphan is a run this process owns in the database but does not execute (a hand-back the
    database did not answer) whose last claim and last checkpoint are older than a lease: it is
    freed for the sweeper to send again, as if handed back. A run just claimed is not one (its lease
    is new), nor one that checkpointed moments ago (a run between the end of its lease here and its
    final write).
    """
    orphans = "".join(f"""
        , orphans_{n} AS (
            UPDATE {job.runs.name} SET lease_owner = NULL, lease_expires_at = now(), in_flight_steps = '{{}}',
                   fencing_token = fencing_token + 1, last_updated_at = now()
            WHERE status = '{RunStatus.running.value}' AND lease_owner = ANY(CAST(:owners AS text[]))
              AND lease_expires_at < now() AND last_updated_at < now() - :lease
              AND id <> ALL(CAST(:held AS uuid[]))
        )""" for n, job in enumerate(jobs))
    held = "\n        UNION ALL".join(f"""
        SELECT r.id, r.cancel_requested FROM {job.runs.name} r
        JOIN unnest(CAST(:held AS uuid[]), CAST(:tokens AS bigint[]), CAST(:holders AS text[])) AS x(id, token, owner)
          ON r.id = x.id AND r.fencing_token = x.token AND r.lease_owner = x.owner
         AND r.status = '{RunStatus.running.value}'"""
                                  for job in jobs)
    return text(f"""
        WITH beat AS (
            INSERT INTO {HEARTBEATS} AS h (worker_id, beat_at, backend_pid, backend_start)
            SELECT o, now(), pg_backend_pid(), (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
            FROM unnest(CAST(:owners AS text[])) AS o
            ON CONFLICT (worker_id) DO UPDATE
            SET beat_at = excluded.beat_at, backend_pid = excluded.backend_pid, backend_start = excluded.backend_start,
                beats = h.beats + 1
        ){orphans}
        {held}
    """)


def forget(conn: Connection, owner: str) -> None:
    """``owner`` holds no run any more: its heartbeat goes (a lease it left behind runs out on its own)."""
    conn.execute(text(f"DELETE FROM {HEARTBEATS} WHERE worker_id = :owner"), {"owner": owner})


DEAD = text(f"""
    SELECT worker_id FROM {HEARTBEATS} h
    WHERE NOT ({JUST_STARTED})
      AND (h.beat_at < now() - :lease
           OR (h.beat_at < now() - :grace AND NOT EXISTS (
                 SELECT 1 FROM pg_stat_activity a
                 WHERE a.pid = h.backend_pid
                   -- another role's sessions show no start time: present counts as connected
                   AND (a.backend_start = h.backend_start OR a.backend_start IS NULL))))
""")
BURY = text(f"DELETE FROM {HEARTBEATS} WHERE worker_id = ANY(:dead) AND beat_at < now() - :grace")


def dead_owners(conn: Connection) -> list[str]:
    """Processes whose heartbeat says they are dead."""
    return list(conn.scalars(DEAD, {**lease_param(), "grace": timedelta(seconds=grace_s())}))


def bury(conn: Connection, dead: list[str]) -> None:
    """Delete the heartbeats of dead processes whose runs were taken back (unless one beat again meanwhile)."""
    conn.execute(BURY, {"dead": dead, "grace": timedelta(seconds=grace_s())})
