"""Liveness per process: the heartbeat rows workers write, and how a sweeper tells a dead process.

A run's lease holds while its holder's heartbeat is fresh (``owner_alive`` in ``sql/queries.sql``); fencing tokens stay
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

from dataengine.engine.jobs import Job
from dataengine.infra.queries import identifier, statement
from dataengine.infra.settings import get_settings

FORGET = text(statement("forget_heartbeat"))
DEAD = text(statement("dead_owners"))
BURY = text(statement("bury_heartbeats"))


def grace_s() -> float:
    """How late a beat may be over a connection that is gone before its process counts as dead."""
    return 2 * get_settings().heartbeat_interval_s


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
    orphans = "".join("\n" + statement("beat_orphans", job, cte=identifier(f"orphans_{n}"))
                      for n, job in enumerate(jobs))
    held = "\nUNION ALL\n".join(statement("beat_held", job) for job in jobs)
    return text(statement("beat", orphans=orphans, held=held))


def forget(conn: Connection, owner: str) -> None:
    """``owner`` holds no run any more: its heartbeat goes (a lease it left behind runs out on its own)."""
    conn.execute(FORGET, {"owner": owner})


def dead_owners(conn: Connection) -> list[str]:
    """Processes whose heartbeat says they are dead."""
    return list(conn.scalars(DEAD, {**lease_param(), "grace": timedelta(seconds=grace_s())}))


def bury(conn: Connection, dead: list[str]) -> None:
    """Delete the heartbeats of dead processes whose runs were taken back (unless one beat again meanwhile)."""
    conn.execute(BURY, {"dead": dead, "grace": timedelta(seconds=grace_s())})
