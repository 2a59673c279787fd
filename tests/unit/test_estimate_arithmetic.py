"""A dry run's estimate, without a database: the arithmetic of planned calls, recent averages and
prices, unpriced models flagged, and the calls each job plans for a spec (grouped as the run loop
groups them). Dry runs through the task, the API and the CLI are ``integration/test_estimates``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from helpers import audit_spec, review_spec

from dataengine.engine.estimates import Recent, combine, plan
from dataengine.engine.jobs import PlannedCall
from dataengine.engine.submitting import validate_spec
from dataengine.infra.settings import get_settings
from dataengine.web.schemas import EstimateView
from tasks.knowledge import JOB as KNOWLEDGE
from tasks.propertyaudit import JOB as AUDIT
from tasks.reviewflow import JOB as REVIEWFLOW

#: 400 characters (role and content) in one message: 100 tokens, and 4 for the message.
PROMPT = [{"role": "user", "content": "a" * 396}]


@pytest.fixture(autouse=True)
def prices(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Two priced models, USD per million tokens [input, output]; ``m-new`` has no price."""
    monkeypatch.setenv("DATAENGINE_MODEL_PRICES_PER_MTOK", json.dumps({"m-answer": [1.0, 2.0], "m-judge": [0.5, 4.0]}))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def audit_like(steps: int, *, judge: str = "m-judge") -> list[PlannedCall]:
    """Per step an answer, then a judgement whose prompt quotes the answer (text only the run will have)."""
    return [call for _ in range(steps) for call in (
        PlannedCall("chat", "m-answer", PROMPT), PlannedCall("parse", judge, PROMPT, unknown_input=True))]


def estimate_of(planned: list[PlannedCall] | None, recent: Recent | None, **kwargs: object):
    return combine(kind="audit", step_plural="queries", steps=10, planned=planned, recent=recent, output_tokens=512,
                   **kwargs)  # type: ignore[arg-type]


def test_planned_prompts_and_recent_averages_give_the_tokens_and_the_cost():
    recent = Recent(steps=40, prompt_tokens=400, completion_tokens=150, cost_usd=Decimal("0.001"), model="m-answer")
    e = estimate_of(audit_like(10), recent)
    # Known prompts: 20 calls x 104. The quoted answers: 10 steps x 400 - 2,080 = 1,920, on m-judge.
    # Completion: 10 x 150, shared by the 20 answering calls: 750 per model.
    assert (e.steps, e.prompt_tokens, e.completion_tokens) == (10, 4000, 1500)
    # m-answer: 1,040 x $1 + 750 x $2; m-judge: 2,960 x $0.5 + 750 x $4 (per million).
    assert e.cost_usd == Decimal("0.002540") + Decimal("0.004480")
    assert [(c.model, c.kind, c.calls, c.exact) for c in e.calls] == [("m-answer", "chat", 10, True),
                                                                       ("m-judge", "parse", 10, True)]
    assert e.unpriced_models == () and e.over_budget is None
    assert "2,080 from the planned prompts' sizes" in e.basis["prompt_tokens"]
    assert "1,920 for text only the run will have" in e.basis["prompt_tokens"]
    assert "the last 40 recorded steps of runs on m-answer (150 per step)" in e.basis["completion_tokens"]


def test_without_recent_runs_the_settings_default_stands_for_every_answer():
    e = estimate_of(audit_like(10), None)
    # Each of the 20 answers 512 tokens; each of the 10 quoted answers too.
    assert (e.prompt_tokens, e.completion_tokens) == (2080 + 5120, 10240)
    assert e.cost_usd == Decimal("0.011280") + Decimal("0.023560")
    assert "DATAENGINE_LLM_OUTPUT_TOKENS_ESTIMATE (512) per call" in e.basis["completion_tokens"]


def test_an_unpriced_model_is_flagged_not_counted_as_free():
    e = estimate_of(audit_like(10, judge="m-new"), None, max_cost_usd=Decimal("0.001"))
    assert e.unpriced_models == ("m-new",)
    assert e.cost_usd == Decimal("0.011280")  # m-answer's calls only
    assert "m-new unpriced, not counted" in e.basis["cost_usd"]
    assert e.over_budget is True and e.as_dict()["max_cost_usd"] == "0.001"
    assert "+ the calls of unpriced m-new" in e.describe()
    assert estimate_of(audit_like(10, judge="m-new"), None, max_cost_usd=Decimal(1)).over_budget is None  # can't tell


def test_a_job_that_plans_nothing_leans_on_recent_averages_or_says_it_cannot_tell():
    recent = Recent(steps=12, prompt_tokens=300.5, completion_tokens=99.5, cost_usd=Decimal("0.0002"))
    e = estimate_of(None, recent)
    assert (e.prompt_tokens, e.completion_tokens, e.cost_usd, e.calls) == (3005, 995, Decimal("0.002000"), ())
    assert "the last 12 recorded steps" in e.basis["cost_usd"]
    unknown = estimate_of(None, None)
    assert (unknown.prompt_tokens, unknown.completion_tokens, unknown.cost_usd) == (None, None, None)
    assert unknown.basis["cost_usd"].startswith("unknown:") and "cost: unknown" in unknown.describe()


def test_the_dict_is_json_and_is_what_the_api_documents():
    d = estimate_of(audit_like(2), None, max_cost_usd=Decimal(5)).as_dict()
    assert json.loads(json.dumps(d)) == d and isinstance(d["cost_usd"], str) and d["over_budget"] is False
    assert set(d) == set(EstimateView.model_fields) and EstimateView.model_validate(d).steps == 10


def planned(job, spec):
    validated, options = validate_spec(job, spec)
    return plan(job, job.build(validated), options=options)


def test_a_property_audit_plans_an_answer_and_an_evaluation_per_query():
    s = get_settings()
    calls = planned(AUDIT, {**audit_spec(3), "model": "gpt-4o"})
    assert [(c.kind, c.model, c.unknown_input) for c in calls] == [
        ("chat", "gpt-4o", False), ("parse", s.openai_eval_model, True)] * 3
    assert calls[0].prompt[1]["content"] == "best apartments in austin q 0"
    assert "Cedar Flats" in calls[1].prompt[1]["content"]


def test_a_review_flow_plans_one_call_per_review_or_per_group_of_short_ones():
    spec = review_spec(8)
    spec["reviews"][2]["text"] = "long " * 200  # over SHORT_REVIEW_CHARS: alone, and it ends the group before it
    calls = planned(REVIEWFLOW, spec)
    # Reviews 0-1 together, 2 alone, 3-6 together (GROUP_SIZE 4), 7 alone.
    assert [c.prompt[1]["content"].count("Review ") or 1 for c in calls] == [2, 1, 4, 1]
    assert {c.kind for c in calls} == {"parse"}


def test_knowledge_plans_embeddings_whose_size_only_the_run_will_know():
    spec = {"property_id": "monarch", "source_ids": [str(uuid.uuid4()) for _ in range(3)]}
    calls = planned(KNOWLEDGE, spec)
    assert [(c.kind, c.model, c.unknown_input, c.exact) for c in calls] == [
        ("embed", get_settings().openai_embedding_model, True, False)] * 3
    e = combine(kind="knowledge", step_plural="sources", steps=3, planned=calls, output_tokens=512,
                recent=Recent(steps=20, prompt_tokens=900, completion_tokens=0, cost_usd=Decimal(0)))
    assert (e.prompt_tokens, e.completion_tokens) == (2700, 0) and not e.calls[0].exact
