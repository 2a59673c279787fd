"""Adding a job means writing only what is the job's: Echo (``tests/enginejob.py``) is tables, a
spec, a step and a summary, and with its module named in ``DATAENGINE_JOB_MODULES`` it gets the
tasks ``echo.run`` and ``echo.submit``, the CLI, and real workers that run and recover it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import wait_for
from echoruns import results, run_row

from dataengine import app

TESTS = Path(__file__).resolve().parents[1]
JOB_ENV = {"PYTHONPATH": str(TESTS), "DATAENGINE_JOB_MODULES": json.dumps(["tasks.propertyaudit", "tasks.reviewflow", "echojob"])}

pytestmark = pytest.mark.timeout(120)


def _finished(run_id: uuid.UUID) -> dict | None:
    row = run_row(run_id)
    return row if row["status"] in ("completed", "failed", "cancelled") else None


def test_a_new_job_gets_its_tasks_cli_and_workers_from_its_job_alone(workers, echo, engine_env, tmp_path):
    workers("a", env=JOB_ENV)
    run_id = uuid.UUID(app.send_task("echo.submit", kwargs={"texts": ["a b", "c"], "idempotency_key": "k1"})
                       .get(timeout=30))
    row = wait_for(lambda: _finished(run_id), timeout_s=30, what="the Echo run to finish")
    assert row["status"] == "completed" and row["summary"] == {"chunks": 3}
    assert [r["echoed"] for _, r in sorted(results(run_id).items())] == ["A B", "C"]
    again = app.send_task("echo.submit", kwargs={"idempotency_key": "k1", "texts": ["a b", "c"]}).get(timeout=30)
    assert again == str(run_id)  # the engine's idempotency, not the job's
    other = app.send_task("echo.submit", kwargs={"texts": ["other"], "idempotency_key": "k1"})
    other.get(timeout=30, propagate=False)
    assert other.state == "FAILURE" and str(other.result) == (
        f"idempotency key 'k1' was used with a different spec (run {run_id}); use a new key")
    refused = app.send_task("echo.submit", kwargs={"texts": []})
    refused.get(timeout=30, propagate=False)
    assert refused.state == "FAILURE" and "texts: List should have at least 1 item" in str(refused.result)

    spec = tmp_path / "echo.json"
    spec.write_text(json.dumps({"texts": ["from the command line"]}))
    cli = Path(sys.executable).with_name("dataengine")
    out = subprocess.run([str(cli), "submit", "echo", str(spec)], env={**os.environ, **engine_env, **JOB_ENV},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    by_cli = uuid.UUID(out.stdout.strip())
    assert wait_for(lambda: _finished(by_cli), timeout_s=30, what="the CLI's run")["status"] == "completed"
