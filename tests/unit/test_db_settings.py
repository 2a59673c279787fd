"""The engine's connection arguments: pooler mode, session limits and keepalives, from settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dataengine.infra.db import connect_args, session_limits, transaction_pooler
from dataengine.infra.settings import get_settings

DIRECT = "postgresql+psycopg://postgres@127.0.0.1:5432/dataengine"
SUPABASE = "postgresql+psycopg://postgres.abc:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("DATAENGINE_DB_POOLER", "DATAENGINE_DB_STATEMENT_TIMEOUT_S", "DATAENGINE_DB_LOCK_TIMEOUT_S",
                 "DATAENGINE_DB_IDLE_IN_TRANSACTION_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def _set(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def test_direct_connections_carry_the_limits_and_keepalives_as_startup_options():
    args = connect_args(DIRECT)
    assert "prepare_threshold" not in args
    assert args["keepalives"] == 1 and args["keepalives_idle"] == 10 and args["keepalives_count"] == 3
    assert args["options"].split(" -c ")[-3:] == [
        "statement_timeout=30000", "lock_timeout=10000", "idle_in_transaction_session_timeout=6000",
    ]
    assert "-c tcp_keepalives_idle=10" in args["options"]


def test_options_already_in_the_url_are_kept():
    args = connect_args(DIRECT + "?options=-c%20search_path%3Dapp")
    assert args["options"].startswith("-c search_path=app -c ")


def test_migrations_get_no_statement_or_lock_limits():
    assert "timeout" not in connect_args(DIRECT, limits=False)["options"].replace("tcp_keepalives", "")


def test_supabases_pooler_port_means_transaction_mode_unless_told_otherwise(fresh_settings):
    assert transaction_pooler(SUPABASE) and not transaction_pooler(DIRECT)
    args = connect_args(SUPABASE)
    assert args["prepare_threshold"] is None and "options" not in args and args["keepalives"] == 1
    _set(fresh_settings, DATAENGINE_DB_POOLER="none")
    assert not transaction_pooler(SUPABASE)
    _set(fresh_settings, DATAENGINE_DB_POOLER="transaction")
    assert transaction_pooler(DIRECT) and connect_args(DIRECT)["prepare_threshold"] is None


def test_a_zero_limit_is_off(fresh_settings):
    _set(fresh_settings, DATAENGINE_DB_LOCK_TIMEOUT_S="0", DATAENGINE_DB_IDLE_IN_TRANSACTION_TIMEOUT_S="1.5")
    assert session_limits(get_settings()) == {
        "statement_timeout": "30000", "idle_in_transaction_session_timeout": "1500",
    }
