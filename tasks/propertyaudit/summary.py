"""A PropertyAudit's summary: how visible the property was, where it ranked, who else was named."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from models.propertyaudit import GeoQueryResult


def summarize(session: Session, run_id: uuid.UUID) -> dict[str, Any]:
    """Visibility score (share of answers that mention the property), mean rank, top competitors."""
    r = GeoQueryResult.__table__
    totals = session.execute(
        select(
            func.count(),
            func.count().filter(r.c.mentioned),
            func.avg(r.c.rank).filter(r.c.mentioned),
        ).where(r.c.run_id == run_id)
    ).one()
    answered, mentioned, mean_rank = totals
    competitor = func.jsonb_array_elements_text(r.c.evaluation["competitors"]).table_valued("value").render_derived()
    top = session.execute(
        select(competitor.c.value, func.count().label("n"))
        .select_from(r.join(competitor, literal(True)))
        .where(r.c.run_id == run_id)
        .group_by(competitor.c.value)
        .order_by(func.count().desc(), competitor.c.value)
        .limit(5)
    ).all()
    return {
        "queries_answered": answered,
        "mentions": mentioned,
        "visibility_score": round(mentioned / answered, 4) if answered else 0.0,
        "mean_rank": round(float(mean_rank), 2) if mean_rank is not None else None,
        "top_competitors": [{"name": name, "mentions": n} for name, n in top],
    }
