"""The only module that imports ``openai``: one client per process, usage, latency and cost.

Retries of a single call (429 with ``Retry-After``, 5xx, connection errors) are the SDK's own;
what is still failing after them is sorted here into transient (retry the run later) or not.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Any, TypeVar

import openai
from pydantic import BaseModel

from dataengine.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)

_client: openai.OpenAI | None = None
_client_pid: int | None = None
#: A run's step threads ask for the client at the same moment; only one may build it.
_client_lock = threading.Lock()
_TRANSIENT = (
    openai.APIConnectionError,  # includes APITimeoutError
    openai.RateLimitError,
    openai.InternalServerError,
    openai.ConflictError,
)


@dataclass(frozen=True)
class Usage:
    """Tokens, cost and wall time of one or more LLM calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    latency_ms: int = 0

    def split(self, n: int) -> list[Usage]:
        """This usage shared by ``n`` steps that made one call together: even shares, the remainder on the first."""
        cost = (self.cost_usd / n).quantize(Decimal("0.000001"), rounding=ROUND_DOWN)
        shares = [Usage(self.prompt_tokens // n, self.completion_tokens // n, cost, self.latency_ms) for _ in range(n)]
        first = shares[0]
        shares[0] = Usage(
            first.prompt_tokens + self.prompt_tokens % n, first.completion_tokens + self.completion_tokens % n,
            self.cost_usd - cost * (n - 1), self.latency_ms,
        )
        return shares

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost_usd + other.cost_usd,
            self.latency_ms + other.latency_ms,
        )


def client() -> openai.OpenAI:
    """This process's client (a forked pool child builds its own connection pool)."""
    global _client, _client_pid
    with _client_lock:
        if _client is None or _client_pid != os.getpid():
            _client = _new_client()
            _client_pid = os.getpid()
        return _client


def _new_client() -> openai.OpenAI:
    s = get_settings()
    return openai.OpenAI(
        api_key=s.openai_api_key.get_secret_value(),
        base_url=s.openai_base_url,
        max_retries=s.openai_max_retries,
        timeout=s.openai_timeout_s,
    )


def reset_client() -> None:
    """Forget the client, so the next call reads the settings again (tests change ``OPENAI_BASE_URL``)."""
    global _client, _client_pid
    with _client_lock:
        if _client is not None and _client_pid == os.getpid():
            _client.close()
        _client = _client_pid = None


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """What a call cost at the configured per-million-token prices (0 for an unknown model)."""
    prices = get_settings().model_prices_per_mtok.get(model)
    if prices is None:
        return Decimal(0)
    per_in, per_out = (Decimal(str(p)) for p in prices)
    return (per_in * prompt_tokens + per_out * completion_tokens) / Decimal(1_000_000)


def _usage(model: str, response: Any, started: float) -> Usage:
    u = response.usage
    prompt, completion = (u.prompt_tokens, getattr(u, "completion_tokens", 0) or 0) if u else (0, 0)
    return Usage(prompt, completion, cost_usd(model, prompt, completion), int((time.monotonic() - started) * 1000))


def chat(*, messages: list[dict[str, str]], model: str) -> tuple[str, Usage]:
    """Ask the model; returns the answer text and the call's usage."""
    started = time.monotonic()
    response = client().chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    return response.choices[0].message.content or "", _usage(model, response, started)


def parse(*, messages: list[dict[str, str]], model: str, schema: type[T]) -> tuple[T, Usage]:
    """Ask for a structured answer validated by ``schema`` (the SDK's ``parse``)."""
    started = time.monotonic()
    response = client().chat.completions.parse(model=model, messages=messages, response_format=schema)  # type: ignore[arg-type]
    message = response.choices[0].message
    if message.parsed is None:
        raise ValueError(f"model refused or returned no structured output: {message.refusal or 'empty'}")
    return message.parsed, _usage(model, response, started)


def embed(*, texts: list[str], model: str | None = None) -> tuple[list[list[float]], Usage]:
    """Embed texts; returns one vector per text and the call's usage."""
    model = model or get_settings().openai_embedding_model
    started = time.monotonic()
    response = client().embeddings.create(model=model, input=texts)
    return [d.embedding for d in response.data], _usage(model, response, started)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed call may succeed later (rate limits, outages), as opposed to bad requests."""
    return isinstance(exc, _TRANSIENT)
