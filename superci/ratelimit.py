"""What a stranger can cause, at a bounded rate: log lines, and guesses at the token.

A flood of failed handshakes must not become a flood of log lines (disk, journald, the
operator's attention): past ``burst`` lines in ``period`` seconds, lines are counted
instead of written, and the next line written says how many were left out.

Guessing the token at the web page's login is slowed the same way, per address: past
``limit`` wrong tokens in ``window`` seconds, that address is refused until its oldest
failure leaves the window (:class:`FailureLimit`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable


class RateLimitedLog:
    """A logger wrapper that writes at most ``burst`` lines per ``period`` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 10,
        period: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._period = period
        self._clock = clock
        self._window_start = float("-inf")
        self._written = 0
        self._suppressed = 0

    def log(self, level: int, message: str, *args: object) -> bool:
        """Write the line if the rate allows; returns whether it was written."""
        now = self._clock()
        if now - self._window_start >= self._period:
            self._window_start, self._written = now, 0
        if self._written >= self._burst:
            self._suppressed += 1
            return False
        self._written += 1
        if self._suppressed:
            message += " (%d similar lines left out)"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self._logger.log(level, message, *args)
        return True


class FailureLimit:
    """Failures per key (an address) in a sliding window; a key with ``limit`` of them
    waits until the oldest is ``window`` seconds old. At most ``max_keys`` keys are kept
    (the longest quiet go first), so a crowd of addresses cannot grow it without bound."""

    def __init__(
        self,
        limit: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        times = self._recent(key)
        if times is None or len(times) < self._limit:
            return 0.0
        return max(0.0, times[0] + self._window - self._clock())

    def failed(self, key: str) -> None:
        """Count a failure of ``key`` now."""
        times = self._recent(key) or deque(maxlen=self._limit)
        times.append(self._clock())
        self._failures.pop(key, None)
        self._failures[key] = times  # the newest last: the first is the longest quiet
        if len(self._failures) > self._max_keys:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, key: str) -> None:
        """Forget ``key``'s failures: it showed it knows the token."""
        self._failures.pop(key, None)

    def _recent(self, key: str) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= self._clock() - self._window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times
