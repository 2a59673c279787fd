"""The test helpers of ``helpers.py``, bound to the engine tests' own job (Echo)."""

from __future__ import annotations

import uuid
from typing import Any

import helpers
from enginejob import ECHO


def create_texts(n: int, *, tag: str = "text") -> uuid.UUID:
    """A queued Echo run of ``n`` texts (not enqueued)."""
    return helpers.create({"texts": [f"{tag} {i}" for i in range(n)]}, job=ECHO)


def claim(run_id: uuid.UUID, worker: str = "w/1") -> Any:
    return helpers.claim(run_id, worker, job=ECHO)


def record(c: Any, indexes: list[int], next_index: int, in_flight: tuple[int, ...] = ()) -> None:
    helpers.record(c, indexes, next_index, in_flight, job=ECHO)


def expire_lease(run_id: uuid.UUID, *, owner: str = "dead-worker/1") -> None:
    helpers.expire_lease(run_id, owner=owner, job=ECHO)


def run_row(run_id: uuid.UUID) -> dict[str, Any]:
    return helpers.run_row(run_id, job=ECHO)


def results(run_id: uuid.UUID) -> dict[int, dict[str, Any]]:
    return helpers.results(run_id, job=ECHO)
