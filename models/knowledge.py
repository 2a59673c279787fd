"""Knowledge Refresh tables: a property's ``knowledge_sources``, ``knowledge_refresh_runs`` (one step per
source), one result per refreshed source, and the ``document_chunks`` the sources are split into.

``property_id`` is the producer's own identifier of a property; there is no properties table.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    REAL,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, RunMixin, StepMixin, StepResultMixin

#: Longest ``property_id`` a producer may use (the column's width).
PROPERTY_ID_CHARS = 200
#: Longest URL a source may have.
URL_CHARS = 2000
SOURCE_KINDS = ("url", "text")
OUTCOMES = ("fetched", "unchanged", "failed")


class KnowledgeSource(Base):
    """Something a property's knowledge is read from: a URL fetched on every refresh, or a text given once."""

    __tablename__ = "knowledge_sources"
    __table_args__ = (
        CheckConstraint("kind IN ('url', 'text')", name="kind"),
        CheckConstraint("(kind = 'url' AND url IS NOT NULL) OR (kind = 'text' AND text IS NOT NULL)", name="content"),
        # A URL is registered once per property; a text source is known by its title (sent again, its text changes).
        Index("uq_knowledge_sources_property_url", "property_id", "url", unique=True,
              postgresql_where=text("kind = 'url'")),
        Index("uq_knowledge_sources_property_title", "property_id", "title", unique=True,
              postgresql_where=text("kind = 'text'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    property_id: Mapped[str] = mapped_column(String(PROPERTY_ID_CHARS), nullable=False)
    kind: Mapped[str] = mapped_column(String(8), nullable=False)
    url: Mapped[str | None] = mapped_column(String(URL_CHARS))
    text: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(String(500))
    #: The validators of the last answer, sent back as If-None-Match / If-Modified-Since.
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    #: SHA-256 of the text last chunked: the same text again is not chunked or embedded again.
    content_hash: Mapped[str | None] = mapped_column(String(64))
    last_fetched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Why the last refresh of this source failed; NULL after one that worked.
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class KnowledgeRefreshRun(RunMixin, Base):
    """One refresh of one property's sources."""

    __tablename__ = "knowledge_refresh_runs"

    property_id: Mapped[str] = mapped_column(String(PROPERTY_ID_CHARS), nullable=False, index=True)
    #: The embedding model; NULL means ``OPENAI_EMBEDDING_MODEL``.
    model: Mapped[str | None] = mapped_column(String(100))


class KnowledgeRefreshSource(StepMixin, Base):
    """A source a run refreshes (one step each)."""

    __tablename__ = "knowledge_refresh_sources"
    __run_table__ = "knowledge_refresh_runs"

    #: No foreign key: a source deleted (or never there) is recorded as that step's failure, and the
    #: run's step count stays true.
    source_id: Mapped[uuid.UUID] = mapped_column(nullable=False)


class KnowledgeRefreshResult(StepResultMixin, Base):
    """What refreshing one source did: fetched (and chunked), unchanged (nothing embedded), or failed with why."""

    __tablename__ = "knowledge_refresh_results"
    __run_table__ = "knowledge_refresh_runs"

    source_id: Mapped[uuid.UUID | None] = mapped_column()
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    chunks_added: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    chunks_updated: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    chunks_deleted: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    tokens_embedded: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    #: What the source answered this time (its validators and title) and the hash of its text; the
    #: checkpoint that records the result copies them to the source row.
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    title: Mapped[str | None] = mapped_column(String(500))


class DocumentChunk(Base):
    """A piece of a source's text and its embedding, at its position in the source."""

    __tablename__ = "document_chunks"
    __table_args__ = (
        UniqueConstraint("source_id", "position"),
        Index("ix_document_chunks_property_id", "property_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    property_id: Mapped[str] = mapped_column(String(PROPERTY_ID_CHARS), nullable=False)
    source_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("knowledge_sources.id", ondelete="CASCADE"),
                                                 nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    token_count: Mapped[int] = mapped_column(Integer, nullable=False)
    #: SHA-256 of ``content``: an unchanged chunk keeps its embedding, a moved one takes it along.
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    #: ``real[]`` everywhere, so the schema is the same with or without pgvector (``tasks/knowledge/vectors.py``).
    embedding: Mapped[list[float]] = mapped_column(ARRAY(REAL), nullable=False)
    model: Mapped[str] = mapped_column(String(100), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
