"""The command line finds a run of any job by its id alone, and lists the latest runs of every job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import audit_spec, create, create_audit, review_spec, run_row
from typer.testing import CliRunner

from dataengine.cli.main import cli
from tasks.reviewflow import JOB as REVIEWFLOW

pytestmark = pytest.mark.usefixtures("db_url")


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_status_without_an_id_lists_the_latest_runs_of_every_job_newest_first():
    audit = create_audit(2)
    reviews = create(review_spec(3), job=REVIEWFLOW)
    listed = json.loads(invoke("status", "--json"))
    assert [(r["job"], r["id"]) for r in listed] == [("reviewflow", str(reviews)), ("propertyaudit", str(audit))]
    assert listed[0]["total_steps"] == 3 and listed[0]["status"] == "queued"
    assert len(json.loads(invoke("status", "--json", "--limit", "1"))) == 1
    table = invoke("status")
    assert "latest 2 runs" in table and str(reviews) in table and str(audit) in table


def test_status_and_cancel_find_a_run_of_any_job_by_its_id():
    reviews = create(review_spec(3), job=REVIEWFLOW)
    assert json.loads(invoke("status", str(reviews), "--json"))["total_steps"] == 3
    assert "ReviewFlow queued: 0/3 reviews" in invoke("status", str(reviews))
    assert "run is cancelled" in invoke("cancel", str(reviews))
    assert run_row(reviews, job=REVIEWFLOW)["status"] == "cancelled"


def test_submit_makes_one_run_per_key_and_refuses_the_key_with_another_spec(engine_env, tmp_path: Path):
    first, other = tmp_path / "first.json", tmp_path / "other.json"
    first.write_text(json.dumps(audit_spec(2, key="cli-1")))
    other.write_text(json.dumps(audit_spec(3, name="Elm Court", key="cli-1")))
    run_id = invoke("submit", "propertyaudit", str(first)).strip()
    assert invoke("submit", "propertyaudit", str(first)).strip() == run_id
    refused = CliRunner().invoke(cli, ["submit", "propertyaudit", str(other)])
    assert refused.exit_code == 2
    assert f"idempotency key 'cli-1' was used with a different spec (run {run_id})" in " ".join(refused.output.split())
    assert run_row(run_id)["total_steps"] == 2 and [r["id"] for r in json.loads(invoke("status", "--json"))] == [run_id]
