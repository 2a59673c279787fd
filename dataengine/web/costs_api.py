"""``GET /v1/costs``: what LLM calls cost, from the cost ledger, grouped by day, kind, model, property or workspace."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from dataengine.engine.operator_views import CostReport, cost_report, parse_since
from dataengine.engine.submitting import MAX_WORKSPACE_ID_CHARS
from dataengine.web.runs_api import new_router, unprocessable


class CostLineView(BaseModel):
    """One group: its calls, tokens and cost (USD, as a decimal string)."""

    key: str = Field(description="The day (YYYY-MM-DD, UTC), kind, model, property or workspace; '' for none")
    calls: int
    prompt_tokens: int
    cached_tokens: int = Field(description="Of the prompt tokens, those served from the provider's cache")
    completion_tokens: int
    cost_usd: str
    unpriced_calls: int = Field(description="Calls of a model with no price: counted $0 here")


#: Lines a page holds unless ``limit`` says otherwise, and at most.
PAGE_LINES, MAX_PAGE_LINES = 100, 1000


class Costs(BaseModel):
    """The ledger's summary: a page of lines, one per group, largest cost first (days in order), and the
    total of every line."""

    by: str
    since: str | None
    lines: list[CostLineView]
    offset: int = Field(description="Lines before this page")
    next_offset: int | None = Field(description="The next page's offset; null when this page is the last")
    total: CostLineView
    unpriced_models: list[str] = Field(description="Models called without a price: the totals leave them out")


def add_costs(router: APIRouter | None = None) -> APIRouter:
    """The ``/v1/costs`` route, behind the key."""
    router = router or new_router()

    @router.get("/costs", response_model=Costs, summary="What LLM calls cost")
    def costs(
        by: Annotated[Literal["day", "kind", "model", "property", "workspace"], Query()] = "day",
        since: Annotated[str | None, Query(description="Only the last 90s, 30m, 12h, 7d, 2w")] = None,
        # A workspace's id: PostgreSQL text cannot hold NUL, so such an id is refused here, not with a 500.
        workspace: Annotated[str | None, Query(min_length=1, max_length=MAX_WORKSPACE_ID_CHARS, pattern=r"^[^\x00]+$",
                                               description="Only this workspace's calls")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LINES, description="Lines in this page")] = PAGE_LINES,
        offset: Annotated[int, Query(ge=0, le=10**9, description="Lines to skip (next_offset)")] = 0,
    ) -> Costs:
        """Every LLM call's tokens and cost, summed by the hour in the ledger and grouped here."""
        try:
            window = None if since is None else parse_since(since)
        except ValueError as exc:
            raise unprocessable(["query", "since"], str(exc)) from None
        report: CostReport = cost_report(by=by, since=window, workspace_id=workspace, limit=limit + 1, offset=offset)
        more = len(report.lines) > limit
        return Costs(by=by, since=since, lines=[CostLineView(**line.as_dict()) for line in report.lines[:limit]],
                     offset=offset, next_offset=offset + limit if more else None,
                     total=CostLineView(**report.total.as_dict()), unpriced_models=report.unpriced_models)

    return router
