"""Helpers for building runs and reading them back in tests.

Every helper works on any job (``job=``); without one it means PropertyAudit.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from sqlalchemy import select, update


def _job(job: Any) -> Any:
    if job is not None:
        return job
    from tasks.propertyaudit import JOB

    return JOB


def audit_spec(n: int = 8, *, name: str = "Cedar Flats", key: str | None = None, tag: str = "q") -> dict[str, Any]:
    """A valid PropertyAudit spec with ``n`` distinct queries."""
    spec: dict[str, Any] = {
        "property": {"name": name, "city": "Austin", "aliases": ["Cedar Flats Austin"]},
        "queries": [f"best apartments in austin {tag} {i}" for i in range(n)],
    }
    if key:
        spec["idempotency_key"] = key
    return spec


#: Reviews the stand-in analyst reads as they would be read: praise, a complaint, an emergency, Spanish.
SAMPLE_REVIEWS = (
    "Great location and friendly staff, I love the rooftop pool.",
    "The hallway is dirty and the neighbours are loud every night.",
    "There is a leak under the sink and mold on the wall, nobody came to fix it.",
    "El departamento es muy limpio y el personal es amable.",
    "Parking is fine, rent went up again.",
)


def review_spec(n: int = 8, *, key: str | None = None, tag: str = "r") -> dict[str, Any]:
    """A valid ReviewFlow spec with ``n`` distinct reviews (cycling through ``SAMPLE_REVIEWS``)."""
    reviews = [
        {"text": f"{SAMPLE_REVIEWS[i % len(SAMPLE_REVIEWS)]} ({tag} {i})", "rating": 1 + (i * 2) % 5,
         "author": f"resident {i}", "source": "google", "date": "2026-11-01"}
        for i in range(n)
    ]
    spec: dict[str, Any] = {"property": {"name": "Cedar Flats", "city": "Austin"}, "reviews": reviews}
    if key:
        spec["idempotency_key"] = key
    return spec


def create(spec: dict[str, Any], *, job: Any = None) -> uuid.UUID:
    """A queued run of ``job`` made from ``spec``, in the database (not enqueued)."""
    from dataengine.engine.submitting import create_run, validate_spec
    from dataengine.infra.db import session_scope

    job = _job(job)
    validated, options = validate_spec(job, spec)
    with session_scope() as session:
        run_id, _ = create_run(session=session, job=job, spec=validated, options=options)
    return run_id


def create_audit(n: int = 8, **kwargs: Any) -> uuid.UUID:
    """A queued PropertyAudit run in the database (not enqueued)."""
    return create(audit_spec(n, **kwargs))


def finished(run_id: uuid.UUID | str, job: Any = None) -> dict[str, Any] | None:
    """The run's row once it is completed, failed or cancelled, else None (for ``wait_for``)."""
    row = run_row(run_id, job=job)
    return row if row["status"] in ("completed", "failed", "cancelled") else None


def run_row(run_id: uuid.UUID | str, *, job: Any = None) -> dict[str, Any]:
    """The run's row."""
    from dataengine.infra.db import session_scope

    t = _job(job).runs
    with session_scope() as session:
        return dict(session.execute(select(t).where(t.c.id == uuid.UUID(str(run_id)))).mappings().one())


def results(run_id: uuid.UUID | str, *, job: Any = None) -> dict[int, dict[str, Any]]:
    """The run's recorded results by step index."""
    from dataengine.infra.db import session_scope

    t = _job(job).results
    with session_scope() as session:
        rows = session.execute(select(t).where(t.c.run_id == uuid.UUID(str(run_id)))).mappings().all()
    return {r["query_index"]: dict(r) for r in rows}


def expire_lease(run_id: uuid.UUID | str, *, owner: str | None = "dead-worker/1", job: Any = None) -> None:
    """Make the run look held by a worker that died (lease in the past)."""
    from sqlalchemy import func, text

    from dataengine.infra.db import session_scope

    t = _job(job).runs
    with session_scope() as session:
        session.execute(
            update(t)
            .where(t.c.id == uuid.UUID(str(run_id)))
            .values(status="running", lease_owner=owner, lease_expires_at=func.now() - text("interval '1 second'"))
        )


def task_failure(result: Any) -> str:
    """The error a task ended with (the test fails unless it ended FAILURE)."""
    result.get(timeout=30, propagate=False)
    assert result.state == "FAILURE", result.state
    return str(result.result)


def answered(fake: Any, query: str) -> int:
    """How many times the stand-in server answered a query's answer prompt."""
    return fake.stats()["answered_prompts"].get(query, 0)


def answered_within(fake: Any, text: str) -> int:
    """How many answered prompts held ``text`` (a review alone, or within a group of reviews)."""
    return sum(n for prompt, n in fake.stats()["answered_prompts"].items() if text in prompt)


def claim(run_id: uuid.UUID, worker: str = "w/1", *, job: Any = None) -> Any:
    """Claim a run as worker ``worker``; fails the test if the claim is refused."""
    from dataengine.engine.runs import Claim, claim_run
    from dataengine.infra.db import session_scope

    with session_scope() as session:
        c = claim_run(session=session, job=_job(job), run_id=run_id, worker_id=worker, task_id=None)
    assert isinstance(c, Claim), c
    return c


def result_row(i: int, *, job: Any = None) -> dict[str, Any]:
    """A recorded result for step ``i`` (PropertyAudit's columns, or Echo's)."""
    if _job(job).key == "echo":
        return {"query_index": i, "echoed": f"T{i}"}
    return {"query_index": i, "query_text": f"q{i}", "answer": "a", "evaluation": {}, "mentioned": False}


def record(c: Any, indexes: list[int], next_index: int, in_flight: tuple[int, ...] = (), *, job: Any = None) -> None:
    """Checkpoint results for ``indexes`` under claim ``c``, with ``in_flight`` steps started."""
    from dataengine.engine.runs import checkpoint
    from dataengine.infra.db import session_scope

    with session_scope() as session:
        checkpoint(session=session, job=_job(job), claim=c, results=[result_row(i, job=job) for i in indexes],
                   next_index=next_index, in_flight=list(in_flight), eta_s=None)


class Concurrency:
    """``with gauge:`` around work done on several threads: how many are inside now, and the most ever."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.live = self.peak = 0

    def __enter__(self) -> None:
        with self._lock:
            self.live += 1
            self.peak = max(self.peak, self.live)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.live -= 1


def invoke(*args: str, code: int = 0, stdin: str | None = None) -> str:
    """What ``dataengine ARGS`` printed, run in this process; fails the test unless it exits with ``code``."""
    from typer.testing import CliRunner

    from dataengine.cli.main import command_line

    result = CliRunner().invoke(command_line(), list(args), input=stdin)
    assert result.exit_code == code, result.output
    return result.output


def said(*args: str, code: int = 0, stdin: str | None = None) -> str:
    """What a command printed, its lines joined (a narrow terminal wraps them anywhere)."""
    return " ".join(invoke(*args, code=code, stdin=stdin).split())


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(page: str) -> Samples:
    """Every sample of a Prometheus page, by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(page) for s in family.samples}


def scrape(url: str) -> Samples:
    """Every sample of a Prometheus endpoint (a loopback URL of the test's own)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310  a loopback URL of the test's own
        return parse_metrics(answer.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value (0 when absent: a counter never incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
