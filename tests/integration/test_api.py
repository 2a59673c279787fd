"""The HTTP API in this process (FastAPI's test client) against the test's database and Redis:
auth, starting runs of every job (by id, by spec, once per idempotency key), reading, listing,
cancelling and retrying runs, and the errors a web app reads (401, 404, 409, 413, 422, 503, 500)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from conftest import API_AUTH as AUTH
from conftest import API_KEY as KEY
from conftest import reload_settings
from fastapi.testclient import TestClient
from helpers import answered, audit_spec, create_audit, record, review_spec, run_row
from sqlalchemy import text

from dataengine.engine.runloop import execute_run
from dataengine.infra.db import session_scope
from dataengine.web.app import create_app
from dataengine.web.keys import create_key, revoke_key
from dataengine.worker.app import still_queued
from tasks.propertyaudit import JOB as AUDIT

pytestmark = pytest.mark.timeout(60)


def queued(run_id: Any) -> bool:
    return str(run_id) in still_queued({str(run_id)})


def test_health_says_what_answers_and_names_no_secret(api, engine_env):
    answer = api.get("/health")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "healthy" and body["version"]
    deps = body["dependencies"]
    assert deps["database"]["reachable"] and deps["database"]["latency_ms"] >= 0
    assert deps["redis"]["reachable"] and deps["openai"] == {"configured": True}
    assert deps["auth"] == {"api_key_configured": True}
    for secret in (KEY, "sk-test", engine_env["DATABASE_URL"], "127.0.0.1", "postgres"):
        assert secret not in answer.text


def test_health_is_503_unhealthy_when_the_database_is_away(api, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:9/nowhere")
    reload_settings()
    answer = api.get("/health")
    assert answer.status_code == 503
    deps = answer.json()["dependencies"]
    assert answer.json()["status"] == "unhealthy" and deps["database"] == {
        "configured": True, "reachable": False, "latency_ms": None}
    assert deps["redis"]["reachable"]


def test_a_missing_or_wrong_key_gets_the_same_401_and_a_right_one_gets_in(api):
    missing = api.get("/v1/runs")
    wrong = api.get("/v1/runs", headers={"Authorization": "Bearer nope"})
    wrong_header = api.get("/v1/runs", headers={"X-API-Key": KEY + "x"})
    assert missing.status_code == wrong.status_code == wrong_header.status_code == 401
    assert missing.json() == wrong.json() == wrong_header.json() == {"detail": "missing or invalid API key"}
    assert api.get("/v1/runs", headers=AUTH).status_code == 200
    assert api.get("/v1/runs", headers={"X-API-Key": KEY}).status_code == 200
    assert api.get("/openapi.json").status_code == 200 and api.get("/health").status_code == 200


def test_named_keys_work_until_revoked_and_are_stored_only_hashed(api):
    key = create_key("vercel-preview")
    assert api.get("/v1/runs", headers={"X-API-Key": key}).status_code == 200
    with session_scope() as session:
        stored = session.execute(text("SELECT * FROM api_keys")).mappings().one()
    assert key not in json.dumps(dict(stored), default=str) and stored["last_used_at"] is not None
    assert revoke_key("vercel-preview")
    assert api.get("/v1/runs", headers={"X-API-Key": key}).status_code == 401


def test_a_spec_starts_a_run_once_per_idempotency_key(api):
    first = api.post("/v1/propertyaudit/runs", json=audit_spec(3), headers={**AUTH, "Idempotency-Key": "k-1"})
    assert first.status_code == 202, first.text
    run_id = first.json()["run_id"]
    assert first.json()["status"] == "queued" and first.json()["status_url"].endswith(f"/v1/runs/{run_id}")
    assert queued(run_id) and run_row(run_id)["total_steps"] == 3
    again = api.post("/v1/propertyaudit/runs", json=audit_spec(3), headers={**AUTH, "Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.json()["run_id"] == run_id
    by_field = api.post("/v1/reviewflow/runs", json=review_spec(2, key="k-2"), headers=AUTH)
    assert by_field.status_code == 202
    assert api.post("/v1/reviewflow/runs", json=review_spec(2, key="k-2"), headers=AUTH).json()["run_id"] == \
        by_field.json()["run_id"]


def _count_runs() -> tuple[int, int]:
    with session_scope() as session:
        return session.execute(text("SELECT (SELECT count(*) FROM geo_runs), (SELECT count(*) FROM geo_queries)")).one()


def _reordered(value: Any) -> Any:
    """The same JSON with every object's keys in reverse order."""
    return {k: _reordered(value[k]) for k in reversed(value)} if isinstance(value, dict) else value


def test_the_same_idempotency_key_with_another_spec_is_409_and_creates_nothing(api):
    key = {**AUTH, "Idempotency-Key": "k1"}
    spec = {**audit_spec(2), "max_cost_usd": 5}
    first = api.post("/v1/propertyaudit/runs", json=spec, headers=key)
    assert first.status_code == 202, first.text
    run_id = first.json()["run_id"]
    # Key order, whitespace, "5.0" for 5 and a default spelled out make no other spec.
    same = json.dumps(_reordered({**spec, "max_cost_usd": "5.0", "model": None}), indent=4)
    again = api.post("/v1/propertyaudit/runs", content=same, headers={**key, "Content-Type": "application/json"})
    assert again.status_code == 202 and again.json()["run_id"] == run_id, again.text
    other = {**audit_spec(3, name="Elm Court"), "max_cost_usd": 2}
    for body in (other, {**spec, "max_cost_usd": 6}, {**spec, "queries": spec["queries"][:1]}):
        refused = api.post("/v1/propertyaudit/runs", json=body, headers=key)
        assert refused.status_code == 409, refused.text
        assert refused.json() == {"detail": f"idempotency key 'k1' was used with a different spec (run {run_id}); "
                                            "use a new key"}
    assert _count_runs() == (1, 2) and run_row(run_id)["max_cost_usd"] == 5
    by_field = api.post("/v1/reviewflow/runs", json=review_spec(2, key="k2"), headers=AUTH)
    assert by_field.status_code == 202
    assert api.post("/v1/reviewflow/runs", json=review_spec(3, key="k2"), headers=AUTH).status_code == 409
    with session_scope() as session:  # a run made before digests were stored keeps the old answer
        session.execute(text("UPDATE geo_runs SET spec_digest = NULL"))
    assert api.post("/v1/propertyaudit/runs", json=other, headers=key).json()["run_id"] == run_id


def test_a_run_the_web_app_created_itself_is_started_by_id_and_an_unknown_one_is_404(api):
    run_id = create_audit(2)
    answer = api.post("/v1/propertyaudit/runs", json={"run_id": str(run_id)}, headers=AUTH)
    assert answer.status_code == 202 and answer.json()["run_id"] == str(run_id) and queued(run_id)
    unknown = uuid.uuid4()
    missing = api.post("/v1/propertyaudit/runs", json={"run_id": str(unknown)}, headers=AUTH)
    assert missing.status_code == 404
    assert missing.json() == {"detail": f"No PropertyAudit run with id {unknown} exists: "
                                        "create the run row first, then send its id."}
    other_kind = api.post("/v1/reviewflow/runs", json={"run_id": str(run_id)}, headers=AUTH)
    assert other_kind.status_code == 404


@pytest.mark.parametrize(("body", "named"), [
    ({"property": {"name": "x"}}, "queries"),
    ({"property": {}, "queries": ["a"]}, "name"),
    ({"property": {"name": "x"}, "queries": ["a"], "colour": "red"}, "colour"),
    ({"property": {"name": "x\u0000"}, "queries": ["a"]}, "NUL"),
    ({"run_id": "not-a-uuid"}, "run_id"),
    ([1, 2], "body"),
])
def test_bad_input_is_422_naming_the_field_and_creates_nothing(api, body, named):
    answer = api.post("/v1/propertyaudit/runs", json=body, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert named in json.dumps(answer.json()["detail"])
    assert api.get("/v1/runs", headers=AUTH).json()["runs"] == []


def test_a_body_over_the_limit_is_413_from_its_declared_length_or_as_it_streams(api, monkeypatch):
    monkeypatch.setenv("DATAENGINE_API_MAX_BODY_BYTES", "2048")
    reload_settings()
    with TestClient(create_app(), raise_server_exceptions=False) as small:
        big = audit_spec(200)
        declared = small.post("/v1/propertyaudit/runs", json=big, headers=AUTH)
        assert declared.status_code == 413 and "2048" in declared.json()["detail"]
        streamed = small.post("/v1/propertyaudit/runs", headers={**AUTH, "Content-Type": "application/json"},
                              content=iter([json.dumps(big).encode()[i:i + 500] for i in range(0, 12000, 500)]))
        assert streamed.status_code == 413
        assert small.post("/v1/propertyaudit/runs", json=audit_spec(2), headers=AUTH).status_code == 202


def test_a_run_of_any_kind_reads_by_id_and_lists_newest_first_a_page_at_a_time(api):
    made = [api.post("/v1/propertyaudit/runs", json=audit_spec(2, tag=str(i)), headers=AUTH).json()["run_id"]
            for i in range(3)]
    made += [api.post("/v1/reviewflow/runs", json=review_spec(2, tag=str(i)), headers=AUTH).json()["run_id"]
             for i in range(2)]
    one = api.get(f"/v1/runs/{made[3]}", headers=AUTH).json()
    assert one["kind"] == "reviewflow" and one["status"] == "queued" and one["total_steps"] == 2
    assert {"progress_pct", "current_query_index", "eta_s", "cost_usd", "summary", "error_message"} <= set(one)
    seen, cursor = [], None
    while True:
        page = api.get("/v1/runs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=AUTH).json()
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    kinds = api.get("/v1/runs", params={"kind": "reviewflow"}, headers=AUTH).json()["runs"]
    assert [r["id"] for r in kinds] == list(reversed(made[3:]))
    assert api.get("/v1/runs", params={"kind": "nope"}, headers=AUTH).status_code == 422
    assert api.get("/v1/runs", params={"cursor": "garbage"}, headers=AUTH).status_code == 422
    assert api.get(f"/v1/runs/{uuid.uuid4()}", headers=AUTH).status_code == 404


def test_cancel_stops_a_queued_run_and_a_finished_run_says_409(api):
    run_id = create_audit(2)
    answer = api.post(f"/v1/runs/{run_id}/cancel", headers=AUTH)
    assert answer.status_code == 202 and answer.json()["status"] == "cancelled"
    again = api.post(f"/v1/runs/{run_id}/cancel", headers=AUTH)
    assert again.status_code == 409 and again.json() == {"detail": "run is already cancelled"}


def test_retry_resumes_a_failed_run_from_its_checkpoint_not_from_step_zero(api, fake_llm):
    from helpers import claim

    run_id = create_audit(4)
    c = claim(run_id)
    record(c, [0, 1], next_index=2)
    with session_scope() as session:
        session.execute(text("UPDATE geo_runs SET status = 'failed', error_message = 'query 3/4 failed: boom',"
                             " finished_at = now(), lease_owner = NULL WHERE id = :id"), {"id": run_id})
    assert api.post(f"/v1/runs/{create_audit(1)}/retry", headers=AUTH).status_code == 409  # queued: nothing to retry
    answer = api.post(f"/v1/runs/{run_id}/retry", headers=AUTH)
    assert answer.status_code == 202 and answer.json()["status"] == "queued" and queued(run_id)
    row = run_row(run_id)
    assert row["error_message"] is None and row["current_query_index"] == 2 and row["finished_at"] is None
    assert execute_run(job=AUDIT, run_id=str(run_id), worker_id="w/2", task_id=None).status == "completed"
    questions = [f"best apartments in austin q {i}" for i in range(4)]
    assert [answered(fake_llm, q) for q in questions] == [0, 0, 1, 1]


def test_knowledge_refresh_starts_one_run_per_property_and_returns_the_running_one_after(api, monkeypatch):
    body = {"property_id": "p-1", "sources": [{"text": "Quiet hours start at 10 pm.", "title": "Rules"}]}
    first = api.post("/v1/knowledge/refresh", json=body, headers=AUTH)
    assert first.status_code == 202, first.text
    assert first.json()["created"] == 1 and queued(first.json()["run_id"])
    again = api.post("/v1/knowledge/refresh", json={"property_id": "p-1"}, headers=AUTH).json()
    assert again["created"] == 0 and again["run_ids"] == [first.json()["run_id"]]
    assert api.post("/v1/knowledge/refresh", json={"sources": []}, headers=AUTH).status_code == 422


def test_the_database_away_is_503_and_an_unexpected_error_500_without_a_trace(api, monkeypatch):
    import dataengine.web.runs_api as runs_api

    def boom(run_id: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(runs_api, "find_run", boom)
    answer = api.get(f"/v1/runs/{uuid.uuid4()}", headers=AUTH)
    assert answer.status_code == 500 and answer.json() == {"detail": "internal error (logged by the API)"}
    monkeypatch.undo()
    monkeypatch.setenv("DATA_ENGINE_API_KEY", KEY)
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:9/nowhere")
    reload_settings()
    down = api.get(f"/v1/runs/{uuid.uuid4()}", headers=AUTH)
    assert down.status_code == 503 and "database is unavailable" in down.json()["detail"]


def test_the_api_refuses_to_start_in_production_without_a_key(engine_env, monkeypatch):
    monkeypatch.delenv("DATA_ENGINE_API_KEY", raising=False)
    monkeypatch.setenv("DATAENGINE_ENVIRONMENT", "production")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-looking")
    reload_settings()
    with pytest.raises(Exception, match="refuses to start in production with no API key"):
        with TestClient(create_app()):
            pass
    reload_settings()


def test_api_keys_from_the_command_line_are_shown_once_listed_without_the_key_and_revoked(api):
    from typer.testing import CliRunner

    from dataengine.cli.main import cli

    made = CliRunner().invoke(cli, ["api-keys", "create", "nextjs-prod"])
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]
    assert key.startswith("de_") and api.get("/v1/runs", headers={"X-API-Key": key}).status_code == 200
    listed = CliRunner().invoke(cli, ["api-keys", "list"]).output
    assert "nextjs-prod" in listed and key[:8] in listed and key not in listed and "active" in listed
    twice = CliRunner().invoke(cli, ["api-keys", "create", "nextjs-prod"])
    assert twice.exit_code == 2 and "exists" in twice.output
    assert CliRunner().invoke(cli, ["api-keys", "revoke", "nextjs-prod"]).exit_code == 0
    assert api.get("/v1/runs", headers={"X-API-Key": key}).status_code == 401
    again = CliRunner().invoke(cli, ["api-keys", "revoke", "nextjs-prod"])
    assert again.exit_code == 2 and "no active API key named 'nextjs-prod'" in again.output
