"""ReviewFlow's prompts and the schema of one review's structured analysis.

The review itself is the user message, as written; what to do with it is in the system
message. The job's stand-in analyst (``standin.py``) reads the review back from the user message.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ANALYSIS_SYSTEM_PROMPT = (
    "You analyse one resident review of an apartment community for its property manager. Report "
    "the sentiment as a score from -1 (very negative) to 1 (very positive) and a label, up to five "
    "short topics the review is about, how urgent it is for the manager (high: safety, health, a "
    "broken essential such as heat, water or a lock; medium: a recurring problem; low: the rest), "
    "whether it needs a reply, and a short, courteous suggested reply written in the review's own "
    "language (its ISO 639-1 code in `language`)."
)


class ReviewAnalysis(BaseModel):
    """The structured analysis of one review."""

    sentiment_score: float = Field(ge=-1, le=1, description="-1 very negative .. 1 very positive")
    sentiment_label: Literal["positive", "neutral", "negative", "mixed"]
    topics: list[str] = Field(max_length=5, description="Short topics the review is about, most important first")
    urgency: Literal["low", "medium", "high"]
    needs_reply: bool
    suggested_reply: str | None = Field(description="A reply in the review's language, or null if none is needed")
    language: str = Field(description="ISO 639-1 code of the review's language")


GROUP_SYSTEM_PROMPT = (
    f"{ANALYSIS_SYSTEM_PROMPT} You get several reviews, each after a line 'Review N:'; answer with one "
    "analysis per review, in the same order, each with its review's number."
)
#: Starts each review in a group's user message; the stand-in analyst splits on it.
GROUP_HEADER = "Review {number}{stars}:"


class NumberedAnalysis(ReviewAnalysis):
    """One review's analysis within a group, with the review's number."""

    number: int


class ReviewGroupAnalysis(BaseModel):
    """The analyses of a group of reviews, one per review, in order."""

    analyses: list[NumberedAnalysis]


def _about(property_name: str, city: str | None) -> str:
    return f"The property: {property_name}" + (f", {city}" if city else "") + "."


def group_messages(*, property_name: str, city: str | None, reviews: list[tuple[str, int | None]]) -> list[dict[str, str]]:
    """The chat messages that ask for the analyses of a few short reviews in one call."""
    blocks = [
        GROUP_HEADER.format(number=n, stars=f" ({rating} of 5 stars)" if rating is not None else "") + f"\n{text}"
        for n, (text, rating) in enumerate(reviews, 1)
    ]
    return [
        {"role": "system", "content": f"{GROUP_SYSTEM_PROMPT}\n{_about(property_name, city)}"},
        {"role": "user", "content": "\n\n".join(blocks)},
    ]


def analysis_messages(*, property_name: str, city: str | None, review: str, rating: int | None) -> list[dict[str, str]]:
    """The chat messages that ask for one review's analysis."""
    stars = f" The reviewer gave {rating} of 5 stars." if rating is not None else ""
    return [
        {"role": "system", "content": f"{ANALYSIS_SYSTEM_PROMPT}\n{_about(property_name, city)}{stars}"},
        {"role": "user", "content": review},
    ]
