"""A ReviewFlow's summary: sentiment counts, the top topics with an example each, the urgent reviews
that still need a reply, and the average rating against the average sentiment."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import and_, func, literal, select
from sqlalchemy.orm import Session

from models.reviewflow import Review, ReviewAnalysisRow

#: How many topics, and urgent reviews, the summary lists.
TOP_TOPICS = 5
URGENT_LISTED = 20
EXCERPT_CHARS = 160


def summarize(session: Session, run_id: uuid.UUID) -> dict[str, Any]:
    """The batch summary, computed from the recorded analyses."""
    a, r = ReviewAnalysisRow.__table__, Review.__table__
    both = a.join(r, and_(r.c.run_id == a.c.run_id, r.c.query_index == a.c.query_index))
    labels = dict(session.execute(
        select(a.c.sentiment_label, func.count())
        .where(a.c.run_id == run_id, a.c.error.is_(None))
        .group_by(a.c.sentiment_label)
    ).all())
    failed = session.scalar(select(func.count()).where(a.c.run_id == run_id, a.c.error.is_not(None))) or 0
    topic = func.jsonb_array_elements_text(a.c.topics).table_valued("value").render_derived()
    topics = session.execute(
        select(topic.c.value, func.count().label("n"), func.min(a.c.query_index).label("first"))
        .select_from(a.join(topic, literal(True)))
        .where(a.c.run_id == run_id)
        .group_by(topic.c.value)
        .order_by(func.count().desc(), topic.c.value)
        .limit(TOP_TOPICS)
    ).all()
    examples = dict(session.execute(
        select(r.c.query_index, r.c.review_text)
        .where(r.c.run_id == run_id, r.c.query_index.in_([t.first for t in topics]))
    ).all())
    urgent = session.execute(
        select(a.c.query_index, r.c.review_text, r.c.author, r.c.rating)
        .select_from(both)
        .where(a.c.run_id == run_id, a.c.urgency == "high", a.c.needs_reply.is_(True))
        .order_by(a.c.query_index)
    ).all()
    averages = session.execute(
        select(func.avg(r.c.rating), func.avg(a.c.sentiment_score)).select_from(both).where(a.c.run_id == run_id)
    ).one()
    return {
        "reviews_analyzed": sum(labels.values()),
        "reviews_failed": failed,
        "sentiment": {label: labels.get(label, 0) for label in ("positive", "neutral", "mixed", "negative")},
        "top_topics": [
            {"topic": t.value, "reviews": t.n, "example": examples.get(t.first, "")[:EXCERPT_CHARS]} for t in topics
        ],
        "urgent_needing_reply": len(urgent),
        "urgent": [
            {"index": u.query_index, "author": u.author, "rating": u.rating, "excerpt": u.review_text[:EXCERPT_CHARS]}
            for u in urgent[:URGENT_LISTED]
        ],
        "average_rating": round(float(averages[0]), 2) if averages[0] is not None else None,
        "average_sentiment": round(float(averages[1]), 3) if averages[1] is not None else None,
    }
