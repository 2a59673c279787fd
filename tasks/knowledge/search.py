"""Reading a property's knowledge: the closest chunks to a question, and the registered sources
(``dataengine knowledge search`` and ``sources list``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from dataengine import llm, session_scope
from models.knowledge import DocumentChunk, KnowledgeSource
from tasks.knowledge import vectors


def search_knowledge(*, property_id: str, question: str, limit: int = 5, model: str | None = None
                     ) -> list[vectors.Hit]:
    """The ``limit`` chunks of the property closest to ``question``, closest first, with their cosine similarity."""
    [query], _ = llm.embed(texts=[question], model=model)
    with session_scope() as session:
        return vectors.search(session, property_id=property_id, query=query, limit=limit)


def list_sources(*, property_id: str | None = None) -> list[dict[str, Any]]:
    """The registered sources (of one property, or all), each with its chunk count, by property then age."""
    s, c = KnowledgeSource.__table__, DocumentChunk.__table__
    chunk_count = select(func.count()).where(c.c.source_id == s.c.id).scalar_subquery()
    query = select(s.c.id, s.c.property_id, s.c.kind, s.c.url, s.c.title, s.c.content_hash, s.c.last_fetched_at,
                   s.c.last_error, chunk_count.label("chunks")).order_by(s.c.property_id, s.c.created_at, s.c.id)
    if property_id is not None:
        query = query.where(s.c.property_id == property_id)
    with session_scope() as session:
        return [dict(r) for r in session.execute(query).mappings()]
