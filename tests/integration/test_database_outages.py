"""Database outages are not dead workers: runs wait them out, nothing is re-asked, nobody is
charged a loss, and a task whose run had to be handed back says so instead of failing.

The database is reached through a loopback TCP proxy that the tests cut (every connection
dropped, new ones refused) and restore: what a restart, a failover or a partition looks like.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import reload_settings, wait_for
from helpers import answered, audit_spec, create_audit, run_row
from sqlalchemy.engine import make_url
from tcpproxy import TcpProxy

from dataengine.engine.runloop import execute_run
from dataengine.engine.sweeper import Sweeper
from tasks.propertyaudit import JOB

OUTAGE_S = 5.0  # longer than the 3 s lease


@pytest.fixture
def proxy(db_url: str) -> Iterator[TcpProxy]:
    url = make_url(db_url)
    p = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    yield p
    p.close()


def through(proxy: TcpProxy, db_url: str) -> str:
    return make_url(db_url).set(port=proxy.port).render_as_string(hide_password=False)


def test_a_run_and_the_sweeper_ride_out_a_database_outage_longer_than_the_lease(db_url, proxy, fake_llm, monkeypatch):
    fake_llm.configure(latency_ms=100)
    run_id = create_audit(30)
    monkeypatch.setenv("DATABASE_URL", through(proxy, db_url))
    monkeypatch.setenv("DATAENGINE_SWEEP_INTERVAL_S", "0.1")  # the sweeper sees the database back first
    reload_settings()
    sweeper = Sweeper(send=lambda name, kwargs, queue=None: None)
    sweeper.start()
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(execute_run(job=JOB, run_id=run_id, worker_id="w/1", task_id=None))
    )
    worker.start()
    wait_for(lambda: run_row(run_id)["completed_steps"] >= 4, timeout_s=30, what="4 checkpointed queries")
    proxy.cut()
    time.sleep(OUTAGE_S)  # the outage itself
    proxy.restore()
    worker.join(timeout=60)
    sweeper.stopped.set()
    assert outcome and outcome[0].status == "completed", outcome
    row = run_row(run_id)
    assert row["fencing_token"] == 1, "the run was taken away from a live worker"
    assert row["step_losses"] == {} and row["completed_steps"] == 30
    assert all(answered(fake_llm, q) == 1 for q in audit_spec(30)["queries"])  # nothing paid twice


def _outage_during_a_worker_run(workers, fake_llm, proxy, db_url, env: dict[str, str]) -> tuple[Any, Any, Any]:
    from dataengine import app

    fake_llm.configure(latency_ms=100)
    worker = workers("a", env={"DATABASE_URL": through(proxy, db_url), "DATAENGINE_DB_RETRY_LIMIT_S": "1.5", **env})
    run_id = create_audit(30)
    task = app.send_task(JOB.task_name, kwargs={"run_id": str(run_id)})
    wait_for(lambda: run_row(run_id)["completed_steps"] >= 4, timeout_s=30, what="4 checkpointed queries")
    proxy.cut()
    time.sleep(OUTAGE_S)  # the outage itself
    proxy.restore()
    return worker, task, run_id


def test_a_task_whose_run_outlasted_the_database_retries_and_completes(workers, fake_llm, proxy, db_url):
    worker, task, run_id = _outage_during_a_worker_run(workers, fake_llm, proxy, db_url, {})
    result = task.get(timeout=90)
    assert result["status"] == "completed" and task.state == "SUCCESS"
    assert "DatabaseUnavailable" in worker.log_text() and "Retry in" in worker.log_text()
    assert run_row(run_id)["status"] == "completed"


def test_a_task_out_of_retries_says_the_run_was_handed_back_not_that_it_failed(workers, fake_llm, proxy, db_url):
    _, task, run_id = _outage_during_a_worker_run(
        workers, fake_llm, proxy, db_url, {"DATAENGINE_TASK_MAX_RETRIES": "0"}
    )
    result = task.get(timeout=60)
    assert task.state == "SUCCESS" and result["status"] == "running"
    assert "handed back" in result["detail"] and "database" in result["detail"]
    # The sweeper (in the worker, through the same proxy) resumes it once the database is back.
    row = wait_for(lambda: (r := run_row(run_id))["status"] == "completed" and r, timeout_s=60,
                   what="the run to be resumed and completed")
    assert row["completed_steps"] == 30


def test_a_step_that_reads_the_database_during_an_outage_waits_for_it_and_keeps_its_run(db_url, proxy, fake_llm,
                                                                                          monkeypatch):
    """Knowledge Refresh reads a source's stored chunks after fetching it. In CI a refresh met the database
    away at that moment: the step failed, the run was released and another worker took it over. The read
    now waits for the database as a checkpoint does; the run stays with its worker."""
    from contextlib import contextmanager

    from knowledgeserver import KnowledgeSite

    from tasks.knowledge import JOB as REFRESH
    from tasks.knowledge import step
    from tasks.knowledge.spec import start_runs

    monkeypatch.setenv("DATAENGINE_KNOWLEDGE_ALLOW_PRIVATE_URLS", "true")
    fetching, cut = threading.Event(), threading.Event()
    failures: list[BaseException] = []
    real_fetch, real_scope = step.fetch, step.session_scope

    def fetch_once_cut(*args: Any, **kwargs: Any) -> Any:
        fetching.set()
        cut.wait(timeout=30)
        return real_fetch(*args, **kwargs)

    @contextmanager
    def watched_scope() -> Iterator[Any]:
        try:
            with real_scope() as session:
                yield session
        except Exception as exc:
            failures.append(exc)
            raise

    with KnowledgeSite() as site:
        reload_settings()
        [(run_id, _)] = start_runs(property_id="outage-towers", sources=[{"url": site.url("/unchanged")}])
        monkeypatch.setenv("DATABASE_URL", through(proxy, db_url))
        reload_settings()
        monkeypatch.setattr(step, "fetch", fetch_once_cut)
        monkeypatch.setattr(step, "session_scope", watched_scope)
        outcome: list[Any] = []
        worker = threading.Thread(target=lambda: outcome.append(
            execute_run(job=REFRESH, run_id=str(run_id), worker_id="w/1", task_id=None)))
        worker.start()
        wait_for(fetching.is_set, timeout_s=30, what="the source's fetch to start")
        proxy.cut()
        cut.set()
        wait_for(lambda: failures, timeout_s=30, what="the step's read to meet the outage")
        proxy.restore()
        worker.join(timeout=60)
    assert outcome and outcome[0].status == "completed", outcome
    row = run_row(run_id, job=REFRESH)
    assert row["fencing_token"] == 1 and row["completed_steps"] == 1, "the run left its worker"
    assert row["summary"]["sources_fetched"] == 1
