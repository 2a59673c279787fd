"""One settings object for the whole engine; no other module reads ``os.environ``.

The public contract's variables (``DATABASE_URL``, ``REDIS_URL``, ``OPENAI_API_KEY``,
``OPENAI_BASE_URL``, model names) keep their plain names; the engine's own knobs take the
``DATAENGINE_`` prefix (``DATAENGINE_LEASE_S=10``).
"""

from __future__ import annotations

import base64
import binascii
import threading
from decimal import Decimal
from typing import Literal, Self
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import AliasChoices, AnyHttpUrl, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The key the stand-in LLM server accepts; refused outside development.
PLACEHOLDER_API_KEY = "sk-local-stand-in"
#: The placeholder password of .env.example, and the shortest API key production accepts.
PLACEHOLDER_SECRET = "change-me"  # noqa: S105  the placeholder production refuses (Settings._check_production_secrets)
MIN_PRODUCTION_API_KEY_CHARS = 16
#: The shortest session secret production accepts (``openssl rand -hex 32`` makes 64 characters).
MIN_PRODUCTION_SESSION_SECRET_CHARS = 32
#: How to make a secret for ``DATAENGINE_SESSION_SECRET``.
MAKE_SESSION_SECRET = "openssl rand -hex 32"  # noqa: S105  a command that makes one, not a secret
#: How to make a key for ``DATAENGINE_ENCRYPTION_KEY``.
MAKE_FERNET_KEY = "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


def _is_fernet_key(key: str) -> bool:
    """Whether ``key`` is what ``cryptography``'s Fernet takes: 32 bytes, url-safe base64."""
    try:
        return len(base64.urlsafe_b64decode(key.encode())) == 32
    except (binascii.Error, ValueError):
        return False


class LLMLimits(BaseModel):
    """One model's provider limits per minute; unset (or 0) is no limit."""

    rpm: float | None = Field(None, ge=0)
    tpm: float | None = Field(None, ge=0)


class ModelPrice(BaseModel):
    """One model's prices in USD per million tokens; cached input (prompt tokens the provider served from
    its cache) costs ``input`` when not given."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            if len(value) not in (2, 3):
                raise ValueError("a price is [input, output] or [input, output, cached input] in USD per million tokens")
            return dict(zip(("input", "output", "cached_input"), value, strict=False))
        return value


class Settings(BaseSettings):
    """Every setting of the engine, validated once at start-up."""

    # A refused setting's error names the setting, never the values (the keys among them).
    model_config = SettingsConfigDict(env_prefix="DATAENGINE_", extra="ignore", populate_by_name=True,
                                      hide_input_in_errors=True)

    environment: Literal["development", "production"] = "development"

    database_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/dataengine", validation_alias=_env("DATABASE_URL")
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL"))

    # The database connection (dataengine.infra.db): pooler mode, pool size, timeouts.
    #: "transaction" behind PgBouncer or Supabase's pooler in transaction mode (no prepared
    #: statements, no session state); "auto": transaction when the URL's port is 6543 (Supabase's).
    db_pooler: Literal["auto", "none", "transaction"] = "auto"
    #: Connections each process keeps open, and how many more it may open for a moment.
    db_pool_size: int = Field(5, ge=1)
    db_max_overflow: int = Field(10, ge=0)
    #: Server-side limits on every session of the engine, in seconds; 0 turns one off. A session
    #: idle inside a transaction (a frozen worker holding a run row's lock) is ended after
    #: ``db_idle_in_transaction_timeout_s``; a lock wait gives up after ``db_lock_timeout_s``
    #: (longer, so a wait behind a frozen worker ends with that worker's session, not in an error).
    db_statement_timeout_s: float = Field(30.0, ge=0)
    db_lock_timeout_s: float = Field(10.0, ge=0)
    db_idle_in_transaction_timeout_s: float = Field(6.0, ge=0)
    #: TCP keepalives: a peer that stops answering is dropped after idle + interval × count seconds.
    db_keepalives_idle_s: int = Field(10, ge=1)
    db_keepalives_interval_s: int = Field(5, ge=1)
    db_keepalives_count: int = Field(3, ge=1)

    openai_api_key: SecretStr = Field(SecretStr(PLACEHOLDER_API_KEY), validation_alias=_env("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(None, validation_alias=_env("OPENAI_BASE_URL"))
    openai_model: str = Field("gpt-4o-mini", validation_alias=_env("OPENAI_MODEL"))
    openai_eval_model: str = Field("gpt-4o-mini", validation_alias=_env("OPENAI_EVAL_MODEL"))
    openai_embedding_model: str = Field("text-embedding-3-small", validation_alias=_env("OPENAI_EMBEDDING_MODEL"))
    #: Tries of one call after the first, within the rate limits (the SDK itself retries nothing); what
    #: still fails fails the step, and the run is retried with backoff.
    openai_max_retries: int = Field(2, ge=0, le=10, validation_alias=_env("OPENAI_MAX_RETRIES"))
    openai_timeout_s: float = Field(120.0, gt=0, validation_alias=_env("OPENAI_TIMEOUT_S"))
    #: Fernet keys that encrypt the workspaces' provider keys at rest (``dataengine.llm.keyring``), separated
    #: by commas: the first encrypts, every one decrypts. To rotate, put a new key first and keep the old
    #: one until ``dataengine workspaces rotate-key`` has re-encrypted every key. Unset: no workspace
    #: can be added or used.
    encryption_key: SecretStr | None = None
    #: USD per million tokens by model: input, output and cached input, as JSON
    #: (``{"my-model": [0.5, 1.5, 0.25]}`` or ``{"my-model": {"input": 0.5, "output": 1.5}}``); a model
    #: missing here is unpriced: its calls count as 0 and are flagged wherever costs are shown, and a
    #: run with a budget refuses it. Set, it replaces this whole table.
    model_prices_per_mtok: dict[str, ModelPrice] = {
        "gpt-4o-mini": ModelPrice(input=0.15, output=0.60, cached_input=0.075),
        "gpt-4o": ModelPrice(input=2.50, output=10.00, cached_input=1.25),
        "gpt-4.1": ModelPrice(input=2.00, output=8.00, cached_input=0.50),
        "gpt-4.1-mini": ModelPrice(input=0.40, output=1.60, cached_input=0.10),
        "gpt-4.1-nano": ModelPrice(input=0.10, output=0.40, cached_input=0.025),
        "text-embedding-3-small": ModelPrice(input=0.02, output=0.0),
        "text-embedding-3-large": ModelPrice(input=0.13, output=0.0),
    }

    #: What the whole fleet may spend on LLM calls per day (UTC), in USD; once spent, runs pause (they are
    #: not failed) until midnight UTC or until it is raised. Unset: no daily budget. A workspace has its own.
    daily_budget_usd: Decimal | None = Field(None, gt=0)
    #: How often a run paused by a daily budget is looked at again.
    budget_recheck_s: float = Field(60.0, gt=0)

    # The fleet-wide LLM rate limits (dataengine.llm.limits), shared by every worker through Redis.
    #: Requests and tokens per minute of every model without an entry of its own in
    #: ``llm_model_limits``; unset, no limit (a 429 still pauses the model for the whole fleet).
    llm_rpm: float | None = Field(None, ge=0)
    llm_tpm: float | None = Field(None, ge=0)
    #: Per-model limits as JSON: ``{"gpt-4o": {"rpm": 500, "tpm": 30000}}``. A model listed here uses
    #: only its own (a limit left out is no limit).
    llm_model_limits: dict[str, LLMLimits] = {}
    #: What a model may send at once, in seconds of its request rate (at least one request); the rest of
    #: the minute is spread evenly. Small, so that calls that reach the provider a little later or earlier
    #: than they were let go (connections, scheduling) still fit its own bucket, which holds about a second.
    llm_burst_s: float = Field(0.1, ge=0, le=30)
    #: The same for tokens. It should cover a typical call: a call larger than the burst waits for
    #: an idle gap, which costs throughput.
    llm_token_burst_s: float = Field(6.0, ge=0, le=30)
    #: Tokens reserved for the answer of a call that sets no ``max_tokens`` (corrected after the call).
    llm_output_tokens_estimate: int = Field(512, ge=0)
    #: A 429 without ``Retry-After`` pauses its model this long.
    llm_default_retry_after_s: float = Field(2.0, ge=0, le=60)
    #: While Redis is unreachable, each worker process keeps to this share of every limit on its own
    #: (at most 1 / the fleet's processes keeps the fleet under the limit during an outage).
    llm_fallback_share: float = Field(0.1, gt=0, le=1)
    #: After a 429's pause a model runs at this share of its rate, rising to all of it over ``llm_recovery_s``.
    llm_recovery_start: float = Field(0.5, gt=0, le=1)
    llm_recovery_s: float = Field(3.0, ge=0)
    #: A model with no configured limit keeps to the provider's, as its answers' ``x-ratelimit-limit-*``
    #: headers say (OpenAI sends them); until the first answer is heard, to ``llm_unknown_rpm``.
    llm_learn_limits: bool = True
    llm_unknown_rpm: float = Field(600.0, gt=0)

    # The run engine (dataengine.engine.runs / dataengine.engine.sweeper / dataengine.engine.liveness).
    #: A process whose heartbeat is this late is dead and its runs are taken back (at twice the
    #: heartbeat interval if its database connection is gone too); a run whose holder has no
    #: heartbeat holds this long after its claim or last checkpoint.
    lease_s: float = Field(3.0, gt=0)
    #: How often a process holding runs writes its heartbeat, and how often sweepers look for dead ones.
    heartbeat_interval_s: float = Field(0.25, gt=0)
    #: How often sweepers look for lapsed leases and runs no worker claimed.
    sweep_interval_s: float = Field(1.0, gt=0)
    #: A run enqueued (or re-enqueued) but not claimed for this long is enqueued again.
    redispatch_after_s: float = Field(300.0, gt=0)
    #: A run the sweeper sent again (its worker died) and no worker claimed this long after is looked
    #: at again: a message no longer in the queue was taken by a worker that died before claiming it,
    #: and it is sent once more; one still queued behind a backlog is next looked at after
    #: ``redispatch_after_s``.
    unclaimed_recheck_s: float = Field(15.0, gt=0)
    #: A run whose workers died this many times with the same step in flight ends ``failed``.
    max_losses_per_step: int = Field(3, ge=1)
    #: LLM calls (steps) in flight at once in one worker process, across every run it holds.
    calls_in_flight: int = Field(512, ge=1, le=4096)
    #: Runs one worker process holds at once: a pool process hands a claimed run to its own threads
    #: and takes the next message, up to this many (they share ``calls_in_flight`` fairly).
    runs_per_process: int = Field(64, ge=1, le=1024)
    #: Steps of one run in flight at once at most. Unset, a run takes its fair share of
    #: ``calls_in_flight``: all of it when it is alone, an equal part when the process holds several.
    step_concurrency: int | None = Field(None, ge=1, le=4096)
    #: A step still running after this long is abandoned and counts as a transient failure.
    step_timeout_s: float = Field(900.0, gt=0)
    #: How long a run waits out a database outage (retrying checkpoints, confirming its lease)
    #: before it is handed back to Celery for a later retry.
    db_retry_limit_s: float = Field(120.0, gt=0)
    #: Celery retries of a run after a transient error (LLM down, database blip), at most; the
    #: window below is what ends them first with the defaults.
    task_max_retries: int = Field(100, ge=0)
    #: How long a run keeps being retried while it fails for a transient reason (the LLM provider
    #: down or refusing connections, a database outage) without recording a step: past this it
    #: ends ``failed``. A run that records steps between failures starts the window again.
    transient_retry_window_s: float = Field(900.0, gt=0)
    #: The longest wait between two retries of a run (exponential backoff from 2 s, full jitter).
    retry_backoff_max_s: float = Field(60.0, gt=0)
    #: Redis hides an unacknowledged message this long; our sweeper recovers runs much sooner.
    visibility_timeout_s: int = Field(86400, gt=0)
    #: A running run whose worker still heartbeats but that has recorded no step for this many times
    #: its usual time per step (its time running / its steps recorded), and at least ``stall_min_s``,
    #: is flagged stalled (a hung provider, say): an event, a metric, its status. Its next step clears it.
    stall_factor: float = Field(10.0, gt=1)
    stall_min_s: float = Field(60.0, gt=0)
    #: A run's history (``run_events``) is kept this long, then pruned by the sweepers.
    events_retention_days: float = Field(30.0, gt=0)
    #: The LLM responses a finished run's steps received (``llm_responses``) are kept this long.
    journal_retention_days: float = Field(7.0, gt=0)

    # Observability (dataengine.infra.metrics, dataengine.infra.logs).
    #: Each worker serves its Prometheus metrics on this port (its main process, for all its pool
    #: processes); unset, it serves none. The API always serves ``/metrics``.
    worker_metrics_port: int | None = Field(None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"

    #: The modules that define the jobs (each registers one ``Job``); workers, beat and the CLI import them.
    #: Unset: every installed package's ``dataengine.jobs`` entry points (``job_module_names``).
    job_modules: list[str] | None = None

    # The HTTP API (dataengine.web): where it listens, the largest body it reads, the key of the seeds.
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    #: The most text (UTF-8 bytes, every string of it) one spec may carry, however it arrives (a task,
    #: the API, the CLI): the job's count and length limits allow more than a message should hold.
    max_spec_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    #: One API key, as the web apps of the seeds configure it; ``dataengine api-keys`` adds named ones.
    api_key: SecretStr | None = Field(None, validation_alias=_env("DATA_ENGINE_API_KEY"))
    #: Secrets that sign the runs page's session cookies (``dataengine.web.sessions``), separated by commas:
    #: the first signs, every one verifies. To rotate, put a new one first and drop the old one after the
    #: session TTL (12 h). Every API process must share them, so there is no per-process default: unset,
    #: the runs page's login is refused (the /v1 API works as before).
    session_secret: SecretStr | None = None
    #: Where browsers and web apps reach this API (``https://engine.example.com``), which a proxy in front
    #: of it may hide from it: a started run's ``status_url`` is built from it, the runs page's cookies are
    #: ``Secure`` when it is https, and its origin may post the login form. Unset: ``status_url`` is a
    #: path (never built from a request's ``Host`` header), and the runs page goes by each request's own
    #: scheme and host.
    public_base_url: AnyHttpUrl | None = None

    # Flower (flowerconfig.py): basic auth as ``user:password`` (several separated by commas), as
    # Flower's own FLOWER_BASIC_AUTH; without one Flower refuses to start unless it is started for
    # local use on purpose (``DATAENGINE_FLOWER_ALLOW_NO_AUTH=true``, never in production).
    flower_basic_auth: SecretStr | None = Field(None, validation_alias=_env("FLOWER_BASIC_AUTH"))
    flower_allow_no_auth: bool = False
    #: A ``task-sent`` event per message sent, so Flower lists tasks still queued: a second Redis
    #: round trip on every send (a third of a submit's cost). Off, Flower lists a task once a
    #: worker receives it; queued runs are on the runs page and the API either way.
    task_sent_events: bool = False

    #: A worker or beat ends with the process that started it (the demo, tests, benchmarks).
    die_with_parent: bool = False

    log_level: str = "INFO"
    #: ``text`` (the default) or ``json``: one JSON object per line from workers, beat and the API,
    #: each line of a run with its ``run_id``, ``task_id``, ``kind``, ``step`` and ``worker``.
    log_format: Literal["text", "json"] = "text"
    #: Report errors to Sentry (its Celery and logging integrations, events tagged with the run,
    #: secrets scrubbed); unset, nothing is sent.
    sentry_dsn: SecretStr | None = Field(None, validation_alias=_env("SENTRY_DSN"))

    @field_validator("redis_url")
    @classmethod
    def _verify_tls(cls, value: str) -> str:
        """A ``rediss://`` URL verifies the server's certificate unless it says otherwise: Celery refuses
        one without ``ssl_cert_reqs``, and ``required`` is the only safe default (``ssl_ca_certs=`` names
        a private CA)."""
        parts = urlsplit(value)
        if parts.scheme == "rediss" and "ssl_cert_reqs" not in parse_qs(parts.query):
            query = "&".join(q for q in (parts.query, "ssl_cert_reqs=required") if q)
            return urlunsplit(parts._replace(query=query))
        return value

    @field_validator("api_key", "flower_basic_auth", "step_concurrency", "llm_rpm", "llm_tpm", "daily_budget_usd",
                     "public_base_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("encryption_key", mode="before")
    @classmethod
    def _fernet_keys(cls, value: object) -> object:
        """Each comma-separated part a Fernet key (32 url-safe base64 bytes); blank is unset. The error
        says which part is wrong, never what it holds."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(raw, str) or not raw.strip():
            return None if isinstance(raw, str) else value
        keys = [part.strip() for part in raw.split(",")]
        for n, key in enumerate(keys, 1):
            if not _is_fernet_key(key):
                raise ValueError(f"DATAENGINE_ENCRYPTION_KEY: key {n} of {len(keys)} is not a Fernet key (32 url-safe "
                                 f"base64-encoded bytes); make one with {MAKE_FERNET_KEY}")
        return ",".join(keys)

    @field_validator("session_secret", mode="before")
    @classmethod
    def _session_secrets(cls, value: object) -> object:
        """Comma-separated secrets, none of them blank (``NEW,,OLD`` is a typo, not a rotation); blank is unset."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(raw, str) or not raw.strip():
            return None if isinstance(raw, str) else value
        secrets = [part.strip() for part in raw.split(",")]
        for n, secret in enumerate(secrets, 1):
            if not secret:
                raise ValueError(f"DATAENGINE_SESSION_SECRET: secret {n} of {len(secrets)} is empty")
        return ",".join(secrets)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.heartbeat_interval_s >= self.lease_s:
            raise ValueError("DATAENGINE_HEARTBEAT_INTERVAL_S must be shorter than DATAENGINE_LEASE_S")
        if self.environment == "production" and self.openai_api_key.get_secret_value() == PLACEHOLDER_API_KEY:
            raise ValueError("OPENAI_API_KEY is the local placeholder; set a real key in production")
        if self.environment == "production" and self.flower_allow_no_auth:
            raise ValueError("DATAENGINE_FLOWER_ALLOW_NO_AUTH is for local use, never production")
        if self.environment == "production":
            self._check_production_secrets()
        return self

    def _check_production_secrets(self) -> None:
        """No placeholder from .env.example, and no API key or session secret short enough to guess, in production."""
        if self.api_key is not None:
            key = self.api_key.get_secret_value()
            if key == PLACEHOLDER_SECRET or len(key) < MIN_PRODUCTION_API_KEY_CHARS:
                raise ValueError(f"DATA_ENGINE_API_KEY is a placeholder or shorter than {MIN_PRODUCTION_API_KEY_CHARS} "
                                 "characters; in production use a random one (openssl rand -hex 32)")
        if self.flower_basic_auth is not None:
            pairs = self.flower_basic_auth.get_secret_value().split(",")
            if any(pair.partition(":")[2].strip() == PLACEHOLDER_SECRET for pair in pairs):
                raise ValueError(f"FLOWER_BASIC_AUTH has the placeholder password {PLACEHOLDER_SECRET!r}; "
                                 "set a real one in production")
        if self.session_secret is not None:
            parts = self.session_secret.get_secret_value().split(",")
            if any(part == PLACEHOLDER_SECRET or len(part) < MIN_PRODUCTION_SESSION_SECRET_CHARS for part in parts):
                raise ValueError(f"DATAENGINE_SESSION_SECRET has a placeholder or a secret shorter than "
                                 f"{MIN_PRODUCTION_SESSION_SECRET_CHARS} characters; in production use random ones "
                                 f"({MAKE_SESSION_SECRET})")

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver, whatever scheme the user wrote."""
        url = self.database_url
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


class SettingsOnce:
    """``get_settings()``: the process-wide settings, read from the environment on first use.

    ``cache_clear()`` takes the lock a first read holds, so a read that began before a clear cannot
    store what it read after it: tests change the environment between tests while threads of an
    earlier one (a writer, an abandoned step) may still read the settings; with ``lru_cache`` such a
    late read once left a test on the default database."""

    def __init__(self) -> None:
        self._value: Settings | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Settings:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = Settings()
                value = self._value
        return value

    def cache_clear(self) -> None:
        """Read the environment again at the next call."""
        with self._lock:
            self._value = None

    @property
    def loaded(self) -> bool:
        """Whether the settings have been read in this process."""
        return self._value is not None


get_settings = SettingsOnce()


#: The entry-point group a package declares its jobs in (``[project.entry-points."dataengine.jobs"]``).
JOBS_ENTRY_POINTS = "dataengine.jobs"


def job_module_names() -> list[str]:
    """The modules that define the jobs: ``DATAENGINE_JOB_MODULES``, else the installed packages'
    ``dataengine.jobs`` entry points, in the order they declare them. The engine names no job."""
    configured = get_settings().job_modules
    if configured is not None:
        return configured
    from importlib.metadata import entry_points

    return list(dict.fromkeys(ep.value for ep in entry_points(group=JOBS_ENTRY_POINTS)))


class JobSettings(BaseSettings):
    """A job's own settings (its limits), read from ``DATAENGINE_*`` like the engine's, once per
    process on first use: ``AuditLimits.current()``. ``reset_job_settings()`` reads them again."""

    model_config = SettingsConfigDict(env_prefix="DATAENGINE_", extra="ignore", hide_input_in_errors=True)

    @classmethod
    def current(cls) -> Self:
        """This process's values of these settings."""
        if cls not in _job_settings:
            _job_settings[cls] = cls()
        return _job_settings[cls]  # type: ignore[return-value]


_job_settings: dict[type[JobSettings], JobSettings] = {}


def reset_job_settings() -> None:
    """Forget every job's settings, so the next use reads the environment again (tests)."""
    _job_settings.clear()
