"""The stand-in LLM server, driven through the real OpenAI SDK the engine uses."""

from __future__ import annotations

import base64
import math
import re
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Literal

import httpx
import openai
import pytest
from conftest import wait_for
from pydantic import BaseModel

from dataengine.testing.standin_llm import ROSTER, FakeConfig, FakeLLMServer, example_from_schema, plain_answer, serve
from tasks.propertyaudit.prompts import QueryEvaluation, answer_messages, evaluation_messages

MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as running:
        yield running


@pytest.fixture
def fake(server: FakeLLMServer) -> FakeLLMServer:
    """The shared server with default config and zero counts."""
    server.configure(**FakeConfig().model_dump())
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeLLMServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def ask(client: openai.OpenAI, query: str) -> str:
    response = client.chat.completions.create(model=MODEL, messages=answer_messages(query))
    return response.choices[0].message.content or ""


def listed(answer: str) -> list[str]:
    return re.findall(r"^\d+\. \*\*(.+?)\*\*", answer, re.M)


def evaluate(client: openai.OpenAI, answer: str, name: str, aliases: list[str] | None = None) -> QueryEvaluation:
    messages = evaluation_messages(property_name=name, aliases=aliases or [], city="Austin", answer=answer)
    response = client.chat.completions.parse(model=MODEL, messages=messages, response_format=QueryEvaluation)
    parsed = response.choices[0].message.parsed
    assert parsed is not None
    return parsed


def test_plain_answer_is_deterministic_and_ranks_roster_names(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=answer_messages("quiet apartments in Austin"))
    answer = response.choices[0].message.content or ""
    assert answer == ask(client, "quiet apartments in Austin")
    assert answer != ask(client, "loft apartments in Denver")
    assert answer.startswith('Here are some options for "quiet apartments in Austin":')
    names = listed(answer)
    assert 3 <= len(names) <= 6 and set(names) <= set(ROSTER)
    sources = re.search(r"^Sources: (.+)$", answer, re.M)
    assert sources is not None
    urls = sources.group(1).split(", ")
    assert 1 <= len(urls) <= 3 and all(re.fullmatch(r"https://www\.[a-z0-9-]+\.example", u) for u in urls)
    assert response.model == MODEL and response.choices[0].finish_reason == "stop"
    assert response.usage is not None and response.usage.completion_tokens == math.ceil(len(answer) / 4)


def test_roster_names_each_appear_in_a_fair_share_of_answers() -> None:
    answers = [listed(plain_answer(f"apartments near campus #{i}")) for i in range(1000)]
    for name in ROSTER:
        share = sum(name in names for names in answers) / len(answers)
        assert 0.28 <= share <= 0.5, (name, share)


def test_evaluation_of_a_listed_property(client: openai.OpenAI) -> None:
    answer = ask(client, "apartments with a pool in Austin")
    names = listed(answer)
    evaluation = evaluate(client, answer, names[1])
    assert evaluation.mentioned and evaluation.rank == 2 and evaluation.sentiment == "positive"
    assert evaluation.competitors == names[:1] + names[2:]
    assert evaluation.citations == re.findall(r"https://[^\s,]+", answer)
    # An alias names the property too, whatever its case.
    by_alias = evaluate(client, answer, "Some Other Name", aliases=["nothing", names[0].upper()])
    assert by_alias.mentioned and by_alias.rank == 1 and by_alias.competitors == names[1:]


def test_evaluation_of_an_absent_property(client: openai.OpenAI) -> None:
    answer = ask(client, "apartments with a pool in Austin")
    absent = next(name for name in ROSTER if name not in answer)
    evaluation = evaluate(client, answer, absent)
    assert evaluation == QueryEvaluation(
        mentioned=False,
        rank=None,
        sentiment=None,
        competitors=listed(answer),
        citations=re.findall(r"https://[^\s,]+", answer),
    )


class Amenity(BaseModel):
    name: str
    fee: float | None
    kind: Literal["indoor", "outdoor"]


class Unit(BaseModel):
    bedrooms: int
    furnished: bool
    amenities: list[Amenity]
    listed_at: datetime
    parent: Unit | None


def test_unknown_schemas_get_valid_generated_instances(client: openai.OpenAI) -> None:
    response = client.chat.completions.parse(model=MODEL, messages=answer_messages("a unit"), response_format=Unit)
    parsed = response.choices[0].message.parsed
    assert isinstance(parsed, Unit) and isinstance(parsed.amenities[0], Amenity)
    # The generator also works on pydantic's own (non-strict) schema, recursion included.
    assert isinstance(Unit.model_validate(example_from_schema(Unit.model_json_schema())), Unit)


def test_embeddings_are_deterministic_unit_vectors(client: openai.OpenAI) -> None:
    first = client.embeddings.create(model=EMBEDDING_MODEL, input=["cedar flats", "lakeshore commons"])
    vectors = [item.embedding for item in first.data]
    assert [len(v) for v in vectors] == [1536, 1536]
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-5) for v in vectors)
    assert vectors[0] != vectors[1]
    again = client.embeddings.create(model=EMBEDDING_MODEL, input="cedar flats")
    assert again.data[0].embedding == vectors[0]
    small = client.embeddings.create(model=EMBEDDING_MODEL, input="cedar flats", dimensions=64, encoding_format="float")
    assert len(small.data[0].embedding) == 64
    assert first.usage.prompt_tokens == first.usage.total_tokens >= 1


def test_embeddings_base64_carries_the_same_floats(fake: FakeLLMServer) -> None:
    body = {"model": EMBEDDING_MODEL, "input": "x", "dimensions": 8}
    headers = {"Authorization": "Bearer sk-test"}
    as_floats = httpx.post(f"{fake.base_url}/embeddings", json=body, headers=headers, trust_env=False).json()
    encoded = httpx.post(
        f"{fake.base_url}/embeddings", json={**body, "encoding_format": "base64"}, headers=headers, trust_env=False
    ).json()
    decoded = list(struct.unpack("<8f", base64.b64decode(encoded["data"][0]["embedding"])))
    assert decoded == as_floats["data"][0]["embedding"]


def test_429_carries_retry_after(fake: FakeLLMServer, client: openai.OpenAI) -> None:
    fake.configure(fail_429_every=1, retry_after_s=7)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, "anything")
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded" and caught.value.type == "rate_limit_error"


def test_sdk_retries_after_a_429(fake: FakeLLMServer) -> None:
    fake.configure(fail_429_every=2, retry_after_s=0.01)
    with openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=1) as retrying:
        ask(retrying, "first")  # request 1 passes, so the next one is the 2nd
        assert listed(ask(retrying, "second"))
    stats = fake.stats()
    assert stats["prompts"]["second"] == 2 and stats["answered_prompts"]["second"] == 1
    assert stats["requests"] == 3 and stats["answered"] == 2


def test_injected_server_errors(fake: FakeLLMServer, client: openai.OpenAI) -> None:
    fake.configure(fail_5xx_every=1)
    with pytest.raises(openai.InternalServerError) as caught:
        ask(client, "anything")
    assert caught.value.status_code == 500
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model=EMBEDDING_MODEL, input="anything")


def test_requests_need_a_bearer_key(fake: FakeLLMServer) -> None:
    url = f"{fake.base_url}/chat/completions"
    body = {"model": MODEL, "messages": answer_messages("q")}
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
        response = httpx.post(url, json=body, headers=headers, trust_env=False)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    keyless = {"Authorization": "Bearer"}
    with openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0, default_headers=keyless) as blank:
        with pytest.raises(openai.AuthenticationError):
            ask(blank, "q")
    assert fake.stats()["requests"] == 0


def test_per_prompt_counts_and_reset(fake: FakeLLMServer, client: openai.OpenAI) -> None:
    fake.configure(latency_ms=1)
    ask(client, "one")
    ask(client, "one")
    ask(client, "two")
    client.embeddings.create(model=EMBEDDING_MODEL, input=["two", "three"])
    stats = fake.stats()
    assert {k: stats[k] for k in ("requests", "answered", "prompts", "answered_prompts")} == {
        "requests": 4,
        "answered": 4,
        "prompts": {"one": 2, "two": 2, "three": 1},
        "answered_prompts": {"one": 2, "two": 2, "three": 1},
    }
    assert sum(stats["requests_per_second"].values()) == 4 and stats["max_requests_in_60s"] == 4
    assert (stats["in_flight"], stats["max_in_flight"], stats["rate_limited"]) == (0, 1, 0)
    fake.reset()
    stats = fake.stats()
    assert (stats["requests"], stats["answered"], stats["prompts"], stats["requests_per_second"]) == (0, 0, {}, {})
    assert fake.configure().latency_ms == 1


def test_configure_merges_and_validates(fake: FakeLLMServer) -> None:
    config = fake.configure(fail_429_every=3)
    assert config == FakeConfig(fail_429_every=3)
    assert fake.configure(hang_s=5) == FakeConfig(fail_429_every=3, hang_s=5)
    response = httpx.post(f"{fake.url}/_fake/config", json={"latency_ms": -1}, trust_env=False)
    assert response.status_code == 400
    assert httpx.get(f"{fake.url}/healthz", trust_env=False).json() == {"ok": True}


def test_latency_delays_each_request_and_requests_overlap(fake: FakeLLMServer, client: openai.OpenAI) -> None:
    fake.configure(latency_ms=200)
    started = time.monotonic()
    ask(client, "slow")
    assert time.monotonic() - started >= 0.2
    # Four requests held at once prove the server answers them side by side, without a timing bound.
    fake.configure(latency_ms=0, hang_substrings=["held"])
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = [pool.submit(ask, client, f"held {i}") for i in range(4)]
        wait_for(lambda: fake.stats()["requests"] >= 5, timeout_s=10, interval_s=0.02, what="the four held requests")
        assert (fake.stats()["requests"], fake.stats()["answered"]) == (5, 1)
        fake.configure(hang_substrings=[])
        assert all(a.result(timeout=10) for a in answers)


def test_a_hung_request_is_visible_in_flight_and_can_be_released(
    fake: FakeLLMServer, client: openai.OpenAI
) -> None:
    fake.configure(hang_substrings=["HANG"], hang_s=30)
    answers: list[str] = []
    worker = threading.Thread(target=lambda: answers.append(ask(client, "please HANG here")))
    worker.start()
    wait_for(lambda: fake.stats()["requests"], timeout_s=5, interval_s=0.01, what="the hung request to arrive")
    assert fake.stats()["prompts"] == {"please HANG here": 1} and fake.stats()["answered"] == 0
    assert httpx.get(f"{fake.url}/_fake/in-flight").json() == {"in_flight": 1}  # what benchmarks sample
    assert listed(ask(client, "not hung"))
    fake.configure(hang_substrings=[])
    worker.join(timeout=5)
    assert answers and listed(answers[0])


def test_models_are_listed(client: openai.OpenAI) -> None:
    assert MODEL in [model.id for model in client.models.list()]


def test_serve_refuses_non_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="allow_remote"):
        serve(host="0.0.0.0")


def test_over_its_rpm_limit_the_server_answers_429_with_the_wait_until_the_window_has_room(
    fake: FakeLLMServer, client: openai.OpenAI
) -> None:
    fake.configure(rpm_limit=3)
    for i in range(3):
        ask(client, f"within {i}")
    refused = httpx.post(f"{fake.base_url}/chat/completions", headers={"Authorization": "Bearer sk-test"},
                         json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "over"}]})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 55 <= int(refused.headers["Retry-After"]) <= 60  # the first of the three leaves the window then
    stats = fake.stats()
    assert (stats["rate_limited"], stats["max_requests_in_60s"], stats["answered"]) == (1, 3, 3)


def test_tokens_count_against_the_tpm_limit_with_the_completion_asked_for(fake: FakeLLMServer) -> None:
    fake.configure(tpm_limit=1000)
    url, auth = f"{fake.base_url}/chat/completions", {"Authorization": "Bearer sk-test"}

    def chat(max_tokens: int) -> httpx.Response:
        return httpx.post(url, headers=auth, json={"model": "gpt-4o-mini", "max_tokens": max_tokens,
                                                    "messages": [{"role": "user", "content": "x" * 400}]})

    assert chat(600).status_code == 200  # 100 prompt tokens + 600 asked for
    assert chat(600).status_code == 429  # 1,400 in the minute
    assert chat(200).status_code == 200  # 1,000
    assert fake.stats()["max_tokens_in_60s"] == 1000
