"""Log lines that carry ``run_id`` and ``task_id``, in text or in the record's fields."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"


class RunLogger(logging.LoggerAdapter):
    """Appends ``run_id=... task_id=...`` to each message and sets them as record attributes."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        context = " ".join(f"{k}={v}" for k, v in extra.items() if v is not None)
        return (f"{msg} {context}" if context else msg), kwargs


def run_logger(*, run_id: object, task_id: str | None, name: str = "dataengine.run") -> RunLogger:
    """A logger for one run's lines."""
    return RunLogger(logging.getLogger(name), {"run_id": str(run_id), "task_id": task_id})
