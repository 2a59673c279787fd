"""Workspaces ("bring your own key"): the CLI stores each provider key encrypted and never prints one;
a run names its workspace and its calls carry that workspace's key, URL, models and limits, in this
process and on real workers; a key the provider rejects fails the run at once; and no key shows in a
run row, a task result, a worker's log or a run's history."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import reload_settings, wait_for
from cryptography.fernet import Fernet
from helpers import audit_spec, create, finished, review_spec, run_row, said
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from dataengine import app
from dataengine.engine.events import history
from dataengine.engine.submitting import submit_run
from dataengine.infra.db import session_scope
from dataengine.infra.errors import ProviderKeyRejected, SpecInvalid
from dataengine.infra.logs import run_context
from dataengine.llm import calls as llm
from dataengine.llm import keyring, workspaces
from dataengine.llm.limits import ModelLimits
from dataengine.llm.workspaces import add_workspace
from dataengine.testing.standin_llm import key_digest
from tasks.knowledge import JOB as KNOWLEDGE
from tasks.propertyaudit import JOB as AUDIT
from tasks.reviewflow import JOB as REVIEWFLOW

pytestmark = pytest.mark.timeout(120)
KEY_A, KEY_B, KEY_C = "sk-acme-0123456789abcdef", "sk-bolt-0123456789abcdef", "sk-acme-replaced-0123456789"
REVOKED = "sk-stale-revoked-0123456789"
ENCRYPTION_KEY = Fernet.generate_key().decode()
ASK = [{"role": "user", "content": "best apartments in austin with a pool"}]


@pytest.fixture
def encrypted(db_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``DATAENGINE_ENCRYPTION_KEY`` set here; returned as the environment a worker needs."""
    monkeypatch.setenv("DATAENGINE_ENCRYPTION_KEY", ENCRYPTION_KEY)
    reload_settings()
    return {"DATAENGINE_ENCRYPTION_KEY": ENCRYPTION_KEY}


def use_encryption_keys(monkeypatch: pytest.MonkeyPatch, *keys: str) -> None:
    monkeypatch.setenv("DATAENGINE_ENCRYPTION_KEY", ",".join(keys))
    reload_settings()


def stored_tokens() -> list[str]:
    with session_scope() as session:
        return list(session.scalars(text("SELECT api_key_encrypted FROM workspaces")))


def test_the_cli_adds_lists_replaces_and_rotates_keys_stored_encrypted_and_never_printed(db_url, monkeypatch):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    use_encryption_keys(monkeypatch, old)
    said("workspaces", "add", "acme", "--name", "Acme Apartments", "--model", "chat=gpt-4o", "--daily-budget-usd",
         "25", "--rpm", "60", stdin=KEY_A + "\n")
    listed = said("workspaces", "list")
    assert "acme Acme Apartments key …" + KEY_A[-4:] in listed and KEY_A not in listed
    assert "chat=gpt-4o" in listed and "$25/day" in listed and '{"rpm": 60.0}' in listed
    assert KEY_A not in "".join(stored_tokens())
    assert "exists already" in said("workspaces", "add", "acme", stdin=KEY_B, code=2)
    assert "no provider key" in said("workspaces", "add", "empty", stdin="\n", code=2)
    assert "chat|eval|embedding=MODEL" in said("workspaces", "add", "odd", "--model", "vision=x", stdin=KEY_B, code=2)
    assert "no workspace 'nope'" in said("workspaces", "set-key", "nope", stdin=KEY_B, code=2)
    said("workspaces", "set-key", "acme", stdin=KEY_B)
    assert workspaces.lookup("acme").api_key() == KEY_B

    use_encryption_keys(monkeypatch, new, old)  # a new key first; the old one still decrypts
    assert "1 workspace key(s) re-encrypted" in said("workspaces", "rotate-key")
    use_encryption_keys(monkeypatch, new)  # the old one gone: the rotated key still reads
    assert workspaces.lookup("acme").api_key() == KEY_B
    assert "key …" + KEY_B[-4:] in said("workspaces", "list")
    use_encryption_keys(monkeypatch, old)  # a key the rotation left behind no longer opens it
    assert "key unreadable with DATAENGINE_ENCRYPTION_KEY" in said("workspaces", "list")
    assert "no longer in DATAENGINE_ENCRYPTION_KEY" in said("workspaces", "rotate-key", code=2)
    monkeypatch.delenv("DATAENGINE_ENCRYPTION_KEY")
    reload_settings()
    assert "DATAENGINE_ENCRYPTION_KEY is not set" in said("workspaces", "set-key", "acme", stdin=KEY_A, code=2)


def test_a_run_naming_an_unknown_workspace_is_refused_before_anything_is_written(db_url, tmp_path):
    sent: list[Any] = []
    refused = r"workspace_id: no workspace 'nope'; create it with dataengine workspaces add"
    for spec in ({**audit_spec(2), "workspace_id": "nope"}, {**audit_spec(2), "workspace_id": "nope", "dry_run": True}):
        with pytest.raises(SpecInvalid, match=refused):
            submit_run(job=AUDIT, spec=spec, send=lambda *args: sent.append(args))
    with pytest.raises(SpecInvalid, match=refused):
        create({**review_spec(2), "workspace_id": "nope"}, job=REVIEWFLOW)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text('{"property": {"name": "Cedar Flats"}, "queries": ["q"], "workspace_id": "nope"}')
    assert "no workspace 'nope'" in said("submit", "propertyaudit", str(spec_file), code=2)
    with session_scope() as session:
        assert session.scalar(text("SELECT count(*) FROM geo_runs")) == 0
        assert session.scalar(text("SELECT count(*) FROM reviewflow_analysis_runs")) == 0
    assert sent == []
    with pytest.raises(IntegrityError, match="fk_geo_runs_workspace_id_workspaces"), session_scope() as session:
        session.execute(text("INSERT INTO geo_runs (id, property_name, workspace_id) VALUES (:id, 'Cedar', 'nope')"),
                        {"id": uuid.uuid4()})  # a producer writing the row itself


def test_a_runs_calls_use_its_workspaces_key_and_url_and_a_replaced_key_within_seconds(engine_env, fake_llm,
                                                                                       encrypted, monkeypatch):
    fake_llm.configure(accepted_keys=[KEY_A, KEY_B])  # not the engine's own (sk-test)
    add_workspace(workspace_id="acme", name="Acme", api_key=KEY_A)
    add_workspace(workspace_id="bolt", name="Bolt", api_key=KEY_B, base_url=fake_llm.base_url + "/")
    with run_context(run_id=str(uuid.uuid4()), workspace_id="acme"):
        llm.chat(messages=ASK, model="gpt-4o-mini")
        assert str(llm.client().base_url) == fake_llm.base_url + "/"  # none of its own: the engine's
    with run_context(run_id=str(uuid.uuid4()), workspace_id="bolt"):
        llm.chat(messages=ASK, model="gpt-4o-mini")
        assert llm.client().api_key == KEY_B
    with pytest.raises(ProviderKeyRejected, match=r"the engine's \(OPENAI_API_KEY\) API key \(401\)"):
        llm.chat(messages=ASK, model="gpt-4o-mini")  # no workspace: the engine's key, which this provider refuses
    assert fake_llm.stats()["keys"] == {key_digest(KEY_A): 1, key_digest(KEY_B): 1, key_digest("sk-test"): 1}

    # Replaced by another process: this one uses the new key once its copy is LOOKUP_TTL_S old.
    monkeypatch.setattr(workspaces, "LOOKUP_TTL_S", 0.3)
    fake_llm.configure(accepted_keys=[KEY_C])
    with session_scope() as session:
        session.execute(text("UPDATE workspaces SET api_key_encrypted = :token WHERE id = 'acme'"),
                        {"token": keyring.encrypt(KEY_C)})
    time.sleep(0.4)  # past LOOKUP_TTL_S: the copy's age is the condition, and a sleep never ends early
    with run_context(run_id=str(uuid.uuid4()), workspace_id="acme"):
        llm.chat(messages=ASK, model="gpt-4o-mini")
    assert fake_llm.stats()["keys"][key_digest(KEY_C)] == 1
    with run_context(run_id=str(uuid.uuid4()), workspace_id="bolt"), \
            pytest.raises(ProviderKeyRejected, match=r"workspace 'bolt''s API key \(401\)"):
        llm.chat(messages=ASK, model="gpt-4o-mini")


def test_a_workspaces_models_budget_and_rate_limits_apply_to_its_runs_only(engine_env, encrypted):
    from dataengine.infra.settings import get_settings

    add_workspace(workspace_id="acme", name="Acme", api_key=KEY_A, daily_budget_usd="25",
                  models={"chat": "gpt-4o", "embedding": "text-embedding-3-large"},
                  rate_limits={"rpm": 60, "models": {"gpt-4o": {"rpm": 120, "tpm": 30000}}})
    s = get_settings()
    audit = SimpleNamespace(property_name="Cedar Flats", property_aliases=[], property_city=None, model=None,
                            workspace_id="acme")
    assert (AUDIT.prepare(audit).model, AUDIT.prepare(audit).eval_model) == ("gpt-4o", s.openai_eval_model)
    assert AUDIT.prepare(SimpleNamespace(**{**vars(audit), "model": "gpt-4.1-mini"})).model == "gpt-4.1-mini"
    assert AUDIT.prepare(SimpleNamespace(**{**vars(audit), "workspace_id": None})).model == s.openai_model
    assert REVIEWFLOW.prepare(audit).model == "gpt-4o"
    assert KNOWLEDGE.prepare(SimpleNamespace(property_id="p", model=None, workspace_id="acme")).model == \
        "text-embedding-3-large"
    assert workspaces.daily_budget("acme") == Decimal("25") and workspaces.daily_budget(None) is None

    assert workspaces.limits_of("gpt-4o|ws:acme") == ModelLimits(120, 30000)
    assert workspaces.limits_of("gpt-4o-mini|ws:acme") == ModelLimits(60, None)
    limiter = llm.limiter()
    limiter.pause("gpt-4o|ws:acme", 5)  # a 429 to this workspace's key pauses its calls, not the engine's
    assert limiter.paused_for("gpt-4o|ws:acme") > 4 and limiter.paused_for("gpt-4o") == 0


def test_runs_of_two_workspaces_on_a_real_worker_pay_each_with_their_own_key(workers, fake_llm, encrypted):
    fake_llm.configure(accepted_keys=[KEY_A, KEY_B], latency_ms=20)
    add_workspace(workspace_id="acme", name="Acme", api_key=KEY_A)
    add_workspace(workspace_id="bolt", name="Bolt", api_key=KEY_B)
    workers("a", env=encrypted)
    acme = create({**audit_spec(5, tag="acme"), "workspace_id": "acme"})
    bolt = create({**audit_spec(3, tag="bolt"), "workspace_id": "bolt"})
    for run_id in (acme, bolt):
        app.send_task(AUDIT.task_name, kwargs={"run_id": str(run_id)})
    for run_id in (acme, bolt):
        row = wait_for(lambda r=run_id: finished(r), timeout_s=60, what="both runs to finish")
        assert row["status"] == "completed", row["error_message"]
        assert row["workspace_id"] in ("acme", "bolt")
    # Two calls a query (its answer, its evaluation), each with its own workspace's key; none with the engine's.
    assert fake_llm.stats()["keys"] == {key_digest(KEY_A): 10, key_digest(KEY_B): 6}


def test_a_run_whose_workspace_key_is_rejected_fails_at_once_and_no_key_shows_anywhere(workers, fake_llm, encrypted):
    fake_llm.configure(accepted_keys=[KEY_A])  # this workspace's key was revoked at the provider
    add_workspace(workspace_id="stale", name="Stale", api_key=REVOKED)
    worker = workers("a", env=encrypted)
    run_id = create({**audit_spec(30), "workspace_id": "stale"})
    started = time.monotonic()
    result = app.send_task(AUDIT.task_name, kwargs={"run_id": str(run_id)})
    row = wait_for(lambda: finished(run_id), timeout_s=30, what="the run to end")
    assert time.monotonic() - started < 15
    assert row["status"] == "failed" and row["completed_steps"] == 0
    assert "workspace 'stale''s API key (401)" in row["error_message"], row["error_message"]
    # Only the steps in flight asked, once each: a 401 is not retried, nor is the run.
    assert fake_llm.stats()["keys"][key_digest(REVOKED)] <= 8
    result.get(timeout=30, propagate=False)
    with session_scope() as session:
        events = history(session, run_id)
    assert not {"step_failed", "handed_back", "retried"} & {e["event"] for e in events}
    shown = [repr(row), repr(result.result), str(result.traceback), worker.log_text(), repr(events)]
    for secret in (REVOKED, ENCRYPTION_KEY):
        assert not [text for text in shown if secret in text]
    assert "workspace 'stale'" in worker.log_text()


def test_a_workspace_whose_daily_budget_is_spent_pauses_its_runs_and_no_one_elses(workers, fake_llm, encrypted):
    """Its first calls spend the budget (a millionth of a dollar); its run pauses at the calls after them,
    while a run of the engine's own key on the same worker goes on to the end; raised, it goes on."""
    add_workspace(workspace_id="acme", name="Acme", api_key=KEY_A, daily_budget_usd="0.000001")
    workers("a", env={**encrypted, "DATAENGINE_BUDGET_RECHECK_S": "1"})
    paused, other = create({**audit_spec(3, tag="acme"), "workspace_id": "acme"}), create(audit_spec(3, tag="engine"))
    for run_id in (paused, other):
        app.send_task(AUDIT.task_name, kwargs={"run_id": str(run_id)})
    assert wait_for(lambda: finished(other), timeout_s=60, what="the engine's run")["status"] == "completed"
    row = wait_for(lambda: (r := run_row(paused))["error_message"] and r, timeout_s=30, what="acme's run to pause")
    assert row["status"] == "queued" and row["completed_steps"] < 3
    assert row["error_message"].startswith("paused: workspace 'acme''s daily budget of $0.000001 is spent")
    assert "no workspace 'nope'" in said("workspaces", "set-budget", "nope", "5", code=2)
    assert "above 0" in said("workspaces", "set-budget", "acme", "0", code=2)
    assert "has a daily budget of $5" in said("workspaces", "set-budget", "acme", "5")  # raised: it goes on
    row = wait_for(lambda: finished(paused), timeout_s=30, what="acme's run to go on once its budget is raised")
    assert row["status"] == "completed" and row["error_message"] is None
