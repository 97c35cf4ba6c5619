"""Capped exponential backoff with jitter, for everything that reconnects.

Jitter spreads the retries of many runners that lost the same dispatcher, so they do
not all knock at once when it comes back.
"""

from __future__ import annotations

import random

from superci import defaults


class Backoff:
    """Successive delays: initial, doubled each time up to ``cap``, each +/- ``jitter``."""

    def __init__(
        self,
        initial: float = defaults.BACKOFF_INITIAL,
        cap: float = defaults.BACKOFF_MAX,
        jitter: float = defaults.BACKOFF_JITTER,
        rng: random.Random | None = None,
    ) -> None:
        self.initial, self.cap, self.jitter = initial, cap, jitter
        self._rng = rng or random.Random()
        self._next = initial

    def next_delay(self) -> float:
        """The time to wait before the next try; grows until :meth:`reset`."""
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * (1 + self._rng.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        """A try succeeded: start from the initial delay again."""
        self._next = self.initial
