"""PropertyAudit specs and settings are validated before anything is written, with clear messages."""

from __future__ import annotations

from decimal import Decimal

import pytest
from helpers import audit_spec

from dataengine.engine.runs import parse_run_id
from dataengine.engine.submitting import spec_digest, validate_spec
from dataengine.infra.errors import InvalidRunId, SpecInvalid
from dataengine.infra.settings import PLACEHOLDER_API_KEY, Settings
from tasks.propertyaudit import JOB


def test_a_valid_spec_is_normalised():
    spec, options = validate_spec(JOB, {**audit_spec(2, key=" order-7 "), "model": " gpt-4o ", "max_cost_usd": "2.5",
                                        "workspace_id": " acme "})
    assert spec.property.name == "Cedar Flats" and spec.model == "gpt-4o" and len(spec.queries) == 2
    assert options.idempotency_key == "order-7" and options.workspace_id == "acme" and not options.dry_run
    assert options.max_cost_usd == Decimal("2.5")


def _digest(**change: object) -> str:
    spec, options = validate_spec(JOB, {**audit_spec(2, key="k"), "max_cost_usd": 5, **change})
    return spec_digest(spec=spec, options=options)


def test_the_spec_digest_is_of_the_normalised_spec_and_the_options_that_change_the_run():
    same = _digest()
    assert len(same) == 64 and int(same, 16) >= 0
    spelled = {"aliases": ["Cedar Flats Austin "], "city": " Austin", "name": "Cedar Flats", "website": None}
    assert _digest(property=spelled, model=None, max_cost_usd="5.000", dry_run=True, idempotency_key="k2") == same
    others = [_digest(max_cost_usd=6), _digest(max_cost_usd=None), _digest(workspace_id="acme"), _digest(model="gpt-4o"),
              _digest(queries=["best apartments in austin q 1", "best apartments in austin q 0"])]
    assert len({same, *others}) == 6


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"property": {}}, "property.name: Field required"),
        ({"property": {"name": "  "}}, "property.name: String should have at least 1 character"),
        ({"queries": []}, "queries: List should have at least 1 item"),
        ({"queries": "best pool"}, "queries: Input should be a valid list"),
        ({"queries": ["ok", 7]}, "queries.1: Input should be a valid string"),
        ({"queries": [f"q{i}" for i in range(10_001)]}, "queries: at most 10000 queries per run, got 10001"),
        ({"queries": ["x" * 2001]}, "queries: query 0 is 2001 characters; the limit is 2000"),
        ({"urgency": "high"}, "urgency: Extra inputs are not permitted"),
        ({"priority": "urgent"}, "priority: must be one of high, normal, low, got 'urgent'"),
        ({"priority": 1}, "priority: must be one of high, normal, low, got '1'"),
        # PostgreSQL text cannot hold NUL: refused here, not with a raw DataError at insert time.
        ({"queries": ["ok", "pool\x00gym"]}, "queries.1: text must not contain NUL (\\x00) characters"),
        ({"property": {"name": "Cedar\x00"}}, "property.name: text must not contain NUL"),
        ({"idempotency_key": 7}, "idempotency_key: must be a non-empty string"),
        ({"idempotency_key": "k" * 201}, "idempotency_key: at most 200 characters"),
        ({"max_cost_usd": 0}, "max_cost_usd: must be above 0"),
        ({"max_cost_usd": -1}, "max_cost_usd: must be above 0"),
        ({"max_cost_usd": "five"}, "max_cost_usd: 'five' is not a number of US dollars"),
        ({"max_cost_usd": "NaN"}, "max_cost_usd: must be above 0"),
        ({"max_cost_usd": True}, "max_cost_usd: must be a number of US dollars"),
        ({"max_cost_usd": 1e12}, "max_cost_usd: must be above 0 and at most 99,999,999"),
        ({"workspace_id": ""}, "workspace_id: must be a workspace's id, 1 to 100 characters"),
        ({"workspace_id": 7}, "workspace_id: must be a workspace's id"),
        ({"dry_run": "yes"}, "dry_run: must be true or false"),
    ],
)
def test_a_bad_spec_gets_a_message_naming_the_field(change, message):
    with pytest.raises(SpecInvalid, match="The run spec is invalid") as err:
        validate_spec(JOB, {**audit_spec(2), **change})
    assert message in str(err.value)


def test_a_spec_that_is_not_an_object_is_refused():
    with pytest.raises(SpecInvalid, match="spec: must be a JSON object, got list"):
        validate_spec(JOB, ["best pool"])


def test_run_ids_must_be_uuids():
    assert str(parse_run_id("6f1b3e0b-5848-4d32-9659-c4c8bbf26beb")) == "6f1b3e0b-5848-4d32-9659-c4c8bbf26beb"
    for bad in ("", "42", None, 42, {"id": 1}):
        with pytest.raises(InvalidRunId, match="is not a UUID string"):
            parse_run_id(bad)


def test_production_refuses_placeholder_secrets_and_bad_timings():
    with pytest.raises(ValueError, match="OPENAI_API_KEY is the local placeholder"):
        Settings(environment="production", openai_api_key=PLACEHOLDER_API_KEY)
    with pytest.raises(ValueError, match="HEARTBEAT_INTERVAL_S must be shorter"):
        Settings(lease_s=1, heartbeat_interval_s=2)
    with pytest.raises(ValueError, match="DATA_ENGINE_API_KEY is a placeholder or shorter than 16"):
        Settings(environment="production", openai_api_key="sk-real", api_key="change-me")
    with pytest.raises(ValueError, match="FLOWER_BASIC_AUTH has the placeholder password 'change-me'"):
        Settings(environment="production", openai_api_key="sk-real", flower_basic_auth="ops:s3cret,admin:change-me")
    Settings(environment="production", openai_api_key="sk-real", api_key="k" * 32, flower_basic_auth="admin:s3cret")
    assert Settings(database_url="postgres://u@h/db").sqlalchemy_url == "postgresql+psycopg://u@h/db"


def test_session_secrets_are_a_list_none_blank_and_long_random_ones_in_production():
    assert Settings(session_secret=" new , old ").session_secret.get_secret_value() == "new,old"
    assert Settings(session_secret=" ").session_secret is None
    with pytest.raises(ValueError, match="DATAENGINE_SESSION_SECRET: secret 2 of 3 is empty") as refused:
        Settings(session_secret="first-secret,,third-secret")
    assert "first-secret" not in str(refused.value)
    good = "s" * 32
    for weak in ("change-me", f"{good},short"):
        with pytest.raises(ValueError, match="DATAENGINE_SESSION_SECRET has a placeholder or a secret shorter than 32"):
            Settings(environment="production", openai_api_key="sk-real", session_secret=weak)
    assert Settings(environment="production", openai_api_key="sk-real", session_secret=f"{good},{'o' * 40}")
    assert Settings(public_base_url="").public_base_url is None
    assert Settings(public_base_url="https://engine.example.com").public_base_url.scheme == "https"
    with pytest.raises(ValueError, match="public_base_url"):
        Settings(public_base_url="engine.example.com")


def test_a_rediss_url_verifies_the_servers_certificate_unless_it_says_otherwise():
    assert Settings(redis_url="rediss://:pw@cache:6380/0").redis_url == "rediss://:pw@cache:6380/0?ssl_cert_reqs=required"
    kept = "rediss://cache:6380/0?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem"
    assert Settings(redis_url=kept).redis_url == kept
    assert Settings(redis_url="redis://cache:6379/0").redis_url == "redis://cache:6379/0"


def test_the_api_key_never_shows_in_settings_output():
    settings = Settings(openai_api_key="sk-very-secret")
    assert "sk-very-secret" not in repr(settings) and "sk-very-secret" not in str(settings.model_dump())


def test_a_refused_setting_names_the_problem_and_no_secret():
    with pytest.raises(ValueError, match="HEARTBEAT_INTERVAL_S must be shorter") as refused:
        Settings(openai_api_key="sk-very-secret", api_key="api-very-secret", flower_basic_auth="ops:very-secret",
                 lease_s=1, heartbeat_interval_s=2)
    assert "very-secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reviews": []}, "reviews: List should have at least 1 item"),
        ({"reviews": [{"rating": 5}]}, "reviews.0.text: Field required"),
        ({"reviews": [{"text": "ok", "rating": 6}]}, "reviews.0.rating: Input should be less than or equal to 5"),
        ({"reviews": [{"text": "ok", "date": "last week"}]}, "reviews.0.date: Input should be a valid date"),
        ({"reviews": [{"text": "ok", "stars": 4}]}, "reviews.0.stars: Extra inputs are not permitted"),
        ({"reviews": [{"text": "x" * 10_001}]}, "reviews: review 0 is 10001 characters; the limit is 10000"),
        ({"reviews": [{"text": "ok"}] * 50_001}, "reviews: at most 50000 reviews per run, got 50001"),
        ({"reviews": [{"text": "bad\x00byte"}]}, "reviews.0.text: text must not contain NUL"),
    ],
)
def test_a_bad_reviewflow_spec_gets_a_message_naming_the_field(change, message):
    from helpers import review_spec

    from tasks.reviewflow import JOB as REVIEWFLOW

    with pytest.raises(SpecInvalid, match="The run spec is invalid") as err:
        validate_spec(REVIEWFLOW, {**review_spec(2), **change})
    assert message in str(err.value)


def test_a_valid_reviewflow_spec_becomes_a_run_and_its_reviews():
    from helpers import review_spec

    from tasks.reviewflow import JOB as REVIEWFLOW

    spec, options = validate_spec(REVIEWFLOW, review_spec(3, key="batch-1"))
    new = REVIEWFLOW.build(spec)
    assert options.idempotency_key == "batch-1" and new.values["total_reviews"] == 3 and len(new.steps) == 3
    assert new.steps[0]["review_text"].startswith("Great location") and str(new.steps[0]["review_date"]) == "2026-11-01"


def test_schedules_are_cron_expressions_or_seconds_and_bad_ones_are_named():
    from celery.schedules import crontab, schedule

    from dataengine.worker.schedules import parse_schedule

    nightly = parse_schedule("0 3 * * *")
    assert isinstance(nightly, crontab) and nightly.hour == {3} and nightly.minute == {0}
    assert isinstance(parse_schedule(" 90 "), schedule) and parse_schedule("90").run_every.total_seconds() == 90
    for bad, message in [("0 3 * *", "neither a number of seconds nor a five-field cron"),
                         ("61 3 * * *", "not a valid cron expression"), ("-5", "must be positive")]:
        with pytest.raises(ValueError, match=message):
            parse_schedule(bad)
    from tasks.knowledge.config import KnowledgeLimits

    with pytest.raises(ValueError, match="neither a number of seconds"):
        KnowledgeLimits(refresh_schedule="nightly")
    assert KnowledgeLimits(refresh_schedule="").refresh_schedule == ""


def test_a_job_naming_a_page_column_its_results_lack_is_refused_when_defined():
    from dataclasses import replace

    with pytest.raises(ValueError, match="job propertyaudit: page_columns names no result column: ranking"):
        replace(JOB, page_columns=("mentioned", "ranking"))


def test_a_command_under_refused_settings_says_why_without_a_trace(monkeypatch):
    from typer.testing import CliRunner

    from dataengine.cli.main import cli
    from dataengine.infra.settings import get_settings

    monkeypatch.setenv("DATAENGINE_ENVIRONMENT", "production")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-production")
    monkeypatch.setenv("DATA_ENGINE_API_KEY", "change-me")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["status"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert "error: the settings are refused" in result.output and "[type=value_error]" in result.output
    assert "Traceback" not in result.output and "change-me" not in result.output


def test_private_knowledge_urls_are_refused_in_production(monkeypatch):
    from conftest import reload_settings

    from tasks.knowledge.config import KnowledgeLimits

    monkeypatch.setenv("DATAENGINE_ENVIRONMENT", "production")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-a-real-looking-key-0123456789")
    reload_settings()
    try:
        assert KnowledgeLimits().allow_private_urls is False
        with pytest.raises(ValueError, match="never production"):
            KnowledgeLimits(allow_private_urls=True)
    finally:
        monkeypatch.undo()
        reload_settings()
