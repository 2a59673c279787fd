"""What a producer submits for a ReviewFlow, its limits, and the run it becomes."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from dataengine import JobSettings, NewRun, SpecText, get_settings


class ReviewLimits(JobSettings):
    """How large a ReviewFlow may be (``DATAENGINE_MAX_REVIEWS``, ``DATAENGINE_MAX_REVIEW_CHARS``)."""

    max_reviews: int = Field(50_000, ge=1)
    max_review_chars: int = Field(10_000, ge=1)



class PropertyRef(BaseModel):
    """The property the reviews are about."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[SpecText, StringConstraints(max_length=300)]
    city: Annotated[SpecText, StringConstraints(max_length=200)] | None = None


class ReviewIn(BaseModel):
    """One review as a producer sends it."""

    model_config = ConfigDict(extra="forbid")

    text: SpecText
    rating: int | None = Field(None, ge=1, le=5)
    author: Annotated[SpecText, StringConstraints(max_length=200)] | None = None
    source: Annotated[SpecText, StringConstraints(max_length=100)] | None = None
    date: dt.date | None = None
    external_id: Annotated[SpecText, StringConstraints(max_length=200)] | None = None


class ReviewFlowSpec(BaseModel):
    """A property and 1 to ``max_reviews`` reviews, optionally a model (the idempotency key is the engine's)."""

    model_config = ConfigDict(extra="forbid")

    property: PropertyRef
    reviews: list[ReviewIn] = Field(min_length=1)
    model: Annotated[SpecText, StringConstraints(max_length=100)] | None = None

    @field_validator("reviews")
    @classmethod
    def _within_limits(cls, reviews: list[ReviewIn]) -> list[ReviewIn]:
        lim = ReviewLimits.current()
        if len(reviews) > lim.max_reviews:
            raise ValueError(f"at most {lim.max_reviews} reviews per run, got {len(reviews)}")
        for i, review in enumerate(reviews):
            if len(review.text) > lim.max_review_chars:
                raise ValueError(f"review {i} is {len(review.text)} characters; the limit is {lim.max_review_chars}")
        return reviews


def build(spec: ReviewFlowSpec) -> NewRun:
    """The ``reviewflow_analysis_runs`` columns of a validated spec, and one ``reviewflow_reviews`` row per review."""
    return NewRun(
        values={
            "property_name": spec.property.name,
            "property_city": spec.property.city,
            "model": spec.model or get_settings().openai_model,
            "total_reviews": len(spec.reviews),
        },
        steps=[
            {"review_text": r.text, "rating": r.rating, "author": r.author, "source": r.source,
             "review_date": r.date, "external_id": r.external_id}
            for r in spec.reviews
        ],
    )
