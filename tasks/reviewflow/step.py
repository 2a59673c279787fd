"""One ReviewFlow step: a structured analysis of one review, asked again once if the answer is invalid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dataengine import PlannedCall, StepOutcome, default_model, llm
from tasks.reviewflow.prompts import ReviewAnalysis, ReviewGroupAnalysis, analysis_messages, group_messages

#: Attempts at one review before its failure is recorded (the second asks again after an invalid answer).
ATTEMPTS = 2
#: Reviews this short share one call, this many at most: the instructions are sent once for all.
SHORT_REVIEW_CHARS = 600
GROUP_SIZE = 4
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
    """The context of a claimed run row: its model, else its workspace's, else the engine's."""
    return ReviewContext(row.property_name, row.property_city, row.model or default_model("chat", row.workspace_id))


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
    return StepOutcome(values=_values(analysis), usage=usage)


def is_short(review: dict[str, Any]) -> bool:
    """Whether a review may share a call with others."""
    return len(review["review_text"]) <= SHORT_REVIEW_CHARS


def analyze_group(ctx: ReviewContext, steps: list[tuple[int, dict[str, Any]]]) -> list[StepOutcome]:
    """Analyse a few short reviews in one call; if the answer does not fit, each is analysed on its own,
    so only a review the model really cannot analyse is recorded as failed."""
    reviews = [(review["review_text"], review["rating"]) for _, review in steps]
    messages = group_messages(property_name=ctx.property_name, city=ctx.city, reviews=reviews)
    try:
        answer, usage = llm.parse(messages=messages, model=ctx.model, schema=ReviewGroupAnalysis)
        if [a.number for a in answer.analyses] != list(range(1, len(steps) + 1)):
            raise ValueError(f"the analyses are numbered {[a.number for a in answer.analyses]}")
    except ValueError:  # an invalid answer or a refusal: one review may have spoiled it for all
        return [_alone(ctx, index, review) for index, review in steps]
    return [StepOutcome(values=_values(a), usage=u) for a, u in zip(answer.analyses, usage.split(len(steps)),
                                                                    strict=True)]


def plan_reviews(ctx: ReviewContext, reviews: list[dict[str, Any]]) -> list[PlannedCall]:
    """The call a review, or a group of short ones, makes, for a dry run's estimate (a second attempt
    after an invalid answer is not planned)."""
    if len(reviews) == 1:
        (review,) = reviews
        messages = analysis_messages(property_name=ctx.property_name, city=ctx.city,
                                     review=review["review_text"], rating=review["rating"])
    else:
        messages = group_messages(property_name=ctx.property_name, city=ctx.city,
                                  reviews=[(review["review_text"], review["rating"]) for review in reviews])
    return [PlannedCall("parse", ctx.model, messages)]


def _alone(ctx: ReviewContext, index: int, review: dict[str, Any]) -> StepOutcome:
    try:
        return analyze_review(ctx, index, review)
    except InvalidAnalysis as exc:
        return StepOutcome(values=failed_review(index, review, exc))


def _values(analysis: ReviewAnalysis) -> dict[str, Any]:
    return {
        "sentiment_score": round(analysis.sentiment_score, 3),
        "sentiment_label": analysis.sentiment_label,
        "topics": [t.strip().lower() for t in analysis.topics if t.strip()],
        "urgency": analysis.urgency,
        "needs_reply": analysis.needs_reply,
        "suggested_reply": analysis.suggested_reply,
        "language": analysis.language[:16],
        "analysis": analysis.model_dump(exclude={"number"}),
    }


def failed_review(index: int, review: Any, exc: BaseException) -> dict[str, Any]:
    """The analysis row of a review the model could not analyse: the run goes on without it."""
    return {"error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]}
