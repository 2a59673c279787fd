"""What a submit may carry besides the job's own spec: the engine's options, the same for every job
(validated by ``dataengine.engine.submitting.validate_spec``, priced by ``dataengine.engine.estimates``)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from dataengine.infra.tiers import DEFAULT_TIER


@dataclass(frozen=True)
class SubmitOptions:
    """What a submit may carry besides the job's own spec: the engine's fields, the same for every job."""

    #: A producer's key: a second submit with the same key and spec returns the same run (another spec: 409).
    idempotency_key: str | None = None
    #: The most the run may spend on LLM calls: it stops before the call that would cross it.
    max_cost_usd: Decimal | None = None
    #: The workspace whose provider key, base URL, models and limits the run's calls use.
    workspace_id: str | None = None
    #: Its tier (``dataengine.infra.tiers``): taken first from the broker and weighted where capacity is shared.
    priority: str = DEFAULT_TIER
    #: Validate and estimate only: nothing is created.
    dry_run: bool = False
