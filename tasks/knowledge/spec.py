"""What ``knowledge.refresh`` accepts, the sources it registers, and the runs it starts.

``knowledge.refresh`` takes ``run_id`` (the engine's), or ``property_id`` with optional ``sources``
to register first, or nothing: every property that has sources. A property whose refresh is
queued or running gets that run's id back, not a second run. ``knowledge.submit`` (every job has
one) takes a property and the ids of its existing sources.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from dataengine import NewRun, SpecInvalid, SpecText, session_scope
from models.base import ACTIVE_STATUSES
from models.knowledge import PROPERTY_ID_CHARS, URL_CHARS, KnowledgeRefreshRun, KnowledgeSource
from tasks.knowledge.config import KnowledgeLimits

PropertyId = Annotated[SpecText, StringConstraints(max_length=PROPERTY_ID_CHARS)]
Title = Annotated[SpecText, StringConstraints(max_length=500)]

#: One refresh of a property is started at a time, whoever asks (two beats, a producer, the CLI).
LOCK_PROPERTY = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("text must not contain NUL (\\x00) characters")
    return value


class SourceIn(BaseModel):
    """A source to register: ``{"url": ...}`` (optionally a title) or ``{"text": ..., "title": ...}``."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[SpecText, StringConstraints(max_length=URL_CHARS)] | None = None
    text: SpecText | None = None
    title: Title | None = None

    @field_validator("url", "text", "title")
    @classmethod
    def _nul(cls, value: str | None) -> str | None:
        return _no_nul(value)

    @model_validator(mode="after")
    def _one_kind(self) -> SourceIn:
        if (self.url is None) == (self.text is None):
            raise ValueError('a source is either {"url": ...} or {"text": ..., "title": ...}')
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"url {self.url!r}: only http and https URLs with a host")
        elif self.title is None:
            raise ValueError("a text source needs a title (it is how the text is known when sent again)")
        elif len(self.text or "") > KnowledgeLimits.current().max_text_chars:
            raise ValueError(f"text is {len(self.text or '')} characters; the limit is {KnowledgeLimits.current().max_text_chars}")
        return self


class RefreshRequest(BaseModel):
    """The keyword arguments of ``knowledge.refresh`` other than ``run_id``."""

    model_config = ConfigDict(extra="forbid")

    property_id: PropertyId | None = None
    sources: list[SourceIn] | None = None

    @field_validator("property_id")
    @classmethod
    def _nul(cls, value: str | None) -> str | None:
        return _no_nul(value)

    @model_validator(mode="after")
    def _sources_need_a_property(self) -> RefreshRequest:
        if self.sources is not None and self.property_id is None:
            raise ValueError("sources are registered for a property: send property_id too")
        if self.sources is not None and len(self.sources) > KnowledgeLimits.current().max_sources:
            raise ValueError(f"at most {KnowledgeLimits.current().max_sources} sources per request, got {len(self.sources)}")
        return self


class KnowledgeRunSpec(BaseModel):
    """A refresh of some of a property's registered sources (what ``knowledge.submit`` accepts)."""

    model_config = ConfigDict(extra="forbid")

    property_id: PropertyId
    source_ids: list[uuid.UUID] = Field(min_length=1)
    model: Annotated[SpecText, StringConstraints(max_length=100)] | None = None


def build(spec: KnowledgeRunSpec) -> NewRun:
    """The ``knowledge_refresh_runs`` columns, and one step per source."""
    return NewRun(values={"property_id": spec.property_id, "model": spec.model},
                  steps=[{"source_id": source_id} for source_id in dict.fromkeys(spec.source_ids)])


def parse_request(kwargs: dict[str, Any]) -> RefreshRequest:
    """The validated arguments, or ``SpecInvalid`` naming every problem on one line."""
    try:
        return RefreshRequest.model_validate(kwargs)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise SpecInvalid(details=problems) from None


def register_sources(session: Session, *, property_id: str, sources: list[SourceIn]) -> None:
    """Add the property's new sources; a URL already known stays as it is, a known text title gets the new text."""
    t = KnowledgeSource.__table__
    for s in sources:
        # clock_timestamp(), not now(): sources registered together keep their order (the steps' order).
        if s.url is not None:
            stmt = pg_insert(t).values(id=uuid.uuid4(), property_id=property_id, kind="url", url=s.url, title=s.title,
                                       created_at=func.clock_timestamp())
            stmt = stmt.on_conflict_do_nothing(index_elements=["property_id", "url"], index_where=text("kind = 'url'"))
        else:
            stmt = pg_insert(t).values(id=uuid.uuid4(), property_id=property_id, kind="text", text=s.text,
                                       title=s.title, created_at=func.clock_timestamp())
            stmt = stmt.on_conflict_do_update(index_elements=["property_id", "title"], index_where=text("kind = 'text'"),
                                              set_={"text": stmt.excluded.text})
        session.execute(stmt)


def start_refresh(session: Session, *, property_id: str) -> tuple[uuid.UUID, bool] | None:
    """The property's queued or running refresh, or a new one over all its sources (``None``: it has none)."""
    from dataengine import create_run, get_job

    session.execute(LOCK_PROPERTY, {"key": f"knowledge.refresh:{property_id}"})
    r = KnowledgeRefreshRun.__table__
    active = session.scalar(
        select(r.c.id).where(r.c.property_id == property_id, r.c.status.in_(ACTIVE_STATUSES))
        .order_by(r.c.created_at).limit(1)
    )
    if active is not None:
        return active, False
    s = KnowledgeSource.__table__
    source_ids = session.scalars(
        select(s.c.id).where(s.c.property_id == property_id).order_by(s.c.created_at, s.c.id)
    ).all()
    if not source_ids:
        return None
    spec = KnowledgeRunSpec(property_id=property_id, source_ids=list(source_ids))
    run_id, _ = create_run(session=session, job=get_job("knowledge"), spec=spec)
    return run_id, True


def start_runs(**kwargs: Any) -> list[tuple[uuid.UUID, bool]]:
    """``knowledge.refresh`` without a ``run_id``: register the sources sent, then one refresh per property."""
    request = parse_request(kwargs)
    if request.property_id is not None:
        with session_scope() as session:
            if request.sources:
                register_sources(session, property_id=request.property_id, sources=request.sources)
            started = start_refresh(session, property_id=request.property_id)
        if started is None:
            raise SpecInvalid(details=f"property_id: {request.property_id!r} has no knowledge sources; "
                                      'send sources=[{"url": ...}] to register some')
        return [started]
    with session_scope() as session:
        properties = session.scalars(select(KnowledgeSource.property_id).distinct().order_by(
            KnowledgeSource.property_id)).all()
    runs = []
    for property_id in properties:
        with session_scope() as session:
            started = start_refresh(session, property_id=property_id)
        if started is not None:
            runs.append(started)
    return runs


def add_sources(*, property_id: str, sources: list[dict[str, Any]]) -> None:
    """Register sources for a property without starting a refresh (``dataengine knowledge sources add``)."""
    request = parse_request({"property_id": property_id, "sources": sources})
    assert request.property_id is not None and request.sources is not None  # noqa: S101  narrows a type the code above guarantees; not input validation
    with session_scope() as session:
        register_sources(session, property_id=request.property_id, sources=request.sources)
