"""PropertyAudit: ask an LLM search-style queries and score how visible a property is in the answers.

The step (``audit_query``) and the summary are plain Python over ``dataengine.llm`` and SQL;
the Celery tasks at the bottom are a few lines each.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from sqlalchemy import func, insert, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from dataengine import llm
from dataengine.celery_app import app
from dataengine.db import session_scope
from dataengine.errors import SpecInvalid
from dataengine.jobs import Job, StepOutcome, register
from dataengine.prompts import QueryEvaluation, answer_messages, evaluation_messages
from dataengine.settings import get_settings
from dataengine.tasking import RunTask, run_job
from models.base import ACTIVE_STATUSES
from models.propertyaudit import GeoQuery, GeoQueryResult, GeoRun

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class PropertySpec(BaseModel):
    """The property to audit."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[Text, StringConstraints(max_length=300)]
    city: Annotated[Text, StringConstraints(max_length=200)] | None = None
    website: Annotated[Text, StringConstraints(max_length=500)] | None = None
    aliases: list[Annotated[Text, StringConstraints(max_length=300)]] = Field(default_factory=list, max_length=50)


class AuditSpec(BaseModel):
    """What a producer submits: a property, 1 to ``max_queries`` queries, optionally a model and a key."""

    model_config = ConfigDict(extra="forbid")

    property: PropertySpec
    queries: list[Text] = Field(min_length=1)
    model: Annotated[Text, StringConstraints(max_length=100)] | None = None
    idempotency_key: Annotated[Text, StringConstraints(max_length=200)] | None = None

    @field_validator("queries")
    @classmethod
    def _within_limits(cls, queries: list[str]) -> list[str]:
        s = get_settings()
        if len(queries) > s.max_queries:
            raise ValueError(f"at most {s.max_queries} queries per run, got {len(queries)}")
        longest = max(range(len(queries)), key=lambda i: len(queries[i]))
        if len(queries[longest]) > s.max_query_chars:
            raise ValueError(f"query {longest} is {len(queries[longest])} characters; the limit is {s.max_query_chars}")
        return queries


def validate_spec(spec: dict[str, Any]) -> AuditSpec:
    """The spec, validated, or ``SpecInvalid`` listing every problem on one line."""
    try:
        return AuditSpec.model_validate(spec)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise SpecInvalid(details=problems) from None


def create_run(*, session: Session, spec: AuditSpec) -> tuple[uuid.UUID, str]:
    """Create the run and its queries, once per idempotency key; returns (run id, status)."""
    runs = GeoRun.__table__
    if spec.idempotency_key is not None:
        existing = session.execute(
            select(runs.c.id, runs.c.status).where(runs.c.idempotency_key == spec.idempotency_key)
        ).one_or_none()
        if existing is not None:
            return existing.id, existing.status
    run_id = uuid.uuid4()
    created = session.execute(
        pg_insert(runs)
        .values(
            id=run_id,
            property_name=spec.property.name,
            property_city=spec.property.city,
            property_website=spec.property.website,
            property_aliases=spec.property.aliases,
            model=spec.model or get_settings().openai_model,
            total_queries=len(spec.queries),
            total_steps=len(spec.queries),
            idempotency_key=spec.idempotency_key,
            # Not claimed by then, the sweeper enqueues it again (a message lost before a worker saw it).
            lease_expires_at=func.now() + literal(timedelta(seconds=get_settings().redispatch_after_s)),
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(runs.c.id)
    ).scalar_one_or_none()
    if created is None:  # a concurrent submit with the same key won the race
        return create_run(session=session, spec=spec)
    session.execute(
        insert(GeoQuery.__table__),
        [{"run_id": run_id, "query_index": i, "query_text": q} for i, q in enumerate(spec.queries)],
    )
    return run_id, "queued"


def submit_audit(spec: dict[str, Any]) -> str:
    """Validate, create the run idempotently and enqueue it; returns the run id."""
    audit = validate_spec(spec)
    with session_scope() as session:
        run_id, status = create_run(session=session, spec=audit)
    if status in ACTIVE_STATUSES:  # a repeated submit of a live run re-sends it: harmless, claims are exclusive
        run.apply_async(kwargs={"run_id": str(run_id)})
    return str(run_id)


@dataclass(frozen=True)
class AuditContext:
    """What every query of one run needs to know."""

    property_name: str
    aliases: list[str]
    city: str | None
    model: str
    eval_model: str


def prepare(row: Any) -> AuditContext:
    """The context of a claimed run row."""
    s = get_settings()
    return AuditContext(row.property_name, list(row.property_aliases), row.property_city,
                        row.model or s.openai_model, s.openai_eval_model)


def audit_query(ctx: AuditContext, index: int, query: str) -> StepOutcome:
    """One step: ask the query as a searcher would, then evaluate the answer with a structured output."""
    answer, asked = llm.chat(messages=answer_messages(query), model=ctx.model)
    evaluation, judged = llm.parse(
        messages=evaluation_messages(property_name=ctx.property_name, aliases=ctx.aliases, city=ctx.city, answer=answer),
        model=ctx.eval_model,
        schema=QueryEvaluation,
    )
    values = {
        "query_text": query,
        "answer": answer,
        "evaluation": evaluation.model_dump(),
        "mentioned": evaluation.mentioned,
        "rank": evaluation.rank if evaluation.mentioned else None,
        "sentiment": evaluation.sentiment if evaluation.mentioned else None,
    }
    return StepOutcome(values=values, usage=asked + judged)


def load_queries(session: Session, run_id: uuid.UUID, start: int, limit: int) -> Sequence[tuple[int, str]]:
    """Queries from index ``start`` on, in order."""
    q = GeoQuery.__table__
    rows = session.execute(
        select(q.c.query_index, q.c.query_text)
        .where(q.c.run_id == run_id, q.c.query_index >= start)
        .order_by(q.c.query_index)
        .limit(limit)
    )
    return [(r.query_index, r.query_text) for r in rows]


def count_queries(session: Session, run_id: uuid.UUID) -> int:
    """How many queries the run has."""
    q = GeoQuery.__table__
    return session.scalar(select(func.count()).select_from(q).where(q.c.run_id == run_id)) or 0


def summarize(session: Session, run_id: uuid.UUID) -> dict[str, Any]:
    """Visibility score (share of answers that mention the property), mean rank, top competitors."""
    r = GeoQueryResult.__table__
    totals = session.execute(
        select(
            func.count(),
            func.count().filter(r.c.mentioned),
            func.avg(r.c.rank).filter(r.c.mentioned),
        ).where(r.c.run_id == run_id)
    ).one()
    answered, mentioned, mean_rank = totals
    competitor = func.jsonb_array_elements_text(r.c.evaluation["competitors"]).table_valued("value").render_derived()
    top = session.execute(
        select(competitor.c.value, func.count().label("n"))
        .select_from(r.join(competitor, literal(True)))
        .where(r.c.run_id == run_id)
        .group_by(competitor.c.value)
        .order_by(func.count().desc(), competitor.c.value)
        .limit(5)
    ).all()
    return {
        "queries_answered": answered,
        "mentions": mentioned,
        "visibility_score": round(mentioned / answered, 4) if answered else 0.0,
        "mean_rank": round(float(mean_rank), 2) if mean_rank is not None else None,
        "top_competitors": [{"name": name, "mentions": n} for name, n in top],
    }


JOB = register(
    Job(
        name="PropertyAudit",
        key="propertyaudit",
        task_name="propertyaudit.run",
        step_noun="query",
        step_plural="queries",
        run_model=GeoRun,
        result_model=GeoQueryResult,
        load_steps=load_queries,
        count_steps=count_queries,
        prepare=prepare,
        execute_step=audit_query,
        summarize=summarize,
    )
)


@app.task(name="propertyaudit.run", bind=True, base=RunTask)
def run(self: RunTask, run_id: str) -> dict[str, Any]:
    """Execute the PropertyAudit run ``run_id`` (resuming it if it was interrupted)."""
    return run_job(self, JOB, run_id)


@app.task(name="propertyaudit.submit", throws=(SpecInvalid,))
def submit(**spec: Any) -> str:
    """Create a PropertyAudit from its JSON spec (once per ``idempotency_key``) and start it."""
    return submit_audit(spec)
