"""The requests the engine sends for a step's calls are the SDK's own, built once: ``parse`` sends the
strict JSON schema the SDK's ``parse`` would, validates the answer with the step's model, and fails as
the SDK does on a cut-off or filtered answer."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.lib._parsing._completions import type_to_response_format_param
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from dataengine.llm import calls


class Verdict(BaseModel):
    mentioned: bool
    rank: int | None


def completion(content: str | None, finish_reason: str = "stop") -> ChatCompletion:
    return ChatCompletion.model_validate({
        "id": "c1", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": finish_reason,
                     "message": {"role": "assistant", "content": content, "refusal": None}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    })


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What ``parse`` posts (the fleet's limits and budgets left out)."""
    posted: list[dict[str, Any]] = []
    monkeypatch.setattr(calls, "_paid", lambda model, prompt, out, send: (send(), calls.Usage(10, 5)))
    return posted


def ask(monkeypatch: pytest.MonkeyPatch, sent: list[dict[str, Any]], answer: ChatCompletion) -> Verdict:
    def post(path: str, body: dict[str, Any], cast_to: type) -> ChatCompletion:
        sent.append({"path": path, **body})
        return answer

    monkeypatch.setattr(calls, "_post", post)
    verdict, _ = calls.parse(messages=[{"role": "user", "content": "q"}], model="gpt-4o-mini", schema=Verdict)
    return verdict


def test_parse_sends_the_sdks_strict_schema_and_validates_the_answer(monkeypatch, sent):
    verdict = ask(monkeypatch, sent, completion('{"mentioned": true, "rank": 2}'))
    assert verdict == Verdict(mentioned=True, rank=2)
    assert sent == [{"path": "/chat/completions", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q"}],
                     "response_format": dict(type_to_response_format_param(Verdict))}]
    assert sent[0]["response_format"]["json_schema"]["strict"] is True


@pytest.mark.parametrize(("finish_reason", "error"), [("length", openai.LengthFinishReasonError),
                                                      ("content_filter", openai.ContentFilterFinishReasonError)])
def test_a_cut_off_or_filtered_answer_fails_as_the_sdks_parse_does(monkeypatch, sent, finish_reason, error):
    with pytest.raises(error):
        ask(monkeypatch, sent, completion('{"mentioned": tr', finish_reason))


def test_an_empty_answer_says_the_model_gave_no_structured_output(monkeypatch, sent):
    with pytest.raises(ValueError, match="no structured output"):
        ask(monkeypatch, sent, completion(None))
