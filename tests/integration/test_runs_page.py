"""The runs page in a real browser: Debian's chromium driven by Playwright, against a live
``dataengine api`` process, a real Celery worker and the stand-in LLM answering slowly, so a run
works for several seconds while the page watches it, and is cancelled from its page. Then the
session: no page and no JSON without it, a wrong key sets no cookie, a revoked key's cookie dies.
The session's defences (a cookie only the server's secret signs, logout and revocation on the server,
same-origin logins, a small login form, the Secure flag) are checked over HTTP, most of them in this
process, the login form's memory against a live API.

Without chromium (or the playwright package) the browser tests skip, saying what to install; under
``CI=true`` they fail. Set ``DATAENGINE_UPDATE_SCREENSHOT=1`` to refresh ``docs/runs-page.png``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import in_process_api, reload_settings, wait_for
from fastapi.testclient import TestClient
from helpers import audit_spec, review_spec, run_row
from liveapi import ROOT, live_api, rss_bytes
from sqlalchemy import select

from dataengine.infra.db import session_scope
from dataengine.web.keys import create_key, digest, revoke_key
from dataengine.web.sessions import COOKIE, PAGE_HEADER, SESSION_TTL_S
from models.apikeys import ApiKey

pytestmark = pytest.mark.timeout(60)
KEY = "runs-page-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
#: The session secret every API of these tests shares (DATAENGINE_SESSION_SECRET).
SECRET = "runs-page-session-secret-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = "install Debian's chromium (apt-get install chromium; scripts/test.sh does it when run as root)"
SCREENSHOT = ROOT / "docs" / "runs-page.png"
#: Stand-in LLM latency per call: a PropertyAudit of 40 queries then works for about 10 s.
LATENCY_MS = 400


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless chromium (Debian's), driven by Playwright; never Playwright's own download."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is missing (pip install -e '.[dev]')"
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is missing: {INSTALL_HINT}"
    if missing is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def api(engine_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """``dataengine api`` on the test's database and Redis, with KEY as its configured key."""
    with live_api(_env(engine_env), log_path=tmp_path / "api.log") as base:
        yield base


def _env(engine_env: dict[str, str]) -> dict[str, str]:
    return {**engine_env, "DATA_ENGINE_API_KEY": KEY, "DATAENGINE_SESSION_SECRET": SECRET}


@pytest.fixture
def page(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The API in this process with KEY and SECRET (its origin is http://testserver): the session's checks
    without a process to start."""
    with in_process_api(monkeypatch, key=KEY, secret=SECRET, follow_redirects=False) as client:
        yield client


def start(api: str, path: str, body: dict[str, Any]) -> str:
    answer = httpx.post(f"{api}{path}", json=body, headers=AUTH, timeout=10)
    assert answer.status_code == 202, answer.text
    return answer.json()["run_id"]


def counted(text: str) -> tuple[int, int] | None:
    """``query 12 of 40`` -> (12, 40); None for a text without a count."""
    found = re.search(r"([\d,]+) of ([\d,]+)", text)
    return (int(found[1].replace(",", "")), int(found[2].replace(",", ""))) if found else None


def done_of(text: str) -> tuple[int, int]:
    """``query 12 of 40`` -> (12, 40); fails the test without a count."""
    done = counted(text)
    assert done, text
    return done


def row_progress(row: Any) -> tuple[int, float] | None:
    """(steps done, the progress bar's value) as a row of the runs page shows them, or None while it
    shows no count yet (for ``wait_for``)."""
    done = counted(row.locator(".steps").inner_text())
    return (done[0], float(row.locator("progress").get_attribute("value") or 0)) if done else None


def test_the_page_follows_runs_live_and_cancels_one(api, workers, fake_llm, browser, tmp_path):
    from playwright.sync_api import expect

    fake_llm.configure(latency_ms=LATENCY_MS)
    workers("page-worker")
    reviews = start(api, "/v1/reviewflow/runs", review_spec(6))
    refresh = start(api, "/v1/knowledge/refresh", {"property_id": "monarch-riverside", "sources": [
        {"title": "House rules", "text": "Quiet hours are 10 pm to 7 am."},
        {"title": "Amenities", "text": "The rooftop pool opens at 8 am; the gym never closes."}]})
    audit = start(api, "/v1/propertyaudit/runs", audit_spec(40, name="The Monarch at Riverside"))
    for finished_first in (reviews, refresh):
        wait_for(lambda r=finished_first: httpx.get(f"{api}/v1/runs/{r}", headers=AUTH).json()["status"] == "completed",
                 timeout_s=20, what=f"run {finished_first} to complete")

    context = browser.new_context(viewport={"width": 1280, "height": 440})
    page = context.new_page()
    problems: list[str] = []  # script errors and console errors (a CSP violation is one)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: m.type == "error" and problems.append(f"{m.text} at {m.location.get('url')}"))
    page.goto(f"{api}/runs")
    assert "/runs/login" in page.url
    page.fill("#key", KEY)
    page.click("button[type=submit]")
    page.wait_for_url(f"{api}/runs")

    row = page.locator(f'#active-runs tr[data-run-id="{audit}"]')
    expect(row.locator(".status")).to_have_text("running", timeout=10_000)
    expect(page.locator(f'#recent-runs tr[data-run-id="{reviews}"] .status')).to_have_text("completed")
    expect(page.locator(f'#recent-runs tr[data-run-id="{refresh}"] .status')).to_have_text("completed")
    page.evaluate("window.sameDocument = true")  # a reload would forget it
    wait_for(lambda: (now := row_progress(row)) and now[0] >= 4, timeout_s=10, what="the audit to start")
    first, total = done_of(row.locator(".steps").inner_text())
    first_bar = float(row.locator("progress").get_attribute("value") or 0)
    assert total == 40 and row.locator(".steps").inner_text().startswith("query ")
    # The page moves on by itself: more steps and a longer bar, in the same document.
    wait_for(lambda: (now := row_progress(row)) and now[0] > first and now[1] > first_bar, timeout_s=10,
             what=f"the row to show more than {first} steps done and a longer bar")
    assert page.evaluate("window.sameDocument") is True
    assert row.locator("td").nth(6).inner_text().startswith("page-worker@")  # the worker holding it
    page.screenshot(path=tmp_path / "runs-page.png", full_page=True)
    if os.environ.get("DATAENGINE_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "runs-page.png", SCREENSHOT)

    row.locator("a.run-link").click()
    page.wait_for_url(f"{api}/runs/{audit}")
    expect(page.locator("#run-title")).to_have_text("PropertyAudit · The Monarch at Riverside")
    expect(page.locator("#results-body tr").first).to_be_visible()
    expect(page.locator("#results-head th")).to_contain_text(["#", "query", "mentioned"])
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    expect(page.locator("#run-status .status")).to_have_text("cancelled", timeout=15_000)
    expect(page.locator("#retry")).to_be_visible()
    expect(page.locator("#cancel")).to_be_hidden()
    page.screenshot(path=tmp_path / "run-page.png", full_page=True)
    final = run_row(audit)
    assert final["status"] == "cancelled" and final["completed_steps"] < 40
    shown, _ = done_of(page.locator("#run-steps").inner_text())
    assert shown == final["completed_steps"]

    page.click("#retry")  # resumes from its checkpoint, to the end
    expect(page.locator("#run-status .status")).to_have_text("completed", timeout=20_000)
    expect(page.locator("#summary")).to_contain_text("visibility score")
    expect(page.locator("#results-count")).to_have_text("(40 queries)")
    # Its history, oldest first: each event with the worker and the step it happened at.
    expect(page.locator("#history .event strong")).to_contain_text(
        ["submitted", "claimed", "cancelled", "retried", "resumed", "completed"])
    expect(page.locator("#history .event-resumed .by")).to_contain_text("page-worker@")
    expect(page.locator("#history .event-completed .detail")).to_have_text("40/40 steps recorded")
    later = page.request.get(f"{api}/runs/api/runs/{audit}?offset=30").json()["results"]  # the page's cookie
    assert later["total"] == 40 and [r["query_index"] for r in later["rows"]] == list(range(30, 40))
    page.screenshot(path=tmp_path / "run-completed.png", full_page=True)
    review_results = page.request.get(f"{api}/runs/api/runs/{reviews}").json()["results"]
    assert review_results["total"] == 6 and "sentiment_label" in review_results["columns"]
    assert [r["step"] for r in review_results["rows"]] == [r["text"] for r in review_spec(6)["reviews"]]
    source_results = page.request.get(f"{api}/runs/api/runs/{refresh}").json()["results"]
    assert [r["step"] for r in source_results["rows"]] == ["House rules", "Amenities"]
    assert problems == []
    context.close()


@pytest.mark.slow  # a live API process
def test_without_a_session_there_is_no_page_and_no_json(api):
    for path in ("/runs", "/runs/3f0c5e36-8d7b-4a6e-9c43-0ad5a7d1b2c4"):
        answer = httpx.get(f"{api}{path}")
        assert answer.status_code == 303 and answer.headers["location"] == f"/runs/login?next={path}"
    for path in ("/runs/api/runs", "/v1/runs"):
        assert httpx.get(f"{api}{path}").status_code == 401
    cancel = httpx.post(f"{api}/runs/api/runs/3f0c5e36-8d7b-4a6e-9c43-0ad5a7d1b2c4/cancel", headers={PAGE_HEADER: "1"})
    assert cancel.status_code == 401 and cancel.json() == {"detail": "log in at /runs/login"}
    from dataengine.web.sessions import sign

    forged = sign(secret=b"not the secret", ref="env", sid="0" * 32, expires=int(time.time()) + 60)
    for cookie in (forged, "garbage", "v1.env.99999999999.x", f"v2.env.{'0' * 32}.{'²' * 10}.{'A' * 43}"):
        answer = httpx.get(f"{api}/runs/api/runs", headers={"Cookie": f"{COOKIE}={cookie}".encode()})
        assert answer.status_code == 401, cookie
    login = httpx.get(f"{api}/runs/login")
    assert login.status_code == 200 and 'name="key"' in login.text
    assert "script-src 'self'" in login.headers["content-security-policy"]


@pytest.mark.slow  # a live API process
def test_a_wrong_key_on_the_form_shows_an_error_and_sets_no_cookie(api, browser):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{api}/runs/login")
    page.fill("#key", "de_not-a-key")
    page.click("button[type=submit]")
    error = page.locator("#login-error")
    assert error.is_visible() and "not valid" in error.inner_text()
    assert context.cookies() == [] and page.url.startswith(f"{api}/runs/login")
    context.close()
    refused = httpx.post(f"{api}/runs/login", data={"key": "de_not-a-key"})
    assert refused.status_code == 401 and "set-cookie" not in refused.headers


@pytest.mark.slow  # a live API process
def test_a_session_names_its_key_never_holds_it_and_dies_with_it(api, engine_env, tmp_path):
    from dataengine.web.sessions import sign

    key = create_key("operator")
    client = httpx.Client(base_url=api)
    answer = client.post("/runs/login", data={"key": key, "next": "https://evil.example/"})
    assert answer.status_code == 303 and answer.headers["location"] == "/runs"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie and "Secure" not in cookie
    assert f"Max-Age={SESSION_TTL_S}" in cookie
    value = client.cookies[COOKIE]
    assert key not in value and digest(key) not in value
    assert client.get("/runs/api/runs").status_code == 200 and client.get("/runs").status_code == 200
    unknown = "3f0c5e36-8d7b-4a6e-9c43-0ad5a7d1b2c4"
    assert client.post(f"/runs/api/runs/{unknown}/cancel").status_code == 401  # no page header: not from the page
    assert client.post(f"/runs/api/runs/{unknown}/cancel", headers={PAGE_HEADER: "1"}).status_code == 404

    tampered = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    assert httpx.get(f"{api}/runs/api/runs", headers={"Cookie": f"{COOKIE}={tampered}"}).status_code == 401
    _, ref, sid, _, _ = value.split(".")
    expired = sign(secret=SECRET.encode(), ref=ref, sid=sid, expires=int(time.time()) - 1)
    assert httpx.get(f"{api}/runs/api/runs", headers={"Cookie": f"{COOKIE}={expired}"}).status_code == 401
    over_https = httpx.post(f"{api}/runs/login", data={"key": KEY}, headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in over_https.headers["set-cookie"]  # uvicorn trusts the loopback proxy's header

    with live_api(_env(engine_env), log_path=tmp_path / "api-2.log") as second:
        # Another API process takes the session: they share the session secret and the database.
        on_second = {"Cookie": f"{COOKIE}={value}"}
        assert httpx.get(f"{second}/runs/api/runs", headers=on_second).status_code == 200
        assert revoke_key("operator")
        assert httpx.get(f"{second}/runs/api/runs", headers=on_second).status_code == 401
    assert client.get("/runs/api/runs").status_code == 401
    assert client.get("/runs").status_code == 303
    logout = client.post("/runs/logout")
    assert logout.status_code == 303 and f'{COOKIE}=""' in logout.headers["set-cookie"]
    client.close()


# The session's defences ---------------------------------------------------------------------------


def log_in(client: TestClient, key: str = KEY, url: str = "/runs/login", **headers: str) -> httpx.Response:
    """POST the login form (the client keeps no cookie: each test says which cookie it sends)."""
    answer = client.post(url, data={"key": key}, headers=headers)
    client.cookies.clear()
    return answer


def cookie_of(answer: httpx.Response) -> str:
    found = re.search(rf"{COOKIE}=([^;]+)", answer.headers.get("set-cookie", ""))
    assert found, (answer.status_code, answer.text)
    return found[1]


def runs_json(client: TestClient, cookie: str) -> int:
    """The status of the page's JSON with ``cookie`` as the session."""
    return client.get("/runs/api/runs", headers={"Cookie": f"{COOKIE}={cookie}"}).status_code


def test_only_the_servers_secret_signs_a_session_and_the_server_caps_its_expiry(page):
    key = create_key("reader")
    with session_scope() as session:  # what anyone who reads the database has
        key_id, key_hash = session.execute(select(ApiKey.id, ApiKey.key_hash)).one()
    far = 999_999_999_999  # in the year 33658
    mac = hmac.new(bytes.fromhex(key_hash), f"dataengine runs session|{key_id}|{far}".encode(), hashlib.sha256)
    forged = f"v1.{key_id}.{far}.{base64.urlsafe_b64encode(mac.digest()).rstrip(b'=').decode()}"
    assert runs_json(page, forged) == 401  # the first cookies' MAC key was the stored hash

    from dataengine.web.sessions import sign

    cookie = cookie_of(log_in(page, key))
    assert runs_json(page, cookie) == 200
    _, ref, sid, expires, _ = cookie.split(".")
    assert runs_json(page, sign(secret=bytes.fromhex(key_hash), ref=ref, sid=sid, expires=int(expires))) == 401
    for beyond in (far, int(time.time()) + SESSION_TTL_S + 3600):  # the server's own MAC, past the TTL
        assert runs_json(page, sign(secret=SECRET.encode(), ref=ref, sid=sid, expires=beyond)) == 401
    assert sign(secret=SECRET.encode(), ref=ref, sid=sid, expires=int(expires)) == cookie


def test_logout_ends_the_session_for_every_copy_of_its_cookie(page):
    copy = cookie_of(log_in(page))
    assert runs_json(page, copy) == 200
    out = page.post("/runs/logout", headers={"Cookie": f"{COOKIE}={copy}"})
    assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]
    assert runs_json(page, copy) == 401
    assert page.get("/runs", headers={"Cookie": f"{COOKIE}={copy}"}).status_code == 303
    assert runs_json(page, cookie_of(log_in(page))) == 200


def test_two_logins_in_the_same_second_get_different_sessions(page):
    def expiry(cookie: str) -> str:
        return re.findall(r"\.([0-9]{10,12})\.", cookie)[-1]

    for _ in range(5):  # two logins that straddle a second prove nothing: again
        first, second = cookie_of(log_in(page)), cookie_of(log_in(page))
        if expiry(first) == expiry(second):
            break
    assert expiry(first) == expiry(second) and first != second
    page.post("/runs/logout", headers={"Cookie": f"{COOKIE}={first}"})
    assert runs_json(page, first) == 401 and runs_json(page, second) == 200


def test_revoked_keys_replaced_keys_and_retired_secrets_end_their_sessions(page, monkeypatch):
    named, env = cookie_of(log_in(page, create_key("operator"))), cookie_of(log_in(page))
    assert runs_json(page, named) == runs_json(page, env) == 200
    assert revoke_key("operator")
    assert runs_json(page, named) == 401 and runs_json(page, env) == 200
    new = "a-new-session-secret-0123456789abcdef"
    monkeypatch.setenv("DATAENGINE_SESSION_SECRET", f"{new},{SECRET}")  # rotating: the new one signs
    reload_settings()
    fresh = cookie_of(log_in(page))
    assert runs_json(page, env) == runs_json(page, fresh) == 200
    monkeypatch.setenv("DATAENGINE_SESSION_SECRET", new)  # the old one retired: its cookies with it
    reload_settings()
    assert runs_json(page, env) == 401 and runs_json(page, fresh) == 200
    monkeypatch.setenv("DATA_ENGINE_API_KEY", "a-replaced-key-0123456789abcdef")
    reload_settings()
    assert runs_json(page, fresh) == 401


def test_a_login_posted_by_another_site_is_refused_and_sets_no_cookie(page):
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Origin": "http://testserver:8080"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        answer = log_in(page, **headers)
        assert answer.status_code == 403 and "set-cookie" not in answer.headers, headers
        assert "sent by a page of another site" in answer.text
    for headers in ({"Origin": "http://testserver"}, {"Origin": "HTTP://TestServer:80"},
                    {"Sec-Fetch-Site": "same-origin"}, {}):  # its own page, or not a browser
        assert log_in(page, **headers).status_code == 303, headers


def test_the_secure_flag_and_the_login_origin_follow_the_public_base_url(page, monkeypatch):
    assert "Secure" not in log_in(page).headers["set-cookie"]  # plain HTTP, nothing configured
    assert "Secure" in log_in(page, url="https://testserver/runs/login").headers["set-cookie"]
    monkeypatch.setenv("DATAENGINE_PUBLIC_BASE_URL", "https://engine.example.com")  # a TLS proxy in front
    reload_settings()
    behind = log_in(page, Origin="https://engine.example.com")
    assert behind.status_code == 303 and "Secure" in behind.headers["set-cookie"]
    assert "Secure" in page.post("/runs/logout").headers["set-cookie"]
    monkeypatch.setenv("DATAENGINE_PUBLIC_BASE_URL", "http://engine.internal")
    reload_settings()
    assert "Secure" not in log_in(page, url="https://testserver/runs/login").headers["set-cookie"]


def test_without_a_session_secret_no_one_logs_in(page, monkeypatch):
    monkeypatch.delenv("DATAENGINE_SESSION_SECRET")
    reload_settings()
    answer = log_in(page)
    assert answer.status_code == 503 and "set-cookie" not in answer.headers
    assert "DATAENGINE_SESSION_SECRET is not set" in answer.text and "openssl rand -hex 32" in answer.text


MB = 1024 * 1024


@pytest.mark.slow  # a live API process
def test_a_huge_login_form_is_413_at_once_and_costs_the_api_no_memory(engine_env, tmp_path):
    form = b"a=1&" * (8 * 1024 * 1024)  # 32 MiB: as much as the API reads for a run's spec
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    with live_api(_env(engine_env), log_path=tmp_path / "api.log") as base:
        assert httpx.post(f"{base}/runs/login", data={"key": "de_warm-up"}).status_code == 401
        before, started = rss_bytes(base.pid) / MB, time.monotonic()
        declared = httpx.post(f"{base}/runs/login", content=form, headers=headers, timeout=10)
        chunks = (form[i:i + 65536] for i in range(0, len(form), 65536))  # no length: counted as it comes
        streamed = httpx.post(f"{base}/runs/login", content=chunks, headers=headers, timeout=10)
        took_s, grew_mb = time.monotonic() - started, rss_bytes(base.pid) / MB - before
        assert declared.status_code == streamed.status_code == 413, (declared.text, streamed.text)
        assert "larger than 4096 bytes" in streamed.text
        assert took_s < 3 and grew_mb < 20, (took_s, grew_mb)
        assert httpx.post(f"{base}/runs/login", data={"key": KEY}).status_code == 303
