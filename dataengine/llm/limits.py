"""A fleet-wide limit on LLM calls: requests and tokens per minute, per model, shared through Redis.

Every worker process asks :class:`FleetLimiter` before a call (``acquire``, with the call's
estimated tokens) and corrects the reservation afterwards with the real usage (``settle``). A 429
pauses the model for the whole fleet (``pause``), after which its rate comes back gradually.

The algorithm is GCRA (the generic cell rate algorithm of redis-cell and ``throttled``) in one Lua
script (``lua/acquire.lua``, beside this module) that checks and updates a model's RPM and TPM state
together, so a call takes from both limits or from neither, and reads Redis's own clock (``TIME``),
so workers' clocks do not matter.
We do not use the ``limits`` library: its windows let a whole window's worth through at once, a
reservation cannot be refunded or corrected, and two limits are checked one after the other, not
atomically.

The guarantee. A limit of ``L`` per minute lets a burst of ``C`` through at once (``burst_s``
seconds' worth, at least one request) and then runs at ``r = (L - C) / 60``, so ``60 * r + C = L``:
in any 60 seconds (sliding, not aligned to anything) at most ``L`` requests are admitted, and at
most ``L`` tokens as corrected by ``settle``. In the script each unit costs ``T = 1 / r`` seconds of
backlog (``tat``, the theoretical arrival time) and the burst is ``tau = C * T`` seconds; a call of
``c`` seconds may go when ``tat <= now + tau - c``. Unlike textbook GCRA the test is on ``tat``
itself, not on ``max(tat, now)``: a call larger than the burst (4,000 tokens against a 500-token
burst) is not refused forever but waits until the model has been idle for the excess, which is what
keeps the bound. A call larger than the whole limit waits for an idle minute and then goes (the
provider will most likely refuse it). Calls larger than the burst cost throughput (each waits for
an idle gap: about half the rate when they are all much larger), so ``burst_s`` worth of the TPM
should cover a typical call.

Corrections. A refund (real usage below the estimate) gives back only the part of the call's
backlog that has not yet elapsed: backlog that has elapsed was admitted capacity, and handing it
out again could put more than ``L`` into some minute. Usage above the estimate is charged as new
backlog, so later calls wait for it; the 60-second bound then holds for the reservations, not for
the excess.

A 429 pauses the model until ``now + retry_after`` on Redis's clock (the later of an existing pause
and the new one) and spends its burst, so that when the pause ends calls go at the model's rate
rather than all at once into a provider whose own bucket is about empty; the model then runs at
``recovery_start`` of its rate, rising linearly to the full rate over ``recovery_s`` seconds. A model
with no limit has no rate to scale: only the pause applies to it.

Learned limits. With ``learn`` on, a model with no configured limit takes the provider's own: every
answer's ``x-ratelimit-limit-requests`` and ``x-ratelimit-limit-tokens`` (OpenAI's per-minute limits,
which it sends with every answer and every 429) are handed to :meth:`FleetLimiter.learn`, kept in the
process and shared through Redis (``<model>:learned``, for an hour after the last answer that said
it), so a new process starts at the provider's rate. An answer without them teaches that the
provider sets no limit. Until the first answer is heard the model keeps to ``unknown_rpm`` (a slow
start, so a fleet that starts hundreds of calls at once does not meet a storm of 429s). The
``x-ratelimit-remaining-*`` and ``-reset-*`` headers are not used: a token bucket's ``remaining`` is 0
after every full burst, and pausing on it would cost rate that the limit and the 429s already keep.

Tenants and tiers. A call made for a tenant (its run's workspace; runs without one are the tenant ``-``)
of a tier (its run's priority) shares the model's rate with the other tenants that asked within
``TENANT_ACTIVE_S``: the tiers asking share it by weight (``dataengine.infra.tiers``: high 9, normal
3, low 1), and a tier's part is split equally between its tenants. Each keeps to its part in a GCRA
state of its own as well as to the model's, so a workspace with a thousand calls waiting cannot take
another's part, a ``high`` run waiting gets most of the rate at once, a ``low`` one still gets its
weight's part, and a workspace alone has all of it. A tenant's token state is
charged the estimate and not refunded (the model's is): a share of TPM is met by estimates.

When Redis is unreachable each process keeps to ``fallback_share`` of the limits on its own (the
same algorithm, in memory) and to the pauses it saw itself, and says so in the log once per outage
and once when Redis answers again. Calls go on, more slowly, rather than stop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NamedTuple

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dataengine.infra.tiers import DEFAULT_TIER, weight_of

log = logging.getLogger(__name__)

#: Every key of the limiter starts with this; the model is a hash tag, so one model's keys share a
#: Redis Cluster slot (the script touches them together).
KEY_PREFIX = "dataengine:llm:"
#: The window both limits are counted over, in seconds.
WINDOW_S = 60.0
#: The longest single sleep of ``acquire``, so a pause that is lifted or moved is noticed.
MAX_SLEEP_S = 1.0
#: After Redis failed, how long a process keeps to its local share before asking Redis again.
REDIS_RETRY_S = 1.0
#: How stale a process's view of the fleet's pause of a model with no limit may be, and how often a process
#: asks Redis again whether another has learned the limits of a model it has not heard of yet.
PAUSE_READ_EVERY_S = 0.2
#: A tenant (a workspace) shares a model's rate while it has asked within this many seconds.
TENANT_ACTIVE_S = 2.0
#: Learned limits live this long in Redis, and a process writes them again at most this often while they hold.
LEARNED_TTL_S = 3600.0
LEARNED_REFRESH_S = 600.0
#: Connections to Redis per process, shared by its step threads, and how long one waits for a free one.
REDIS_CONNECTIONS = 16
REDIS_POOL_WAIT_S = 5.0
#: An outage is logged once, and again only if Redis fails again this long after it last did.
OUTAGE_LOG_EVERY_S = 60.0
#: Waits shorter than this are rounding (61 / 610 × 10 is a hair over 1): the call goes.
_EPSILON_S = 1e-9
_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def _script(name: str) -> str:
    """The Lua script ``lua/<name>.lua`` of this package (package data, so an installed wheel has it)."""
    return resources.files("dataengine.llm").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


#: The limiter's scripts, one per file beside this module (their KEYS and ARGV are described at
#: the top of each); read once, at import, from the installed package.
_ACQUIRE = _script("acquire")
_SETTLE = _script("settle")
_PAUSE = _script("pause")


@dataclass(frozen=True)
class ModelLimits:
    """A model's provider limits per minute; ``None`` (or 0) is no limit."""

    rpm: float | None = None
    tpm: float | None = None


class TokenSlot(NamedTuple):
    """Where a reservation sits in the TPM state, so ``settle`` can correct it safely."""

    end: float  # the backlog (``tat``) right after it was admitted
    cut: float  # the total of refunds applied to the model so far, then
    per_token: float  # seconds of backlog each of its tokens cost


@dataclass(frozen=True)
class Reservation:
    """What one admitted call took: its model and reserved tokens, and whether Redis was unreachable."""

    model: str
    tokens: int
    local: bool
    slot: TokenSlot | None = field(default=None, repr=False, compare=False)


class RateLimitWait(Exception):
    """The call would have to wait longer than the limiter's ``max_wait_s``."""

    def __init__(self, model: str, wait_s: float) -> None:
        super().__init__(f"{model}: rate limited for another {wait_s:.1f}s")
        self.model = model
        self.wait_s = wait_s


class _Learned(NamedTuple):
    """A process's view of a model's learned limits (``None``: not heard yet), and when it was written or read."""

    limits: ModelLimits | None
    at: float


def _member(tenant: str | None, tier: str | None) -> str:
    """How a tenant of a tier is named among the model's waiting tenants: ``weight|tier|tenant`` (the
    script groups them by tier and weighs each tier); '' for a call that shares with nobody."""
    if tenant is None:
        return ""
    return f"{weight_of(tier)}|{tier or DEFAULT_TIER}|{tenant}"


def heard_limits(headers: Any) -> ModelLimits:
    """The per-minute limits an answer's ``x-ratelimit-limit-requests`` / ``-tokens`` headers give (a
    header left out, or not a positive number: no limit)."""
    found: dict[str, float | None] = {}
    for name, what in (("rpm", "requests"), ("tpm", "tokens")):
        try:
            value = float(headers.get(f"x-ratelimit-limit-{what}") or 0)
        except (TypeError, ValueError):
            value = 0.0
        found[name] = value if value > 0 and math.isfinite(value) else None
    return ModelLimits(**found)


class _Shape(NamedTuple):
    """A per-minute limit as the script sees it: seconds of backlog per unit (0: no limit), and the burst."""

    interval: float
    burst_s: float


def _shape(limit: float | None, scale: float, burst_s: float) -> _Shape:
    """The burst ``C`` (``burst_s`` seconds' worth, at least one unit when the limit allows two) and
    the rate ``r = (L - C) / 60`` of a limit ``L = limit × scale``: so that 60 × r + C = L."""
    if not limit or limit <= 0:
        return _Shape(0.0, 0.0)
    per_minute = limit * scale
    burst = burst_s * per_minute / (WINDOW_S + burst_s)  # burst_s seconds' worth of the rate it leaves
    if burst < 1 <= per_minute / 2:
        burst = 1.0
    interval = WINDOW_S / (per_minute - burst)
    return _Shape(interval, burst * interval)


def _ramp(now: float, paused_until: float, start: float, recovery_s: float) -> float:
    """The share of the rate a model runs at ``now``, recovering from a pause that ended then."""
    if recovery_s <= 0 or now >= paused_until + recovery_s:
        return 1.0
    return start + (1 - start) * (now - paused_until) / recovery_s


class _LocalState:
    """One model's limits in this process alone (while Redis is unreachable): the script, in Python."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tat = {"rpm": -math.inf, "tpm": -math.inf}
        self.cut = 0.0
        self.paused_until = -math.inf
        #: A model with no limit: the fleet's pause as last read from Redis, and when.
        self.fleet_paused_until = -math.inf
        self.pause_read_at = -math.inf


class FleetLimiter:
    """RPM and TPM limits per model for the whole fleet, with a local fallback; thread-safe.

    The Redis client should give up fast (see :func:`limiter_from`): while Redis is unreachable, one
    caller every ``REDIS_RETRY_S`` asks it again and waits out the client's timeouts and retries.

    ``clock`` is for tests: the time the scripts and the local fallback see (production leaves it
    out, and the scripts read Redis's clock, the fallback ``time.monotonic``).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        limits_for: Callable[[str], ModelLimits],
        *,
        burst_s: float = 0.1,
        token_burst_s: float | None = None,
        fallback_share: float = 0.1,
        recovery_start: float = 0.5,
        recovery_s: float = 3.0,
        learn: bool = False,
        unknown_rpm: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
        max_wait_s: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if burst_s < 0 or not 0 < fallback_share <= 1 or not 0 < recovery_start <= 1 or recovery_s < 0:
            raise ValueError("burst_s and recovery_s must be >= 0, fallback_share and recovery_start in (0, 1]")
        if unknown_rpm <= 0:
            raise ValueError("unknown_rpm must be > 0")
        self._redis = redis_client
        self._limits_for = limits_for
        self._burst_s = burst_s
        #: Tokens may need a longer burst than requests: one must cover a typical call.
        self._token_burst_s = burst_s if token_burst_s is None else token_burst_s
        self._fallback_share = fallback_share
        self._recovery_start = recovery_start
        self._recovery_s = recovery_s
        self._learn = learn
        self._unknown_rpm = unknown_rpm
        self._learned: dict[str, _Learned] = {}
        self._sleep = sleep
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._acquire_script = redis_client.register_script(_ACQUIRE)
        self._settle_script = redis_client.register_script(_SETTLE)
        self._pause_script = redis_client.register_script(_PAUSE)
        self._lock = threading.Lock()  # guards the two below and the outage state; never held while sleeping
        self._local: dict[str, _LocalState] = {}
        self._down = False
        self._retry_at = 0.0
        self._logged_down_at = -math.inf
        self._announced = False  # this outage was logged

    def acquire(self, model: str, tokens: int, tenant: str | None = None, tier: str | None = None) -> Reservation:
        """Wait until a call of ``tokens`` (estimated) may go to ``model`` for ``tenant`` of ``tier`` (None:
        no sharing between tenants; ``tier`` None: ``normal``); its reservation.

        Sleeps what the limit says to wait, at most ``MAX_SLEEP_S`` at a time. Raises
        :class:`RateLimitWait` only when ``max_wait_s`` is set and the sleeps would add up to more.
        """
        waited = 0.0
        while True:
            reservation, wait_s = self._try(model, tokens, tenant, tier)
            if reservation is not None:
                return reservation
            if self._max_wait_s is not None and waited + wait_s > self._max_wait_s:
                raise RateLimitWait(model, wait_s)
            nap = min(max(wait_s, 0.001), MAX_SLEEP_S)
            self._sleep(nap)
            waited += nap

    def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Correct the TPM state by actual − reserved tokens (a refund when negative); never raises on
        a Redis error (it is logged at debug level)."""
        delta = actual_tokens - reservation.tokens
        slot = reservation.slot
        if delta == 0 or slot is None:
            return
        if reservation.local:
            self._local_settle(self._local_state(reservation.model), delta, slot)
            return
        try:
            self._settle_script(keys=[_key(reservation.model, "tpm")],
                                args=[delta, slot.per_token, slot.end, slot.cut, self._now_arg()])
        except redis.RedisError as exc:
            log.debug("could not settle %s tokens of %s in Redis: %s", delta, reservation.model, exc)

    def pause(self, model: str, retry_after_s: float) -> None:
        """A 429: pause ``model`` for every worker for ``retry_after_s`` and spend its burst, then recover
        gradually.

        Never raises on a Redis error: the pause then holds in this process only.
        """
        limits = self.limits(model)
        state = self._local_state(model)
        with state.lock:
            state.paused_until = max(state.paused_until, self._local_now() + retry_after_s)
            for k, shape in self._shapes(limits, self._fallback_share).items():
                if shape.interval > 0:
                    state.tat[k] = max(state.tat[k], state.paused_until + shape.burst_s - shape.interval)
        if not self._redis_usable():
            return
        try:
            shapes = self._shapes(limits, 1.0)
            self._pause_script(keys=[_key(model, "pause"), _key(model, "rpm"), _key(model, "tpm")],
                               args=[retry_after_s, self._recovery_s, self._now_arg(), *shapes["rpm"], *shapes["tpm"]])
        except _UNREACHABLE as exc:
            self._went_down(model, exc)
        except redis.RedisError as exc:
            log.debug("could not pause %s in Redis: %s", model, exc)
        else:
            self._came_back()

    def paused_for(self, model: str) -> float:
        """Seconds ``model`` is still paused (0 if it is not)."""
        if self._redis_usable():
            try:
                left = float(self._pause_script(keys=[_key(model, "pause")], args=["", 0, self._now_arg()]))
            except _UNREACHABLE as exc:
                self._went_down(model, exc)
            else:
                self._came_back()
                return left
        state = self._local_state(model)
        with state.lock:
            return max(0.0, state.paused_until - self._local_now())

    def learn(self, model: str, headers: Any) -> None:
        """What an answer of ``model`` says of the provider's limits (its ``x-ratelimit-limit-*``
        headers; none: no limit), for a model with no configured limit. Never raises on a Redis error."""
        if not self._learn:
            return
        heard, now = heard_limits(headers), self._local_now()
        with self._lock:
            known = self._learned.get(model)
            if known is not None and known.limits == heard and now - known.at < LEARNED_REFRESH_S:
                return
            self._learned[model] = _Learned(heard, now)
        if not self._redis_usable():
            return
        try:
            key = _key(model, "learned")
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping={"rpm": heard.rpm or 0, "tpm": heard.tpm or 0})
                pipe.pexpire(key, int(LEARNED_TTL_S * 1000))
                pipe.execute()
        except _UNREACHABLE as exc:
            self._went_down(model, exc)
        except redis.RedisError as exc:
            log.debug("could not share the learned limits of %s in Redis: %s", model, exc)

    def limits(self, model: str) -> ModelLimits:
        """The limits ``model`` keeps to now: its configured ones; else, when learning, the provider's as
        learned (``unknown_rpm`` until heard); else none."""
        limits = self._limits_for(model)
        if limits.rpm or limits.tpm or not self._learn:
            return limits
        now = self._local_now()
        with self._lock:
            known = self._learned.get(model)
        if known is not None and known.limits is not None:
            return known.limits
        if known is None or now - known.at >= PAUSE_READ_EVERY_S:
            shared = self._shared_learned(model)
            with self._lock:
                if self._learned.get(model) is known:  # not learned from an answer meanwhile
                    self._learned[model] = _Learned(shared, now)
            if shared is not None:
                return shared
        return ModelLimits(rpm=self._unknown_rpm)

    def _shared_learned(self, model: str) -> ModelLimits | None:
        """The limits another process learned for ``model`` (None: none yet, or Redis did not answer)."""
        if not self._redis_usable():
            return None
        try:
            found = self._redis.hgetall(_key(model, "learned"))
        except _UNREACHABLE as exc:
            self._went_down(model, exc)
            return None
        except redis.RedisError:
            return None
        self._came_back()
        if not found:
            return None
        return heard_limits({f"x-ratelimit-limit-{what}": found.get(field.encode()) or found.get(field)
                             for field, what in (("rpm", "requests"), ("tpm", "tokens"))})

    def _shapes(self, limits: ModelLimits, share: float) -> dict[str, _Shape]:
        return {"rpm": _shape(limits.rpm, share, self._burst_s), "tpm": _shape(limits.tpm, share, self._token_burst_s)}

    def _try(self, model: str, tokens: int, tenant: str | None = None,
             tier: str | None = None) -> tuple[Reservation | None, float]:
        """One attempt: the reservation, or None and the seconds to wait before the next one."""
        limits = self.limits(model)
        if not limits.rpm and not limits.tpm:
            return self._unlimited_try(model, tokens)
        if self._redis_usable():
            shapes = self._shapes(limits, 1.0)
            args = [*shapes["rpm"], *shapes["tpm"], tokens, self._recovery_start, self._recovery_s, self._now_arg(),
                    _member(tenant, tier), TENANT_ACTIVE_S]
            own = f"t:{tier or DEFAULT_TIER}:{tenant}"
            keys = [_key(model, "rpm"), _key(model, "tpm"), _key(model, "pause"), _key(model, "tenants"),
                    _key(model, f"{own}:rpm"), _key(model, f"{own}:tpm")]
            try:
                answer = self._acquire_script(keys=keys, args=args)
            except _UNREACHABLE as exc:
                self._went_down(model, exc)
            else:
                self._came_back()
                if answer[0] not in (b"1", "1"):
                    return None, float(answer[1])
                slot = TokenSlot(*(float(x) for x in answer[2:])) if len(answer) > 2 else None
                return Reservation(model, tokens, False, slot), 0.0
        return self._local_try(model, tokens, limits)

    def _unlimited_try(self, model: str, tokens: int) -> tuple[Reservation | None, float]:
        """A model with no limit only waits out pauses: the fleet's, read from Redis at most every
        ``PAUSE_READ_EVERY_S`` per process (not once per call), and this process's own."""
        state = self._local_state(model)
        with state.lock:
            stale = self._local_now() - state.pause_read_at >= PAUSE_READ_EVERY_S
        if stale:
            left = self.paused_for(model)
            with state.lock:
                state.pause_read_at = now = self._local_now()
                state.fleet_paused_until = now + left
        with state.lock:
            wait = max(state.fleet_paused_until, state.paused_until) - self._local_now()
        if wait > _EPSILON_S:
            return None, wait
        return Reservation(model, tokens, self._down), 0.0

    def _local_try(self, model: str, tokens: int, limits: ModelLimits) -> tuple[Reservation | None, float]:
        """The acquire script, in this process, at ``fallback_share`` of the limits."""
        shapes = self._shapes(limits, self._fallback_share)
        units = {"rpm": 1, "tpm": tokens}
        state = self._local_state(model)
        with state.lock:
            now = self._local_now()
            if now < state.paused_until:
                return None, state.paused_until - now
            factor = _ramp(now, state.paused_until, self._recovery_start, self._recovery_s)
            costs = {k: units[k] * shape.interval / factor for k, shape in shapes.items() if shape.interval > 0}
            wait = max((state.tat[k] - shapes[k].burst_s + min(cost, shapes[k].burst_s + WINDOW_S) - now
                        for k, cost in costs.items()), default=0.0)
            if wait > _EPSILON_S:
                return None, wait
            for k, cost in costs.items():
                state.tat[k] = max(state.tat[k], now) + cost
            slot = TokenSlot(state.tat["tpm"], state.cut, shapes["tpm"].interval / factor) if "tpm" in costs else None
        return Reservation(model, tokens, True, slot), 0.0

    def _local_settle(self, state: _LocalState, delta: int, slot: TokenSlot) -> None:
        """The settle script, in this process."""
        with state.lock:
            now = self._local_now()
            if delta > 0:
                state.tat["tpm"] = max(state.tat["tpm"], now) + delta * slot.per_token
                return
            slot_end = slot.end - max(0.0, state.cut - slot.cut)
            back = min(-delta * slot.per_token, slot_end - now, state.tat["tpm"] - now)
            if back > 0:
                state.tat["tpm"] -= back
                state.cut += back

    def _local_state(self, model: str) -> _LocalState:
        with self._lock:
            return self._local.setdefault(model, _LocalState())

    def _now_arg(self) -> float | str:
        return "" if self._clock is None else self._clock()

    def _local_now(self) -> float:
        return time.monotonic() if self._clock is None else self._clock()

    def _redis_usable(self) -> bool:
        """Whether to ask Redis: always while it answers; while it does not, one caller every ``REDIS_RETRY_S``."""
        with self._lock:
            if not self._down:
                return True
            if self._local_now() < self._retry_at:
                return False
            self._retry_at = self._local_now() + REDIS_RETRY_S  # this caller asks; the others stay local
            return True

    def _went_down(self, model: str, exc: BaseException) -> None:
        with self._lock:
            now = self._local_now()
            # Once per outage: an outage where a few calls still get through is still one outage.
            first = not self._down and now - self._logged_down_at >= OUTAGE_LOG_EVERY_S
            self._down = True
            self._retry_at = now + REDIS_RETRY_S
            if first:
                self._logged_down_at, self._announced = now, True
        if first:
            rpm = self.limits(model).rpm
            local = f"{rpm * self._fallback_share:g} RPM of {rpm:g}" if rpm else "no RPM limit"
            log.warning("Redis is unreachable (%s): LLM rate limits are kept per process at %g%% of the fleet's "
                        "(%s: %s) until it answers again", exc, self._fallback_share * 100, model, local)

    def _came_back(self) -> None:
        if not self._down:  # read without the lock: the usual case, and a stale answer only delays the log
            return
        with self._lock:
            announced = self._down and self._announced
            self._down = self._announced = False
        if announced:
            log.info("Redis answers again: LLM rate limits are fleet-wide again")


def _key(model: str, what: str) -> str:
    return f"{KEY_PREFIX}{{{model}}}:{what}"


def limiter_from(
    redis_url: str,
    *,
    default: ModelLimits,
    per_model: dict[str, ModelLimits],
    burst_s: float,
    token_burst_s: float,
    fallback_share: float,
    recovery_start: float,
    recovery_s: float,
    learn: bool = False,
    unknown_rpm: float = 600.0,
    named: Callable[[str], ModelLimits | None] = lambda _name: None,
) -> FleetLimiter:
    """The process's limiter: the limits ``named`` gives a name (a workspace's model), else ``per_model``'s,
    else ``default``, else (``learn``) the provider's as its answers say, on a Redis client that gives up fast (0.5 s to connect or answer, no retries), so
    an outage turns into the local fallback at once.

    Hundreds of step threads share ``REDIS_CONNECTIONS`` connections: a thread waits for a free one
    (a busy pool is not an outage) rather than opening one each.
    """
    pool = redis.BlockingConnectionPool.from_url(
        redis_url, max_connections=REDIS_CONNECTIONS, timeout=REDIS_POOL_WAIT_S, socket_connect_timeout=0.5,
        socket_timeout=0.5, retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
    )
    client = redis.Redis(connection_pool=pool)

    def limits_for(name: str) -> ModelLimits:
        own = named(name)
        return own if own is not None else per_model.get(name, default)

    return FleetLimiter(client, limits_for, burst_s=burst_s, token_burst_s=token_burst_s, fallback_share=fallback_share,
                        recovery_start=recovery_start, recovery_s=recovery_s, learn=learn, unknown_rpm=unknown_rpm)


def estimate_tokens(messages: list[dict[str, str]] | list[str], max_output_tokens: int) -> int:
    """A cheap upper-leaning estimate of a call's tokens, to reserve before it is sent: the text's
    characters / 4 (rounded up), 4 per message, and the most the answer may take. It is only an
    estimate; ``FleetLimiter.settle`` corrects the reservation with the real usage after the call."""
    chars = 0
    for message in messages:
        parts: Any = message.values() if isinstance(message, dict) else (message,)
        chars += sum(len(part) for part in parts if isinstance(part, str))
    return math.ceil(chars / 4) + 4 * len(messages) + max_output_tokens
