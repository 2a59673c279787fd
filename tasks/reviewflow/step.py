"""One ReviewFlow step: a structured analysis of one review, asked again once if the answer is invalid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dataengine import llm
from dataengine.jobs import StepOutcome
from dataengine.settings import get_settings
from tasks.reviewflow.prompts import ReviewAnalysis, analysis_messages

#: Attempts at one review before its failure is recorded (the second asks again after an invalid answer).
ATTEMPTS = 2
#: Characters of a failure kept in the review's ``error``.
ERROR_CHARS = 500


class InvalidAnalysis(Exception):
    """The model refused the review, or answered with an analysis that does not fit the schema."""


@dataclass(frozen=True)
class ReviewContext:
    """What every review of one run needs to know."""

    property_name: str
    city: str | None
    model: str


def prepare(row: Any) -> ReviewContext:
    """The context of a claimed run row."""
    return ReviewContext(row.property_name, row.property_city, row.model or get_settings().openai_model)


def analyze_review(ctx: ReviewContext, index: int, review: dict[str, Any]) -> StepOutcome:
    """Analyse one review; an invalid answer is asked for once more, then raised as ``InvalidAnalysis``."""
    messages = analysis_messages(property_name=ctx.property_name, city=ctx.city,
                                 review=review["review_text"], rating=review["rating"])
    for attempt in range(1, ATTEMPTS + 1):
        try:
            analysis, usage = llm.parse(messages=messages, model=ctx.model, schema=ReviewAnalysis)
            break
        except ValueError as exc:  # pydantic's ValidationError, or the model's refusal
            if attempt == ATTEMPTS:
                raise InvalidAnalysis(f"no valid analysis after {ATTEMPTS} attempts: {exc}") from exc
    values = {
        "sentiment_score": round(analysis.sentiment_score, 3),
        "sentiment_label": analysis.sentiment_label,
        "topics": [t.strip().lower() for t in analysis.topics if t.strip()],
        "urgency": analysis.urgency,
        "needs_reply": analysis.needs_reply,
        "suggested_reply": analysis.suggested_reply,
        "language": analysis.language[:16],
        "analysis": analysis.model_dump(),
    }
    return StepOutcome(values=values, usage=usage)


def failed_review(index: int, review: Any, exc: BaseException) -> dict[str, Any]:
    """The analysis row of a review the model could not analyse: the run goes on without it."""
    return {"error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]}
