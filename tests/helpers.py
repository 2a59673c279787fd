"""Helpers for building runs and reading them back in tests."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, text


def audit_spec(n: int = 8, *, name: str = "Cedar Flats", key: str | None = None, tag: str = "q") -> dict[str, Any]:
    """A valid PropertyAudit spec with ``n`` distinct queries."""
    spec: dict[str, Any] = {
        "property": {"name": name, "city": "Austin", "aliases": ["Cedar Flats Austin"]},
        "queries": [f"best apartments in austin {tag} {i}" for i in range(n)],
    }
    if key:
        spec["idempotency_key"] = key
    return spec


def create_audit(n: int = 8, **kwargs: Any) -> uuid.UUID:
    """A queued PropertyAudit run in the database (not enqueued)."""
    from dataengine.db import session_scope
    from dataengine.submitting import create_run, validate_spec
    from tasks.propertyaudit import JOB

    spec, key = validate_spec(JOB, audit_spec(n, **kwargs))
    with session_scope() as session:
        run_id, _ = create_run(session=session, job=JOB, spec=spec, idempotency_key=key)
    return run_id


def run_row(run_id: uuid.UUID | str) -> dict[str, Any]:
    """The run's ``geo_runs`` row."""
    from dataengine.db import session_scope
    from models import GeoRun

    with session_scope() as session:
        return dict(session.execute(select(GeoRun.__table__).where(GeoRun.id == uuid.UUID(str(run_id)))).mappings().one())


def results(run_id: uuid.UUID | str) -> dict[int, dict[str, Any]]:
    """The run's recorded results by query index."""
    from dataengine.db import session_scope
    from models import GeoQueryResult

    t = GeoQueryResult.__table__
    with session_scope() as session:
        rows = session.execute(select(t).where(t.c.run_id == uuid.UUID(str(run_id)))).mappings().all()
    return {r["query_index"]: dict(r) for r in rows}


def expire_lease(run_id: uuid.UUID | str, *, owner: str | None = "dead-worker/1") -> None:
    """Make the run look held by a worker that died (lease in the past)."""
    from dataengine.db import session_scope

    with session_scope() as session:
        session.execute(
            text("UPDATE geo_runs SET status='running', lease_owner=:o, lease_expires_at=now() - interval '1 second' "
                 "WHERE id=:id"),
            {"o": owner, "id": uuid.UUID(str(run_id))},
        )


def answered(fake: Any, query: str) -> int:
    """How many times the stand-in server answered a query's answer prompt."""
    return fake.stats()["answered_prompts"].get(query, 0)


def claim(run_id: uuid.UUID, worker: str = "w/1") -> Any:
    """Claim a PropertyAudit run as worker ``worker``; fails the test if the claim is refused."""
    from dataengine.db import session_scope
    from dataengine.runs import Claim, claim_run
    from tasks.propertyaudit import JOB

    with session_scope() as session:
        c = claim_run(session=session, job=JOB, run_id=run_id, worker_id=worker, task_id=None)
    assert isinstance(c, Claim), c
    return c


def result_row(i: int) -> dict[str, Any]:
    """A recorded PropertyAudit result for query ``i``."""
    return {"query_index": i, "query_text": f"q{i}", "answer": "a", "evaluation": {}, "mentioned": False}


def record(c: Any, indexes: list[int], next_index: int, in_flight: tuple[int, ...] = ()) -> None:
    """Checkpoint results for ``indexes`` under claim ``c``, with ``in_flight`` steps started."""
    from dataengine.db import session_scope
    from dataengine.runs import checkpoint
    from tasks.propertyaudit import JOB

    with session_scope() as session:
        checkpoint(session=session, job=JOB, claim=c, results=[result_row(i) for i in indexes],
                   next_index=next_index, in_flight=list(in_flight), eta_s=None)
