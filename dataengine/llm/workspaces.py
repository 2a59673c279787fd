"""Workspaces, "bring your own key": one engine, many customers, each paying the provider with its own key,
or sharing the engine's.

A workspace (``models.workspaces``) holds its provider key encrypted (``dataengine.llm.keyring``), its
base URL, its default models and its limits. A run that names a ``workspace_id`` makes its calls
with that key and URL (``dataengine.llm.calls``), uses the workspace's models where its spec names none
(:func:`default_model`), keeps to the workspace's rate limits apart from every other key's
(:func:`limit_name`) and counts against its daily budget (:func:`daily_budget`).

A workspace without a key of its own (``add_workspace(api_key=None)``) calls with the engine's
``OPENAI_API_KEY`` at ``OPENAI_BASE_URL`` under the engine's limits, which the fleet limiter shares
equally between the workspaces asking at the moment (``dataengine.llm.limits``, tenants): one
customer's backlog does not starve another's run. Its models, daily budget and runs are its own.

Workers read a workspace through :func:`lookup`, kept for ``LOOKUP_TTL_S`` per process: a key
replaced with ``dataengine workspaces set-key`` is in use within seconds, and a database blip
meanwhile is ridden out on the copy at hand. The key is decrypted only to build a client; nothing
here logs it, and no error, listing or repr carries it.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from dataengine.infra.db import session_scope
from dataengine.infra.dbretry import db_unavailable
from dataengine.infra.errors import DataEngineError, RunFatal
from dataengine.infra.settings import LLMLimits, get_settings
from dataengine.llm import keyring
from dataengine.llm.limits import ModelLimits
from models.workspaces import WORKSPACE_ID_CHARS, Workspace

#: What a workspace id may be: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit.
ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{WORKSPACE_ID_CHARS - 1}}}")
#: How long a process keeps what it read of a workspace: a replaced key is used within this long.
LOOKUP_TTL_S = 5.0
#: What a workspace's ``models`` may name, and the engine's setting each falls back to.
PURPOSES = {"chat": "openai_model", "eval": "openai_eval_model", "embedding": "openai_embedding_model"}
Purpose = Literal["chat", "eval", "embedding"]
#: Between a model and its workspace in the fleet limiter's names (``gpt-4o|ws:acme``): a workspace's
#: calls are limited, and paused by a 429, apart from every other key's.
LIMIT_NAME_SEP = "|ws:"
MAX_PROVIDER_KEY_CHARS = 1000
#: Characters of a provider key a listing shows (its end, as providers' dashboards do), and the
#: shortest key that shows any.
KEY_HINT_CHARS, KEY_HINT_MIN_CHARS = 4, 16
#: A provider key: printable ASCII without spaces (it travels in an HTTP header).
_KEY_CHARS = re.compile(r"[!-~]+")


class WorkspaceInvalid(DataEngineError):
    """workspace {workspace_id!r}: {why}"""


class WorkspaceNotFound(DataEngineError):
    """no workspace {workspace_id!r}; create it with dataengine workspaces add"""


class WorkspaceExists(DataEngineError):
    """workspace {workspace_id!r} exists already; replace its key with dataengine workspaces set-key"""


class WorkspaceUnavailable(DataEngineError):
    """workspace {workspace_id!r} could not be read: the database is unreachable; the run is retried"""

    retryable = True


class WorkspaceKeyUnusable(RunFatal):
    """workspace {workspace_id!r}'s provider key cannot be used: {why}"""


class WorkspaceLimits(BaseModel):
    """A workspace's provider limits per minute: ``rpm``/``tpm`` for every model, or a model's own in ``models``
    (a model listed there uses only its own). Unset: no limit, but a 429 still pauses the workspace's model."""

    model_config = ConfigDict(extra="forbid")

    rpm: float | None = Field(None, ge=0)
    tpm: float | None = Field(None, ge=0)
    models: dict[str, LLMLimits] = {}

    def for_model(self, model: str) -> ModelLimits:
        """The limits ``model``'s calls keep to."""
        own = self.models.get(model)
        return ModelLimits(own.rpm, own.tpm) if own is not None else ModelLimits(self.rpm, self.tpm)


@dataclass(frozen=True)
class WorkspaceSettings:
    """What a workspace is, its key and limits aside: as workers read it and as it is listed."""

    id: str
    name: str
    base_url: str | None
    models: dict[str, str]
    daily_budget_usd: Decimal | None


@dataclass(frozen=True)
class WorkspaceConfig(WorkspaceSettings):
    """What a worker needs of a workspace. The key stays encrypted until :meth:`api_key`."""

    limits: WorkspaceLimits
    #: Changes whenever the key or the base URL does (a re-encryption too): a client built for another is rebuilt.
    key_version: str
    _token: str | None = field(repr=False)

    @property
    def own_key(self) -> bool:
        """Whether it has a provider key of its own (else its runs use the engine's, and its limits)."""
        return self._token is not None

    def api_key(self) -> str:
        """The provider key in plain text, to build a client with; never log it."""
        if self._token is None:
            raise WorkspaceKeyUnusable(workspace_id=self.id, why="it has no key of its own: its runs use the engine's")
        try:
            return keyring.decrypt(self._token, what=f"workspace {self.id!r}'s provider key")
        except DataEngineError as exc:
            raise WorkspaceKeyUnusable(workspace_id=self.id, why=str(exc)) from None


@dataclass(frozen=True)
class WorkspaceInfo(WorkspaceSettings):
    """A workspace as listed: never its key, at most the key's last characters."""

    rate_limits: dict[str, Any]
    created_at: datetime
    key_updated_at: datetime
    #: ``…abcd``, ``the engine's`` (none of its own), or why the key cannot be read with the configured encryption keys.
    key_hint: str


def validate_id(workspace_id: str) -> str:
    """The id stripped, or ``WorkspaceInvalid`` (it also names the limiter's Redis keys: no braces, no spaces)."""
    workspace_id = workspace_id.strip()
    if not ID_PATTERN.fullmatch(workspace_id):
        raise WorkspaceInvalid(workspace_id=workspace_id[:WORKSPACE_ID_CHARS], why=(
            f"an id is 1 to {WORKSPACE_ID_CHARS} letters, digits, '.', '_' or '-', starting with a letter or digit"))
    return workspace_id


def _provider_key(workspace_id: str, api_key: str) -> str:
    key = api_key.strip()
    if not key or len(key) > MAX_PROVIDER_KEY_CHARS or not _KEY_CHARS.fullmatch(key):
        raise WorkspaceInvalid(workspace_id=workspace_id, why=(
            f"the provider key must be 1 to {MAX_PROVIDER_KEY_CHARS} printable characters without spaces"))
    return key


def _base_url(workspace_id: str, base_url: str | None) -> str | None:
    if base_url is None or not base_url.strip():
        return None
    url = base_url.strip()
    if not re.fullmatch(r"https?://\S+", url) or len(url) > 2000:
        raise WorkspaceInvalid(workspace_id=workspace_id, why="the base URL must be an http:// or https:// URL")
    return url


def _models(workspace_id: str, models: dict[str, str] | None) -> dict[str, str]:
    models = {k: v.strip() for k, v in (models or {}).items()}
    unknown = sorted(set(models) - set(PURPOSES))
    if unknown or not all(0 < len(v) <= 200 for v in models.values()):
        raise WorkspaceInvalid(workspace_id=workspace_id, why=(
            f"models are given as {'|'.join(PURPOSES)}=MODEL (a name of 1 to 200 characters)"
            + (f", not {', '.join(unknown)}" if unknown else "")))
    return models


def _budget(workspace_id: str, amount: Decimal | str | float | None) -> Decimal | None:
    if amount is None:
        return None
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value <= 0 or value >= Decimal("1e8"):
        raise WorkspaceInvalid(workspace_id=workspace_id, why="the daily budget is a number of US dollars above 0")
    return value.quantize(Decimal("0.000001"))


def _limits(workspace_id: str, limits: dict[str, Any] | None) -> dict[str, Any]:
    try:
        return WorkspaceLimits.model_validate(limits or {}).model_dump(exclude_none=True, exclude_defaults=True)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise WorkspaceInvalid(workspace_id=workspace_id, why=f"rate limits: {problems}") from None


def add_workspace(*, workspace_id: str, name: str, api_key: str | None, base_url: str | None = None,
                  models: dict[str, str] | None = None, daily_budget_usd: Decimal | str | float | None = None,
                  rate_limits: dict[str, Any] | None = None) -> None:
    """Create a workspace, its provider key encrypted under the first encryption key; ``api_key=None``: it
    uses the engine's key, URL and limits (so it may set neither a base URL nor limits of its own)."""
    workspace_id = validate_id(workspace_id)
    name = name.strip()
    if not 0 < len(name) <= 200:
        raise WorkspaceInvalid(workspace_id=workspace_id, why="its name must be 1 to 200 characters")
    if api_key is None and (base_url or any((rate_limits or {}).values())):
        raise WorkspaceInvalid(workspace_id=workspace_id, why=(
            "a base URL or rate limits need a provider key of its own: without one it uses the engine's"))
    values = {
        "id": workspace_id, "name": name, "base_url": _base_url(workspace_id, base_url),
        "models": _models(workspace_id, models), "daily_budget_usd": _budget(workspace_id, daily_budget_usd),
        "rate_limits": _limits(workspace_id, rate_limits),
        "api_key_encrypted": None if api_key is None else keyring.encrypt(_provider_key(workspace_id, api_key)),
    }
    try:
        with session_scope() as session:
            session.execute(insert(Workspace).values(**values))
    except IntegrityError:
        raise WorkspaceExists(workspace_id=workspace_id) from None


def set_key(*, workspace_id: str, api_key: str) -> None:
    """Replace a workspace's provider key: workers use the new one within ``LOOKUP_TTL_S``."""
    token = keyring.encrypt(_provider_key(workspace_id, api_key))
    with session_scope() as session:
        changed = session.execute(update(Workspace).where(Workspace.id == workspace_id)
                                  .values(api_key_encrypted=token, key_updated_at=func.now()))
        if not changed.rowcount:
            raise WorkspaceNotFound(workspace_id=workspace_id)
    forget(workspace_id)


def set_daily_budget(*, workspace_id: str, daily_budget_usd: Decimal | str | float | None) -> None:
    """Change (None: remove) what a workspace's runs may spend per day: runs it paused go on at the sweep
    after workers read it again (``LOOKUP_TTL_S``) if today's spend is now under it."""
    budget = _budget(workspace_id, daily_budget_usd)
    with session_scope() as session:
        changed = session.execute(update(Workspace).where(Workspace.id == workspace_id)
                                  .values(daily_budget_usd=budget))
        if not changed.rowcount:
            raise WorkspaceNotFound(workspace_id=workspace_id)
    forget(workspace_id)


def rotate_keys() -> int:
    """Re-encrypt every workspace's key under the first encryption key, all or none (a key no encryption key
    opens stops it, named); returns how many. Afterwards the older encryption keys may be removed."""
    with session_scope() as session:
        rows = session.execute(select(Workspace.id, Workspace.api_key_encrypted).order_by(Workspace.id)
                               .where(Workspace.api_key_encrypted.is_not(None)).with_for_update()).all()
        for row in rows:
            token = keyring.reencrypt(row.api_key_encrypted, what=f"workspace {row.id!r}'s provider key")
            session.execute(update(Workspace).where(Workspace.id == row.id).values(api_key_encrypted=token))
    forget()
    return len(rows)


def _hint(token: str | None) -> str:
    if token is None:
        return "the engine's"
    try:
        key = keyring.decrypt(token)
    except keyring.KeyUnreadable:
        return "unreadable with DATAENGINE_ENCRYPTION_KEY"
    return "…" + key[-KEY_HINT_CHARS:] if len(key) >= KEY_HINT_MIN_CHARS else "…"


def list_workspaces() -> list[WorkspaceInfo]:
    """Every workspace, by id, with its key's last characters at most."""
    with session_scope() as session:
        rows = session.execute(select(Workspace).order_by(Workspace.id)).scalars().all()
        return [WorkspaceInfo(w.id, w.name, w.base_url, dict(w.models), w.daily_budget_usd, dict(w.rate_limits),
                              w.created_at, w.key_updated_at, _hint(w.api_key_encrypted)) for w in rows]


# The per-process copy of what workers read: positive answers only (a workspace added a moment ago is found).
_cache: dict[str, tuple[float, WorkspaceConfig]] = {}
_cache_lock = threading.Lock()
_refresh_lock = threading.Lock()  # one thread reads the database; the others keep using the copy at hand
_cache_pid = os.getpid()


def _locks() -> tuple[threading.Lock, threading.Lock]:
    """The cache's locks, new in a forked child (a lock held by a parent's thread at the fork stays held)."""
    global _cache_lock, _refresh_lock, _cache_pid
    if _cache_pid != os.getpid():
        _cache_lock, _refresh_lock, _cache_pid = threading.Lock(), threading.Lock(), os.getpid()
        _cache.clear()
    return _cache_lock, _refresh_lock


def _read(workspace_id: str) -> WorkspaceConfig:
    try:
        with session_scope() as session:
            w = session.get(Workspace, workspace_id)
            if w is None:
                raise WorkspaceNotFound(workspace_id=workspace_id)
            version = hashlib.sha256(f"{w.api_key_encrypted or ''}\x00{w.base_url or ''}".encode()).hexdigest()[:16]
            return WorkspaceConfig(w.id, w.name, w.base_url, dict(w.models), w.daily_budget_usd,
                                   WorkspaceLimits.model_validate(w.rate_limits), version, w.api_key_encrypted)
    except Exception as exc:
        if db_unavailable(exc):
            raise WorkspaceUnavailable(workspace_id=workspace_id) from exc
        raise


def lookup(workspace_id: str) -> WorkspaceConfig:
    """The workspace as this process last read it, read again when older than ``LOOKUP_TTL_S``; while the
    database is unreachable, the copy at hand. ``WorkspaceNotFound`` if there is none."""
    cache_lock, refresh_lock = _locks()
    with cache_lock:
        hit = _cache.get(workspace_id)
    if hit is not None and time.monotonic() - hit[0] < LOOKUP_TTL_S:
        return hit[1]
    if not refresh_lock.acquire(blocking=hit is None):
        return hit[1]  # type: ignore[index]  # another thread is reading it: the copy at hand meanwhile
    try:
        with cache_lock:
            again = _cache.get(workspace_id)
        if again is not None and again is not hit and time.monotonic() - again[0] < LOOKUP_TTL_S:
            return again[1]  # read by the thread we waited for
        try:
            found = _read(workspace_id)
        except WorkspaceUnavailable:
            if hit is None:
                raise
            return hit[1]
        with cache_lock:
            _cache[workspace_id] = (time.monotonic(), found)
        return found
    finally:
        refresh_lock.release()


def forget(workspace_id: str | None = None) -> None:
    """Drop this process's copy of a workspace (of every one without an id): the next lookup reads it."""
    cache_lock, _ = _locks()
    with cache_lock:
        if workspace_id is None:
            _cache.clear()
        else:
            _cache.pop(workspace_id, None)


def exists(workspace_id: str) -> bool:
    """Whether there is such a workspace (submits check it before writing anything)."""
    try:
        lookup(workspace_id)
    except WorkspaceNotFound:
        return False
    return True


def daily_budget(workspace_id: str | None) -> Decimal | None:
    """What the workspace's runs may spend per day (UTC), in USD; None: no budget of its own (or no workspace)."""
    return lookup(workspace_id).daily_budget_usd if workspace_id else None


def default_model(purpose: Purpose, workspace_id: str | None) -> str:
    """The model a run uses for ``purpose`` when its spec names none: its workspace's, else the engine's
    (``OPENAI_MODEL``, ``OPENAI_EVAL_MODEL``, ``OPENAI_EMBEDDING_MODEL``)."""
    chosen = lookup(workspace_id).models.get(purpose) if workspace_id else None
    return chosen or getattr(get_settings(), PURPOSES[purpose])


def limit_name(model: str, workspace_id: str | None) -> str:
    """What the fleet limiter keeps ``model``'s calls under: the model itself for the engine's key (a
    workspace without a key of its own too), and the model within its workspace for a workspace's own
    key (its own limits, its own 429 pauses)."""
    return f"{model}{LIMIT_NAME_SEP}{workspace_id}" if workspace_id and lookup(workspace_id).own_key else model


def limits_of(name: str) -> ModelLimits | None:
    """The limits of a workspace's model named by :func:`limit_name`; None for a plain model (the engine's)."""
    model, sep, workspace_id = name.rpartition(LIMIT_NAME_SEP)
    return lookup(workspace_id).limits.for_model(model) if sep else None
