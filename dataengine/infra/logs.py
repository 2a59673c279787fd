"""Log lines that carry their run: ``run_id``, ``task_id``, job kind, step index and worker, as text or JSON.

- :func:`run_logger` gives a run's lines their ``run_id`` and ``task_id`` (appended to the message
  as text, set as record fields either way).
- :func:`run_context` marks everything a thread logs while it works a run (the engine's lines, the
  LLM client's warnings, a step thread's lines with :func:`in_run_context`) with the run's fields,
  through :class:`RunFields`, a filter on the handlers.
- ``DATAENGINE_LOG_FORMAT=json`` turns the handlers of workers, beat and the API into one JSON object
  per line (python-json-logger) with those fields; text stays the default.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"
#: The fields of a run's lines (set when known).
RUN_FIELDS = ("run_id", "task_id", "kind", "step", "worker")
_context = threading.local()


def _json() -> bool:
    from dataengine.infra.settings import get_settings

    return get_settings().log_format == "json"


class RunLogger(logging.LoggerAdapter):
    """Sets ``run_id`` and ``task_id`` as record attributes and, in text, appends ``run_id=... task_id=...``."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        if _json():
            return msg, kwargs
        context = " ".join(f"{k}={v}" for k, v in extra.items() if v is not None)
        return (f"{msg} {context}" if context else msg), kwargs


def run_logger(*, run_id: object, task_id: str | None, name: str = "dataengine.run") -> RunLogger:
    """A logger for one run's lines."""
    return RunLogger(logging.getLogger(name), {"run_id": str(run_id), "task_id": task_id})


@contextmanager
def run_context(**fields: Any) -> Iterator[None]:
    """Everything this thread logs meanwhile carries ``fields`` (``run_id``, ``task_id``, ``kind``,
    ``worker``; ``step`` where a step is meant)."""
    previous = getattr(_context, "fields", None)
    _context.fields = {**(previous or {}), **{k: v for k, v in fields.items() if v is not None}}
    try:
        yield
    finally:
        _context.fields = previous


def current_run() -> dict[str, Any] | None:
    """This thread's run context (``run_id``, ``kind``, ``step``...), or None outside a run."""
    return getattr(_context, "fields", None)


def set_run_field(key: str, value: Any) -> None:
    """Change one run field of this thread's context (the run's resume point as it moves)."""
    fields = getattr(_context, "fields", None)
    if fields is not None:
        fields[key] = value


def in_run_context(fn: Callable[..., Any], **fields: Any) -> Callable[..., Any]:
    """``fn`` run (on another thread) with this thread's run fields and ``fields``."""
    carried = {**(getattr(_context, "fields", None) or {}), **fields}

    def call(*args: Any, **kwargs: Any) -> Any:
        with run_context(**carried):
            return fn(*args, **kwargs)

    return call


class RunFields(logging.Filter):
    """Gives a record the run fields of the thread that logged it, where the record has none of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(_context, "fields", None) or {}
        for key in RUN_FIELDS:
            if key in fields and not hasattr(record, key):
                setattr(record, key, fields[key])
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time, level, logger, process, message, the run fields when set, and
    any other ``extra``."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(processName)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger",
                                        "processName": "process"})


def configure_handlers(logger: logging.Logger) -> None:
    """Put the run fields filter on ``logger``'s handlers and, with ``DATAENGINE_LOG_FORMAT=json``,
    the JSON formatter (Celery's ``after_setup_logger``, beat's, the API's)."""
    json_lines = _json()
    for handler in logger.handlers:
        if not any(isinstance(f, RunFields) for f in handler.filters):
            handler.addFilter(RunFields())
        if json_lines:
            handler.setFormatter(json_formatter())


def api_log_config(level: str) -> dict[str, Any]:
    """uvicorn's ``log_config`` for ``dataengine api``: uvicorn's own lines and the engine's (the root
    logger) to stderr, as text or, with ``DATAENGINE_LOG_FORMAT=json``, as JSON, with the run fields."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = {**LOGGING_CONFIG, "disable_existing_loggers": False}
    config["filters"] = {"run_fields": {"()": RunFields}}
    formatters = dict(config["formatters"])
    formatters["engine"] = {"()": json_formatter} if _json() else {"format": FORMAT}
    if _json():
        formatters["default"] = formatters["access"] = {"()": json_formatter}
    config["formatters"] = formatters
    handlers = {name: {**h, "filters": ["run_fields"]} for name, h in config["handlers"].items()}
    handlers["engine"] = {"class": "logging.StreamHandler", "formatter": "engine", "filters": ["run_fields"],
                          "stream": "ext://sys.stderr"}
    config["handlers"] = handlers
    config["root"] = {"handlers": ["engine"], "level": level.upper()}
    return config
