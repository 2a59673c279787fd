"""LLM spend, against real workers: every call in the cost ledger (``dataengine costs``, ``GET /v1/costs``),
a run's budget that stops it before the call that would cross it and lets it go on when raised, and a
daily budget that pauses runs until the next day."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from conftest import API_AUTH, reload_settings, wait_for
from fastapi.testclient import TestClient
from helpers import answered, audit_spec, create, finished, invoke, results, run_row, said, scrape, value
from redis_server import free_port
from sqlalchemy import text

from dataengine import app
from dataengine.infra.db import session_scope
from dataengine.llm.budgets import call_cost, dollars
from dataengine.web.app import create_app
from tasks.propertyaudit import JOB as AUDIT

pytestmark = pytest.mark.timeout(120)
KEY = "spend-key-0123456789abcdef"


def run_to_the_end(run_id: uuid.UUID) -> dict[str, Any]:
    app.send_task(AUDIT.task_name, kwargs={"run_id": str(run_id)})
    return wait_for(lambda: finished(run_id), timeout_s=60, what="the run to finish")


def events(run_id: uuid.UUID) -> list[dict[str, Any]]:
    return json.loads(invoke("events", str(run_id), "--json"))["events"]


def test_every_call_is_in_the_ledger_and_costs_sums_it_by_property_model_and_kind(workers, fake_llm, monkeypatch):
    fake_llm.configure(cache_system_prompts=True)  # the system prompts come back as cached input
    workers("a")
    priced = create(audit_spec(6))
    unpriced = create({**audit_spec(3, name="Oak Court", tag="oak"), "model": "mystery-model"})
    rows = {r: run_to_the_end(r) for r in (priced, unpriced)}
    assert all(row["status"] == "completed" for row in rows.values())

    by_property = {line["key"]: line for line in json.loads(invoke("costs", "--by", "property", "--json"))["lines"]}
    cedar, oak = by_property["Cedar Flats"], by_property["Oak Court"]
    # An answer and an evaluation per query; the ledger's cost is the runs' own, to the millionth.
    assert cedar["calls"] == 12 and Decimal(cedar["cost_usd"]) == rows[priced]["cost_usd"] > 0
    assert cedar["prompt_tokens"] == rows[priced]["prompt_tokens"] and cedar["unpriced_calls"] == 0
    assert oak["calls"] == 6 and oak["unpriced_calls"] == 3 and Decimal(oak["cost_usd"]) == rows[unpriced]["cost_usd"]

    by_model = {line["key"]: line for line in json.loads(invoke("costs", "--by", "model", "--json"))["lines"]}
    assert by_model["mystery-model"]["calls"] == 3 and Decimal(by_model["mystery-model"]["cost_usd"]) == 0
    mini = by_model["gpt-4o-mini"]
    assert mini["calls"] == 15 and 0 < mini["cached_tokens"] < mini["prompt_tokens"]
    full_price = call_cost("gpt-4o-mini", mini["prompt_tokens"], mini["completion_tokens"])
    assert Decimal(mini["cost_usd"]) < full_price - Decimal("0.00003")  # cached input at half the price
    table = said("costs", "--by", "model", "--since", "1h")
    assert "mystery-model" in table and "3 call(s) of mystery-model had no price" in table
    assert "--by must be one of day, kind, model, property, workspace" in said("costs", "--by", "colour", code=2)

    monkeypatch.setenv("DATA_ENGINE_API_KEY", KEY)
    reload_settings()
    with TestClient(create_app()) as api:
        answer = api.get("/v1/costs", params={"by": "kind", "since": "1d"}, headers={"X-API-Key": KEY})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [line["key"] for line in body["lines"]] == ["propertyaudit"] and body["total"]["calls"] == 18
        assert Decimal(body["total"]["cost_usd"]) == rows[priced]["cost_usd"] + rows[unpriced]["cost_usd"]
        assert body["unpriced_models"] == ["mystery-model"]
        assert api.get("/v1/costs", params={"by": "colour"}, headers={"X-API-Key": KEY}).status_code == 422
        nul = api.get("/v1/costs", params={"workspace": "ws\x00"}, headers={"X-API-Key": KEY})  # found by schemathesis: a 500
        assert nul.status_code == 422 and "workspace" in nul.text
        refused = api.get("/v1/costs", params={"since": "yesterday"}, headers={"X-API-Key": KEY})
        assert refused.status_code == 422 and "not a duration" in refused.text
        assert api.get("/v1/costs").status_code == 401


def step_costs(run_id: uuid.UUID) -> list[Decimal]:
    return [row["cost_usd"] for _, row in sorted(results(run_id).items())]


def test_a_budget_stops_the_run_before_the_call_that_would_cross_it_and_a_larger_one_lets_it_finish(workers,
                                                                                                    fake_llm):
    """One step at a time, so "the call that would cross it" is one call. An identical run without a
    budget tells what each query costs; the budget allows five queries and a fraction of the sixth."""
    port = free_port()
    workers("a", env={"DATAENGINE_STEP_CONCURRENCY": "1", "DATAENGINE_WORKER_METRICS_PORT": str(port)})
    spec = {**audit_spec(10), "model": "gpt-4o"}
    twin = run_to_the_end(create(spec))
    costs = step_costs(twin["id"])
    budget = sum(costs[:5]) + costs[5] / 4
    run_id = create({**spec, "max_cost_usd": str(budget)})
    row = run_to_the_end(run_id)
    assert row["status"] == "failed" and row["completed_steps"] == 5
    assert row["error_message"] == f"budget exceeded at query 6: spent ${dollars(sum(costs[:5]))} of ${dollars(budget)}"
    assert row["cost_usd"] == sum(costs[:5]) and row["current_query_index"] == 5
    assert answered(fake_llm, spec["queries"][5]) == 1  # the twin's: this run never asked it
    stops = value(scrape(f"http://127.0.0.1:{port}/metrics"), "dataengine_budget_stops_total", kind="propertyaudit",
                  budget="run")
    assert stops == 1

    assert "queued again; it resumes at query 6" in said("retry", str(run_id), "--max-cost", "5")
    row = wait_for(lambda: finished(run_id), timeout_s=60, what="the retried run to finish")
    assert row["status"] == "completed" and row["max_cost_usd"] == 5 and row["cost_usd"] == twin["cost_usd"]
    assert all(answered(fake_llm, q) == 2 for q in spec["queries"])  # the twin's and this run's: none twice here
    kinds = [e["event"] for e in events(run_id)]
    assert kinds[-4:] == ["failed", "retried", "resumed", "completed"], kinds


def test_a_model_without_a_price_is_refused_to_a_run_with_a_budget(workers, fake_llm):
    workers("a")
    run_id = create({**audit_spec(3), "model": "mystery-model", "max_cost_usd": 1})
    row = run_to_the_end(run_id)
    assert row["status"] == "failed" and row["completed_steps"] == 0
    assert "model 'mystery-model' has no price (DATAENGINE_MODEL_PRICES_PER_MTOK)" in row["error_message"]
    assert fake_llm.stats()["answered"] == 0


def a_day_passes() -> None:
    """Move the ledger's hours back a day, as midnight (UTC) would."""
    with session_scope() as session:
        session.execute(text("UPDATE llm_costs SET hour = hour - interval '1 day'"))


def test_a_spent_daily_budget_pauses_a_run_until_the_next_day(workers, fake_llm):
    """An identical run tells what each query costs; the fleet's daily budget is then the cost of six.
    The run pauses at the seventh (queued, not failed), the sweepers hold it while the day's spend
    stands, and it goes on from its checkpoint the next day, paying for nothing twice."""
    first = workers("a", env={"DATAENGINE_STEP_CONCURRENCY": "1"})
    spec = audit_spec(10)
    twin = run_to_the_end(create(spec))
    costs = step_costs(twin["id"])
    first.stop(timeout_s=5)
    a_day_passes()
    workers("b", env={"DATAENGINE_STEP_CONCURRENCY": "1", "DATAENGINE_DAILY_BUDGET_USD": str(sum(costs[:6])),
                      "DATAENGINE_BUDGET_RECHECK_S": "1"})
    run_id = create(spec)
    app.send_task(AUDIT.task_name, kwargs={"run_id": str(run_id)})
    row = wait_for(lambda: (r := run_row(run_id))["error_message"] and r, timeout_s=30, what="the run to pause")
    assert row["status"] == "queued" and row["lease_owner"] is None and row["completed_steps"] == 6
    assert row["error_message"] == (f"paused: the fleet's daily budget of ${dollars(sum(costs[:6]))} is spent "
                                    f"(${dollars(sum(costs[:6]))} today); resumes at 00:00 UTC or when it is raised")
    assert events(run_id)[-1]["event"] == "paused"
    assert answered(fake_llm, spec["queries"][6]) == 1  # the twin's

    wait_for(lambda: run_row(run_id)["lease_expires_at"] > row["lease_expires_at"], timeout_s=15,
             what="a sweeper to hold the paused run while the budget is spent")
    assert run_row(run_id)["status"] == "queued"
    a_day_passes()
    row = wait_for(lambda: finished(run_id), timeout_s=30, what="the paused run to go on the next day")
    assert row["status"] == "completed" and row["error_message"] is None and row["cost_usd"] == twin["cost_usd"]
    assert all(answered(fake_llm, q) == 2 for q in spec["queries"])  # the twin's and this run's, once each


def test_the_api_takes_a_budget_with_a_spec_and_a_new_one_with_a_retry(api):
    created = api.post("/v1/propertyaudit/runs", json={**audit_spec(2), "max_cost_usd": 2.5}, headers=API_AUTH)
    assert created.status_code == 202, created.text
    run_id = uuid.UUID(created.json()["run_id"])
    assert run_row(run_id)["max_cost_usd"] == Decimal("2.5")
    assert api.get(f"/v1/runs/{run_id}", headers=API_AUTH).json()["max_cost_usd"] == 2.5
    refused = api.post("/v1/propertyaudit/runs", json={**audit_spec(2), "max_cost_usd": -1}, headers=API_AUTH)
    assert refused.status_code == 422 and "max_cost_usd" in refused.text
    with session_scope() as session:
        session.execute(text("UPDATE geo_runs SET status = 'failed' WHERE id = :id"), {"id": run_id})
    assert api.post(f"/v1/runs/{run_id}/retry", json={"max_cost_usd": "x"}, headers=API_AUTH).status_code == 422
    retried = api.post(f"/v1/runs/{run_id}/retry", json={"max_cost_usd": 7}, headers=API_AUTH)
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    assert run_row(run_id)["max_cost_usd"] == 7 and "with a budget of $7.00" in events(run_id)[-1]["detail"]
