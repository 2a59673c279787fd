"""Embeddings in PostgreSQL behind one interface: ``store`` a source's chunks, ``search`` a property's.

The column is ``real[]`` on every server, so the Alembic schema is the same everywhere. Search uses
pgvector's cosine distance (``embedding::vector <=> query::vector``; pgvector casts ``real[]`` to
``vector``) when the extension is installed in the database (``CREATE EXTENSION vector``, done by
an operator: creating it needs rights the engine's role should not have), and otherwise an exact
cosine similarity computed in SQL over the arrays. Both are exact scans of one property's chunks;
with pgvector a large deployment can add an HNSW index on the cast expression for one dimension
(``CREATE INDEX ON document_chunks USING hnsw ((embedding::vector(1536)) vector_cosine_ops)``).
The tests run on a server without pgvector, so they cover the ``real[]`` path.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, REAL
from sqlalchemy.orm import Session

#: Name the statements, so the SQL lives in one place (no f-strings around values).
HAS_PGVECTOR = text("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')")

UPSERT_CHUNK = text("""
    INSERT INTO document_chunks (property_id, source_id, position, content, token_count, content_hash, embedding, model)
    VALUES (:property_id, :source_id, :position, :content, :token_count, :content_hash, :embedding, :model)
    ON CONFLICT (source_id, position) DO UPDATE SET
        content = EXCLUDED.content, token_count = EXCLUDED.token_count, content_hash = EXCLUDED.content_hash,
        embedding = EXCLUDED.embedding, model = EXCLUDED.model, property_id = EXCLUDED.property_id, updated_at = now()
""").bindparams(bindparam("embedding", type_=ARRAY(REAL)))

DELETE_FROM = text("DELETE FROM document_chunks WHERE source_id = :source_id AND position >= :count")

CHUNK_HASHES = text("SELECT position, content_hash FROM document_chunks WHERE source_id = :source_id")

EMBEDDINGS_BY_HASH = text("""
    SELECT DISTINCT ON (content_hash) content_hash, embedding FROM document_chunks
    WHERE source_id = :source_id AND model = :model AND content_hash IN :hashes
""").bindparams(bindparam("hashes", expanding=True))

_SELECT = """
    SELECT c.id, c.source_id, c.position, c.content, s.url, s.title, {score} AS score
    FROM document_chunks c JOIN knowledge_sources s ON s.id = c.source_id
    WHERE c.property_id = :property_id AND cardinality(c.embedding) = cardinality(CAST(:query AS real[]))
    ORDER BY score DESC NULLS LAST, c.source_id, c.position
    LIMIT :limit
"""
SEARCH_ARRAY = text(_SELECT.format(score="""(
    SELECT sum(CAST(a AS float8) * b) / NULLIF(sqrt(sum(CAST(a AS float8) * a)) * sqrt(sum(CAST(b AS float8) * b)), 0)
    FROM unnest(c.embedding, CAST(:query AS real[])) AS v(a, b)
)""")).bindparams(bindparam("query", type_=ARRAY(REAL)))
SEARCH_PGVECTOR = text(_SELECT.format(
    score="1 - (CAST(c.embedding AS vector) <=> CAST(CAST(:query AS real[]) AS vector))"
)).bindparams(bindparam("query", type_=ARRAY(REAL)))


@dataclass(frozen=True)
class Hit:
    """A chunk close to the question: its source, position, text and cosine similarity (1 is the same direction)."""

    chunk_id: int
    source_id: uuid.UUID
    position: int
    content: str
    url: str | None
    title: str | None
    score: float


def has_pgvector(session: Session) -> bool:
    """Whether the database has the pgvector extension installed."""
    return bool(session.scalar(HAS_PGVECTOR))


def chunk_hashes(session: Session, *, source_id: uuid.UUID) -> dict[int, str]:
    """The content hash of each chunk the source has now, by position."""
    return {r.position: r.content_hash for r in session.execute(CHUNK_HASHES, {"source_id": source_id})}


def known_embeddings(session: Session, *, source_id: uuid.UUID, model: str, hashes: list[str]) -> dict[str, list[float]]:
    """Embeddings the source already has for chunks with these content hashes (a moved chunk keeps its own)."""
    if not hashes:
        return {}
    rows = session.execute(EMBEDDINGS_BY_HASH, {"source_id": source_id, "model": model, "hashes": hashes})
    return {r.content_hash: list(r.embedding) for r in rows}


def store(session: Session, *, property_id: str, source_id: uuid.UUID, model: str, chunks: list[dict[str, Any]],
          total: int) -> int:
    """Write ``chunks`` (new or changed ones, each with ``position`` and ``embedding``) and delete the
    source's chunks from position ``total`` on; returns how many were deleted."""
    if chunks:
        session.execute(UPSERT_CHUNK, [
            {**c, "property_id": property_id, "source_id": source_id, "model": model} for c in chunks
        ])
    return session.execute(DELETE_FROM, {"source_id": source_id, "count": total}).rowcount or 0


def search(session: Session, *, property_id: str, query: list[float], limit: int = 5) -> list[Hit]:
    """The ``limit`` chunks of the property closest to ``query`` by cosine similarity, closest first."""
    statement = SEARCH_PGVECTOR if has_pgvector(session) else SEARCH_ARRAY
    rows = session.execute(statement, {"property_id": property_id, "query": query, "limit": limit})
    return [Hit(r.id, r.source_id, r.position, r.content, r.url, r.title, float(r.score or 0.0)) for r in rows]
