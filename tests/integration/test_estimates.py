"""Estimates before spending: a dry run through the submit task, the HTTP API and the CLI validates the
spec and answers its steps, calls, tokens and cost, and creates no row and sends no message; after real
runs the estimate leans on their averages and lands near what an identical run then costs. The
arithmetic alone is ``unit/test_estimate_arithmetic``."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import API_AUTH as AUTH
from helpers import audit_spec, create, review_spec, run_row
from sqlalchemy import text
from typer.testing import CliRunner

from dataengine import app
from dataengine.cli.main import cli
from dataengine.engine.estimates import Estimate
from dataengine.engine.runloop import execute_run
from dataengine.engine.submitting import submit_run
from dataengine.infra.db import session_scope
from dataengine.infra.errors import SpecInvalid
from tasks.propertyaudit import JOB as AUDIT
from tasks.reviewflow import JOB as REVIEWFLOW

pytestmark = pytest.mark.timeout(120)


def everything(redis_url: str) -> dict[str, Any]:
    """The rows of every table of the database, counted, and every key of the test's Redis DB."""
    with session_scope() as session:
        tables = session.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).all()
        rows = {t: session.scalar(text(f'SELECT count(*) FROM "{t}"')) for t in tables}  # noqa: S608  names from the catalog
    return {"rows": rows, "redis": sorted(redis.Redis.from_url(redis_url).keys())}


def dry_run(job: Any, spec: dict[str, Any]) -> Estimate:
    estimate = submit_run(job=job, spec={**spec, "dry_run": True}, send=lambda name, kwargs, queue=None: pytest.fail("sent"))
    assert isinstance(estimate, Estimate)
    return estimate


def audited(spec: dict[str, Any]) -> dict[str, Any]:
    """A real run of ``spec`` in this process against the stand-in: its row when it completed."""
    run_id = create(spec)
    assert execute_run(job=AUDIT, run_id=str(run_id), worker_id="w/1", task_id="t").status == "completed"
    return run_row(run_id)


def test_a_dry_run_through_the_task_the_api_and_the_cli_creates_and_sends_nothing(
        api, engine_env, fake_llm, tmp_path: Path):
    before = everything(engine_env["REDIS_URL"])
    spec = {**audit_spec(6, key="never-created"), "dry_run": True, "max_cost_usd": 5}
    by_task = app.tasks["propertyaudit.submit"].apply(kwargs=spec).get(timeout=30)
    assert by_task["dry_run"] is True and by_task["steps"] == 6 and by_task["over_budget"] is False
    assert [(c["kind"], c["calls"]) for c in by_task["calls"]] == [("chat", 6), ("parse", 6)]
    assert by_task["prompt_tokens"] > 0 and Decimal(by_task["cost_usd"]) > 0 and by_task["unpriced_models"] == []

    without_budget = {k: v for k, v in spec.items() if k != "max_cost_usd"}
    by_api = api.post("/v1/propertyaudit/runs", json=without_budget, headers={**AUTH, "Idempotency-Key": "never-created"})
    assert by_api.status_code == 200, by_api.text
    assert by_api.json() == {**by_task, "max_cost_usd": None, "over_budget": None}
    reviews = api.post("/v1/reviewflow/runs", json={**review_spec(9), "dry_run": True}, headers=AUTH)
    assert reviews.status_code == 200 and reviews.json()["steps"] == 9
    assert reviews.json()["calls"] == [{"model": "gpt-4o-mini", "kind": "parse", "calls": 3, "exact": True}]

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(audit_spec(6)))
    out = CliRunner().invoke(cli, ["submit", "propertyaudit", str(spec_file), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "nothing was created or sent" in out.output and "steps: 6" in out.output
    assert "gpt-4o-mini  chat: 6" in out.output and "cost: $" in out.output and "basis:" in out.output

    assert everything(engine_env["REDIS_URL"]) == before
    assert fake_llm.stats()["answered"] == 0


def test_a_bad_spec_is_refused_by_a_dry_run_as_by_a_submit(api):
    with pytest.raises(SpecInvalid, match="queries: List should have at least 1 item"):
        dry_run(AUDIT, {**audit_spec(1), "queries": []})
    answer = api.post("/v1/propertyaudit/runs", json={"property": {"name": "x"}, "dry_run": True}, headers=AUTH)
    assert answer.status_code == 422 and "queries" in answer.text


def test_the_estimate_leans_on_recent_runs_and_lands_near_the_actual_cost(engine_env, fake_llm):
    spec = audit_spec(10, tag="measured")
    cold = dry_run(AUDIT, spec)
    assert "DATAENGINE_LLM_OUTPUT_TOKENS_ESTIMATE" in cold.basis["completion_tokens"]
    for tag in ("earlier", "before"):  # runs of other queries of the same shape
        audited(audit_spec(10, tag=tag))
    warm = dry_run(AUDIT, spec)
    assert "the last 20 recorded steps of runs on gpt-4o-mini" in warm.basis["completion_tokens"]
    assert fake_llm.stats()["answered"] == 40  # the dry runs asked nothing
    actual = audited(spec)
    assert warm.cost_usd is not None and cold.cost_usd is not None
    ratio = float(warm.cost_usd / actual["cost_usd"])
    tokens = (warm.prompt_tokens or 0) + (warm.completion_tokens or 0)
    token_ratio = tokens / (actual["prompt_tokens"] + actual["completion_tokens"])
    print(f"estimate/actual: cost {ratio:.3f} (with no recent runs {float(cold.cost_usd / actual['cost_usd']):.3f}),"
          f" tokens {token_ratio:.3f}")
    assert 0.75 <= ratio <= 1.25 and 0.75 <= token_ratio <= 1.25
    assert sum(c.calls for c in warm.calls) == fake_llm.stats()["answered"] - 40


def test_a_review_flow_makes_the_calls_its_estimate_counts(engine_env, fake_llm):
    spec = review_spec(9)
    spec["reviews"][4]["text"] = "The heating has been broken for a week. " * 20  # long: a call of its own
    estimate = dry_run(REVIEWFLOW, spec)
    run_id = create(spec, job=REVIEWFLOW)
    assert execute_run(job=REVIEWFLOW, run_id=str(run_id), worker_id="w/1", task_id="t").status == "completed"
    assert [(c.kind, c.calls) for c in estimate.calls] == [("parse", fake_llm.stats()["answered"])]
    assert estimate.calls[0].calls == 3  # reviews 0-3 together, 4 alone, 5-8 together
