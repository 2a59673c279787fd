"""The three jobs as the crash and fault tests run them: how to make a run of n steps of each, and how
to count what the stand-in was paid for each step, to prove nothing recorded was asked again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from helpers import answered, answered_within, audit_spec, review_spec
from knowledgeserver import knowledge_prompts, knowledge_spec

from dataengine.infra.settings import get_settings
from tasks.reviewflow.step import GROUP_SIZE


@dataclass(frozen=True)
class Kind:
    """A job the crash tests run on: how to make a spec of n steps, and the prompts its steps send
    (what the stand-in counts, to prove nothing was paid twice)."""

    key: str
    spec: Callable[[int], dict[str, Any]]
    prompts: Callable[[dict[str, Any]], list[str]]
    #: (stand-in, prompt) -> how many answered calls carried it (short reviews share calls).
    asked: Callable[[Any, str], int]
    #: Steps that share one call at most.
    group: int = 1
    #: LLM latency multiplier, so a run of n steps lasts about as long for every job (a kill lands mid-run).
    latency_scale: float = 1.0

    @property
    def job(self) -> Any:
        from dataengine.engine.jobs import get_job, load_jobs

        load_jobs()
        return get_job(self.key)


KINDS = {
    "propertyaudit": Kind("propertyaudit", audit_spec, lambda spec: spec["queries"], answered),
    "reviewflow": Kind("reviewflow", review_spec, lambda spec: [r["text"] for r in spec["reviews"]], answered_within,
                       GROUP_SIZE, latency_scale=GROUP_SIZE),
    # Text sources of one chunk each: a step's one LLM call embeds the source's own text.
    "knowledge": Kind("knowledge", knowledge_spec, knowledge_prompts, answered, latency_scale=2.0),
}


def assert_nothing_paid_twice(fake_llm: Any, prompts: list[str], checkpointed: set[int],
                              kind: Kind | None = None) -> None:
    """Every step answered; none recorded before the crash asked again; at most the in-flight ones twice.

    In flight means started and not yet recorded: the steps running (``step_concurrency`` units) and,
    for the moment their checkpoint takes, the steps that had just finished, whose slots steps
    recorded ahead take at once (``dataengine.engine.runloop``): twice the units at most."""
    asked, group = (kind.asked, kind.group) if kind else (answered, 1)
    counts = {i: asked(fake_llm, q) for i, q in enumerate(prompts)}
    assert all(c >= 1 for c in counts.values()), counts
    assert {i: counts[i] for i in checkpointed} == dict.fromkeys(checkpointed, 1)
    assert sum(c - 1 for c in counts.values()) <= 2 * get_settings().step_concurrency * group
