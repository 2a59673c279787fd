"""Priority tiers with real workers: a high run is taken from the broker before a backlog of normal
runs, and keeps its tier when its worker is SIGKILLed and the sweeper sends it again."""

from __future__ import annotations

from conftest import wait_for
from helpers import audit_spec, finished, run_row

from dataengine.engine.submitting import submit_run
from dataengine.worker.app import enqueue
from tasks.propertyaudit import JOB

ONE_RUN_AT_A_TIME = {"DATAENGINE_RUNS_PER_PROCESS": "1", "DATAENGINE_STEP_CONCURRENCY": "2"}


def submit(n: int, tag: str, **options: str) -> str:
    return submit_run(job=JOB, spec={**audit_spec(n, tag=tag), **options}, send=enqueue)


def test_a_high_run_goes_before_the_normal_backlog_and_again_after_its_worker_is_sigkilled(workers, fake_llm):
    fake_llm.configure(latency_ms=100)
    a = workers("a", env=ONE_RUN_AT_A_TIME)
    backlog = [submit(4, f"n{i}") for i in range(8)]
    urgent = submit(40, "h", priority="high")
    assert run_row(urgent)["priority"] == "high"
    wait_for(lambda: run_row(urgent)["completed_steps"] >= 4, timeout_s=60, what="the high run to start")
    started = [r for r in backlog if run_row(r)["started_at"] is not None]
    # One process holding one run: at most the run it held, the one waiting for room and the one its main
    # process had taken came before; the other five normal runs wait behind the high one.
    assert len(started) <= 3, f"{len(started)} normal runs started before the high one"
    a.kill_main()
    workers("b", env=ONE_RUN_AT_A_TIME)
    row = wait_for(lambda: finished(urgent), timeout_s=90, what="the high run to finish on worker b")
    assert row["status"] == "completed" and row["fencing_token"] >= 2  # taken back from a, resumed on b
    waiting = [r for r in backlog if (x := run_row(r))["started_at"] is None or x["started_at"] > row["finished_at"]]
    # Sent again to the high queue: b took it before the normal runs that never started on a.
    assert len(waiting) >= 3, "the high run lost its place after the takeover"
    wait_for(lambda: all(finished(r) for r in backlog), timeout_s=120, what="the backlog to finish")


def test_the_cli_and_the_api_take_a_priority_and_refuse_an_unknown_one(db_url, tmp_path, monkeypatch):
    import json

    from conftest import reload_settings
    from fastapi.testclient import TestClient
    from helpers import said

    from dataengine.web.app import create_app

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(audit_spec(2, tag="cli")))
    run_id = said("submit", "propertyaudit", str(spec_file), "--priority", "low").strip()
    assert run_row(run_id)["priority"] == "low"
    refused = said("submit", "propertyaudit", str(spec_file), "--priority", "urgent", code=2)
    assert "priority: must be one of high, normal, low, got 'urgent'" in refused
    monkeypatch.setenv("DATA_ENGINE_API_KEY", "k" * 32)
    reload_settings()
    with TestClient(create_app()) as api:
        headers = {"X-API-Key": "k" * 32}
        made = api.post("/v1/propertyaudit/runs", json={**audit_spec(2, tag="api"), "priority": "high"}, headers=headers)
        assert made.status_code == 202, made.text
        assert api.get(f"/v1/runs/{made.json()['run_id']}", headers=headers).json()["priority"] == "high"
        bad = api.post("/v1/propertyaudit/runs", json={**audit_spec(2, tag="bad"), "priority": "urgent"}, headers=headers)
        assert bad.status_code == 422 and "priority" in bad.text
