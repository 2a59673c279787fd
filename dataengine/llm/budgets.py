"""Spending limits, checked before every LLM call a run makes.

- A run's own budget (its spec's ``max_cost_usd``): a call whose estimated cost would take what the run
  has spent, plus what its calls in flight may cost, past the budget is not made; the run ends ``failed``
  with ``budget exceeded at query N: spent $X of $Y`` and resumes from its checkpoint when retried with a
  larger one. The estimate is the call's prompt at the model's input price plus, for the answer, the
  run's average completion so far for that model (``DATAENGINE_LLM_OUTPUT_TOKENS_ESTIMATE`` before its
  first answer) at the output price: it leans high, so the budget is not crossed.
- Daily budgets, the fleet's (``DATAENGINE_DAILY_BUDGET_USD``) and a workspace's: once today's spend
  (UTC, from the cost ledger, read at most once a second per process, with this process's own calls
  counted as they are paid) reaches one, runs pause: they are
  handed back unfinished and looked at again every ``DATAENGINE_BUDGET_RECHECK_S`` until midnight UTC or
  until the budget is raised. The calls in flight when it is reached still land, so a daily budget may
  be passed by those.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from dataengine.infra.errors import BudgetExceeded, BudgetPaused, RunFatal
from dataengine.infra.settings import get_settings
from dataengine.llm import ledger

#: How long a process trusts its last reading of a day's spend.
DAILY_READ_S = 1.0
CENT = Decimal("0.01")
MICRO = Decimal("0.000001")


def dollars(amount: Decimal) -> str:
    """``1.234567`` -> ``1.23``; amounts under a cent keep their digits (``0.0042``)."""
    if amount == 0 or abs(amount) >= CENT:
        return f"{amount.quantize(CENT):,}"
    return f"{amount.quantize(MICRO).normalize():f}"


def call_cost(model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Decimal | None:
    """What a call costs at the configured prices, to the millionth of a dollar, or None for a model that has none."""
    price = get_settings().model_prices_per_mtok.get(model)
    if price is None:
        return None
    cached = min(cached_tokens, prompt_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    micro = (Decimal(str(price.input)) * (prompt_tokens - cached) + Decimal(str(cached_price)) * cached
             + Decimal(str(price.output)) * completion_tokens)
    return (micro / Decimal(1_000_000)).quantize(MICRO, rounding=ROUND_HALF_UP)  # the columns' scale


class NoPrice(RunFatal):
    """model {model!r} has no price (DATAENGINE_MODEL_PRICES_PER_MTOK), so the run's max_cost_usd cannot be kept; add its price or retry the run without a budget"""


@dataclass
class _Reading:
    at: float
    spent: Decimal


_daily: dict[str | None, _Reading] = {}
_daily_lock = threading.Lock()


def _spent_today(workspace_id: str | None) -> Decimal:
    now = time.monotonic()
    with _daily_lock:
        reading = _daily.get(workspace_id)
        if reading is not None and now - reading.at < DAILY_READ_S:
            return reading.spent
    spent = ledger.spent_today(workspace_id)
    with _daily_lock:
        _daily[workspace_id] = _Reading(now, spent)
    return spent


def _count_spend(workspace_id: str | None, cost: Decimal) -> None:
    """A call of this process was paid: the readings it trusts count it at once (the ledger soon does)."""
    with _daily_lock:
        for key in {None, workspace_id}:
            if (reading := _daily.get(key)) is not None:
                reading.spent += cost


def forget_readings() -> None:
    """Read the day's spend afresh at the next check (tests)."""
    with _daily_lock:
        _daily.clear()


def daily_pause(workspace_id: str | None) -> BudgetPaused | None:
    """Why a run of ``workspace_id`` must pause now (its workspace's daily budget or the fleet's is
    spent), or None."""
    limits: list[tuple[str, str | None, Decimal | None]] = [("the fleet's", None, get_settings().daily_budget_usd)]
    if workspace_id is not None:
        from dataengine.llm.workspaces import daily_budget

        limits.insert(0, (f"workspace {workspace_id!r}'s", workspace_id, daily_budget(workspace_id)))
    for scope, key, limit in limits:
        if limit is not None:
            spent = _spent_today(key)
            if spent >= limit:
                return BudgetPaused(scope=scope, limit=dollars(limit), spent=dollars(spent))
    return None


def pause_for_s() -> float:
    """How long a paused run waits before it is looked at again: until midnight UTC at most."""
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1.0, min(get_settings().budget_recheck_s, (midnight - now).total_seconds()))


class RunBudget:
    """One claimed run's spend and limits, shared by its step threads (``current_run()["budget"]``)."""

    def __init__(self, *, noun: str, spent: Decimal, max_cost: Decimal | None, workspace_id: str | None) -> None:
        self.noun, self.max_cost, self.workspace_id = noun, max_cost, workspace_id
        #: What the run paid for: its recorded steps as of the claim, then every call since.
        self.spent = spent
        self.reserved = Decimal(0)
        self._completions: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._lock = threading.Lock()

    def before_call(self, *, model: str, prompt_tokens: int, output_tokens: int, step: int | None) -> Decimal:
        """Check the limits for a call about to be made; returns what it reserves (settle it with
        ``after_call``). Raises ``BudgetPaused``, ``BudgetExceeded`` or ``NoPrice``."""
        pause = daily_pause(self.workspace_id)
        if pause is not None:
            raise pause
        if self.max_cost is None:
            return Decimal(0)
        with self._lock:
            calls, completion = self._completions[model]
            expected = completion // calls + 1 if calls else output_tokens
            estimate = call_cost(model, prompt_tokens, expected)
            if estimate is None:
                raise NoPrice(model=model)
            if self.spent + self.reserved + estimate > self.max_cost:
                raise BudgetExceeded(noun=self.noun, step=(step or 0) + 1, spent=dollars(self.spent),
                                     budget=dollars(self.max_cost))
            self.reserved += estimate
            return estimate

    def after_call(self, reserved: Decimal, *, model: str, cost: Decimal | None, completion_tokens: int = 0) -> None:
        """A call ended: its reservation freed, and what it cost (None: it failed) counted."""
        with self._lock:
            self.reserved -= reserved
            if cost is not None:
                self.spent += cost
                _count_spend(self.workspace_id, cost)
                counted = self._completions[model]
                counted[0] += 1
                counted[1] += completion_tokens

    def exceeded_message(self, step: int) -> str:
        """The run's error once it stopped for its budget (what it spent by then, its calls in flight landed)."""
        assert self.max_cost is not None  # noqa: S101  only a run with a budget stops for it
        return str(BudgetExceeded(noun=self.noun, step=step + 1, spent=dollars(self.spent), budget=dollars(self.max_cost)))
