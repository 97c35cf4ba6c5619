"""Which connections may be in their opening handshake, as an I/O-free decision.

A stranger can open sockets and say nothing. Refusing newcomers once the handshake slots
are full would let a few hundred silent sockets lock everyone out; so, as sshd's
MaxStartups does, a newcomer is always let in and a pending connection is dropped to
make room: the oldest that has said nothing yet, else the oldest. A real client says
hello at once and is through in a few round trips; a silent socket is what gets dropped.

When the process runs out of file descriptors, fewer connections may be pending (three
quarters of those that were, and never fewer than ``floor``), so the descriptors of
silent sockets go back to accepting; the full limit returns after ``recovery`` seconds
without running out again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from superci import defaults

K = TypeVar("K", bound=Hashable)

#: Pending connections always allowed, however short of file descriptors the process is.
FLOOR = 8
#: Seconds without running out of file descriptors before the full limit returns.
RECOVERY = 10.0


class Admission(Generic[K]):
    """The connections in their handshake, oldest first, and whether each said anything."""

    def __init__(
        self,
        limit: int = defaults.MAX_UNAUTHENTICATED,
        floor: int = FLOOR,
        recovery: float = RECOVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._full = limit
        self.limit = limit
        self._floor = min(floor, limit)
        self._recovery = recovery
        self._clock = clock
        self._lowered_at: float | None = None
        self._pending: dict[K, bool] = {}  # key → heard from; insertion order is age

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: object) -> bool:
        return key in self._pending

    def admit(self, key: K) -> list[K]:
        """Let ``key`` in; returns the pending connections to drop to make room for it."""
        if self._lowered_at is not None and self._clock() - self._lowered_at >= self._recovery:
            self.limit, self._lowered_at = self._full, None
        victims = self._make_room(self.limit - 1)
        self._pending[key] = False
        return victims

    def heard(self, key: K) -> None:
        """``key`` sent a whole message: it is dropped only after every silent one."""
        if key in self._pending:
            self._pending[key] = True

    def leave(self, key: K) -> None:
        """``key`` finished its handshake, or its connection ended."""
        self._pending.pop(key, None)

    def out_of_files(self) -> list[K]:
        """The process could not accept: pending connections to drop now."""
        self.limit = max(self._floor, len(self._pending) * 3 // 4)
        self._lowered_at = self._clock()
        return self._make_room(self.limit)

    def _make_room(self, size: int) -> list[K]:
        victims = []
        while len(self._pending) > max(size, 0):
            silent = next((k for k, heard in self._pending.items() if not heard), None)
            victim = silent if silent is not None else next(iter(self._pending))
            del self._pending[victim]
            victims.append(victim)
        return victims
