"""The three questions an operator asks, answered against real workers: is the fleet healthy (the
worker's and the API's Prometheus metrics), what happened to this run (its JSON log lines and its
history: ``dataengine events``, ``GET /v1/runs/{id}/events``), and what failed and why (``dataengine
runs --status failed``, ``dataengine retry``, stalled runs)."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
import uuid
from typing import Any

import pytest
from conftest import reload_settings, wait_for
from fastapi.testclient import TestClient
from helpers import audit_spec, create, finished, invoke, parse_metrics, results, run_row, said, scrape, value
from redis_server import free_port

from dataengine import app
from dataengine.infra.settings import get_settings
from dataengine.web.app import create_app
from tasks.propertyaudit import JOB as AUDIT

pytestmark = pytest.mark.timeout(120)
KEY = "observability-key-0123456789"


def test_a_run_killed_mid_way_is_seen_in_the_workers_metrics_its_json_lines_and_its_history(workers, fake_llm,
                                                                                           monkeypatch):
    port = free_port()
    fake_llm.configure(latency_ms=100)
    worker = workers("a", env={"DATAENGINE_WORKER_METRICS_PORT": str(port), "DATAENGINE_LOG_FORMAT": "json"})
    url = f"http://127.0.0.1:{port}/metrics"
    run_id = create(audit_spec(40))
    app.send_task(AUDIT.task_name, kwargs={"run_id": str(run_id)})
    wait_for(lambda: run_row(run_id)["completed_steps"] >= 6, timeout_s=30, what="6 checkpointed steps")
    assert value(scrape(url), "dataengine_runs_in_progress", kind="propertyaudit") == 1
    (pool,) = worker.children()
    os.kill(pool, signal.SIGKILL)  # its live gauge is never decremented: the endpoint must forget it
    row = wait_for(lambda: finished(run_id), timeout_s=60, what="the run to finish after the kill")
    assert row["status"] == "completed" and sorted(results(run_id)) == list(range(40))

    def counted() -> dict | None:
        samples = scrape(url)
        return samples if value(samples, "dataengine_runs_finished_total", kind="propertyaudit",
                                status="completed") == 1 else None

    samples = wait_for(counted, timeout_s=10, what="the completed run to be counted")
    assert value(samples, "dataengine_runs_started_total", kind="propertyaudit") == 2  # claimed, then resumed
    assert value(samples, "dataengine_runs_recovered_total", kind="propertyaudit") == 1
    assert value(samples, "dataengine_runs_in_progress", kind="propertyaudit") == 0
    assert value(samples, "dataengine_steps_total", kind="propertyaudit") == 40
    assert value(samples, "dataengine_step_seconds_count", kind="propertyaudit") == 40
    assert value(samples, "dataengine_step_seconds_bucket", kind="propertyaudit", le="0.05") < 40  # 100 ms calls
    model = get_settings().openai_model
    assert value(samples, "dataengine_llm_calls_total", model=model, outcome="ok") >= 40
    assert value(samples, "dataengine_llm_tokens_total", model=model, type="prompt") > 0

    lines = [line for line in worker.log_text().splitlines() if str(run_id) in line]
    parsed = [json.loads(line) for line in lines]  # every line of the run is one JSON object
    mine = [p for p in parsed if p.get("run_id") == str(run_id)]
    assert len(mine) >= 40, f"only {len(mine)} of {len(lines)} lines carry the run's fields"
    for p in mine:
        assert p["kind"] == "propertyaudit" and p["worker"].startswith("a@") and p["task_id"], p
        assert isinstance(p["step"], int) and 0 <= p["step"] <= 40, p
    processing = [p for p in mine if p["message"].startswith("[PropertyAudit] Processing query")]
    assert {p["step"] for p in processing} == set(range(40))  # each step's line names its step

    history = json.loads(invoke("events", str(run_id), "--json"))["events"]
    kinds = [e["event"] for e in history]
    assert kinds[:2] == ["submitted", "claimed"] and kinds[-1] == "completed", kinds
    assert "recovered" in kinds and "resumed" in kinds, kinds
    resumed = history[kinds.index("resumed")]
    assert resumed["worker"].startswith("a@") and resumed["step_index"] >= 6 and resumed["fencing_token"] == 3
    table = said("events", str(run_id))
    assert "recovered at query" in table and "which stopped answering" in table

    monkeypatch.setenv("DATA_ENGINE_API_KEY", KEY)
    reload_settings()
    with TestClient(create_app()) as api:
        answer = api.get(f"/v1/runs/{run_id}/events", headers={"X-API-Key": KEY})
        assert answer.status_code == 200, answer.text
        assert [e["event"] for e in answer.json()["events"]] == kinds
        assert api.get(f"/v1/runs/{uuid.uuid4()}/events", headers={"X-API-Key": KEY}).status_code == 404


def test_the_apis_metrics_show_the_fleet_now_and_count_its_requests(engine_env, monkeypatch):
    monkeypatch.setenv("DATA_ENGINE_API_KEY", KEY)
    reload_settings()
    queued = [create(audit_spec(3, tag=f"fleet {i}")) for i in range(3)]
    app.send_task(AUDIT.task_name, kwargs={"run_id": str(queued[0])})  # no worker: it waits in the queue
    with TestClient(create_app()) as api:
        api.get("/v1/runs", headers={"X-API-Key": KEY})
        samples = parse_metrics(api.get("/metrics").text)
    assert value(samples, "dataengine_runs", kind="propertyaudit", status="queued") == 3
    assert value(samples, "dataengine_runs", kind="reviewflow", status="running") == 0
    assert value(samples, "dataengine_queue_depth", queue="celery") == 1
    assert value(samples, "dataengine_fleet_up", server="database") == 1
    assert value(samples, "dataengine_runs_submitted_total", kind="propertyaudit") >= 3
    assert value(samples, "dataengine_api_requests_total", method="GET", route="/v1/runs", status="200") >= 1


def test_failed_runs_are_listed_with_their_reason_and_step_and_retried_from_their_checkpoint(workers, fake_llm):
    fake_llm.configure(reject_substrings=["poisoned"])
    workers("a")
    spec = audit_spec(12)
    spec["queries"][7] = "best apartments in austin poisoned"
    run_id = create(spec)
    other = create(audit_spec(4, tag="healthy"))
    for r in (run_id, other):
        app.send_task(AUDIT.task_name, kwargs={"run_id": str(r)})
    row = wait_for(lambda: finished(run_id), timeout_s=60, what="the run to fail")
    assert row["status"] == "failed" and "query 8/12 failed: BadRequestError" in row["error_message"]
    wait_for(lambda: finished(other), timeout_s=60, what="the healthy run to finish")

    listed = json.loads(invoke("runs", "--status", "failed", "--since", "1d", "--json"))
    assert [r["id"] for r in listed] == [str(run_id)]
    assert listed[0]["stopped_at"] == "query 8/12" and "BadRequestError" in listed[0]["error_message"]
    table = said("runs", "--status", "failed", "--kind", "propertyaudit")
    assert str(run_id) in table and "query 8/12" in table and str(other) not in table
    assert "not a duration" in said("runs", "--since", "yesterday", code=2)
    assert "only failed or cancelled runs can be retried" in said("retry", str(other), code=2)

    fake_llm.configure(reject_substrings=[])
    assert "Retry 1 failed run(s)?" in said("retry", "--all-failed", "--since", "1h", stdin="n\n", code=1)
    assert run_row(run_id)["status"] == "failed"  # refused at the confirmation: nothing sent
    assert "queued again; it resumes at query 8" in said("retry", str(run_id))
    row = wait_for(lambda: finished(run_id), timeout_s=60, what="the retried run to finish")
    assert row["status"] == "completed" and sorted(results(run_id)) == list(range(12))
    kinds = [e["event"] for e in json.loads(invoke("events", str(run_id), "--json"))["events"]]
    # A sweeper may send the retried run again when the worker is slow to claim it (a loaded machine):
    # "recovered", no failure of the run.
    assert [k for k in kinds if k != "recovered"][-4:] == ["failed", "retried", "resumed", "completed"], kinds


def test_a_run_whose_provider_hangs_is_flagged_stalled_long_before_anything_expires(workers, fake_llm, monkeypatch):
    port = free_port()
    fake_llm.configure(latency_ms=50, latency_ms_by_text={"stuck here": 9000})
    workers("a", env={"DATAENGINE_STALL_MIN_S": "2", "DATAENGINE_WORKER_METRICS_PORT": str(port)})
    spec = audit_spec(10)
    spec["queries"][3] = "best apartments in austin stuck here"
    run_id = create(spec)
    app.send_task(AUDIT.task_name, kwargs={"run_id": str(run_id)})
    row = wait_for(lambda: (r := run_row(run_id))["stalled_at"] and r, timeout_s=15, what="the run flagged stalled")
    assert row["status"] == "running" and row["lease_owner"].startswith("a@")
    assert "running (stalled) at query 4/10" in said("runs", "--status", "running")
    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert value(samples, "dataengine_runs_stalled_total", kind="propertyaudit") == 1
    stalled = [e for e in json.loads(invoke("events", str(run_id), "--json"))["events"] if e["event"] == "stalled"]
    assert len(stalled) == 1 and "still heartbeats" in stalled[0]["detail"]
    monkeypatch.setenv("DATA_ENGINE_API_KEY", KEY)
    reload_settings()
    with TestClient(create_app()) as api:  # the fleet as the API's /metrics sees it
        fleet = parse_metrics(api.get("/metrics").text)
    assert value(fleet, "dataengine_runs", kind="propertyaudit", status="running") == 1
    assert value(fleet, "dataengine_runs_stalled_now", kind="propertyaudit") == 1
    row = wait_for(lambda: finished(run_id), timeout_s=30, what="the run to finish once the call answers")
    assert row["status"] == "completed" and row["stalled_at"] is None


class SentryStandIn:
    """A local HTTP server that takes what the Sentry SDK sends (envelopes, gzip or not) and keeps it raw."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received: list[bytes] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  http.server's name
                import gzip

                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                received.append(body)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.dsn = f"http://publickey0123@127.0.0.1:{self.server.server_port}/42"

    def events(self) -> list[dict[str, Any]]:
        """The error events received (an envelope is JSON lines: headers, then items)."""
        found = []
        for body in self.received:
            for line in body.splitlines():
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict) and item.get("level") == "error":
                    found.append(item)
        return found


@pytest.fixture
def sentry() -> Any:
    stand_in = SentryStandIn()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()


def test_errors_reach_sentry_tagged_with_their_run_and_without_a_secret(workers, fake_llm, sentry):
    secret = "sk-live-sentinel-7c1d9e2f4a"
    fake_llm.configure(reject_substrings=["poisoned"])
    workers("a", env={"SENTRY_DSN": sentry.dsn, "OPENAI_API_KEY": secret})
    spec = audit_spec(5)
    spec["queries"][2] = "best apartments in austin poisoned"
    run_id = create(spec)
    app.send_task(AUDIT.task_name, kwargs={"run_id": str(run_id)})
    assert wait_for(lambda: finished(run_id), timeout_s=60, what="the run to fail")["status"] == "failed"
    events = wait_for(lambda: [e for e in sentry.events() if e.get("tags", {}).get("run_id") == str(run_id)],
                      timeout_s=20, what="the failure to reach Sentry")
    tags = events[0]["tags"]
    assert tags["kind"] == "propertyaudit" and tags["worker"].startswith("a@") and tags["component"] == "worker"
    assert "query 3/5 failed" in json.dumps(events[0])
    everything = b"".join(sentry.received)
    assert secret.encode() not in everything and b"sk-live-sentinel" not in everything


@pytest.mark.slow  # a live API process
def test_the_api_writes_json_lines_too(engine_env, tmp_path):
    from liveapi import live_api

    log_path = tmp_path / "api.log"
    env = {**engine_env, "DATA_ENGINE_API_KEY": KEY, "DATAENGINE_LOG_FORMAT": "json", "DATAENGINE_LOG_LEVEL": "INFO"}
    with live_api(env, log_path=log_path) as base:
        request = urllib.request.Request(f"{base}/v1/runs", headers={"X-API-Key": KEY})
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310  the test's own loopback API
            assert answer.status == 200
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # nothing but JSON objects, one a line
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed), parsed
    assert any(p["logger"] == "uvicorn.access" and "GET /v1/runs" in p["message"] for p in parsed), parsed
