"""Creating runs from a producer's spec, for every job: validate, create once per idempotency key, enqueue.

The job says what its spec is (a pydantic model) and what a valid spec becomes (``Job.build``);
the engine owns the rest: the errors a producer reads, the idempotency key, the engine's own
columns (step count, the first dispatch deadline) and the message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints, ValidationError
from sqlalchemy import func, insert, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from dataengine.db import session_scope
from dataengine.errors import SpecInvalid
from dataengine.jobs import Job
from dataengine.settings import get_settings
from models.base import ACTIVE_STATUSES

#: Longest idempotency key a producer may send (the column's width).
MAX_IDEMPOTENCY_KEY_CHARS = 200
#: Text in a spec: stripped, and not empty (a job adds ``StringConstraints(max_length=...)``).
SpecText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _nul_paths(value: Any, path: str = "") -> list[str]:
    """Where ``value`` holds text with a NUL character, which PostgreSQL text cannot store."""
    if isinstance(value, str):
        return [path or "spec"] if "\x00" in value else []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nul_paths(k, path) + _nul_paths(v, f"{path}.{k}".lstrip("."))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nul_paths(v, f"{path}.{i}".lstrip("."))]
    return []


def _idempotency_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SpecInvalid(details="idempotency_key: must be a non-empty string")
    if len(value.strip()) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise SpecInvalid(details=f"idempotency_key: at most {MAX_IDEMPOTENCY_KEY_CHARS} characters")
    return value.strip()


def validate_spec(job: Job, spec: Any) -> tuple[BaseModel, str | None]:
    """The job's validated spec and the idempotency key, or ``SpecInvalid`` listing every problem on one line."""
    if not isinstance(spec, dict):
        raise SpecInvalid(details=f"spec: must be a JSON object, got {type(spec).__name__}")
    nul = _nul_paths(spec)
    if nul:
        raise SpecInvalid(details="; ".join(f"{p}: text must not contain NUL (\\x00) characters" for p in nul))
    fields = dict(spec)
    key = _idempotency_key(fields.pop("idempotency_key", None))
    try:
        return job.spec_model.model_validate(fields), key
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise SpecInvalid(details=problems) from None


def create_run(*, session: Session, job: Job, spec: BaseModel, idempotency_key: str | None) -> tuple[uuid.UUID, str]:
    """Create the run and its steps, once per idempotency key; returns (run id, status)."""
    runs = job.runs
    if idempotency_key is not None:
        existing = session.execute(
            select(runs.c.id, runs.c.status).where(runs.c.idempotency_key == idempotency_key)
        ).one_or_none()
        if existing is not None:
            return existing.id, existing.status
    new = job.build(spec)
    run_id = uuid.uuid4()
    created = session.execute(
        pg_insert(runs)
        .values(
            id=run_id,
            **new.values,
            total_steps=len(new.steps),
            idempotency_key=idempotency_key,
            # Not claimed by then, the sweeper enqueues it again (a message lost before a worker saw it).
            lease_expires_at=func.now() + literal(timedelta(seconds=get_settings().redispatch_after_s)),
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(runs.c.id)
    ).scalar_one_or_none()
    if created is None:  # a concurrent submit with the same key won the race
        return create_run(session=session, job=job, spec=spec, idempotency_key=idempotency_key)
    if new.steps:
        session.execute(
            insert(job.steps), [{**step, "run_id": run_id, "query_index": i} for i, step in enumerate(new.steps)]
        )
    return run_id, "queued"


def submit_run(*, job: Job, spec: Any, send: Callable[[str, dict[str, str]], object]) -> str:
    """Validate, create the run idempotently and enqueue it with ``send``; returns the run id."""
    validated, key = validate_spec(job, spec)
    with session_scope() as session:
        run_id, status = create_run(session=session, job=job, spec=validated, idempotency_key=key)
    if status in ACTIVE_STATUSES:  # a repeated submit of a live run re-sends it: harmless, claims are exclusive
        send(job.task_name, {"run_id": str(run_id)})
    return str(run_id)
