"""One Knowledge Refresh step: refresh one source, and the rows it writes in the checkpoint.

The run reads its steps a page at a time with each source's row joined in (``load_sources``), so
the step of an unchanged URL source reads nothing: it sends its conditional GET and is done. A step
writes nothing either. Its result carries what the source answered (validators, hash, title, or the
error), which the checkpoint statement copies to the source row (``SOURCE_FROM_RESULT``); a changed
source's chunks (``StepOutcome.rows``) are written by ``record_source_chunks`` in the same fenced
transaction. A source's chunks and its row change together with its result, or not at all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from dataengine import PlannedCall, StepOutcome, Usage, default_model, llm, session_scope
from models.knowledge import KnowledgeRefreshSource, KnowledgeSource
from tasks.knowledge import vectors
from tasks.knowledge.chunking import digest, split
from tasks.knowledge.config import KnowledgeLimits
from tasks.knowledge.fetch import NotText, fetch

#: Characters of a failure kept on the result and the source row.
ERROR_CHARS = 500

#: Run by the checkpoint statement over the results it records (``Job.checkpoint_sql``): each source's
#: row takes what its refresh found; a failed one keeps its validators and hash and records why.
SOURCE_FROM_RESULT = """
    UPDATE knowledge_sources AS s SET
        etag = CASE WHEN x.outcome = 'failed' THEN s.etag ELSE x.etag END,
        last_modified = CASE WHEN x.outcome = 'failed' THEN s.last_modified ELSE x.last_modified END,
        content_hash = CASE WHEN x.outcome = 'failed' THEN s.content_hash ELSE x.content_hash END,
        title = COALESCE(s.title, x.title), last_fetched_at = now(), last_error = x.error
    FROM inserted AS x
    -- ANY(ARRAY(...)) finds the few sources by primary key: a join alone read every source of the
    -- table for each checkpoint (the planner's guess of a CTE's rows), O(sources) per step.
    WHERE s.id = x.source_id AND s.id = ANY(ARRAY(SELECT source_id FROM inserted))
"""
#: The sources of a checkpoint's new chunks that still exist, kept from being deleted until it commits.
LOCK_SOURCES = text("SELECT id FROM knowledge_sources WHERE id = ANY(:ids) FOR KEY SHARE")


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
class SourceChunks:
    """A changed source's new or changed chunks (with their embeddings), and how many chunks it has now."""

    property_id: str
    model: str
    chunks: list[dict[str, Any]]
    total: int


def prepare(row: Any) -> KnowledgeContext:
    """The context of a claimed run row: its model, else its workspace's, else the engine's."""
    return KnowledgeContext(row.property_id, row.model or default_model("embedding", row.workspace_id),
                            KnowledgeLimits.current(), KnowledgeLimits.current().allow_private_urls)


def plan_source(ctx: KnowledgeContext, sources: list[Any]) -> list[PlannedCall]:
    """A source's embeddings, for a dry run's estimate: their size and number are known only once it is
    read (none when it is unchanged, one request per ``embed_batch`` new chunks when it changed)."""
    return [PlannedCall("embed", ctx.model, unknown_input=True, exact=False)]


@dataclass(frozen=True)
class SourceItem:
    """A step's source as the run read it with its page of steps: what a fetch needs and what it compares
    with (``kind`` is ``None`` when the source was deleted after the run was created). A text source's
    text, which may be long, is read by its step."""

    source_id: uuid.UUID
    kind: str | None
    property_id: str | None
    url: str | None
    title: str | None
    etag: str | None
    last_modified: str | None
    content_hash: str | None


def load_sources(session: Session, run_id: uuid.UUID, start: int, limit: int) -> list[tuple[int, SourceItem]]:
    """A page of the run's steps, each with its source's row joined in: an unchanged source's step reads
    nothing from the database (on most nights, most of them)."""
    steps, src = KnowledgeRefreshSource.__table__, KnowledgeSource.__table__
    columns = [src.c[name] for name in ("kind", "property_id", "url", "title", "etag", "last_modified",
                                        "content_hash")]
    rows = session.execute(
        select(steps.c.query_index, steps.c.source_id, *columns)
        .select_from(steps.outerjoin(src, src.c.id == steps.c.source_id))
        .where(steps.c.run_id == run_id, steps.c.query_index >= start)
        .order_by(steps.c.query_index)
        .limit(limit)
    )
    return [(r.query_index, SourceItem(*r[1:])) for r in rows]


def refresh_source(ctx: KnowledgeContext, index: int, src: SourceItem) -> StepOutcome:
    """Fetch (URL) or read (text) one source; when its text changed, chunk it and embed the new chunks."""
    if src.kind is None:
        raise SourceGone(f"source {src.source_id} no longer exists")
    source_id = src.source_id
    etag = last_modified = title = None
    if src.kind == "url":
        assert src.url is not None  # noqa: S101  narrows a type the code above guarantees; not input validation
        known = src.content_hash is not None  # validators only mean something once the content is stored
        got = fetch(src.url, etag=src.etag if known else None, last_modified=src.last_modified if known else None,
                    limits=ctx.limits, allow_private=ctx.allow_private)
        etag, last_modified, title, content = got.etag, got.last_modified, got.title, got.text
    else:
        with session_scope() as session:
            content = session.scalar(select(KnowledgeSource.text).where(KnowledgeSource.id == source_id))
        if content is None:
            raise SourceGone(f"source {source_id} no longer exists")
    if content is None:  # 304 Not Modified: validators it leaves out stay as they were
        etag, last_modified = etag or src.etag, last_modified or src.last_modified
    answered = {"source_id": source_id, "etag": etag, "last_modified": last_modified, "title": title}
    if content is None or digest(content) == src.content_hash:
        return StepOutcome(values={**answered, "outcome": "unchanged", "content_hash": src.content_hash})
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
        **answered,
        "outcome": "fetched",
        "content_hash": digest(content),
        "chunks_added": sum(c.position not in existing for c in changed),
        "chunks_updated": sum(c.position in existing for c in changed),
        "chunks_deleted": sum(p >= len(chunks) for p in existing),
        "tokens_embedded": usage.prompt_tokens,
    }
    assert src.property_id is not None  # noqa: S101  narrows a type the code above guarantees; not input validation
    return StepOutcome(values=values, usage=usage, rows=SourceChunks(src.property_id, ctx.model, rows, len(chunks)))


def failed_source(index: int, src: SourceItem, exc: BaseException) -> dict[str, Any]:
    """The result of a source that could not be refreshed (404, timeout, too large, not text): the run goes on."""
    return {"source_id": src.source_id, "outcome": "failed", "error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]}


def record_source_chunks(session: Session, run_id: uuid.UUID, results: list[tuple[int, StepOutcome]]) -> None:
    """In the checkpoint's transaction: the chunks of each changed source, and those past its new end deleted.
    A source deleted since its step read it takes no chunks (they would reference nothing)."""
    ids = [outcome.values["source_id"] for _, outcome in results]
    present = set(session.scalars(LOCK_SOURCES, {"ids": ids}))
    for _, outcome in results:
        found: SourceChunks = outcome.rows
        if outcome.values["source_id"] in present:
            vectors.store(session, property_id=found.property_id, source_id=outcome.values["source_id"],
                          model=found.model, chunks=found.chunks, total=found.total)
