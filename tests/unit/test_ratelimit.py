"""The fleet-wide LLM rate limiter on fakeredis (its Lua scripts run in lupa), on a clock the test moves."""

from __future__ import annotations

import bisect
import logging
import math
import random
import socket
import threading
import time
from collections.abc import Callable

import fakeredis
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dataengine.llm.limits import (
    REDIS_RETRY_S,
    FleetLimiter,
    ModelLimits,
    RateLimitWait,
    Reservation,
    estimate_tokens,
    limiter_from,
)


class Clock:
    """The time the scripts see; ``sleep`` moves it (and runs what is due by then)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.due: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        ready = [f for at, f in self.due if at <= self.now]
        self.due = [(at, f) for at, f in self.due if at > self.now]
        for f in ready:
            f()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def limiter(server: fakeredis.FakeServer, clock: Clock, limits: dict[str, ModelLimits], **kw: object) -> FleetLimiter:
    """One worker's limiter: its own client of the shared (fake) Redis; a burst of a second's worth unless
    told otherwise, so bursts are large enough to count."""
    kw.setdefault("burst_s", 1.0)
    return FleetLimiter(fakeredis.FakeRedis(server=server), lambda m: limits.get(m, ModelLimits()),
                        sleep=clock.sleep, clock=clock, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["fleet", "local"])
def make(request: pytest.FixtureRequest, server: fakeredis.FakeServer, clock: Clock) -> Callable[..., FleetLimiter]:
    """Limiters on the shared Redis; or (``local``) with Redis down, each keeping to the whole limit
    itself (a share of 1): the fallback is the same algorithm and keeps the same guarantee."""
    local = request.param == "local"
    server.connected = not local

    def make(limits: dict[str, ModelLimits], **kw: object) -> FleetLimiter:
        return limiter(server, clock, limits, **({"fallback_share": 1.0} if local else {}), **kw)

    return make


def admitted_now(lim: FleetLimiter, model: str, tokens: int = 1, tries: int = 1000) -> list[Reservation]:
    """What goes at once (the clock does not move): a burst."""
    out = []
    for _ in range(tries):
        try:
            out.append(lim.acquire(model, tokens))
        except RateLimitWait:
            break
    return out


def most_in_any_minute(times: list[float], amounts: list[float]) -> float:
    """The most admitted in any 60 s window (t - 60, t]: the worst window ends at an admission."""
    prefix = [0.0]
    for a in amounts:
        prefix.append(prefix[-1] + a)
    return max(prefix[i + 1] - prefix[bisect.bisect_right(times, t - 60.0)] for i, t in enumerate(times))


@pytest.mark.parametrize("rpm", [120, 30])
def test_a_greedy_caller_never_gets_more_than_rpm_in_any_minute_and_runs_at_the_limit(make, clock, rpm):
    lim = make({"m": ModelLimits(rpm=rpm)})
    times = []
    while clock.now < 1200.0:
        lim.acquire("m", 1)
        times.append(clock.now)
    assert rpm - 2 <= most_in_any_minute(times, [1] * len(times)) <= rpm  # right at the limit, never over
    burst = max(1, rpm / 61)  # a second's worth of the rate it leaves, at least one request
    assert len(times) == pytest.approx(200 * (rpm - burst) / 60 + burst, abs=1.5)


def greedy_tokens(lim: FleetLimiter, clock: Clock, reserve: Callable[[], int],
                  usage: Callable[[int], tuple[int, float]], until: float) -> tuple[list[float], list[int]]:
    """Admit calls as fast as the limiter allows; each is settled with ``usage(reserved)``'s tokens,
    that many seconds after it went (while later calls are being admitted)."""
    times, tokens = [], []
    while clock.now < until:
        reservation = lim.acquire("m", reserve())
        actual, latency = usage(reservation.tokens)
        times.append(clock.now)
        tokens.append(actual)
        clock.due.append((clock.now + latency, lambda r=reservation, a=actual: lim.settle(r, a)))
    return times, tokens


def test_calls_larger_than_the_burst_still_go_and_keep_to_tpm(make, clock):
    lim = make({"m": ModelLimits(rpm=300, tpm=6000)})  # a burst of 98 tokens
    rng = random.Random(7)
    times, tokens = greedy_tokens(lim, clock, lambda: rng.randint(10, 400), lambda n: (n, rng.uniform(0, 5)), 1200.0)
    assert 3500 < most_in_any_minute(times, tokens) <= 6000  # each large call waits for an idle gap
    assert most_in_any_minute(times, [1] * len(times)) <= 300


def test_corrected_tokens_never_exceed_tpm_in_any_minute_even_with_late_refunds(make, clock):
    """For 100 s calls use a tenth of what they reserved and are settled 20-60 s later, while newer
    calls are being admitted; then they use what they reserved. A refund may only give back what
    is still ahead of a call: handing out again what the old calls held would break the bound."""
    lim = make({"m": ModelLimits(rpm=300, tpm=6000)})
    rng = random.Random(7)

    def usage(reserved: int) -> tuple[int, float]:
        return (reserved // 10, rng.uniform(20, 60)) if clock.now < 1100.0 else (reserved, rng.uniform(0, 2))

    times, tokens = greedy_tokens(lim, clock, lambda: rng.randint(10, 90), usage, 1300.0)
    assert 5800 < most_in_any_minute(times, tokens) <= 6000
    assert most_in_any_minute(times, [1] * len(times)) <= 300


def test_a_fleet_starts_with_a_burst_of_about_burst_s_worth(make, clock):
    assert len(admitted_now(make({"a": ModelLimits(rpm=600)}, max_wait_s=0), "a")) == 9  # 9.8
    assert len(admitted_now(make({"b": ModelLimits(rpm=600)}, burst_s=2, max_wait_s=0), "b")) == 19


def test_a_call_takes_from_both_limits_or_from_neither(make, clock):
    lim = make({"m": ModelLimits(rpm=610, tpm=6100)}, max_wait_s=0)  # bursts: 10 calls, 100 tokens
    lim.acquire("m", 100)
    with pytest.raises(RateLimitWait):
        lim.acquire("m", 100)  # no tokens left; the RPM state is left as it was
    assert len(admitted_now(lim, "m", tokens=0)) == 9


def test_a_refund_lets_more_calls_through_but_elapsed_backlog_is_not_handed_out_again(make, clock):
    lim = make({"m": ModelLimits(tpm=6100)}, max_wait_s=0)  # 100 tokens/s, a burst of 100
    first = lim.acquire("m", 100)
    with pytest.raises(RateLimitWait):
        lim.acquire("m", 90)
    lim.settle(first, 10)
    lim.acquire("m", 90)
    with pytest.raises(RateLimitWait):
        lim.acquire("m", 5)

    clock.sleep(10)
    late = lim.acquire("m", 100)
    clock.sleep(2)  # its second of backlog has elapsed
    lim.acquire("m", 100)
    lim.settle(late, 0)  # nothing of it is still ahead: no refund
    with pytest.raises(RateLimitWait) as waiting:
        lim.acquire("m", 100)
    assert waiting.value.wait_s == pytest.approx(1.0)


def test_a_refund_counts_what_earlier_refunds_moved_forward(make, clock):
    lim = make({"m": ModelLimits(tpm=6100)}, max_wait_s=0)
    a, b = lim.acquire("m", 50), lim.acquire("m", 50)  # half a second of backlog each
    lim.settle(a, 0)  # b's half second now starts at once...
    clock.sleep(0.5)  # ...and has elapsed
    lim.acquire("m", 100)
    lim.settle(b, 0)  # nothing of b is ahead any more
    with pytest.raises(RateLimitWait) as waiting:
        lim.acquire("m", 50)
    assert waiting.value.wait_s == pytest.approx(0.5)


def test_usage_over_the_estimate_is_charged_so_later_calls_wait(make, clock):
    lim = make({"m": ModelLimits(tpm=6100)}, max_wait_s=0)
    lim.settle(lim.acquire("m", 50), 250)
    with pytest.raises(RateLimitWait) as waiting:
        lim.acquire("m", 10)
    assert waiting.value.wait_s == pytest.approx(2.5 - 1.0 + 0.1)  # 250 tokens of backlog, burst 1 s, 10 tokens


def test_a_pause_stops_every_worker(server, clock):
    limits = {"m": ModelLimits(rpm=610)}
    a, b = limiter(server, clock, limits), limiter(server, clock, limits, max_wait_s=5)
    a.pause("m", 10)
    a.pause("m", 3)  # an earlier end does not shorten the pause
    assert b.paused_for("m") == pytest.approx(10)
    with pytest.raises(RateLimitWait) as waiting:
        b.acquire("m", 1)
    assert waiting.value.wait_s == pytest.approx(10)
    clock.sleep(10)
    assert b.paused_for("m") == 0 and not b.acquire("m", 1).local


def test_after_a_pause_calls_go_at_the_rate_not_in_a_burst_and_the_rate_comes_back_within_recovery_s(make, clock):
    lim = make({"m": ModelLimits(rpm=610)})  # 10 calls/s at the full rate, a burst of 10
    lim.acquire("m", 1)
    lim.pause("m", 10)
    times = []
    while clock.now < 1030:
        lim.acquire("m", 1)
        times.append(clock.now)
    assert times[0] == pytest.approx(1010.1)  # at half the rate: one interval of 0.2 s, less the one it had
    assert len([t for t in times if t < 1011]) == 6  # 0.5 rising to 0.67 of 10/s: no burst (it would be 10 at once)
    during = [t for t in times if t < 1013]  # 3 s rising from 0.5 to 1.0: 3/4 of 30
    assert 22 <= len(during) <= 24
    after = [t for t in times if t >= 1013]
    assert len(after) == pytest.approx(170, abs=1)  # the full rate, 3 s after the pause
    assert times[-1] - times[-2] == pytest.approx(0.1, rel=0.01)


def test_a_slower_recovery_can_be_set(make, clock):
    lim = make({"m": ModelLimits(rpm=610)}, recovery_s=30)
    lim.pause("m", 10)
    times = []
    while clock.now < 1050:
        lim.acquire("m", 1)
        times.append(clock.now)
    during = [t for t in times if t < 1040]  # 30 s at 0.5 rising to 1.0: 3/4 of 300
    assert 223 <= len(during) <= 227
    assert times[6] - times[5] == pytest.approx(0.2, rel=0.05)


def test_models_are_independent(make, clock):
    limits = {"a": ModelLimits(rpm=610), "b": ModelLimits(rpm=610)}
    lim = make(limits, max_wait_s=0)
    lim.pause("a", 30)
    assert len(admitted_now(lim, "a")) == 0
    assert len(admitted_now(lim, "b")) == 10
    assert lim.paused_for("b") == 0


def test_a_model_without_limits_never_waits_unless_paused(make, clock):
    lim = make({}, max_wait_s=0)
    assert len(admitted_now(lim, "free", tokens=10**6, tries=500)) == 500
    assert all(r.slot is None for r in admitted_now(lim, "free", tries=3))
    lim.pause("free", 2)
    with pytest.raises(RateLimitWait):
        lim.acquire("free", 1)
    clock.sleep(2)
    assert len(admitted_now(lim, "free", tries=50)) == 50  # no rate to scale: only the pause applied


def greedy(lims: dict[str, FleetLimiter], clock: Clock, until: float, model: str = "m",
           callers: dict[str, int] | None = None, stop: dict[str, float] | None = None,
           tiers: dict[str, str] | None = None) -> dict[str, list[float]]:
    """Callers per tenant (of its tier in ``tiers``, else normal) that ask again at once when admitted and
    after the wait when not (at most MAX_SLEEP_S), each tenant through its own limiter (its own process),
    until ``until`` (or the tenant's ``stop``); the admission times by tenant."""
    callers = callers or {t: 1 for t in lims}
    next_at = {(t, i): clock.now for t, n in callers.items() for i in range(n)}
    admitted: dict[str, list[float]] = {t: [] for t in lims}
    while True:
        (tenant, i), at = min(next_at.items(), key=lambda kv: kv[1])
        if at >= until:
            return admitted
        clock.now = at
        if stop and at >= stop.get(tenant, math.inf):
            del next_at[(tenant, i)]
            if not next_at:
                return admitted
            continue
        try:
            lims[tenant].acquire(model, 1, tenant=tenant, tier=(tiers or {}).get(tenant))
            admitted[tenant].append(at)
        except RateLimitWait as waiting:
            next_at[(tenant, i)] = at + min(max(waiting.wait_s, 0.001), 1.0)


def test_tenants_asking_at_once_share_the_rate_equally_whoever_has_more_callers(server, clock):
    limits = {"m": ModelLimits(rpm=610)}  # 10 a second
    lims = {t: limiter(server, clock, limits, max_wait_s=0) for t in ("big", "small")}
    admitted = greedy(lims, clock, until=1030, callers={"big": 10, "small": 1})
    assert len(admitted["big"]) + len(admitted["small"]) <= 310  # the model's rate: a burst, 10 a second
    assert len(admitted["small"]) == pytest.approx(150, abs=5)  # half of it for 30 s
    assert len(admitted["big"]) == pytest.approx(160, abs=6)  # half, and the burst of 10 it took before small asked


def test_tiers_asking_at_once_share_the_rate_by_weight_and_the_lowest_is_never_starved(server, clock):
    """high 9, normal 3, low 1: the high run gets most of the rate at once, a low one still moves."""
    limits = {"m": ModelLimits(rpm=610)}  # 10 a second
    tiers = {"h": "high", "n": "normal", "l": "low"}
    lims = {t: limiter(server, clock, limits, max_wait_s=0) for t in tiers}
    admitted = greedy(lims, clock, until=1039, callers={"h": 1, "n": 20, "l": 1}, tiers=tiers)
    settled = {t: len([a for a in times if a >= 1013]) for t, times in admitted.items()}  # the 26 s after a burst
    assert sum(settled.values()) == pytest.approx(260, abs=4)  # the model's rate, all of it used
    assert settled["h"] == pytest.approx(260 * 9 / 13, abs=5)
    assert settled["n"] == pytest.approx(260 * 3 / 13, abs=5)
    assert settled["l"] == pytest.approx(260 * 1 / 13, abs=3)


def test_a_tenant_alone_has_the_whole_rate_and_gets_it_back_when_the_other_stops(server, clock):
    limits = {"m": ModelLimits(rpm=610)}
    lims = {t: limiter(server, clock, limits, max_wait_s=0) for t in ("a", "b")}
    admitted = greedy(lims, clock, until=1040, stop={"b": 1020})
    late = [t for t in admitted["a"] if t >= 1020 + 2 + 1]  # once b is no longer active (2 s), and a second
    assert len([t for t in admitted["b"] if 1010 <= t < 1020]) == pytest.approx(50, abs=3)
    assert len(late) == pytest.approx(170, abs=3)  # the whole 10 a second


def test_calls_without_a_tenant_keep_to_the_model_alone(server, clock):
    lim = limiter(server, clock, {"m": ModelLimits(rpm=610)}, max_wait_s=0)
    lim.acquire("m", 1, tenant="a")
    assert len(admitted_now(lim, "m")) == 9  # not held to a share: the rest of the burst
    client = fakeredis.FakeRedis(server=server)
    assert client.zrange("dataengine:llm:{m}:tenants", 0, -1) == [b"3|normal|a"]  # weight|tier|tenant


def test_a_model_with_no_limit_keeps_to_the_providers_as_its_answers_say(server, clock):
    a = limiter(server, clock, {"set": ModelLimits(rpm=60)}, learn=True, unknown_rpm=300)
    b = limiter(server, clock, {}, learn=True, max_wait_s=0)  # another process
    assert a.limits("m") == ModelLimits(rpm=300)  # a slow start until an answer is heard
    a.learn("m", {"x-ratelimit-limit-requests": "1200", "x-ratelimit-limit-tokens": "150000",
                  "x-ratelimit-remaining-requests": "1199"})
    assert a.limits("m") == ModelLimits(rpm=1200, tpm=150000)
    clock.sleep(0.2)
    assert b.limits("m") == ModelLimits(rpm=1200, tpm=150000)  # shared through Redis
    assert len(admitted_now(b, "m")) == 19  # a second of the learned rate at once: 1200 / 61
    a.learn("set", {"x-ratelimit-limit-requests": "1200"})
    assert a.limits("set") == ModelLimits(rpm=60)  # a configured limit wins


def test_an_answer_without_limit_headers_lifts_the_slow_start(server, clock):
    lim = limiter(server, clock, {}, learn=True, unknown_rpm=61, max_wait_s=0)
    assert len(admitted_now(lim, "m")) == 1  # 61 RPM: a burst of one
    lim.learn("m", {"content-type": "application/json"})
    assert lim.limits("m") == ModelLimits()
    assert len(admitted_now(lim, "m", tries=200)) == 200
    assert limiter(server, clock, {}).limits("m") == ModelLimits()  # not learning: nothing learned is used


def test_headers_that_are_not_positive_numbers_are_no_limit(server, clock):
    lim = limiter(server, clock, {}, learn=True)
    lim.learn("m", {"x-ratelimit-limit-requests": "lots", "x-ratelimit-limit-tokens": "-5"})
    assert lim.limits("m") == ModelLimits()


def test_learned_limits_are_shared_for_an_hour_and_not_written_on_every_answer(server, clock):
    lim = limiter(server, clock, {}, learn=True)
    client = fakeredis.FakeRedis(server=server)
    lim.learn("m", {"x-ratelimit-limit-requests": "500"})
    assert 3_590_000 < client.pttl("dataengine:llm:{m}:learned") <= 3_600_000
    client.delete("dataengine:llm:{m}:learned")
    lim.learn("m", {"x-ratelimit-limit-requests": "500"})
    assert not client.exists("dataengine:llm:{m}:learned")  # the same again: no write
    lim.learn("m", {"x-ratelimit-limit-requests": "800"})
    assert client.hget("dataengine:llm:{m}:learned", "rpm") == b"800.0"


def test_keys_are_per_model_under_the_prefix_and_expire(server, clock):
    lim = limiter(server, clock, {"gpt-4o": ModelLimits(rpm=600, tpm=30000)})
    lim.settle(lim.acquire("gpt-4o", 100), 40)
    lim.pause("gpt-4o", 5)
    client = fakeredis.FakeRedis(server=server)
    keys = sorted(k.decode() for k in client.keys("*"))
    assert keys == ["dataengine:llm:{gpt-4o}:pause", "dataengine:llm:{gpt-4o}:rpm", "dataengine:llm:{gpt-4o}:tpm"]
    # the backlog (a pause moves it past its end, plus the burst) and a minute; a pause and recovery_s
    assert all(0 < client.pttl(k) <= 67_000 for k in keys)


def test_redis_clock_is_used_without_a_clock_hook(server):
    lim = FleetLimiter(fakeredis.FakeRedis(server=server), lambda m: ModelLimits(rpm=600, tpm=10**6), burst_s=1,
                       max_wait_s=0)
    started = time.monotonic()
    admitted = len(admitted_now(lim, "m"))
    # The burst of 9, and what the wall clock (10 a second) let in meanwhile on a busy machine.
    assert 9 <= admitted <= 9 + math.ceil((time.monotonic() - started) * 10)
    lim.pause("m", 30)
    assert 29 < lim.paused_for("m") <= 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_redis_falls_back_to_a_local_share_and_says_so_once(clock, caplog):
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    lim = FleetLimiter(client, lambda m: ModelLimits(rpm=1200), sleep=clock.sleep, clock=clock)  # local: 120 RPM
    caplog.set_level(logging.INFO, "dataengine.llm.limits")
    times = []
    while clock.now < 1030:
        assert lim.acquire("m", 1).local
        times.append(clock.now)
    assert len(times) == pytest.approx(30 * 120 / 61 + 120 / 61, abs=1.5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "120 RPM of 1200" in warnings[0].getMessage()
    lim.pause("m", 5)  # applies locally, does not raise
    assert lim.paused_for("m") == pytest.approx(5)
    lim.settle(Reservation("m", 10, False), 5)  # a fleet reservation cannot be settled: logged, not raised


def test_the_fallback_ends_when_redis_answers_again(server, clock, caplog):
    lim = limiter(server, clock, {"m": ModelLimits(rpm=6000, tpm=600_000)})
    caplog.set_level(logging.INFO, "dataengine.llm.limits")
    server.connected = False
    local = lim.acquire("m", 500)
    assert local.local
    lim.settle(local, 100)
    server.connected = True
    assert lim.acquire("m", 1).local  # Redis is asked again only after REDIS_RETRY_S
    clock.sleep(REDIS_RETRY_S)
    assert not lim.acquire("m", 1).local
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]


def test_fifty_threads_at_once_get_no_more_than_the_burst(make, clock):
    lim = make({"m": ModelLimits(rpm=6000, tpm=61000)}, max_wait_s=0)  # bursts: 98 calls, 1000 tokens
    got: list[Reservation] = []
    start = threading.Barrier(50)

    def worker() -> None:
        start.wait()
        got.extend(admitted_now(lim, "m", tokens=30, tries=5))

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 33  # 1000 // 30


def test_no_lock_is_held_while_a_call_sleeps(server, clock):
    lim = limiter(server, clock, {"m": ModelLimits(rpm=600)})
    asleep, wake = threading.Event(), threading.Event()

    def sleep(seconds: float) -> None:
        asleep.set()
        assert wake.wait(5)
        clock.sleep(seconds)

    sleeper = FleetLimiter(lim._redis, lambda m: ModelLimits(rpm=600), sleep=sleep, clock=clock)
    lim.pause("m", 0.5)
    waiting = threading.Thread(target=sleeper.acquire, args=("m", 1))
    waiting.start()
    assert asleep.wait(5)
    assert not lim.acquire("other", 1).local  # the same Redis, another model: goes at once
    sleeper.pause("other", 1)
    assert lim.paused_for("other") == pytest.approx(1)
    wake.set()
    waiting.join(5)
    assert not waiting.is_alive()


def test_the_builder_uses_a_client_that_gives_up_fast(caplog):
    lim = limiter_from(f"redis://127.0.0.1:{free_port()}/3", default=ModelLimits(rpm=100),
                       per_model={"big": ModelLimits(tpm=9)}, burst_s=1, token_burst_s=1, fallback_share=0.2,
                       recovery_start=0.5, recovery_s=30)
    kwargs = lim._redis.connection_pool.connection_kwargs
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"], kwargs["db"]) == (0.5, 0.5, 3)
    assert kwargs["retry"].get_retries() == 0 and kwargs["health_check_interval"] == 0
    assert lim._limits_for("big") == ModelLimits(tpm=9) and lim._limits_for("other") == ModelLimits(rpm=100)
    assert lim.acquire("other", 1) == Reservation("other", 1, local=True)  # nothing listens there: at once, locally
    assert "20 RPM of 100" in caplog.text


def test_estimate_tokens_is_characters_over_four_and_a_few_per_message_plus_the_answer():
    assert estimate_tokens(["abcde"], 100) == 2 + 4 + 100
    messages = [{"role": "system", "content": "x" * 30}, {"role": "user", "content": "y" * 40}]
    assert estimate_tokens(messages, 0) == 20 + 8  # (6 + 30 + 4 + 40) / 4, 4 per message
    assert estimate_tokens([], 7) == 7
