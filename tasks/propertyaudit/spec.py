"""What a producer submits for a PropertyAudit, its limits, and the run it becomes."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from dataengine import JobSettings, NewRun, SpecText, get_settings


class AuditLimits(JobSettings):
    """How large a PropertyAudit may be (``DATAENGINE_MAX_QUERIES``, ``DATAENGINE_MAX_QUERY_CHARS``)."""

    max_queries: int = Field(10_000, ge=1)
    max_query_chars: int = Field(2_000, ge=1)



class PropertySpec(BaseModel):
    """The property to audit."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[SpecText, StringConstraints(max_length=300)]
    city: Annotated[SpecText, StringConstraints(max_length=200)] | None = None
    website: Annotated[SpecText, StringConstraints(max_length=500)] | None = None
    aliases: list[Annotated[SpecText, StringConstraints(max_length=300)]] = Field(default_factory=list, max_length=50)


class AuditSpec(BaseModel):
    """A property, 1 to ``max_queries`` queries, optionally a model (the idempotency key is the engine's)."""

    model_config = ConfigDict(extra="forbid")

    property: PropertySpec
    queries: list[SpecText] = Field(min_length=1)
    model: Annotated[SpecText, StringConstraints(max_length=100)] | None = None

    @field_validator("queries")
    @classmethod
    def _within_limits(cls, queries: list[str]) -> list[str]:
        lim = AuditLimits.current()
        if len(queries) > lim.max_queries:
            raise ValueError(f"at most {lim.max_queries} queries per run, got {len(queries)}")
        longest = max(range(len(queries)), key=lambda i: len(queries[i]))
        if len(queries[longest]) > lim.max_query_chars:
            raise ValueError(f"query {longest} is {len(queries[longest])} characters; the limit is {lim.max_query_chars}")
        return queries


def build(spec: AuditSpec) -> NewRun:
    """The ``geo_runs`` columns of a validated spec, and one ``geo_queries`` row per query."""
    return NewRun(
        values={
            "property_name": spec.property.name,
            "property_city": spec.property.city,
            "property_website": spec.property.website,
            "property_aliases": spec.property.aliases,
            "model": spec.model or get_settings().openai_model,
            "total_queries": len(spec.queries),
        },
        steps=[{"query_text": q} for q in spec.queries],
    )
