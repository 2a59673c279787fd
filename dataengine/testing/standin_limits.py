"""The stand-in LLM server's own provider limits and traffic counts.

A real provider refuses requests over its requests-per-minute (RPM) or tokens-per-minute (TPM) limit
with a 429 and a ``Retry-After``; the stand-in does the same over a sliding 60-second window, so a
test can show that a fleet stays under a limit rather than trust that it does. It also counts what
a benchmark needs to judge the engine: requests admitted in each second, the most admitted in any
60 seconds, the 429s it answered, and the calls in flight (now and at most).

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
    """A request over a limit: which one, and when the window will have room for it."""

    limit: str  # "requests" or "tokens"
    retry_after_s: float


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
            self.in_flight = 0
            self.max_in_flight = 0

    def admit(self, tokens: int, *, rpm: int, tpm: int) -> Refusal | None:
        """Count the request in if both limits have room for it; else the refusal (counted as a 429)."""
        with self._lock:
            now = self._clock()
            self._forget_before(now - WINDOW_S)
            refusal = None
            if rpm and len(self._admitted) + 1 > rpm:
                refusal = Refusal("requests", self._wait_for_room(now, need_requests=len(self._admitted) + 1 - rpm))
            elif tpm and self._window_tokens + tokens > tpm:
                if tokens > tpm:
                    refusal = Refusal("tokens", WINDOW_S)  # never fits: the provider says so too
                else:
                    refusal = Refusal("tokens", self._wait_for_room(now, need_tokens=self._window_tokens + tokens - tpm))
            if refusal is not None:
                self.refused += 1
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

    def started(self) -> None:
        """A request is being answered (after admission, before its latency)."""
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def finished(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def snapshot(self) -> dict[str, object]:
        """The counts, for ``/_fake/stats``: per-second admissions keyed by the clock's whole second."""
        with self._lock:
            return {
                "rate_limited": self.refused,
                "max_requests_in_60s": self._max_window_requests,
                "max_tokens_in_60s": self._max_window_tokens,
                "requests_per_second": {str(s): n for s, n in sorted(self._per_second.items())},
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
            }

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
