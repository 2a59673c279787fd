"""A Node producer, as the seeds' web apps are, sends every job's tasks with celery-node over Redis
(Celery protocol 2, JSON), and gets the run ids and results back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from helpers import audit_spec, finished, review_spec

pytestmark = pytest.mark.timeout(120)
NODE_DIR = Path(__file__).resolve().parents[1] / "node"
INSTALL_HINT = "Debian's nodejs and npm, then: npm ci --prefix tests/node (scripts/test.sh does both)"


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with celery-node installed in tests/node."""
    binary = shutil.which("node")
    if binary is None or not (NODE_DIR / "node_modules" / "celery-node").is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and node or celery-node is missing: {INSTALL_HINT}")
        pytest.skip(f"node or celery-node is missing: {INSTALL_HINT}")
    return binary


def send(node: str, redis_url: str, task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([node, str(NODE_DIR / "send_task.js"), task, json.dumps(kwargs), "60000"],
                         env={**os.environ, "REDIS_URL": redis_url}, capture_output=True, text=True, timeout=90)
    assert out.stdout.strip(), out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_node_app_submits_every_job_and_reads_the_results(node, workers, fake_llm, redis_url):
    from dataengine.engine.jobs import get_job, load_jobs

    load_jobs()
    workers("a")
    for key, spec in (("propertyaudit", audit_spec(3, key="node-1")), ("reviewflow", review_spec(3, key="node-2"))):
        sent = send(node, redis_url, f"{key}.submit", spec)
        assert sent["ok"], sent
        row = wait_for(lambda k=key, r=sent["value"]: finished(r, get_job(k)), timeout_s=60, what=f"the {key} run")
        assert row["status"] == "completed" and row["completed_steps"] == 3
    refreshed = send(node, redis_url, "knowledge.refresh",
                     {"property_id": "node-app", "sources": [{"text": "A rooftop pool.", "title": "Amenities"}]})
    assert refreshed["ok"] and len(refreshed["value"]["run_ids"]) == 1, refreshed
    (run_id,) = refreshed["value"]["run_ids"]
    assert wait_for(lambda: finished(run_id, get_job("knowledge")), timeout_s=60, what="the refresh")["status"] == (
        "completed")
    # Bad input: a clear failure, not a hung promise.
    from dataengine import app

    again = send(node, redis_url, "propertyaudit.run", {"run_id": str(uuid.uuid4())})
    assert not again["ok"] and "FAILURE" in again["error"]  # celery-node says only that; the reason is stored:
    assert "No PropertyAudit run with id" in str(app.AsyncResult(again["id"]).result)
