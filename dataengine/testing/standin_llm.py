"""An OpenAI-compatible stand-in LLM server for tests, the demo and benchmarks.

Answers are deterministic functions of the prompt, so runs can be compared and resumed; the
control endpoints under ``/_fake`` inject latency, rate limits, server errors and hangs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import importlib.util
import ipaddress
import json
import math
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dataengine.infra.settings import job_module_names
from dataengine.testing.standin_limits import ProviderLimits

#: Fictional apartment communities the plain answers recommend.
ROSTER: tuple[str, ...] = (
    "The Monarch at Riverside", "Cedar Flats", "Lakeshore Commons", "Willow Creek Residences",
    "The Foundry Lofts", "Harbor Point Apartments", "Maple Terrace", "Summit Ridge Villas", "The Ellison",
    "Brookstone Place", "Aspen Court", "Parkview Heights", "The Granary", "Silver Oak Gardens",
    "Union Yard Apartments",
)
# Answers list 5 names on average, so each roster name appears in about a third of them.
_LIST_LENGTHS = (3, 4, 5, 6, 6, 6)
_REASONS = (
    "walkable to shops and transit", "pet-friendly, with a dog park", "newly renovated units",
    "strong resident reviews", "rooftop lounge and pool", "in-unit laundry and garage parking",
    "quiet, tree-lined setting", "good value for the space",
)
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-small")
DEFAULT_EMBEDDING_DIMENSIONS = 1536


class FakeConfig(BaseModel):
    """Fault and timing knobs of the stand-in server; change them live through ``/_fake/config``."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(0, ge=0)
    #: A request any of whose texts (every message, every input) contains one of these keys waits that
    #: many milliseconds instead (the longest that matches): runs of several kinds kept at one pace.
    latency_ms_by_text: dict[str, float] = {}
    #: Every Nth API request (chat and embeddings share one counter) gets a 429; 0 turns it off.
    fail_429_every: int = Field(0, ge=0)
    retry_after_s: float = Field(1.0, ge=0)
    fail_5xx_every: int = Field(0, ge=0)
    #: A chat request whose prompt contains one of these waits ``hang_s`` before answering.
    hang_substrings: list[str] = []
    hang_s: float = Field(3600, ge=0)
    #: A chat request whose prompt contains one of these is refused for good: 400, as a provider
    #: refuses a prompt (a step that fails for good, not for now).
    reject_substrings: list[str] = []
    #: The API keys it accepts, as a provider knows its customers' keys; empty: any non-empty key. Another
    #: key gets 401 ``invalid_api_key``, as OpenAI answers a wrong or revoked key.
    accepted_keys: list[str] = []
    #: The provider's own limits per minute (0: none): requests, and tokens (a request's prompt tokens
    #: plus the completion tokens it asks for at most). Above them: 429 + Retry-After. Every answer
    #: carries OpenAI's ``x-ratelimit-*`` headers for the limits that are set.
    rpm_limit: int = Field(0, ge=0)
    tpm_limit: int = Field(0, ge=0)
    #: 0: the limits count over a sliding minute. More: each is a token bucket holding this many seconds
    #: of it (full at the start, refilled at the limit's rate), as OpenAI's are; a 429 then says to the
    #: millisecond when the bucket will hold enough (``retry-after-ms``).
    limit_bucket_s: float = Field(0, ge=0, le=60)
    #: Report a chat request's system messages as served from the prompt cache
    #: (``usage.prompt_tokens_details.cached_tokens``), as a provider does for a repeated prompt prefix.
    cache_system_prompts: bool = False


class _APIError(Exception):
    """An error the server answers in OpenAI's shape, so the SDK raises its matching exception."""

    def __init__(
        self, status: int, message: str, type_: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
        self.response = JSONResponse(body, status_code=status, headers=headers)


class _State:
    """Live config and request counts, behind a lock so no concurrent request loses a count."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.limits = ProviderLimits()
        self.reset()

    def reset(self) -> None:
        self.limits.reset()
        with self.lock:
            self.requests, self.answered = 0, 0
            self.prompts: Counter[str] = Counter()
            self.answered_prompts: Counter[str] = Counter()
            self.keys: Counter[str] = Counter()

    def receive(self, prompts: list[str]) -> int:
        with self.lock:
            self.requests += 1
            self.prompts.update(prompts)
            return self.requests

    def answer(self, prompts: list[str]) -> None:
        with self.lock:
            self.answered += 1
            self.answered_prompts.update(prompts)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "answered": self.answered,
                "prompts": dict(self.prompts),
                "answered_prompts": dict(self.answered_prompts),
                "keys": dict(self.keys),
            } | self.limits.snapshot()


class ChatRequest(BaseModel):
    """The part of a chat completion request the stand-in reads."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    response_format: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class EmbeddingRequest(BaseModel):
    """The part of an embeddings request the stand-in reads."""

    model_config = ConfigDict(extra="allow")
    model: str
    input: str | Annotated[list[str], Field(min_length=1)]
    dimensions: int | None = Field(None, ge=1, le=3072)
    encoding_format: Literal["float", "base64"] = "float"


def _text(content: Any) -> str:
    # Content is a string or a list of typed parts; only text parts count.
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _tokens(*texts: str) -> int:
    return max(1, math.ceil(sum(len(t) for t in texts) / 4))


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x00".join(parts).encode()).digest()


def slug(name: str) -> str:
    """The URL slug of a community name: ``Cedar Flats`` → ``cedar-flats``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def plain_answer(prompt: str) -> str:
    """The ranked list of communities the server gives for ``prompt``; the same every time."""
    digest = _digest(prompt)
    # Ordering the roster by a per-name hash picks each name equally often.
    picked = sorted(ROSTER, key=lambda name: _digest(prompt, name))
    picked = picked[: _LIST_LENGTHS[digest[0] % len(_LIST_LENGTHS)]]
    lines = [f'Here are some options for "{prompt}":']
    for i, name in enumerate(picked, 1):
        lines.append(f"{i}. **{name}** - {_REASONS[_digest(prompt, name)[0] % len(_REASONS)]}")
    cited = picked[: 1 + digest[1] % 3]
    lines.append("Sources: " + ", ".join(f"https://www.{slug(name)}.example" for name in cited))
    return "\n".join(lines)


#: A structured answer of the stand-in: ``(prompt, schema) -> instance``.
Answer = Callable[[str, dict[str, Any]], Any]


def load_standins() -> dict[str, Answer]:
    """The stand-in answers the configured jobs declare, by JSON schema name: a job that wants
    meaningful answers (not just a valid example of the schema) ships a ``standin`` module beside it
    whose ``ANSWERS`` maps its schemas' names to functions."""
    answers: dict[str, Answer] = {}
    for module in job_module_names():
        if importlib.util.find_spec(f"{module}.standin") is not None:
            answers |= getattr(importlib.import_module(f"{module}.standin"), "ANSWERS", {})
    return answers

# Strings pydantic would otherwise reject for the format it put in the schema.
_STRING_FORMATS = {"date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01", "uri": "https://www.example.example"}


def example_from_schema(schema: dict[str, Any], root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A valid instance of a JSON schema (the subset strict structured outputs use)."""
    root = schema if root is None else root
    deep = depth > 4  # past this, take the smallest choices so recursive schemas end
    if "$ref" in schema:
        target: Any = root
        for key in schema["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        return example_from_schema(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        options = schema["anyOf"]
        nulls = [o for o in options if o.get("type") == "null"]
        return example_from_schema(nulls[0] if deep and nulls else options[0], root, depth + 1)
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        props = schema.get("properties", {})
        keys = [k for k in props if not deep or k in schema.get("required", ())]
        return {k: example_from_schema(props[k], root, depth + 1) for k in keys}
    if kind == "array":
        count = max(schema.get("minItems", 0), 0 if deep else 1)
        return [example_from_schema(schema.get("items", {}), root, depth + 1) for _ in range(count)]
    if kind == "string":
        return _STRING_FORMATS.get(schema.get("format", ""), "x" * max(1, schema.get("minLength", 1)))
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        return math.ceil(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return True
    return None


def _structured(prompt: str, response_format: dict[str, Any], answers: dict[str, Answer]) -> str:
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema") or {}
    handler = answers.get(spec.get("name", ""))
    return json.dumps(handler(prompt, schema) if handler else example_from_schema(schema))


def embed(text: str, dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic unit vector for ``text``, rounded to float32 as the wire carries it."""
    raw = struct.unpack(f"<{dimensions}H", hashlib.shake_256(text.encode()).digest(2 * dimensions))
    vec = [v / 32767.5 - 1 for v in raw]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in vec))))


def key_digest(key: str) -> str:
    """How ``/_fake/stats`` names an API key in ``keys`` (requests per key): never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _require_key(request: Request) -> None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _APIError(401, "Missing or empty bearer API key.", "invalid_request_error", "invalid_api_key")
    state: _State = request.app.state.fake
    with state.lock:
        state.keys[key_digest(key)] += 1
    if state.config.accepted_keys and key not in state.config.accepted_keys:
        raise _APIError(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")


def _latency_s(config: FakeConfig, texts: list[str]) -> float:
    matched = [ms for key, ms in config.latency_ms_by_text.items() if any(key in t for t in texts)]
    return (max(matched) if matched else config.latency_ms) / 1000


@asynccontextmanager
async def _admitted(state: _State, prompts: list[str], tokens: int, texts: list[str]) -> AsyncIterator[dict[str, str]]:
    """Count a request, refuse it over the provider's limits, wait out the configured latency, and
    raise any fault it is due; in flight until the block ends, which gets the answer's rate-limit headers. ``tokens``: what it counts against TPM;
    ``texts``: all of the request's text, which ``latency_ms_by_text`` is matched against."""
    n = state.receive(prompts)
    config = state.config
    limits = {"rpm": config.rpm_limit, "tpm": config.tpm_limit, "bucket_s": config.limit_bucket_s}
    refusal = state.limits.admit(tokens, **limits)
    if refusal is not None:
        headers = {"Retry-After": str(max(1, math.ceil(refusal.retry_after_s)))} | state.limits.headers(**limits)
        if config.limit_bucket_s:
            headers["retry-after-ms"] = str(math.ceil(refusal.retry_after_s * 1000))
        raise _APIError(429, f"Rate limit reached for {refusal.limit} per minute.", "rate_limit_error",
                        "rate_limit_exceeded", headers)
    state.limits.started()
    try:
        await asyncio.sleep(_latency_s(config, texts))
        if config.fail_429_every and n % config.fail_429_every == 0:
            state.limits.answered_429()
            headers = {"Retry-After": f"{config.retry_after_s:g}"}
            raise _APIError(429, "Rate limit reached (injected).", "rate_limit_error", "rate_limit_exceeded", headers)
        if config.fail_5xx_every and n % config.fail_5xx_every == 0:
            raise _APIError(500, "The server had an error (injected).", "server_error", "internal_error")
        yield state.limits.headers(**limits)
    finally:
        state.limits.finished()


def create_app(config: FakeConfig | None = None) -> FastAPI:
    """The stand-in server as an ASGI app, its state on ``app.state.fake``."""
    answers = load_standins()
    app = FastAPI(title="dataengine fake LLM")
    state = app.state.fake = _State(config or FakeConfig())
    authed = [Depends(_require_key)]

    @app.exception_handler(_APIError)
    async def _api_error(_: Request, exc: _APIError) -> JSONResponse:
        return exc.response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _APIError(400, str(exc.errors()), "invalid_request_error").response

    @app.post("/v1/chat/completions", dependencies=authed)
    async def chat(body: ChatRequest, response: Response) -> dict[str, Any]:
        users = [m for m in body.messages if m.get("role") == "user"]
        prompt = _text(users[-1].get("content")) if users else ""
        asked = body.max_completion_tokens or body.max_tokens or 0
        texts = [_text(m.get("content")) for m in body.messages]
        if any(s in prompt for s in state.config.reject_substrings):
            raise _APIError(400, "The prompt was rejected by the stand-in (reject_substrings).",
                            "invalid_request_error", "prompt_rejected")
        async with _admitted(state, [prompt], _tokens(*texts) + asked, texts) as headers:
            response.headers.update(headers)
            # Hang while the prompt matches; clearing hang_substrings releases requests already hung.
            deadline = time.monotonic() + state.config.hang_s
            while any(s in prompt for s in state.config.hang_substrings) and time.monotonic() < deadline:
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        kind = (body.response_format or {}).get("type", "text")
        if kind == "text":
            content = plain_answer(prompt)
        elif kind == "json_schema":
            content = _structured(prompt, body.response_format or {}, answers)
        else:
            raise _APIError(400, f"Unsupported response_format type {kind!r}.", "invalid_request_error")
        state.answer([prompt])
        message = {"role": "assistant", "content": content, "refusal": None}
        usage = {"prompt_tokens": _tokens(*(_text(m.get("content")) for m in body.messages))}
        usage["completion_tokens"] = _tokens(content)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if state.config.cache_system_prompts:
            system = [_text(m.get("content")) for m in body.messages if m.get("role") == "system"]
            usage["prompt_tokens_details"] = {"cached_tokens": _tokens(*system) if system else 0}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.model, "usage": usage,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        }

    @app.post("/v1/embeddings", dependencies=authed)
    async def embeddings(body: EmbeddingRequest, response: Response) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        async with _admitted(state, texts, _tokens(*texts), texts) as headers:
            response.headers.update(headers)
        data = []
        for i, text in enumerate(texts):
            vec: Any = embed(text, body.dimensions or DEFAULT_EMBEDDING_DIMENSIONS)
            if body.encoding_format == "base64":
                vec = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        state.answer(texts)
        tokens = _tokens(*texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": body.model, "usage": usage}

    @app.get("/v1/models", dependencies=authed)
    async def models() -> dict[str, Any]:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "dataengine"} for m in MODELS]
        return {"object": "list", "data": data}

    @app.get("/_fake/stats")
    async def stats() -> dict[str, Any]:
        return state.snapshot()

    @app.get("/_fake/in-flight")
    async def in_flight() -> dict[str, int]:
        """Requests being answered now: cheap enough to sample many times a second."""
        return {"in_flight": state.limits.in_flight}

    @app.post("/_fake/config")
    async def configure(changes: dict[str, Any]) -> FakeConfig:
        try:
            state.config = FakeConfig.model_validate({**state.config.model_dump(), **changes})
        except ValidationError as exc:
            raise _APIError(400, str(exc), "invalid_request_error") from exc
        return state.config

    @app.post("/_fake/reset")
    async def reset() -> dict[str, bool]:
        state.reset()
        return {"ok": True}

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    *, host: str = "127.0.0.1", port: int = 8765, config: FakeConfig | None = None, allow_remote: bool = False
) -> None:
    """Run the stand-in server in the foreground; loopback only unless ``allow_remote``."""
    if not allow_remote and not _is_loopback(host):
        raise ValueError(f"the fake LLM server is a test tool; refusing to listen on {host!r} (pass allow_remote=True)")
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")


def wait_until_serving(url: str, *, timeout_s: float, alive: Callable[[], bool]) -> bool:
    """Poll ``url/healthz`` until it answers (True), the server dies or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200:
                return True
        except httpx.TransportError:
            time.sleep(0.02)
    return False


class FakeLLMServer:
    """The stand-in server on a loopback port in a background thread, as a context manager."""

    def __init__(self, config: FakeConfig | None = None, *, port: int = 0) -> None:
        self.app = create_app(config)
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The server's root URL, e.g. ``http://127.0.0.1:51234``."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        """The URL to give the OpenAI SDK as ``base_url``."""
        return f"{self.url}/v1"

    def start(self) -> FakeLLMServer:
        """Bind, start serving, and return once ``/healthz`` answers."""
        # Naming IPPROTO_TCP lets asyncio set TCP_NODELAY on accepted sockets (else ~40 ms per request).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        # Hung requests (hang_s) must not hold up stop(); ws="none" skips importing websockets.
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", ws="none", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        if wait_until_serving(self.url, timeout_s=10, alive=self._thread.is_alive):
            return self
        self.stop()
        raise RuntimeError(f"fake LLM server did not come up on {self.url}")

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for its thread."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, f"{self.url}/_fake/{path}", json=body, timeout=10, trust_env=False)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        """Request counts: ``requests``, ``answered``, ``prompts``, ``answered_prompts``, and ``keys``
        (requests by :func:`key_digest` of their API key)."""
        return self._control("GET", "stats")

    def configure(self, **changes: Any) -> FakeConfig:
        """Change some config fields; returns the whole new config."""
        return FakeConfig.model_validate(self._control("POST", "config", changes))

    def reset(self) -> None:
        """Zero all counts; the config stays."""
        self._control("POST", "reset")
