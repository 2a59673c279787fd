"""The only module that imports ``openai``: one client per process, the fleet's rate limits, usage and cost.

Every call waits its turn under the fleet-wide limits (``dataengine.llm.limits``: requests and
tokens per minute per model, shared through Redis), reserving its estimated tokens; the real usage
corrects the reservation after. A 429 pauses the model for the whole fleet for its ``Retry-After``.

Retries are not stacked: the SDK retries nothing itself; a failed call is tried again here at most
``OPENAI_MAX_RETRIES`` times (a 429 after the fleet's pause, a 5xx or a lost connection after a
short backoff), each time within the limits. What still fails fails the step, and the engine's
retry with backoff takes over; errors are sorted here into transient (retry the run later) or not.
"""

from __future__ import annotations

import contextvars
import email.utils
import itertools
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from functools import cache
from typing import Any, TypeVar

import httpx2
import openai
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from dataengine.infra.errors import ProviderKeyRejected
from dataengine.infra.logs import current_run
from dataengine.infra.metrics import metrics, model_label
from dataengine.infra.settings import get_settings
from dataengine.llm import journal, ledger, workspaces
from dataengine.llm.budgets import call_cost
from dataengine.llm.limits import FleetLimiter, ModelLimits, estimate_tokens, limiter_from

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")

#: Clients per process, each with its own connection pool: httpx's pool does work in proportion to
#: its connections under one lock on every request, which a single pool for hundreds of calls in
#: flight turns into the largest CPU cost of a call (py-spy). A thread keeps to one of them.
CLIENT_SHARDS = 8
_clients: list[openai.OpenAI] = []
#: A workspace's clients, built for one version of its key and base URL: ``{id: (key_version, shards)}``.
_workspace_clients: dict[str, tuple[str, list[openai.OpenAI]]] = {}
#: A workspace's clients for a key since replaced: calls may still be using them; closed by ``reset_client``.
_retired_clients: list[openai.OpenAI] = []
_client_pid: int | None = None
_shard = threading.local()
_next_shard = itertools.count()
_limiter: FleetLimiter | None = None
_limiter_pid: int | None = None
#: A run's step threads ask for the client at the same moment; only one may build it.
_client_lock = threading.Lock()
#: The name a call is limited as, while it is being sent: whose limits its answer's headers tell.
_asking: contextvars.ContextVar[str | None] = contextvars.ContextVar("dataengine_llm_asking", default=None)
_TRANSIENT = (
    openai.APIConnectionError,  # includes APITimeoutError
    openai.RateLimitError,
    openai.InternalServerError,
    openai.ConflictError,
)


@dataclass(frozen=True)
class Usage:
    """Tokens, cost and wall time of one or more LLM calls (``cached_tokens``: of the prompt tokens,
    those the provider served from its cache, at the cached-input price)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    latency_ms: int = 0
    cached_tokens: int = 0

    def split(self, n: int) -> list[Usage]:
        """This usage shared by ``n`` steps that made one call together: even shares, the remainder on the first."""
        cost = (self.cost_usd / n).quantize(Decimal("0.000001"), rounding=ROUND_DOWN)
        shares = [Usage(self.prompt_tokens // n, self.completion_tokens // n, cost, self.latency_ms,
                        self.cached_tokens // n) for _ in range(n)]
        first = shares[0]
        shares[0] = Usage(
            first.prompt_tokens + self.prompt_tokens % n, first.completion_tokens + self.completion_tokens % n,
            self.cost_usd - cost * (n - 1), self.latency_ms, first.cached_tokens + self.cached_tokens % n,
        )
        return shares

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost_usd + other.cost_usd,
            self.latency_ms + other.latency_ms,
            self.cached_tokens + other.cached_tokens,
        )


def client() -> openai.OpenAI:
    """This thread's client of the process: the run's workspace's (its key and base URL) when the run names
    one with a key of its own, else the engine's. A forked pool child builds its own connection pools; a workspace's replaced key
    (``dataengine.llm.workspaces.lookup``, read again every few seconds) gets new clients."""
    global _clients, _workspace_clients, _client_pid
    shard = getattr(_shard, "index", None)
    if shard is None:
        shard = _shard.index = next(_next_shard) % CLIENT_SHARDS
    workspace_id = (current_run() or {}).get("workspace_id")
    workspace = workspaces.lookup(workspace_id) if workspace_id else None
    with _client_lock:
        if _client_pid != os.getpid():  # a forked child: its parent's clients are not its to use or close
            _clients, _workspace_clients, _client_pid = [], {}, os.getpid()
            _retired_clients.clear()
        if workspace is None or not workspace.own_key:  # the engine's key
            if not _clients:
                _clients = [_new_client() for _ in range(CLIENT_SHARDS)]
            return _clients[shard]
        version, built = _workspace_clients.get(workspace.id, ("", []))
        if version != workspace.key_version:
            _retired_clients.extend(built)  # left to the calls still using them
            key = workspace.api_key()
            built = [_new_client(key, workspace.base_url) for _ in range(CLIENT_SHARDS)]
            _workspace_clients[workspace.id] = (workspace.key_version, built)
        return built[shard]


def _new_client(api_key: str | None = None, base_url: str | None = None) -> openai.OpenAI:
    """A client with the engine's key and base URL, or a workspace's (its base URL unset: the engine's)."""
    s = get_settings()
    return openai.OpenAI(
        api_key=api_key or s.openai_api_key.get_secret_value(),
        base_url=base_url or s.openai_base_url,
        max_retries=0,  # retried here, within the fleet's limits (``_within_limits``)
        timeout=s.openai_timeout_s,
        http_client=openai.DefaultHttpxClient(verify=_tls(), timeout=s.openai_timeout_s,
                                              event_hooks={"response": [_heard]}),
    )


def _heard(response: httpx2.Response) -> None:
    """Every answer of the provider (not a 5xx: a failing server may say nothing of its limits) tells the
    limiter the provider's limits for the name the call is limited as."""
    model = _asking.get()
    if model is not None and response.status_code < 500:
        limiter().learn(model, response.headers)


@cache
def _tls() -> ssl.SSLContext:
    """The TLS settings and trusted CAs every client of the process shares: each client's own copy of
    the CA bundle held 0.7 MB, 5.6 MB for the engine's shards alone."""
    return httpx2.create_ssl_context()  # the SDK's transport's default: the system's CAs, or SSL_CERT_FILE


def limiter() -> FleetLimiter:
    """This process's view of the fleet's rate limits (a forked pool child opens its own Redis connections)."""
    global _limiter, _limiter_pid
    with _client_lock:
        if _limiter is None or _limiter_pid != os.getpid():
            s = get_settings()
            _limiter = limiter_from(
                s.redis_url, default=ModelLimits(s.llm_rpm, s.llm_tpm),
                per_model={m: ModelLimits(v.rpm, v.tpm) for m, v in s.llm_model_limits.items()},
                burst_s=s.llm_burst_s, token_burst_s=s.llm_token_burst_s, fallback_share=s.llm_fallback_share,
                recovery_start=s.llm_recovery_start, recovery_s=s.llm_recovery_s, learn=s.llm_learn_limits,
                unknown_rpm=s.llm_unknown_rpm, named=workspaces.limits_of,
            )
            _limiter_pid = os.getpid()
        return _limiter


def reset_client() -> None:
    """Forget the clients and the limiter, so the next call reads the settings again (tests change them)."""
    global _clients, _workspace_clients, _client_pid, _limiter, _limiter_pid
    with _client_lock:
        if _client_pid == os.getpid():
            for each in [*_clients, *_retired_clients, *(c for _, shards in _workspace_clients.values() for c in shards)]:
                each.close()
        _clients, _workspace_clients, _client_pid = [], {}, None
        _retired_clients.clear()
        _limiter = _limiter_pid = None
    workspaces.forget()


#: Unpriced models warned about once each, up to this many (a spec may name any model).
UNPRICED_WARNED = 100
_unpriced_seen: set[str] = set()


def _usage(model: str, response: Any, started: float) -> Usage:
    """A call's usage and cost, counted in the metrics and the cost ledger (a model without a price
    counts 0 there and is flagged: a warning once per process, ``unpriced_calls``)."""
    u = response.usage
    prompt, completion = (u.prompt_tokens, getattr(u, "completion_tokens", 0) or 0) if u else (0, 0)
    details = getattr(u, "prompt_tokens_details", None) if u else None
    cached = (getattr(details, "cached_tokens", 0) or 0) if details else 0
    cost = call_cost(model, prompt, completion, cached)
    if cost is None and model not in _unpriced_seen and len(_unpriced_seen) < UNPRICED_WARNED:
        _unpriced_seen.add(model)
        log.warning("model %r has no price (DATAENGINE_MODEL_PRICES_PER_MTOK): its calls count $0 in costs and are "
                    "flagged as unpriced", model)
    m, label = metrics(), model_label(model)
    m.llm_tokens.labels(label, "prompt").inc(prompt)
    m.llm_tokens.labels(label, "completion").inc(completion)
    m.llm_cost_usd.labels(label).inc(float(cost or 0))
    if cost is None:
        m.llm_calls.labels(label, "unpriced").inc()
    run = current_run() or {}
    ledger.add(ledger.Spend(run.get("kind") or "", model, run.get("property") or "", run.get("workspace_id") or "",
                            prompt, cached, completion, cost or Decimal(0), cost is not None))
    return Usage(prompt, completion, cost or Decimal(0), int((time.monotonic() - started) * 1000), cached)


def retry_after_s(exc: openai.APIStatusError) -> float:
    """The seconds a 429 asks to wait (``retry-after-ms``, ``retry-after`` in seconds or as a date),
    ``llm_default_retry_after_s`` when it says nothing; at most a minute."""
    headers = exc.response.headers
    seconds: float | None = None
    try:
        if "retry-after-ms" in headers:
            seconds = float(headers["retry-after-ms"]) / 1000
        elif "retry-after" in headers:
            value = headers["retry-after"]
            try:
                seconds = float(value)
            except ValueError:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        seconds = None
    if seconds is None or seconds < 0:
        seconds = get_settings().llm_default_retry_after_s
    return min(seconds, 60.0)


def _within_limits(model: str, tokens: int, send: Callable[[], R]) -> R:
    """``send()`` once the fleet's limits allow it (a workspace's own, for a run of a workspace), tried
    again after a transient failure."""
    s, limits, m, label = get_settings(), limiter(), metrics(), model_label(model)
    run = current_run() or {}
    workspace_id = run.get("workspace_id")
    limited_as = workspaces.limit_name(model, workspace_id)
    for attempt in range(s.openai_max_retries + 1):
        if attempt:
            m.llm_retries.labels(label).inc()
        # Workspaces share a limit fairly, the tiers by weight.
        reservation = limits.acquire(limited_as, tokens, tenant=workspace_id or "-", tier=run.get("priority"))
        asking = _asking.set(limited_as)
        try:
            response = send()
        except openai.RateLimitError as exc:
            m.llm_calls.labels(label, "rate_limited").inc()
            limits.settle(reservation, 0)  # refused: it used no tokens
            wait = retry_after_s(exc)
            limits.pause(limited_as, wait)
            log.warning("%s answered 429: the fleet pauses %s for %.1fs", model, limited_as, wait)
            failure: Exception = exc
        except _TRANSIENT as exc:
            m.llm_calls.labels(label, "error").inc()
            failure = exc
            time.sleep(min(0.5 * 2**attempt, 8.0) * random.uniform(0.75, 1.0))  # the SDK's own backoff  # noqa: S311  jitter/ordering, not a secret
        except Exception:
            m.llm_calls.labels(label, "error").inc()
            raise
        else:
            m.llm_calls.labels(label, "ok").inc()
            used = getattr(response, "usage", None)
            limits.settle(reservation, getattr(used, "total_tokens", None) or tokens)
            return response
        finally:
            _asking.reset(asking)
    raise failure


def _paid(model: str, prompt: list[Any], output_tokens: int, send: Callable[[], Any]) -> tuple[Any, Usage]:
    """``send()`` within the run's budgets (``dataengine.llm.budgets``) and the fleet's rate limits: its
    response and usage. A rejected key ends the run at once (``ProviderKeyRejected``)."""
    run = current_run() or {}
    budget = run.get("budget")
    prompt_tokens = estimate_tokens(prompt, 0)
    reserved = Decimal(0)
    if budget is not None:
        reserved = budget.before_call(model=model, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                                      step=run.get("step"))
    usage = None
    try:
        started = time.monotonic()
        try:
            response = _within_limits(model, prompt_tokens + output_tokens, send)
        except openai.AuthenticationError as exc:
            own = run.get("workspace_id") and workspaces.lookup(run["workspace_id"]).own_key
            whose = f"workspace {run['workspace_id']!r}'s" if own else "the engine's (OPENAI_API_KEY)"
            raise ProviderKeyRejected(whose=whose, status=exc.status_code,
                                      detail="replace the key, then retry the run") from None
        usage = _usage(model, response, started)
        return response, usage
    finally:
        if budget is not None:
            budget.after_call(reserved, model=model, cost=None if usage is None else usage.cost_usd,
                              completion_tokens=0 if usage is None else usage.completion_tokens)


def _journaled(kind: str, model: str, request: Any, ask: Callable[[], tuple[R, Usage]],
               encode: Callable[[R], Any], decode: Callable[[Any], R]) -> tuple[R, Usage]:
    """``ask()`` within a run's step: its answer recorded before the step goes on with it, and a
    recorded answer of the same request reused by a step run again (``dataengine.llm.journal``): not paid
    again, its usage as recorded (so the step's cost is what was paid for it, once)."""
    run = current_run()
    if run is None or run.get("step") is None or run.get("run_id") is None:
        return ask()
    step, fp = int(run["step"]), journal.fingerprint(kind, model, request)
    if step in run.get("replay", ()):
        found = journal.recorded(run["run_id"], step, fp)
        if found is not None:
            metrics().llm_calls.labels(model_label(model), "reused").inc()
            log.info("reused the recorded answer of a %s call of step %d: not asked again", kind, step + 1)
            if run.get("budget") is not None:  # paid before this claim, after the row's last checkpoint
                run["budget"].after_call(Decimal(0), model=model, cost=found.cost_usd)
            return decode(found.response), Usage(found.prompt_tokens, found.completion_tokens, found.cost_usd)
    answer, usage = ask()
    journal.record(journal.Entry(run["run_id"], step, fp, run.get("kind") or "", model, encode(answer),
                                 usage.prompt_tokens, usage.completion_tokens, usage.cost_usd))
    return answer, usage


@cache
def _schema_of(schema: type[BaseModel]) -> dict[str, Any]:
    return schema.model_json_schema()


@cache
def _response_format(schema: type[BaseModel]) -> dict[str, Any]:
    """The strict JSON-schema ``response_format`` the SDK's ``parse`` would send for ``schema``, made once
    (the SDK makes it on every call: 8 % of a worker's CPU per call, py-spy)."""
    from openai.lib._parsing._completions import type_to_response_format_param

    return dict(type_to_response_format_param(schema))  # type: ignore[arg-type]


def _post(path: str, body: dict[str, Any], cast_to: type[R]) -> R:
    """POST a request the engine built itself through the SDK's client (its key, timeout, errors and
    response types), without the SDK's walk of every parameter against its TypedDicts (17 % of a
    worker's CPU per call, py-spy): the engine's parameters are plain JSON already."""
    return client().post(path, body=body, cast_to=cast_to)


def chat(*, messages: list[dict[str, str]], model: str) -> tuple[str, Usage]:
    """Ask the model; returns the answer text and the call's usage."""
    def ask() -> tuple[str, Usage]:
        body = {"model": model, "messages": messages}
        response, usage = _paid(model, messages, get_settings().llm_output_tokens_estimate,
                                lambda: _post("/chat/completions", body, ChatCompletion))
        return response.choices[0].message.content or "", usage

    return _journaled("chat", model, messages, ask, encode=lambda text: text, decode=str)


def parse(*, messages: list[dict[str, str]], model: str, schema: type[T]) -> tuple[T, Usage]:
    """Ask for a structured answer validated by ``schema`` (what the SDK's ``parse`` does, its request
    format made once per schema)."""
    def ask() -> tuple[T, Usage]:
        body = {"model": model, "messages": messages, "response_format": _response_format(schema)}
        response, usage = _paid(model, messages, get_settings().llm_output_tokens_estimate,
                                lambda: _post("/chat/completions", body, ChatCompletion))
        choice = response.choices[0]
        if choice.finish_reason == "length":
            raise openai.LengthFinishReasonError(completion=response)
        if choice.finish_reason == "content_filter":
            raise openai.ContentFilterFinishReasonError()
        if not choice.message.content:
            raise ValueError(f"model refused or returned no structured output: {choice.message.refusal or 'empty'}")
        return schema.model_validate_json(choice.message.content), usage

    request = {"messages": messages, "schema": _schema_of(schema)}
    return _journaled("parse", model, request, ask, encode=lambda parsed: parsed.model_dump(mode="json"),
                      decode=schema.model_validate)


def embed(*, texts: list[str], model: str | None = None) -> tuple[list[list[float]], Usage]:
    """Embed texts; returns one vector per text and the call's usage."""
    model = model or get_settings().openai_embedding_model
    body = {"model": model, "input": texts, "encoding_format": "float"}
    response, usage = _paid(model, texts, 0, lambda: _post("/embeddings", body, CreateEmbeddingResponse))
    return [d.embedding for d in response.data], usage


def is_transient(exc: BaseException) -> bool:
    """Whether a failed call may succeed later (rate limits, outages), as opposed to bad requests."""
    return isinstance(exc, _TRANSIENT)
