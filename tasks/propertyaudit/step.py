"""One PropertyAudit step: ask the query as a searcher would, then evaluate the answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dataengine import PlannedCall, StepOutcome, default_model, llm
from tasks.propertyaudit.prompts import QueryEvaluation, answer_messages, evaluation_messages


@dataclass(frozen=True)
class AuditContext:
    """What every query of one run needs to know."""

    property_name: str
    aliases: list[str]
    city: str | None
    model: str
    eval_model: str


def prepare(row: Any) -> AuditContext:
    """The context of a claimed run row: its model, else its workspace's, else the engine's."""
    return AuditContext(row.property_name, list(row.property_aliases), row.property_city,
                        row.model or default_model("chat", row.workspace_id), default_model("eval", row.workspace_id))


def audit_query(ctx: AuditContext, index: int, query: str) -> StepOutcome:
    """Ask the query, then evaluate the answer with a structured output."""
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


def plan_query(ctx: AuditContext, queries: list[str]) -> list[PlannedCall]:
    """A query's calls for a dry run's estimate: its answer, then the evaluation, whose prompt quotes the answer."""
    (query,) = queries
    evaluation = evaluation_messages(property_name=ctx.property_name, aliases=ctx.aliases, city=ctx.city, answer="")
    return [PlannedCall("chat", ctx.model, answer_messages(query)),
            PlannedCall("parse", ctx.eval_model, evaluation, unknown_input=True)]
