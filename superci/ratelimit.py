"""Log lines that a stranger can cause, at a bounded rate.

A flood of failed handshakes must not become a flood of log lines (disk, journald, the
operator's attention): past ``burst`` lines in ``period`` seconds, lines are counted
instead of written, and the next line written says how many were left out.
"""

from __future__ import annotations

import logging
import time
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
