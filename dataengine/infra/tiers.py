"""Priority tiers: what a run's ``priority`` may be, the broker queue each tier's messages go to, and the
weight each tier has where capacity is shared.

A higher tier is taken first: its messages wait in a queue of their own that workers read before the
next tier's (``celeryconfig``: Redis lists read in order), and where capacity is shared (a process's
calls in flight, the fleet's RPM/TPM at the limiter) the tiers waiting share it by weight before the
workspaces within a tier share it equally. Weights, not strict order, so a lower tier is never
starved: while ``high`` and ``low`` runs both wait, ``low`` keeps 1/10 of the rate. At the broker a
run that waited ``tier_aging_s`` in a lower tier's queue is sent to ``high``'s queue as well (the
sweepers do it): the first of its two messages a worker takes runs it, the other finds it taken.
"""

from __future__ import annotations

from collections.abc import Callable

from models.base import PRIORITY_TIERS

#: The tiers, highest first.
TIERS = PRIORITY_TIERS
DEFAULT_TIER = "normal"
#: Each tier's share of contended capacity is its weight over the weights of the tiers waiting.
WEIGHTS = {"high": 9, "normal": 3, "low": 1}
#: The broker queue of each tier's run messages; ``normal`` is Celery's default queue, where producers
#: that name no queue (and every message from before tiers) send.
QUEUES = {"high": "dataengine.high", "normal": "celery", "low": "dataengine.low"}


#: (task name, kwargs, queue) -> None: sends a run's message to its tier's queue (in production the worker
#: app's ``enqueue``: Celery's ``send_task``).
Sender = Callable[[str, dict[str, str], str], object]


def queue_of(tier: str | None) -> str:
    """The broker queue of a run of ``tier`` (``normal``'s when unknown)."""
    return QUEUES.get(tier or DEFAULT_TIER, QUEUES[DEFAULT_TIER])


def weight_of(tier: str | None) -> int:
    """The weight of ``tier`` (``normal``'s when unknown)."""
    return WEIGHTS.get(tier or DEFAULT_TIER, WEIGHTS[DEFAULT_TIER])


def parse_tier(value: object) -> str:
    """A submit's ``priority``: one of :data:`TIERS` (case and spaces ignored), ``normal`` when left out;
    ``ValueError`` saying what is allowed for anything else."""
    if value is None:
        return DEFAULT_TIER
    tier = value.strip().lower() if isinstance(value, str) else None
    if tier not in TIERS:
        raise ValueError(f"must be one of {', '.join(TIERS)}, got {str(value)[:40]!r}")
    return tier
