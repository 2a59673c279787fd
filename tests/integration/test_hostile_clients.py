"""The HTTP API against a hostile client (issue 22): no request without a key costs memory, labels
that come from a request stay bounded, every input that fails validation is a short 422 naming the
field (never a 500), URLs are never built from the ``Host`` header, and every answer says
``nosniff``. In-process (FastAPI's test client) where the answer is what matters; against a real
``dataengine api`` process where memory and the event loop are."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import API_AUTH as AUTH
from conftest import API_KEY, reload_settings, wait_for
from fastapi.testclient import TestClient
from helpers import audit_spec
from liveapi import APIBase, live_api, rss_bytes
from sqlalchemy import text

from dataengine.infra.db import session_scope
from dataengine.web.app import create_app

pytestmark = pytest.mark.timeout(90)
MIB = 1024 * 1024


def problem_text(answer: httpx.Response) -> str:
    return json.dumps(answer.json()["detail"])


# Requests without a key ----------------------------------------------------------------------------


def test_the_key_is_checked_before_a_byte_of_the_body_is_read(api):
    read: list[int] = []

    def body() -> Iterator[bytes]:
        yield b"["
        for _ in range(1000):
            read.append(1)
            yield b"{}," * 100
        yield b"{}]"

    answer = api.post("/v1/propertyaudit/runs", content=body(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert len(read) <= 1, f"{len(read)} chunks of the body were read before the 401"
    wrong = api.post("/v1/propertyaudit/runs", content=body(), headers={"X-API-Key": "wrong-key-0123456789"})
    assert wrong.status_code == 401 and wrong.json() == answer.json()


@pytest.fixture
def live(engine_env: dict[str, str], tmp_path: Path) -> Iterator[APIBase]:
    with live_api({**engine_env, "DATA_ENGINE_API_KEY": API_KEY}, log_path=tmp_path / "api.log") as base:
        yield base


def _post_huge_without_key(base: str, size: int, outcome: list[str]) -> None:
    """POST ``size`` bytes of a JSON list of empty objects with no key, as fast as the server takes them."""
    port = int(base.rsplit(":", 1)[1])
    head = (f"POST /v1/propertyaudit/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    chunk = b"{}," * (64 * 1024 // 3)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        try:
            conn.sendall(head + b"[")
            sent = 1
            while sent < size - 3:
                piece = chunk[: size - 3 - sent]
                conn.sendall(piece)
                sent += len(piece)
            conn.sendall(b"{}]")
        except OSError:
            pass  # the server answered and closed the connection without reading the rest: as it should
        try:
            outcome.append(conn.recv(4096).split(b"\r\n", 1)[0].decode())
        except OSError as exc:
            outcome.append(type(exc).__name__)


def _health_while(client: httpx.Client, busy: list[threading.Thread], pid: int) -> tuple[list[float], int]:
    """Ask ``/health`` until every thread of ``busy`` ended: each answer's seconds, and the API's peak RSS."""
    peak, health_s = rss_bytes(pid), []
    for thread in busy:
        thread.start()
    while any(t.is_alive() for t in busy):
        started = time.perf_counter()
        assert client.get("/health").status_code == 200
        health_s.append(time.perf_counter() - started)
        peak = max(peak, rss_bytes(pid))
    for thread in busy:
        thread.join()
    return health_s, max(peak, rss_bytes(pid))


def test_four_unauthenticated_32_mib_bodies_cost_the_api_no_memory_and_health_stays_fast(live):
    with httpx.Client(base_url=live, timeout=10) as client:
        for _ in range(3):
            client.get("/health")  # warm: the first answers open the database and Redis pools
        before = rss_bytes(live.pid)
        outcome: list[str] = []
        floods = [threading.Thread(target=_post_huge_without_key, args=(live, 32 * MIB, outcome)) for _ in range(4)]
        health_s, peak = _health_while(client, floods, live.pid)
    assert all("401" in o for o in outcome if o.startswith("HTTP")), outcome
    assert peak - before < 20 * MIB, f"the API's RSS rose by {(peak - before) / MIB:.1f} MiB"
    assert statistics.median(health_s) < 0.1, f"/health took {statistics.median(health_s):.3f}s (median) meanwhile"
    assert max(health_s) < 1.0, f"/health took {max(health_s):.3f}s at worst meanwhile"


def test_a_large_body_with_the_key_is_parsed_and_refused_off_the_event_loop(live):
    answers: list[httpx.Response] = []
    many = json.dumps({"property": {"name": "x"}, "queries": ["q"] * 3_000_000}).encode()

    def post() -> None:
        with httpx.Client(base_url=live, timeout=60) as poster:
            answers.append(poster.post("/v1/propertyaudit/runs", content=many,
                                       headers={**AUTH, "Content-Type": "application/json"}))

    with httpx.Client(base_url=live, timeout=10) as client:
        client.get("/health")
        health_s, _ = _health_while(client, [threading.Thread(target=post)], live.pid)
    assert answers[0].status_code == 422 and "queries" in answers[0].text
    assert max(health_s) < 1.0, f"/health waited {max(health_s):.3f}s behind a 3-million-item body"


def test_metrics_label_only_known_methods_and_route_templates(api):
    for i in range(40):
        api.request(f"M{i:02d}" + "X" * 2000, f"/v1/runs/{uuid.uuid4()}")
        api.get(f"/no/such/path/{uuid.uuid4()}")
    page = api.get("/metrics").text
    series = [line for line in page.splitlines() if line.startswith("dataengine_api_requests_total{")]
    assert 'method="other"' in page
    assert not any("XXXX" in line for line in series), "a raw method became a label"
    assert not any("/no/such/path" in line for line in series), "a raw path became a label"
    assert len(page) < 200_000


def test_a_model_a_spec_names_is_a_metrics_label_only_when_priced_or_a_default(db_url, fake_llm):
    from prometheus_client import REGISTRY, generate_latest

    from dataengine.llm import calls as llm

    for i in range(5):
        llm.chat(messages=[{"role": "user", "content": "best apartments"}], model=f"made-up-model-{i}")
    llm.chat(messages=[{"role": "user", "content": "best apartments"}], model="gpt-4o-mini")
    page = generate_latest(REGISTRY).decode()
    assert "made-up-model" not in page
    assert 'dataengine_llm_calls_total{model="other",outcome="ok"}' in page
    assert 'dataengine_llm_calls_total{model="gpt-4o-mini",outcome="ok"}' in page
    # The ledger (a database, not a label) keeps every model's name: its writer is done before the test ends.
    wait_for(lambda: ledger_calls() == 6, timeout_s=10, what="the six calls in the cost ledger")


def ledger_calls() -> int:
    with session_scope() as session:
        return session.scalar(text("SELECT coalesce(sum(calls), 0) FROM llm_costs WHERE model LIKE 'made-up-model-%' "
                                   "OR model = 'gpt-4o-mini'"))


# Input that fails validation -------------------------------------------------------------------------


def _raw(body: str) -> dict[str, Any]:
    return {"content": body.encode(), "headers": {**AUTH, "Content-Type": "application/json"}}


@pytest.mark.parametrize(("body", "named"), [
    ('{"property": {"name": "x"}, "queries": ["a"], "max_cost_usd": NaN}', "NaN"),
    ('{"property": {"name": "x"}, "queries": ["a"], "max_cost_usd": Infinity}', "Infinity"),
    ('{"property": {"name": "x"}, "queries": ["a"], "max_cost_usd": "NaN"}', "max_cost_usd"),
    ('{"property": {"name": "\\ud800"}, "queries": ["a"]}', "property.name"),
    ('{"property": {"name": "x"}, "queries": ["a", "b\\udfff"]}', "queries.1"),
    ('{"property": {"name": "x"}, "queries": ["a"], "idempotency_key": "\\ud800"}', "idempotency_key"),
    ('{"property": {"name": "x", "\\ud800": 1}, "queries": ["a"]}', "property"),
])
def test_inputs_that_failed_with_500_are_422_naming_the_field(api, caplog, body, named):
    answer = api.post("/v1/propertyaudit/runs", **_raw(body))
    assert answer.status_code == 422, answer.text
    assert named in problem_text(answer)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], "an error was logged"
    assert api.get("/v1/runs", headers=AUTH).json()["runs"] == []


def test_a_surrogate_pair_is_a_character_like_any_other(api):
    answer = api.post("/v1/propertyaudit/runs", **_raw('{"property": {"name": "Cedar \\ud83c\\udfe1"}, '
                                                        '"queries": ["a"]}'))
    assert answer.status_code == 202, answer.text


def test_a_window_too_long_for_the_calendar_is_422(api, caplog):
    for since in ("999999999d", "99999999999999999999w"):
        answer = api.get("/v1/costs", params={"since": since}, headers=AUTH)
        assert answer.status_code == 422, answer.text
        assert "since" in problem_text(answer)
    assert api.get("/v1/costs", params={"since": "3650d"}, headers=AUTH).status_code == 200
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_results_offset_past_what_postgresql_counts_is_422(api, caplog):
    run_id = api.post("/v1/propertyaudit/runs", json=audit_spec(2), headers=AUTH).json()["run_id"]
    login = api.post("/runs/login", data={"key": API_KEY, "next": "/runs"}, follow_redirects=False)
    assert login.status_code == 303
    page = api.get(f"/runs/api/runs/{run_id}", params={"offset": 2**63}, headers={"X-DataEngine-Page": "1"})
    assert page.status_code == 422, page.text
    assert "offset" in problem_text(page)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_422_quotes_a_short_prefix_of_the_bad_value_never_the_whole(api):
    long_name = {"property": {"name": "n" * (10 * MIB)}, "queries": ["a"]}
    answer = api.post("/v1/propertyaudit/runs", json=long_name, headers=AUTH)
    assert answer.status_code == 422
    assert "property" in problem_text(answer) and "name" in problem_text(answer)
    assert len(answer.content) < 4096, f"a {len(answer.content):,}-byte answer to a 10 MiB name"

    many = {"property": {"name": "x"}, "queries": ["q"] * 1_000_000}
    answer = api.post("/v1/propertyaudit/runs", json=many, headers=AUTH)
    assert answer.status_code == 422
    assert "queries" in problem_text(answer)
    assert len(answer.content) < 4096, f"a {len(answer.content):,}-byte answer to a million queries"


def test_a_body_with_a_thousand_bad_fields_lists_a_few_and_counts_the_rest(api):
    answer = api.post("/v1/propertyaudit/runs", json={"property": {"name": "x"}, "queries": [None] * 1000},
                      headers=AUTH)
    assert answer.status_code == 422
    assert len(answer.content) < 8192
    assert "more" in answer.text


# URLs, headers, documentation -----------------------------------------------------------------------


def test_status_url_is_never_built_from_the_host_header(api, monkeypatch):
    answer = api.post("/v1/propertyaudit/runs", json=audit_spec(2), headers={**AUTH, "Host": "evil.example"})
    assert answer.status_code == 202
    run_id = answer.json()["run_id"]
    assert answer.json()["status_url"] == f"/v1/runs/{run_id}"

    monkeypatch.setenv("DATAENGINE_PUBLIC_BASE_URL", "https://engine.example.com")
    reload_settings()
    with TestClient(create_app(), raise_server_exceptions=False) as public:
        again = public.post("/v1/propertyaudit/runs", json={"run_id": run_id},
                            headers={**AUTH, "Host": "evil.example"})
    assert again.json()["status_url"] == f"https://engine.example.com/v1/runs/{run_id}"


def test_every_answer_says_nosniff(api):
    answers = [
        api.get("/health"),
        api.get("/v1/runs"),
        api.get("/v1/runs", headers=AUTH),
        api.get(f"/v1/runs/{uuid.uuid4()}", headers=AUTH),
        api.get("/runs/api/runs"),
        api.get("/openapi.json"),
        api.get("/metrics"),
        api.get("/no/such/page"),
    ]
    assert [a.headers.get("x-content-type-options") for a in answers] == ["nosniff"] * len(answers)


def test_the_docs_page_loads_nothing_from_another_origin(api):
    page = api.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text and "https://" not in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        path = next(p for p in page.text.split("'") + page.text.split('"') if p.endswith(asset))
        assert api.get(path).status_code == 200, path
