"""Asking a property's knowledge: embed the question, return the closest chunks (``dataengine knowledge search``)."""

from __future__ import annotations

from dataengine import llm
from dataengine.db import session_scope
from tasks.knowledge import vectors


def search_knowledge(*, property_id: str, question: str, limit: int = 5, model: str | None = None
                     ) -> list[vectors.Hit]:
    """The ``limit`` chunks of the property closest to ``question``, closest first, with their cosine similarity."""
    [query], _ = llm.embed(texts=[question], model=model)
    with session_scope() as session:
        return vectors.search(session, property_id=property_id, query=query, limit=limit)
