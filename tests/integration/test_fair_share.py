"""Workspaces that share the engine's key share its limit fairly: a workspace without a key of its own calls
with ``OPENAI_API_KEY`` under the engine's limits, and the fleet limiter splits the rate equally between
the workspaces asking, so one customer's backlog does not starve another's run."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import wait_for
from helpers import audit_spec, create, finished, said
from sqlalchemy import text

from dataengine import app
from dataengine.infra.db import session_scope
from dataengine.infra.errors import ProviderKeyRejected
from dataengine.infra.logs import run_context
from dataengine.llm import calls as llm
from dataengine.llm import workspaces
from dataengine.llm.workspaces import WorkspaceInvalid, add_workspace
from dataengine.testing.standin_llm import key_digest
from tasks.propertyaudit import JOB as AUDIT

pytestmark = pytest.mark.timeout(120)
ASK = [{"role": "user", "content": "best apartments in austin with a pool"}]


def test_a_workspace_on_the_engines_key_calls_with_it_under_the_engines_limits(engine_env, fake_llm):
    assert "its runs use the engine's key" in said("workspaces", "add", "shared", "--engine-key", "--name", "Shared")
    assert "key the engine's" in said("workspaces", "list")
    assert "need a provider key of its own" in said("workspaces", "add", "odd", "--engine-key", "--base-url",
                                                    "http://127.0.0.1:9", code=2)
    with pytest.raises(WorkspaceInvalid, match="need a provider key of its own"):
        add_workspace(workspace_id="odd", name="Odd", api_key=None, rate_limits={"rpm": 60})
    with run_context(run_id=str(uuid.uuid4()), workspace_id="shared"):
        llm.chat(messages=ASK, model="gpt-4o-mini")
        assert llm.client().api_key == "sk-test"  # the engine's
    assert workspaces.limit_name("gpt-4o-mini", "shared") == "gpt-4o-mini"  # the engine's limits, shared
    assert fake_llm.stats()["keys"] == {key_digest("sk-test"): 1}
    fake_llm.configure(accepted_keys=["sk-other"])  # the engine's key refused: it says whose key it is
    with run_context(run_id=str(uuid.uuid4()), workspace_id="shared", step=0), \
            pytest.raises(ProviderKeyRejected, match=r"the engine's \(OPENAI_API_KEY\)"):
        llm.chat(messages=ASK, model="gpt-4o-mini")
    assert "0 workspace key(s) re-encrypted" in said("workspaces", "rotate-key")  # nothing of its own to rotate


def completed_steps(run_ids: list[uuid.UUID]) -> int:
    with session_scope() as session:
        return session.scalar(text("SELECT sum(completed_steps) FROM geo_runs WHERE id = ANY(:ids)"),
                              {"ids": run_ids}) or 0


def test_a_small_workspaces_run_is_not_starved_by_a_big_ones_backlog_on_the_engines_key(workers, fake_llm):
    """Big has 16 runs of 50 queries waiting at a limit of 20 calls a second (hundreds of callers), small one
    run of 3 queries (6 calls) sent after them: with the rate split between the two workspaces, small's run
    ends after about a dozen of the limiter's slots; split by caller, its 3 callers among big's hundreds
    would each wait for a hundred slots and more."""
    fake_llm.configure(latency_ms=200)
    for ws in ("big", "small"):
        add_workspace(workspace_id=ws, name=ws, api_key=None)
    workers("a", concurrency=1, env={"DATAENGINE_LLM_RPM": "1200"})
    big = [create({**audit_spec(50, tag=f"big{i}"), "workspace_id": "big"}) for i in range(16)]
    for run_id in big:
        app.send_task(AUDIT.task_name, kwargs={"run_id": str(run_id)})
    wait_for(lambda: completed_steps(big) >= 5, timeout_s=60, what="big's runs to be under way")
    before = completed_steps(big)
    small = create({**audit_spec(3, tag="small"), "workspace_id": "small"})
    app.send_task(AUDIT.task_name, kwargs={"run_id": str(small)})
    row: dict[str, Any] = wait_for(lambda: finished(small), timeout_s=90, what="small's run to end")
    assert row["status"] == "completed", row["error_message"]
    assert row["workspace_id"] == "small"
    meanwhile = completed_steps(big) - before
    assert meanwhile <= 20, f"big's runs did {meanwhile} steps while small's 3 were done"
