"""A refresh's summary: sources fetched, unchanged and failed (with why), chunks added, updated and
deleted, tokens embedded."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.knowledge import KnowledgeRefreshResult, KnowledgeSource

#: How many failed sources the summary names.
FAILED_LISTED = 20


def summarize(session: Session, run_id: uuid.UUID) -> dict[str, Any]:
    """The run's summary, computed from its recorded results."""
    r, s = KnowledgeRefreshResult.__table__, KnowledgeSource.__table__
    outcomes = dict(session.execute(
        select(r.c.outcome, func.count()).where(r.c.run_id == run_id).group_by(r.c.outcome)
    ).all())
    sums = session.execute(
        select(*(func.coalesce(func.sum(c), 0) for c in
                 (r.c.chunks_added, r.c.chunks_updated, r.c.chunks_deleted, r.c.tokens_embedded)))
        .where(r.c.run_id == run_id)
    ).one()
    failed = session.execute(
        select(r.c.query_index, r.c.source_id, s.c.url, s.c.title, r.c.error)
        .select_from(r.outerjoin(s, s.c.id == r.c.source_id))
        .where(r.c.run_id == run_id, r.c.outcome == "failed")
        .order_by(r.c.query_index)
        .limit(FAILED_LISTED)
    ).all()
    return {
        "sources_fetched": outcomes.get("fetched", 0),
        "sources_unchanged": outcomes.get("unchanged", 0),
        "sources_failed": outcomes.get("failed", 0),
        "chunks_added": int(sums[0]),
        "chunks_updated": int(sums[1]),
        "chunks_deleted": int(sums[2]),
        "tokens_embedded": int(sums[3]),
        "failed": [
            {"index": f.query_index, "source_id": str(f.source_id), "url": f.url, "title": f.title, "error": f.error}
            for f in failed
        ],
    }
