"""Prices per model: input, output and cached input; a model without a price is unpriced, not free."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from dataengine.infra.settings import ModelPrice, Settings
from dataengine.llm.budgets import call_cost, dollars


def test_cached_input_is_priced_apart_and_costs_are_kept_to_the_millionth(monkeypatch):
    monkeypatch.setenv("DATAENGINE_MODEL_PRICES_PER_MTOK", '{"m": [2.5, 10, 1.25], "e": {"input": 0.02, "output": 0}}')
    from dataengine.infra.settings import get_settings

    get_settings.cache_clear()
    try:
        # 1,000 prompt tokens of which 400 cached, 100 completion: 600 x 2.5 + 400 x 1.25 + 100 x 10 per million.
        assert call_cost("m", 1000, 100, cached_tokens=400) == Decimal("0.003000")
        assert call_cost("m", 1000, 100) == Decimal("0.003500")
        assert call_cost("e", 1234, 0, cached_tokens=1234) == Decimal("0.000025")  # no cached price: the input's
        assert call_cost("gpt-4o-mini", 10, 10) is None  # the table set replaces the defaults
    finally:
        get_settings.cache_clear()


def test_the_default_prices_carry_cached_input_and_a_bad_price_is_refused():
    prices = Settings().model_prices_per_mtok
    assert prices["gpt-4o-mini"] == ModelPrice(input=0.15, output=0.60, cached_input=0.075)
    with pytest.raises(ValidationError, match="a price is \\[input, output\\]"):
        Settings(model_prices_per_mtok={"m": [1]})
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        Settings(model_prices_per_mtok={"m": [1, -2]})


def test_a_response_usage_with_cached_tokens_is_read_and_an_unknown_model_counts_zero_and_unpriced(caplog,
                                                                                                 monkeypatch):
    from dataengine.llm import calls as llm
    from dataengine.llm import ledger

    spends: list[ledger.Spend] = []
    monkeypatch.setattr(ledger, "add", spends.append)  # no database here

    details = SimpleNamespace(cached_tokens=1000)
    response = SimpleNamespace(usage=SimpleNamespace(prompt_tokens=2000, completion_tokens=100,
                                                     prompt_tokens_details=details))
    usage = llm._usage("gpt-4o-mini", response, 0.0)
    assert usage.cached_tokens == 1000 and usage.cost_usd == Decimal("0.000285")  # 1000 x .15 + 1000 x .075 + 100 x .6
    unknown = llm._usage("brand-new-model", response, 0.0)
    assert unknown.cost_usd == 0 and "'brand-new-model' has no price" in caplog.text
    assert [(s.model, s.cached_tokens, s.cost_usd, s.priced) for s in spends] == [
        ("gpt-4o-mini", 1000, Decimal("0.000285"), True), ("brand-new-model", 1000, 0, False)]


@pytest.mark.parametrize(("amount", "shown"), [(Decimal("1234.5678"), "1,234.57"), (Decimal("0.01"), "0.01"),
                                               (Decimal("0.000453"), "0.000453"), (Decimal(0), "0.00")])
def test_dollars_keep_the_digits_of_amounts_under_a_cent(amount, shown):
    assert dollars(amount) == shown
