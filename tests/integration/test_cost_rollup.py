"""Whole-history cost reports read rolled-up totals and the hours not rolled up yet, never the whole
ledger, and say exactly what the ledger says: before a roll-up, after it, after two at once, a page at
a time, for every workspace or one."""

from __future__ import annotations

import threading
from collections import defaultdict
from decimal import Decimal

import pytest
from conftest import API_AUTH
from sqlalchemy import text

from dataengine.infra.db import session_scope
from dataengine.llm.ledger import GROUPINGS, roll_up, summary, total, unpriced_models

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("db_url")]


def write_ledger(hours: int = 72, per_hour: int = 40, properties: int = 40) -> None:
    """``hours`` of ledger rows up to this hour: properties, models, jobs and workspaces repeating, so
    that keys recur across hours and days; the current hour too (never rolled up)."""
    with session_scope() as session:
        session.execute(text("""
            INSERT INTO llm_costs (hour, job, model, property, workspace_id, calls, prompt_tokens, cached_tokens,
                                   completion_tokens, cost_usd, unpriced_calls)
            SELECT date_trunc('hour', now()) - h * interval '1 hour', (ARRAY['audit', 'review', ''])[1 + p % 3],
                   (ARRAY['gpt-4o-mini', 'gpt-4o'])[1 + p % 2], 'Property ' || ((h * :per_hour + p) % :properties), (ARRAY['', 'acme', 'bolt'])[1 + (p + h) % 3],
                   1 + p % 7, 100 * (1 + p % 5), 10 * (p % 3), 20 * (1 + p % 4), (1 + (p * 7 + h) % 13) * 0.000125,
                   CASE WHEN p % 11 = 0 THEN 1 ELSE 0 END
            FROM generate_series(0, :hours - 1) AS h, generate_series(1, :per_hour) AS p
        """), {"hours": hours, "per_hour": per_hour, "properties": properties})


def expected(by: str, workspace: str | None) -> list[tuple]:
    """The report computed from the raw ledger rows, the way it always was."""
    groups: dict[str, list] = defaultdict(lambda: [0, 0, 0, 0, Decimal(0), 0])
    with session_scope() as session:
        rows = session.execute(text("SELECT to_char(timezone('UTC', hour), 'YYYY-MM-DD') AS day, job AS kind, model, "
                                    "property, workspace_id AS workspace, calls, prompt_tokens, cached_tokens, "
                                    "completion_tokens, cost_usd, unpriced_calls FROM llm_costs")).mappings().all()
    for r in rows:
        if workspace is not None and r["workspace"] != workspace:
            continue
        g = groups[r[by]]
        for i, f in enumerate(("calls", "prompt_tokens", "cached_tokens", "completion_tokens", "cost_usd", "unpriced_calls")):
            g[i] += r[f]
    order = (lambda kv: kv[0]) if by == "day" else (lambda kv: (-kv[1][4], kv[0]))
    return [(k, *v) for k, v in sorted(groups.items(), key=order)]


def reported(by: str, workspace: str | None, **page: int) -> list[tuple]:
    return [(line.key, line.calls, line.prompt_tokens, line.cached_tokens, line.completion_tokens, line.cost_usd,
             line.unpriced_calls) for line in summary(by=by, workspace_id=workspace, **page)]


def assert_reports_match() -> None:
    for by in GROUPINGS:
        for workspace in (None, "acme", ""):
            assert reported(by, workspace) == expected(by, workspace), (by, workspace)
    assert unpriced_models() == ["gpt-4o", "gpt-4o-mini"]  # p % 11 == 0 is unpriced, of both models
    whole = total()
    assert whole.cost_usd == sum((line[5] for line in expected("kind", None)), Decimal(0)) and whole.calls > 0


def test_whole_history_reports_are_the_same_before_and_after_the_roll_up_and_never_count_twice():
    write_ledger()
    assert_reports_match()  # nothing rolled up: all of it is read as the hours not rolled up yet
    assert roll_up() > 0
    with session_scope() as session:
        live = session.execute(text("SELECT count(*) FROM llm_costs WHERE hour >= "
                                    "(SELECT rolled_until FROM llm_cost_rollup)")).scalar_one()
    assert live == 2 * 40  # this hour and the last are not rolled up yet
    assert_reports_match()
    assert roll_up() == 0  # nothing new: nothing added twice
    threads = [threading.Thread(target=roll_up) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert_reports_match()


def test_a_report_is_read_a_page_at_a_time_and_the_pages_make_the_whole():
    write_ledger(hours=30, per_hour=25)
    roll_up()
    for by in ("property", "day", "model"):
        whole = reported(by, None)
        pages = [reported(by, None, limit=7, offset=o) for o in range(0, len(whole) + 7, 7)]
        assert [line for page in pages for line in page] == whole and all(len(p) <= 7 for p in pages)


def test_the_first_page_of_a_rolled_up_history_reads_no_whole_table():
    write_ledger(hours=24 * 30, per_hour=60, properties=20000)
    roll_up()
    with session_scope() as session:
        session.execute(text("ANALYZE llm_costs"))
        session.execute(text("ANALYZE llm_cost_totals"))
    from dataengine.llm.ledger import _PAGES, ROLLED_UNTIL

    for by in ("property", "day"):
        with session_scope() as session:
            until = session.execute(ROLLED_UNTIL).scalar_one()
            plan = "\n".join(r[0] for r in session.execute(
                text(f"EXPLAIN {_PAGES[by].text}"),
                {"grouping": by, "scope": "all", "reach": 50, "limit": 50, "offset": 0, "rolled_until": until}))
        assert "Seq Scan on llm_costs" not in plan and "Seq Scan on llm_cost_totals" not in plan, plan


def test_the_api_pages_a_report_and_says_where_the_next_page_starts(api):
    write_ledger(hours=5, per_hour=30, properties=30)
    first = api.get("/v1/costs", params={"by": "property", "limit": 20}, headers=API_AUTH).json()
    assert "next_offset" in first, first
    rest = api.get("/v1/costs", params={"by": "property", "limit": 20, "offset": first["next_offset"]}, headers=API_AUTH).json()
    assert len(first["lines"]) == 20 and first["next_offset"] == 20
    assert len(rest["lines"]) == 10 and rest["next_offset"] is None
    assert first["total"] == rest["total"] and int(first["total"]["calls"]) == sum(
        line["calls"] for line in first["lines"] + rest["lines"])
    refused = api.get("/v1/costs", params={"limit": 0}, headers=API_AUTH)
    assert refused.status_code == 422 and "limit" in refused.text
