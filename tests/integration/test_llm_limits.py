"""The fleet's LLM limits on real calls: the SDK through the stand-in, the limiter on the session's Redis,
and two real workers sharing one limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import reload_settings, wait_for
from helpers import create_audit, run_row

from dataengine import app

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "best apartments in austin"}]


@pytest.fixture
def llm(fake_llm: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``dataengine.llm.calls`` on the stand-in and this session's Redis; the limiter's keys removed after."""
    import redis

    from dataengine.llm import calls as module
    from dataengine.llm.limits import KEY_PREFIX

    client = redis.Redis.from_url(redis_url)

    def forget() -> None:
        for key in client.scan_iter(f"{KEY_PREFIX}*"):
            client.delete(key)

    forget()
    reload_settings()
    yield module
    forget()


def test_a_429_pauses_the_model_for_every_process_and_the_call_waits_it_out(llm, fake_llm, redis_url):
    from dataengine.llm.limits import ModelLimits, limiter_from

    fake_llm.configure(fail_429_every=2, retry_after_s=2.0)
    elsewhere = limiter_from(redis_url, default=ModelLimits(), per_model={}, burst_s=1, token_burst_s=6,
                             fallback_share=0.1, recovery_start=0.5, recovery_s=30)  # another worker's view
    llm.chat(messages=MESSAGES, model=MODEL)
    answered: list[float] = []
    started = time.monotonic()
    call = threading.Thread(target=lambda: answered.append(llm.chat(messages=MESSAGES, model=MODEL) and time.monotonic()))
    call.start()
    paused = wait_for(lambda: elsewhere.paused_for(MODEL), timeout_s=5, what="the 429 to pause the model fleet-wide")
    assert 0 < paused <= 2.0
    call.join(timeout=10)
    assert answered and answered[0] - started >= 1.9  # it waited the Retry-After out, then asked once more
    stats = fake_llm.stats()
    assert (stats["requests"], stats["answered"]) == (3, 2)


def test_the_providers_limits_are_learned_from_its_answers_headers(llm, fake_llm):
    from dataengine.llm.limits import ModelLimits

    fake_llm.configure(rpm_limit=1200, tpm_limit=90000, limit_bucket_s=1)
    assert llm.limiter().limits(MODEL) == ModelLimits(rpm=600)  # DATAENGINE_LLM_UNKNOWN_RPM until heard
    llm.chat(messages=MESSAGES, model=MODEL)
    assert llm.limiter().limits(MODEL) == ModelLimits(rpm=1200, tpm=90000)
    fake_llm.configure(rpm_limit=0, tpm_limit=0)
    llm.embed(texts=["a"], model=MODEL)  # embeddings' answers say it too
    assert llm.limiter().limits(MODEL) == ModelLimits()


def test_a_429_from_a_providers_bucket_pauses_until_the_bucket_holds_a_request(llm, fake_llm, monkeypatch):
    monkeypatch.setenv("DATAENGINE_LLM_LEARN_LIMITS", "false")  # blind: the second call meets the 429
    reload_settings()
    fake_llm.configure(rpm_limit=20, limit_bucket_s=3)  # one request at once, one more every 3 s
    started = time.monotonic()
    llm.chat(messages=MESSAGES, model=MODEL)
    llm.chat(messages=MESSAGES, model=MODEL)
    elapsed = time.monotonic() - started
    stats = fake_llm.stats()
    assert (stats["requests"], stats["answered"], stats["rate_limited"]) == (3, 2, 1)
    assert 2.5 <= elapsed < 10  # the bucket's retry-after-ms, then once more


def test_a_call_is_tried_at_most_openai_max_retries_more_times_in_all(llm, fake_llm, monkeypatch):
    monkeypatch.setenv("OPENAI_MAX_RETRIES", "2")
    reload_settings()
    fake_llm.configure(fail_5xx_every=1)
    with pytest.raises(openai.InternalServerError) as failed:
        llm.chat(messages=MESSAGES, model=MODEL)
    assert llm.is_transient(failed.value)  # the step fails; the run is retried later, with backoff
    # Three requests, not the SDK's retries times ours: the SDK itself retries nothing.
    assert fake_llm.stats()["requests"] == 3


def test_a_429_that_never_ends_fails_the_call_after_its_retries(llm, fake_llm, monkeypatch):
    monkeypatch.setenv("OPENAI_MAX_RETRIES", "1")
    reload_settings()
    fake_llm.configure(fail_429_every=1, retry_after_s=0.05)
    with pytest.raises(openai.RateLimitError):
        llm.chat(messages=MESSAGES, model=MODEL)
    assert fake_llm.stats()["requests"] == 2


def test_two_workers_sharing_a_limit_keep_to_it(workers, fake_llm):
    rpm = 600  # 10 calls a second for the whole fleet, a second's worth at once
    fake_llm.configure(rpm_limit=rpm)
    run_ids = [create_audit(10, tag=f"limit{k}") for k in range(6)]  # 120 calls
    env = {"DATAENGINE_LLM_RPM": str(rpm)}
    workers("a", env=env)
    workers("b", env=env)
    for run_id in run_ids:
        app.send_task("propertyaudit.run", kwargs={"run_id": str(run_id)})
    rows = wait_for(lambda: all(run_row(r)["status"] == "completed" for r in run_ids) and run_ids, timeout_s=90,
                    what="the 6 runs to complete under the limit")
    assert rows
    stats = fake_llm.stats()
    per_second = {int(s): n for s, n in stats["requests_per_second"].items()}
    assert stats["rate_limited"] == 0 and sum(per_second.values()) == 120
    # Unlimited, 48 steps in flight at no latency would ask hundreds a second; limited, the fleet
    # sends its burst, then 10 a second, so 120 calls take 11 seconds or more.
    assert max(per_second.values()) <= 2 * rpm / 60 + 1, per_second
    assert max(per_second) - min(per_second) >= 10, per_second
