"""The cost ledger: every LLM call's tokens and cost, summed by the hour per job, model, property and
workspace (``llm_costs``), and what ``dataengine costs`` and ``GET /v1/costs`` read back.

Each paid call adds a ``Spend`` (``dataengine.llm``); the process's writer thread (``dataengine.recorder``)
sums what is waiting and upserts one row per key and hour. A call whose model has no price counts 0 and
is counted in ``unpriced_calls``, so a report says its total is short rather than silently free.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import text

from dataengine import recorder
from dataengine.db import session_scope
from models.costs import LLMCost

TABLE = LLMCost.__table__.name
#: What a summary may group by.
Grouping = Literal["day", "kind", "model", "property", "workspace"]
GROUPINGS: tuple[str, ...] = ("day", "kind", "model", "property", "workspace")
_GROUP_SQL = {"day": "to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD')", "kind": "job", "model": "model",
              "property": "property", "workspace": "workspace_id"}


@dataclass(frozen=True)
class Spend:
    """One call's spend: ``job``, ``property`` and ``workspace_id`` are '' outside a run or without one."""

    job: str
    model: str
    property: str
    workspace_id: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    priced: bool


UPSERT_SQL = f"""
    INSERT INTO {TABLE} AS c (hour, job, model, property, workspace_id, calls, prompt_tokens, cached_tokens,
                              completion_tokens, cost_usd, unpriced_calls)
    SELECT date_trunc('hour', now()), x.job, x.model, x.property, x.workspace_id, x.calls, x.prompt_tokens,
           x.cached_tokens, x.completion_tokens, x.cost_usd, x.unpriced_calls
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(job text, model text, property text, workspace_id text,
         calls integer, prompt_tokens bigint, cached_tokens bigint, completion_tokens bigint, cost_usd numeric,
         unpriced_calls integer)
    ON CONFLICT (hour, job, model, property, workspace_id) DO UPDATE SET
        calls = c.calls + excluded.calls, prompt_tokens = c.prompt_tokens + excluded.prompt_tokens,
        cached_tokens = c.cached_tokens + excluded.cached_tokens,
        completion_tokens = c.completion_tokens + excluded.completion_tokens,
        cost_usd = c.cost_usd + excluded.cost_usd, unpriced_calls = c.unpriced_calls + excluded.unpriced_calls
"""  # noqa: S608  the table name is the model's own


def _rows(spends: list[Spend]) -> str:
    """The batch summed by key: an upsert may touch a row once."""
    sums: dict[tuple[str, ...], list[Any]] = defaultdict(lambda: [0, 0, 0, 0, Decimal(0), 0])
    for s in spends:
        total = sums[(s.job[:64], s.model[:200], s.property[:300], s.workspace_id[:100])]
        total[0] += 1
        total[1] += s.prompt_tokens
        total[2] += s.cached_tokens
        total[3] += s.completion_tokens
        total[4] += s.cost_usd
        total[5] += 0 if s.priced else 1
    return json.dumps([
        {"job": k[0], "model": k[1], "property": k[2], "workspace_id": k[3], "calls": v[0], "prompt_tokens": v[1],
         "cached_tokens": v[2], "completion_tokens": v[3], "cost_usd": str(v[4]), "unpriced_calls": v[5]}
        for k, v in sums.items()
    ])


recorder.register(Spend, UPSERT_SQL, _rows)


def add(spend: Spend) -> None:
    """Count a paid call (written within moments, with whatever else is waiting)."""
    recorder.put(spend)


@dataclass(frozen=True)
class CostLine:
    """One group of a summary."""

    key: str
    calls: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    unpriced_calls: int

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "cost_usd": str(self.cost_usd)}


def summary(*, by: Grouping, since: datetime | None = None, workspace_id: str | None = None) -> list[CostLine]:
    """The ledger grouped ``by`` day (UTC), kind (job), model, property or workspace, since ``since``
    (whole hours: a call counts in the hour it was written), largest cost first (days in order)."""
    if by not in _GROUP_SQL:
        raise ValueError(f"cannot group costs by {by!r}; choose one of {', '.join(GROUPINGS)}")
    key = _GROUP_SQL[by]
    order = "key" if by == "day" else "cost_usd DESC, key"
    where = ["(CAST(:since AS timestamptz) IS NULL OR hour >= date_trunc('hour', CAST(:since AS timestamptz)))"]
    if workspace_id is not None:
        where.append("workspace_id = :workspace")
    with session_scope() as session:
        rows = session.execute(text(f"""
            SELECT {key} AS key, sum(calls) AS calls, sum(prompt_tokens) AS prompt_tokens,
                   sum(cached_tokens) AS cached_tokens, sum(completion_tokens) AS completion_tokens,
                   sum(cost_usd) AS cost_usd, sum(unpriced_calls) AS unpriced_calls
            FROM {TABLE} WHERE {" AND ".join(where)} GROUP BY 1 ORDER BY {order}
        """), {"since": since, "workspace": workspace_id}).all()  # noqa: S608  names from the fixed table above
    return [CostLine(r.key, int(r.calls), int(r.prompt_tokens), int(r.cached_tokens), int(r.completion_tokens),
                     Decimal(r.cost_usd), int(r.unpriced_calls)) for r in rows]


def unpriced_models(*, since: datetime | None = None) -> list[str]:
    """The models called without a price since ``since``: their calls are not in any total."""
    with session_scope() as session:
        return list(session.scalars(text(f"""
            SELECT DISTINCT model FROM {TABLE} WHERE unpriced_calls > 0
              AND (CAST(:since AS timestamptz) IS NULL OR hour >= date_trunc('hour', CAST(:since AS timestamptz)))
            ORDER BY model
        """), {"since": since}))  # noqa: S608  the model's own table


def spent_today(workspace_id: str | None) -> Decimal:
    """What the fleet (``None``) or one workspace spent since midnight UTC."""
    where = "" if workspace_id is None else "AND workspace_id = :workspace"
    with session_scope() as session:
        spent = session.scalar(text(f"""
            SELECT COALESCE(sum(cost_usd), 0) FROM {TABLE}
            WHERE hour >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' {where}
        """), {"workspace": workspace_id})  # noqa: S608  the model's own table
    return Decimal(spent)
