"""The stand-in LLM server's own provider limits and traffic counts.

A real provider refuses requests over its requests-per-minute (RPM) or tokens-per-minute (TPM) limit
with a 429 and a ``Retry-After``; the stand-in does the same, so a test can show that a fleet stays
under a limit rather than trust that it does. It counts either over a sliding 60-second window, or
(``bucket_s`` > 0) as OpenAI does: a token bucket per limit holding ``bucket_s`` seconds of it, full
at the start and refilled continuously at the limit's rate. Like OpenAI it tells its state in every
answer's ``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*`` headers
(:meth:`ProviderLimits.headers`). It also counts what a benchmark needs to judge the engine:
requests admitted in each second, the most admitted in any 60 seconds, the 429s it answered, and
the calls in flight (now and at most).

A request's tokens are counted when it is admitted, as providers do: its prompt's tokens plus
the ``max_tokens`` it asks for (``max_completion_tokens``), if any.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

#: The window both limits are counted over, in seconds.
WINDOW_S = 60.0
#: Seconds of per-second counts kept (the stats show them; older ones are dropped).
SECONDS_KEPT = 900


@dataclass(frozen=True)
class Refusal:
    """A request over a limit: which one, and when the window (or bucket) will have room for it."""

    limit: str  # "requests" or "tokens"
    retry_after_s: float


def duration(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*`` (Go's format: ``1m30s``, ``1.5s``, ``20ms``)."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    return (f"{int(minutes)}m" if minutes else "") + f"{rest:g}s"


class ProviderLimits:
    """RPM and TPM over a sliding window (0 turns a limit off), and the server's traffic counts.

    Thread-safe; ``clock`` is ``time.monotonic`` except in unit tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._admitted: deque[tuple[float, int]] = deque()  # (time, tokens) within the window
            self._window_tokens = 0
            self._per_second: Counter[int] = Counter()
            self._max_window_requests = 0
            self._max_window_tokens = 0
            self.refused = 0
            self._answered_429_at: deque[float] = deque(maxlen=SECONDS_KEPT)
            self.in_flight = 0
            self.max_in_flight = 0
            self._levels: dict[str, float] = {}  # a bucket's level, by limit; full when missing
            self._levels_at = self._clock()

    def admit(self, tokens: int, *, rpm: int, tpm: int, bucket_s: float = 0.0) -> Refusal | None:
        """Count the request in if both limits have room for it; else the refusal (counted as a 429)."""
        with self._lock:
            now = self._clock()
            self._forget_before(now - WINDOW_S)
            refusal = None
            if bucket_s > 0:
                refusal = self._from_buckets(now, tokens, rpm=rpm, tpm=tpm, bucket_s=bucket_s)
            elif rpm and len(self._admitted) + 1 > rpm:
                refusal = Refusal("requests", self._wait_for_room(now, need_requests=len(self._admitted) + 1 - rpm))
            elif tpm and self._window_tokens + tokens > tpm:
                if tokens > tpm:
                    refusal = Refusal("tokens", WINDOW_S)  # never fits: the provider says so too
                else:
                    refusal = Refusal("tokens", self._wait_for_room(now, need_tokens=self._window_tokens + tokens - tpm))
            if refusal is not None:
                self.refused += 1
                self._answered_429_at.append(now)
                return refusal
            self._admitted.append((now, tokens))
            self._window_tokens += tokens
            self._per_second[math.floor(now)] += 1
            self._max_window_requests = max(self._max_window_requests, len(self._admitted))
            self._max_window_tokens = max(self._max_window_tokens, self._window_tokens)
            if len(self._per_second) > SECONDS_KEPT:
                for second in sorted(self._per_second)[: len(self._per_second) - SECONDS_KEPT]:
                    del self._per_second[second]
            return None

    def headers(self, *, rpm: int, tpm: int, bucket_s: float = 0.0) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for each limit that is set: the limit per minute, what is
        left of it now, and the time until it is whole again."""
        out: dict[str, str] = {}
        with self._lock:
            now = self._clock()
            self._forget_before(now - WINDOW_S)
            if bucket_s > 0:
                self._refill(now, rpm=rpm, tpm=tpm, bucket_s=bucket_s)
            for name, limit in (("requests", rpm), ("tokens", tpm)):
                if not limit:
                    continue
                if bucket_s > 0:
                    level = self._levels[name]
                    remaining, reset_s = math.floor(level), (limit * bucket_s / WINDOW_S - level) / (limit / WINDOW_S)
                else:
                    used = len(self._admitted) if name == "requests" else self._window_tokens
                    remaining = limit - used
                    reset_s = self._admitted[-1][0] + WINDOW_S - now if self._admitted else 0.0
                out[f"x-ratelimit-limit-{name}"] = str(limit)
                out[f"x-ratelimit-remaining-{name}"] = str(max(0, remaining))
                out[f"x-ratelimit-reset-{name}"] = duration(reset_s)
        return out

    def answered_429(self) -> None:
        """A 429 that no limit made (an injected one): only its time is kept, beside the limits' own."""
        with self._lock:
            self._answered_429_at.append(self._clock())

    def started(self) -> None:
        """A request is being answered (after admission, before its latency)."""
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def finished(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def snapshot(self) -> dict[str, object]:
        """The counts, for ``/_fake/stats``: per-second admissions keyed by the clock's whole second, and
        the clock's time of every 429 (``rate_limited`` counts those of the limits)."""
        with self._lock:
            return {
                "rate_limited": self.refused,
                "answered_429_at": list(self._answered_429_at),
                "max_requests_in_60s": self._max_window_requests,
                "max_tokens_in_60s": self._max_window_tokens,
                "requests_per_second": {str(s): n for s, n in sorted(self._per_second.items())},
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
            }

    def _refill(self, now: float, *, rpm: int, tpm: int, bucket_s: float) -> None:
        """Each bucket's level at ``now``: what it held, plus the rate times the time since, at most full."""
        elapsed, self._levels_at = max(0.0, now - self._levels_at), now
        for name, limit in (("requests", rpm), ("tokens", tpm)):
            if limit:
                full = limit * bucket_s / WINDOW_S
                self._levels[name] = min(full, self._levels.get(name, full) + elapsed * limit / WINDOW_S)

    def _from_buckets(self, now: float, tokens: int, *, rpm: int, tpm: int, bucket_s: float) -> Refusal | None:
        """Take one request and ``tokens`` from the buckets, or neither: the refusal, with the time until
        the bucket that is short holds enough."""
        self._refill(now, rpm=rpm, tpm=tpm, bucket_s=bucket_s)
        if rpm and self._levels["requests"] < 1:
            return Refusal("requests", (1 - self._levels["requests"]) / (rpm / WINDOW_S))
        if tpm and tokens > tpm * bucket_s / WINDOW_S:
            return Refusal("tokens", WINDOW_S)  # never fits: the provider says so too
        if tpm and self._levels["tokens"] < tokens:
            return Refusal("tokens", (tokens - self._levels["tokens"]) / (tpm / WINDOW_S))
        if rpm:
            self._levels["requests"] -= 1
        if tpm:
            self._levels["tokens"] -= tokens
        return None

    def _forget_before(self, cutoff: float) -> None:
        while self._admitted and self._admitted[0][0] <= cutoff:
            self._window_tokens -= self._admitted.popleft()[1]

    def _wait_for_room(self, now: float, *, need_requests: int = 0, need_tokens: int = 0) -> float:
        """Seconds until enough of the window's oldest requests (or tokens) have left it."""
        freed_requests = freed_tokens = 0
        for at, tokens in self._admitted:
            freed_requests += 1
            freed_tokens += tokens
            if freed_requests >= need_requests and freed_tokens >= need_tokens:
                return max(0.0, at + WINDOW_S - now)
        return WINDOW_S
