"""dataengine: durable Celery runs for long LLM jobs, checkpointed in PostgreSQL.

``celery -A dataengine worker`` finds the Celery app here. It is built on first access, not on
import: importing ``dataengine.errors`` or a job module reads no settings and starts nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):  # the names Celery's ``-A dataengine`` looks for
        from dataengine.celery_app import app

        return app
    raise AttributeError(f"module 'dataengine' has no attribute {name!r}")
