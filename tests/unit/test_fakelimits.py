"""The stand-in's sliding-minute limits, on a clock the test moves."""

from __future__ import annotations

import pytest

from dataengine.testing.standin_limits import ProviderLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_requests_over_the_rpm_limit_wait_for_the_oldest_to_leave_the_minute(clock: Clock) -> None:
    limits = ProviderLimits(clock)
    for _ in range(2):
        assert limits.admit(10, rpm=2, tpm=0) is None
        clock.now += 10
    refusal = limits.admit(10, rpm=2, tpm=0)
    assert refusal is not None and refusal.limit == "requests" and refusal.retry_after_s == pytest.approx(40)
    clock.now += 40  # the first request (at 1000) leaves the window at 1060
    assert limits.admit(10, rpm=2, tpm=0) is None
    assert limits.snapshot()["rate_limited"] == 1 and limits.snapshot()["max_requests_in_60s"] == 2


def test_tokens_over_the_tpm_limit_wait_until_enough_have_left(clock: Clock) -> None:
    limits = ProviderLimits(clock)
    assert limits.admit(600, rpm=0, tpm=1000) is None  # at 1000
    clock.now += 5
    assert limits.admit(300, rpm=0, tpm=1000) is None  # at 1005
    clock.now += 5
    refusal = limits.admit(500, rpm=0, tpm=1000)  # 1,400: the 600 must leave first, at 1060
    assert refusal is not None and refusal.limit == "tokens" and refusal.retry_after_s == pytest.approx(50)
    assert limits.admit(100, rpm=0, tpm=1000) is None  # exactly 1,000 fits
    too_big = limits.admit(1001, rpm=0, tpm=1000)
    assert too_big is not None and too_big.retry_after_s == 60  # never fits in one minute


def test_no_limit_admits_everything_and_counts_each_second(clock: Clock) -> None:
    limits = ProviderLimits(clock)
    for i in range(5):
        clock.now = 2000.0 + i * 0.4
        assert limits.admit(1_000_000, rpm=0, tpm=0) is None
    assert limits.snapshot()["requests_per_second"] == {"2000": 3, "2001": 2}
    limits.started()
    limits.started()
    limits.finished()
    snapshot = limits.snapshot()
    assert (snapshot["in_flight"], snapshot["max_in_flight"], snapshot["rate_limited"]) == (1, 2, 0)


def test_a_bucket_holds_bucket_s_of_the_limit_and_refills_at_its_rate(clock: Clock) -> None:
    limits = ProviderLimits(clock)
    bucket = {"rpm": 1200, "tpm": 0, "bucket_s": 1.0}  # 20 a second, 20 at once
    assert all(limits.admit(10, **bucket) is None for _ in range(20))
    refusal = limits.admit(10, **bucket)
    assert refusal is not None and refusal.limit == "requests" and refusal.retry_after_s == pytest.approx(0.05)
    assert limits.headers(**bucket) == {"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": "0",
                                        "x-ratelimit-reset-requests": "1s"}
    clock.now += 0.25  # five back
    assert [limits.admit(10, **bucket) for _ in range(6)].count(None) == 5
    clock.now += 60  # full again, never more
    assert [limits.admit(10, **bucket) for _ in range(21)].count(None) == 20
    assert limits.snapshot()["rate_limited"] == 3


def test_a_token_bucket_refuses_until_it_holds_the_request(clock: Clock) -> None:
    limits = ProviderLimits(clock)
    bucket = {"rpm": 0, "tpm": 6000, "bucket_s": 2.0}  # 100 tokens a second, 200 at once
    assert limits.admit(150, **bucket) is None
    refusal = limits.admit(100, **bucket)  # 50 left: 50 more take half a second
    assert refusal is not None and refusal.limit == "tokens" and refusal.retry_after_s == pytest.approx(0.5)
    too_big = limits.admit(201, **bucket)
    assert too_big is not None and too_big.retry_after_s == 60
    assert limits.headers(**bucket)["x-ratelimit-reset-tokens"] == "1.5s"


def test_the_headers_of_a_sliding_minute_count_what_is_in_it(clock: Clock) -> None:
    limits = ProviderLimits(clock)
    assert limits.admit(100, rpm=10, tpm=1000) is None
    clock.now += 15
    assert limits.headers(rpm=10, tpm=1000) == {
        "x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "9", "x-ratelimit-reset-requests": "45s",
        "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "45s",
    }
    assert limits.headers(rpm=0, tpm=0) == {}
