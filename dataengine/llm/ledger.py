"""The cost ledger: every LLM call's tokens and cost, summed by the hour per job, model, property and
workspace (``llm_costs``), and what ``dataengine costs`` and ``GET /v1/costs`` read back.

Each paid call adds a ``Spend`` (``dataengine.llm.calls``); the process's writer thread (``dataengine.llm.writer``)
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

from sqlalchemy import DateTime, func, literal, literal_column, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from dataengine.infra.db import session_scope
from dataengine.infra.queries import statement
from dataengine.llm import writer
from models.costs import LLMCost

COSTS = LLMCost.__table__
#: What a summary may group by.
Grouping = Literal["day", "kind", "model", "property", "workspace"]
GROUPINGS: tuple[str, ...] = ("day", "kind", "model", "property", "workspace")
_GROUP_BY: dict[str, ColumnElement[Any]] = {
    # Constants inline, not bound: the same expression must appear in GROUP BY.
    "day": func.to_char(func.timezone(literal_column("'UTC'"), COSTS.c.hour), literal_column("'YYYY-MM-DD'")),
    "kind": COSTS.c.job,
    "model": COSTS.c.model, "property": COSTS.c.property, "workspace": COSTS.c.workspace_id,
}


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


#: The ledger's upsert, batched with the journal's by the process's writer thread (``dataengine.llm.writer``).
UPSERT_SQL = statement("ledger_upsert")
UNPRICED_MODELS, UNPRICED_MODELS_EVER = text(statement("unpriced_models")), text(statement("unpriced_models_ever"))
SPENT_TODAY = text(statement("spent_today"))
SPENT_TODAY_BY_WORKSPACE = text(statement("spent_today_by_workspace"))
ROLLUP_LOCK, ROLLUP, ROLLUP_DONE = (text(statement(n)) for n in ("cost_rollup_lock", "cost_rollup", "cost_rollup_done"))
COST_TOTAL, ROLLED_UNTIL = text(statement("cost_total")), text(statement("cost_rolled_until"))
_SUMMED = ("calls", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_usd", "unpriced_calls")
#: A whole-history page for each grouping (days in order, the rest by cost), its key as ``_GROUP_BY`` has it.
_PAGES = {
    by: text(statement("cost_page", key=str(expr.compile(compile_kwargs={"literal_binds": True})),
                       top=statement("day_top" if by == "day" else "cost_top"),
                       order="k.key" if by == "day" else "cost_usd DESC, k.key"))
    for by, expr in _GROUP_BY.items()
}


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


writer.register(Spend, UPSERT_SQL, _rows)


def add(spend: Spend) -> None:
    """Count a paid call (written within moments, with whatever else is waiting)."""
    writer.put(spend)


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


def _line(r: Any, key: str | None = None) -> CostLine:
    return CostLine(r.key if key is None else key, int(r.calls), int(r.prompt_tokens), int(r.cached_tokens), int(r.completion_tokens),
                    Decimal(r.cost_usd), int(r.unpriced_calls))


def summary(*, by: Grouping, since: datetime | None = None, workspace_id: str | None = None,
            limit: int | None = None, offset: int = 0) -> list[CostLine]:
    """The ledger grouped ``by`` day (UTC), kind (job), model, property or workspace, since ``since``
    (whole hours: a call counts in the hour it was written), largest cost first (days in order), the
    ``limit`` lines after the first ``offset``. The whole history is read from the rolled-up totals and
    the hours not rolled up yet; a window, from the ledger's hours in it."""
    if by not in _GROUP_BY:
        raise ValueError(f"cannot group costs by {by!r}; choose one of {', '.join(GROUPINGS)}")
    if since is None:
        return _whole_history(by, workspace_id, limit, offset)
    c = COSTS.c
    key = _GROUP_BY[by].label("key")
    cost = func.sum(c.cost_usd).label("cost_usd")
    query = (select(key, func.sum(c.calls).label("calls"), func.sum(c.prompt_tokens).label("prompt_tokens"),
                    func.sum(c.cached_tokens).label("cached_tokens"),
                    func.sum(c.completion_tokens).label("completion_tokens"), cost,
                    func.sum(c.unpriced_calls).label("unpriced_calls"))
             .where(c.hour >= func.date_trunc("hour", literal(since, DateTime(timezone=True))))
             .group_by(key).order_by(*((key,) if by == "day" else (cost.desc(), key)))
             .limit(limit).offset(offset))
    if workspace_id is not None:
        query = query.where(c.workspace_id == workspace_id)
    with session_scope() as session:
        return [_line(r) for r in session.execute(query).all()]


def _scope(workspace_id: str | None) -> str:
    return "all" if workspace_id is None else f"ws:{workspace_id}"


def _rolled_until(session: Session) -> datetime:
    """Where the roll-up stands, in a snapshot the rest of the transaction shares (a roll-up that commits
    meanwhile is not seen half: its totals without the watermark it moved)."""
    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    return session.execute(ROLLED_UNTIL).scalar_one()


def _whole_history(by: str, workspace_id: str | None, limit: int | None, offset: int) -> list[CostLine]:
    reach = offset + (limit if limit is not None else 1_000_000_000)
    params = {"grouping": by, "scope": _scope(workspace_id), "reach": reach, "limit": limit, "offset": offset}
    with session_scope() as session:
        params["rolled_until"] = _rolled_until(session)
        return [_line(r) for r in session.execute(_PAGES[by], params).all()]


def total(*, since: datetime | None = None, workspace_id: str | None = None) -> CostLine:
    """Everything the ledger counts since ``since`` (the whole history when None), as one line."""
    with session_scope() as session:
        if since is None:
            r = session.execute(COST_TOTAL, {"scope": _scope(workspace_id), "rolled_until": _rolled_until(session)}).one()
        else:
            c = COSTS.c
            query = select(*(func.coalesce(func.sum(c[f]), 0).label(f) for f in _SUMMED)).where(
                c.hour >= func.date_trunc("hour", literal(since, DateTime(timezone=True))))
            if workspace_id is not None:
                query = query.where(c.workspace_id == workspace_id)
            r = session.execute(query).one()
    return _line(r, key="total")


def roll_up() -> int:
    """Add the ledger's hours before the last one to the totals whole-history reports read (once each,
    whichever sweepers run it at once); returns the totals rows written."""
    with session_scope() as session:
        since, until = session.execute(ROLLUP_LOCK).one()
        if until <= since:
            return 0
        written = session.execute(ROLLUP, {"since": since, "until": until}).rowcount
        session.execute(ROLLUP_DONE, {"until": until})
    return written


def unpriced_models(*, since: datetime | None = None) -> list[str]:
    """The models called without a price since ``since`` (ever, when None): their calls are not in any total."""
    with session_scope() as session:
        if since is None:
            return list(session.scalars(UNPRICED_MODELS_EVER, {"rolled_until": _rolled_until(session)}))
        return list(session.scalars(UNPRICED_MODELS, {"since": since}))


def spent_today(workspace_id: str | None) -> Decimal:
    """What the fleet (``None``) or one workspace spent since midnight UTC."""
    with session_scope() as session:
        if workspace_id is None:
            spent = session.scalar(SPENT_TODAY)
        else:
            spent = session.scalar(SPENT_TODAY_BY_WORKSPACE, {"workspace": workspace_id})
    return Decimal(spent)
