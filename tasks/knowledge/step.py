"""One Knowledge Refresh step: refresh one source, and the rows it writes in the checkpoint.

The step reads (its own short sessions), fetches, chunks and embeds; it writes nothing. What it found
is written by ``record_source_rows`` in the fenced checkpoint transaction, with the step's result:
a source's chunks and its row change together with the result, or not at all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from dataengine import llm
from dataengine.db import session_scope
from dataengine.jobs import StepOutcome
from dataengine.llm import Usage
from dataengine.settings import get_settings
from models.knowledge import KnowledgeSource
from tasks.knowledge import vectors
from tasks.knowledge.chunking import digest, split
from tasks.knowledge.config import KnowledgeLimits
from tasks.knowledge.fetch import NotText, fetch

#: Characters of a failure kept on the result and the source row.
ERROR_CHARS = 500

SOURCE_REFRESHED = text("""
    UPDATE knowledge_sources SET etag = :etag, last_modified = :last_modified, content_hash = :content_hash,
        title = COALESCE(title, :title), last_fetched_at = now(), last_error = NULL
    WHERE id = :id
""")
SOURCE_FAILED = text("UPDATE knowledge_sources SET last_fetched_at = now(), last_error = :error WHERE id = :id")


class SourceGone(Exception):
    """The source was deleted after the run was created."""


@dataclass(frozen=True)
class KnowledgeContext:
    """What every step of one refresh needs."""

    property_id: str
    model: str
    limits: KnowledgeLimits
    allow_private: bool


@dataclass(frozen=True)
class SourceChange:
    """What a refreshed source writes in the checkpoint: its validators and hash, and its new or changed
    chunks (``None``: the content did not change, no chunk is touched)."""

    property_id: str
    model: str
    etag: str | None
    last_modified: str | None
    content_hash: str | None
    title: str | None
    chunks: list[dict[str, Any]] | None = None
    total_chunks: int = 0


@dataclass(frozen=True)
class SourceOutcome(StepOutcome):
    """A step's result row, plus the source's change (kept out of the result row: it holds the embeddings)."""

    change: SourceChange | None = field(default=None)


def prepare(row: Any) -> KnowledgeContext:
    """The context of a claimed run row."""
    s = get_settings()
    return KnowledgeContext(row.property_id, row.model or s.openai_embedding_model, KnowledgeLimits.current(),
                            s.knowledge_allow_private_urls)


def refresh_source(ctx: KnowledgeContext, index: int, source_id: uuid.UUID) -> SourceOutcome:
    """Fetch (URL) or read (text) one source; when its text changed, chunk it and embed the new chunks."""
    with session_scope() as session:
        src = session.execute(select(KnowledgeSource).where(KnowledgeSource.id == source_id)).scalar_one_or_none()
        if src is None:
            raise SourceGone(f"source {source_id} no longer exists")
        session.expunge(src)
    etag = last_modified = title = None
    if src.kind == "url":
        known = src.content_hash is not None  # validators only mean something once the content is stored
        got = fetch(src.url, etag=src.etag if known else None, last_modified=src.last_modified if known else None,
                    limits=ctx.limits, allow_private=ctx.allow_private)
        etag, last_modified, title, content = got.etag, got.last_modified, got.title, got.text
    else:
        content = src.text
    if content is None:  # 304 Not Modified: validators it leaves out stay as they were
        etag, last_modified = etag or src.etag, last_modified or src.last_modified
    if content is None or digest(content) == src.content_hash:
        unchanged = SourceChange(src.property_id, ctx.model, etag, last_modified, src.content_hash, title)
        return SourceOutcome(values={"source_id": source_id, "outcome": "unchanged"}, change=unchanged)
    if not content.strip():
        raise NotText(f"{src.url or src.title}: no readable text")
    chunks = split(content, tokens=ctx.limits.chunk_tokens, overlap=ctx.limits.chunk_overlap_tokens)
    # Read only now: an unchanged source (most of them, on most nights) needs none of this.
    with session_scope() as session:
        existing = vectors.chunk_hashes(session, source_id=source_id)
        changed = [c for c in chunks if existing.get(c.position) != c.content_hash]
        # A chunk that only moved keeps its embedding.
        embeddings = vectors.known_embeddings(session, source_id=source_id, model=ctx.model,
                                              hashes=sorted({c.content_hash for c in changed}))
    missing = list(dict.fromkeys(c.content for c in changed if c.content_hash not in embeddings))
    usage = Usage()
    size = ctx.limits.embed_batch
    for start in range(0, len(missing), size):
        batch = missing[start:start + size]
        vecs, used = llm.embed(texts=batch, model=ctx.model)
        usage += used
        embeddings.update({digest(t): v for t, v in zip(batch, vecs, strict=True)})
    rows = [{"position": c.position, "content": c.content, "token_count": c.token_count,
             "content_hash": c.content_hash, "embedding": embeddings[c.content_hash]} for c in changed]
    values = {
        "source_id": source_id,
        "outcome": "fetched",
        "chunks_added": sum(c.position not in existing for c in changed),
        "chunks_updated": sum(c.position in existing for c in changed),
        "chunks_deleted": sum(p >= len(chunks) for p in existing),
        "tokens_embedded": usage.prompt_tokens,
    }
    change = SourceChange(src.property_id, ctx.model, etag, last_modified, digest(content), title, rows, len(chunks))
    return SourceOutcome(values=values, usage=usage, change=change)


def failed_source(index: int, source_id: Any, exc: BaseException) -> dict[str, Any]:
    """The result of a source that could not be refreshed (404, timeout, too large, not text): the run goes on."""
    return {"source_id": source_id, "outcome": "failed", "error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]}


def record_source_rows(session: Session, run_id: uuid.UUID, results: list[tuple[int, StepOutcome]]) -> None:
    """In the checkpoint's transaction: each refreshed source's chunks and row, each failed source's error."""
    for _, outcome in results:
        source_id = outcome.values.get("source_id")
        change = getattr(outcome, "change", None)
        if change is None:
            session.execute(SOURCE_FAILED, {"id": source_id, "error": outcome.values.get("error")})
            continue
        if change.chunks is not None:
            vectors.store(session, property_id=change.property_id, source_id=source_id, model=change.model,
                          chunks=change.chunks, total=change.total_chunks)
        session.execute(SOURCE_REFRESHED, {"id": source_id, "etag": change.etag, "last_modified": change.last_modified,
                                           "content_hash": change.content_hash, "title": change.title})
