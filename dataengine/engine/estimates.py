"""Estimates before spending: what a submitted spec would make and cost, with nothing created or asked.

The job plans the calls of its steps (``Job.plan_calls``: each call's kind, model and what it sends,
as far as the spec knows it); the engine groups the steps as the run loop would, counts the calls and
prices them. Prompt tokens come from the planned prompts' sizes (characters / 4, as the rate limiter
reserves them). What only the run will know (an answer that a later prompt quotes, a fetched page) and
the answers' lengths come from the averages of the job's recent recorded steps, of runs on the same
model; with too few of those, from ``DATAENGINE_LLM_OUTPUT_TOKENS_ESTIMATE`` per call. A job that plans
nothing is estimated from those averages alone. A model without a price is named, not counted as free.
``Estimate.basis`` says where each figure came from.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import TextClause, text

from dataengine.engine.jobs import Job, NewRun, PlannedCall
from dataengine.infra.db import session_scope
from dataengine.infra.queries import statement
from dataengine.infra.settings import get_settings
from dataengine.llm.budgets import MICRO, call_cost, dollars
from dataengine.llm.limits import estimate_tokens

if TYPE_CHECKING:
    from dataengine.engine.options import SubmitOptions

#: The averages are over the newest recorded steps of the newest runs, this many of each at most.
RECENT_STEPS = 300
RECENT_RUNS = 50
#: Fewer recorded steps than this are too few to average: the settings' defaults are used instead.
MIN_RECENT_STEPS = 5


@dataclass(frozen=True)
class Recent:
    """The averages per step of a job's recent recorded steps."""

    steps: int
    prompt_tokens: float
    completion_tokens: float
    cost_usd: Decimal
    #: The run model they were filtered on, when the job's runs have one.
    model: str | None = None

    def source(self) -> str:
        """Where the averages come from, for ``Estimate.basis``."""
        return f"the average of the last {self.steps} recorded steps" + (f" of runs on {self.model}" if self.model else "")


@dataclass(frozen=True)
class CallCount:
    """How many calls of one kind a run will make on one model (``exact`` False: a guess)."""

    model: str
    kind: str
    calls: int
    exact: bool = True


@dataclass(frozen=True)
class Estimate:
    """What a run of a spec would do and cost: its steps, its calls by model and kind, tokens and cost
    (None: nothing to estimate them from), the models without a price, and where each figure came from."""

    kind: str
    steps: int
    calls: tuple[CallCount, ...]
    prompt_tokens: int | None
    completion_tokens: int | None
    #: Of the priced models only: the unpriced ones' calls are in ``unpriced_models``, not counted as $0.
    cost_usd: Decimal | None
    unpriced_models: tuple[str, ...]
    basis: dict[str, str]
    #: The spec's budget, and whether the estimate is over it.
    max_cost_usd: Decimal | None = None

    @property
    def over_budget(self) -> bool | None:
        """Whether the estimated cost exceeds the spec's ``max_cost_usd`` (None: no budget, no estimate, or
        within it but for unpriced calls, which cannot tell)."""
        if self.max_cost_usd is None or self.cost_usd is None:
            return None
        if self.cost_usd > self.max_cost_usd:
            return True
        return None if self.unpriced_models else False

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, amounts as strings (as the API's ``Estimate`` schema and the submit task's result give it)."""
        return {
            "dry_run": True,
            "kind": self.kind,
            "steps": self.steps,
            "calls": [{"model": c.model, "kind": c.kind, "calls": c.calls, "exact": c.exact} for c in self.calls],
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": None if self.cost_usd is None else str(self.cost_usd),
            "unpriced_models": list(self.unpriced_models),
            "max_cost_usd": None if self.max_cost_usd is None else str(self.max_cost_usd),
            "over_budget": self.over_budget,
            "basis": dict(self.basis),
        }

    def describe(self) -> str:
        """The estimate for a person (``dataengine submit --dry-run``)."""
        def count(n: int | None) -> str:
            return "unknown" if n is None else f"{n:,}"

        cost = "unknown" if self.cost_usd is None else f"${dollars(self.cost_usd)}"
        if self.unpriced_models:
            cost += f" + the calls of unpriced {', '.join(self.unpriced_models)}"
        if self.over_budget is not None:
            cost += f" ({'over' if self.over_budget else 'within'} max_cost_usd ${dollars(self.max_cost_usd or 0)})"
        calls = [f"  {c.model}  {c.kind}: {'about ' if not c.exact else ''}{c.calls:,}" for c in self.calls]
        return "\n".join([
            f"dry run of {self.kind}: nothing was created or sent",
            f"steps: {self.steps:,}",
            f"calls: {sum(c.calls for c in self.calls):,}" if self.calls else "calls: unknown", *calls,
            f"prompt tokens: {count(self.prompt_tokens)}",
            f"completion tokens: {count(self.completion_tokens)}",
            f"cost: {cost}",
            "basis:", *(f"  {figure}: {source}" for figure, source in self.basis.items()),
        ])


def estimate(*, job: Job, spec: BaseModel, options: SubmitOptions | None = None) -> Estimate:
    """The estimate of a run of ``job`` made from the validated ``spec``: reads the job's recent steps,
    writes nothing, sends nothing."""
    new = job.build(spec)
    planned = plan(job, new, options=options)
    model = new.values.get("model") if "model" in job.runs.c else None
    recent = recent_steps(job, model=model, filtered="model" in job.runs.c)
    return combine(kind=job.key, step_plural=job.step_plural, steps=len(new.steps), planned=planned, recent=recent,
                   output_tokens=get_settings().llm_output_tokens_estimate,
                   max_cost_usd=options.max_cost_usd if options else None)


def plan(job: Job, new: NewRun, *, options: SubmitOptions | None = None) -> list[PlannedCall] | None:
    """Every call the job plans for the run a spec builds (None: the job plans none), its steps grouped as
    the run loop groups them. The context is the job's ``prepare`` of the run row the spec would make."""
    if job.plan_calls is None:
        return None
    row = SimpleNamespace(**{**{c.name: None for c in job.runs.c}, **new.values,
                             "max_cost_usd": options.max_cost_usd if options else None,
                             "workspace_id": options.workspace_id if options else None})
    context = job.prepare(row)
    return [call for unit in job.units(job.built_items(new.steps)) for call in job.plan_calls(context, unit)]


@cache
def _recent_sql(job: Job, filtered: bool) -> TextClause:
    """The averages of the newest ``:steps`` recorded steps of the job's newest ``:runs`` runs that have
    any (of the run model ``:model``, when ``filtered``): the runs walk the newest-first index, and each
    run's steps its primary key."""
    on_model = statement("recent_steps_on_model") if filtered else ""
    return text(statement("recent_steps", job, on_model=on_model))


def recent_steps(job: Job, *, model: str | None, filtered: bool) -> Recent | None:
    """The averages of the job's recent recorded steps (of runs on ``model`` when ``filtered``), or None
    when there are fewer than ``MIN_RECENT_STEPS``."""
    with session_scope() as session:
        row = session.execute(_recent_sql(job, filtered),
                              {"runs": RECENT_RUNS, "steps": RECENT_STEPS, "model": model}).one()
    if row.steps < MIN_RECENT_STEPS:
        return None
    return Recent(row.steps, float(row.prompt_tokens), float(row.completion_tokens), Decimal(row.cost_usd),
                  model if filtered else None)


def _spread(total: float, models: list[str]) -> dict[str, float]:
    """``total`` tokens shared evenly by calls on ``models`` (one entry per call)."""
    spread: dict[str, float] = defaultdict(float)
    for model in models:
        spread[model] += total / len(models)
    return spread


def combine(*, kind: str, step_plural: str, steps: int, planned: list[PlannedCall] | None, recent: Recent | None,
            output_tokens: int, max_cost_usd: Decimal | None = None) -> Estimate:
    """The estimate from the planned calls and the recent averages (the arithmetic, without a database)."""
    if planned is None:
        return _from_recent(kind=kind, step_plural=step_plural, steps=steps, recent=recent, max_cost_usd=max_cost_usd)
    counts: Counter[tuple[str, str]] = Counter((c.model, c.kind) for c in planned)
    guessed = {(c.model, c.kind) for c in planned if not c.exact}
    prompt: dict[str, float] = defaultdict(float)
    for call in planned:
        prompt[call.model] += estimate_tokens(call.prompt, 0) if call.prompt else 0
    unknown = [c.model for c in planned if c.unknown_input]
    answering = [c.model for c in planned if c.kind != "embed"]
    known_total = round(sum(prompt.values()))
    basis = {"steps": f"the spec: {steps} {step_plural}",
             "calls": "the job's plan of each step's calls" + (
                 ", counts marked exact: false depend on what the run finds" if guessed else ""),
             "prompt_tokens": f"{known_total:,} from the planned prompts' sizes (characters / 4)"}
    if recent is not None:
        # What the recent steps sent beyond what this plan knows per step: the text only the run will have.
        unknown_total = max(0.0, steps * recent.prompt_tokens - known_total) if unknown else 0.0
        completion = _spread(steps * recent.completion_tokens, answering)
        if unknown:
            basis["prompt_tokens"] += (f"; {round(unknown_total):,} for text only the run will have ({len(unknown)} calls),"
                                       f" from {recent.source()} ({recent.prompt_tokens:,.0f} per step)")
        basis["completion_tokens"] = f"{recent.source()} ({recent.completion_tokens:,.0f} per step)"
    else:
        unknown_total = float(output_tokens * len(unknown))
        completion = _spread(float(output_tokens * len(answering)), answering)
        default = (f"DATAENGINE_LLM_OUTPUT_TOKENS_ESTIMATE ({output_tokens}) per call, with fewer than "
                   f"{MIN_RECENT_STEPS} recorded steps of recent runs to average")
        if unknown:
            basis["prompt_tokens"] += f"; {round(unknown_total):,} for text only the run will have: {default}"
        basis["completion_tokens"] = default if answering else "none: no call answers with text"
    for model, tokens in _spread(unknown_total, unknown).items():
        prompt[model] += tokens
    models = sorted(set(prompt) | set(completion) | {c.model for c in planned})
    costs = {m: call_cost(m, round(prompt[m]), round(completion[m])) for m in models}
    unpriced = tuple(m for m, cost in costs.items() if cost is None)
    priced = [m for m in models if m not in unpriced]
    basis["cost_usd"] = (f"DATAENGINE_MODEL_PRICES_PER_MTOK for {', '.join(priced) or 'no model'}"
                         + (f"; {', '.join(unpriced)} unpriced, not counted" if unpriced else ""))
    return Estimate(
        kind=kind, steps=steps,
        calls=tuple(CallCount(m, k, n, (m, k) not in guessed) for (m, k), n in sorted(counts.items())),
        prompt_tokens=round(sum(prompt.values())), completion_tokens=round(sum(completion.values())),
        cost_usd=sum((c for c in costs.values() if c is not None), Decimal(0)).quantize(MICRO),
        unpriced_models=unpriced, basis=basis, max_cost_usd=max_cost_usd,
    )


def _from_recent(*, kind: str, step_plural: str, steps: int, recent: Recent | None,
                 max_cost_usd: Decimal | None) -> Estimate:
    """A job that plans no calls: its recent steps' averages per step, or nothing to estimate from."""
    basis = {"steps": f"the spec: {steps} {step_plural}", "calls": "unknown: the job plans no calls"}
    if recent is None:
        none = f"unknown: the job plans no calls and has fewer than {MIN_RECENT_STEPS} recorded steps of recent runs"
        basis |= {"prompt_tokens": none, "completion_tokens": none, "cost_usd": none}
        return Estimate(kind, steps, (), None, None, None, (), basis, max_cost_usd)
    average = f"{recent.source()}, per step"
    basis |= {"prompt_tokens": average, "completion_tokens": average,
              "cost_usd": f"{average}, at the prices when they ran"}
    return Estimate(kind, steps, (), round(steps * recent.prompt_tokens), round(steps * recent.completion_tokens),
                    (steps * recent.cost_usd).quantize(MICRO), (), basis, max_cost_usd)
