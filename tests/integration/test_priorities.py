"""Priority tiers at the faces: the CLI and the API take a run's tier and refuse an unknown one."""

from __future__ import annotations

from helpers import audit_spec, run_row


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
