"""What leaves for Sentry: every secret of the settings redacted, the run's fields as tags."""

from __future__ import annotations

from conftest import reload_settings

from dataengine.infra.sentry import REDACTED, before_send


def test_an_event_is_tagged_with_its_run_and_scrubbed_of_every_secret(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-provider-secret-1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:db-password-2@127.0.0.1/app")
    monkeypatch.setenv("REDIS_URL", "redis://:redis-password-3@127.0.0.1:6379/0")
    monkeypatch.setenv("DATA_ENGINE_API_KEY", "api-key-secret-4")
    monkeypatch.setenv("SENTRY_DSN", "https://dsnkey5555@sentry.example/1")
    monkeypatch.setenv("DATAENGINE_SESSION_SECRET", "session-secret-6,old-session-secret-7")
    reload_settings()
    try:
        event = {
            "message": "calling with sk-provider-secret-1 failed",
            "extra": {"run_id": "r-1", "task_id": "t-1", "kind": "propertyaudit", "step": 7,
                      "url": "postgresql://app:db-password-2@127.0.0.1/app"},
            "exception": {"values": [{"value": "redis-password-3 refused; api-key-secret-4; dsnkey5555; "
                                                  "session-secret-6; old-session-secret-7"}]},
        }
        sent = before_send(event, {})
    finally:
        monkeypatch.undo()
        reload_settings()
    assert sent["tags"] == {"run_id": "r-1", "task_id": "t-1", "kind": "propertyaudit", "step": "7"}
    text = repr(sent)
    for secret in ("sk-provider-secret-1", "db-password-2", "redis-password-3", "api-key-secret-4", "dsnkey5555",
                   "session-secret-6", "old-session-secret-7"):
        assert secret not in text
    assert sent["message"] == f"calling with {REDACTED} failed"
