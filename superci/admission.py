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

import socket
import struct
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

    def admit(self, key: K, spoke: Callable[[K], bool] | None = None) -> list[K]:
        """Let ``key`` in; returns the pending connections to drop to make room for it.

        ``spoke(k)`` tells whether a pending connection has sent anything at all, when the
        I/O side can know it before a whole message arrives (a TLS handshake in progress):
        asked lazily, oldest first, only of candidates for dropping."""
        if self._lowered_at is not None and self._clock() - self._lowered_at >= self._recovery:
            self.limit, self._lowered_at = self._full, None
        victims = self._make_room(self.limit - 1, spoke)
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

    def _make_room(self, size: int, spoke: Callable[[K], bool] | None = None) -> list[K]:
        victims = []
        while len(self._pending) > max(size, 0):
            silent = self._oldest_silent(spoke)
            victim = silent if silent is not None else next(iter(self._pending))
            del self._pending[victim]
            victims.append(victim)
        return victims

    def _oldest_silent(self, spoke: Callable[[K], bool] | None) -> K | None:
        for key, heard in self._pending.items():
            if heard:
                continue
            if spoke is not None and spoke(key):
                self._pending[key] = True  # a value changes, not the dict's size
                continue
            return key
        return None


#: Where Linux's ``struct tcp_info`` keeps ``tcpi_bytes_received`` (a u64; Linux 4.1+):
#: 8 one-byte fields, 24 u32 fields, then pacing_rate, max_pacing_rate, bytes_acked.
_BYTES_RECEIVED = struct.Struct("=Q")
_BYTES_RECEIVED_OFFSET = 8 + 24 * 4 + 3 * 8
_TCP_INFO_SIZE = 256


def bytes_received(sock: socket.socket) -> int:
    """Bytes the peer has sent on a TCP connection, by the kernel's own count (data
    bytes, not the handshake); 0 where the kernel does not say."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None:
        return 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_SIZE)
    except OSError:
        return 0
    if len(info) < _BYTES_RECEIVED_OFFSET + _BYTES_RECEIVED.size:
        return 0
    received: int = _BYTES_RECEIVED.unpack_from(info, _BYTES_RECEIVED_OFFSET)[0]
    return received
