"""The last events of the bus, numbered, for web browsers that reconnect.

A browser's EventSource reconnects with ``Last-Event-ID``: the number of the last event
it got. The ring gives every event a number that only grows and keeps the last ones as
JSON text (never the output bytes), so a reconnecting browser gets exactly the events it
missed, without a gap or a repeat; one that missed more than the ring holds is told to
read the page again instead. One subscription to the bus feeds every browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import deque
from dataclasses import dataclass

from superci.bus import EventBus
from superci.events import Event, Resync

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Numbered:
    """One event as a browser gets it: its number, its kind and its JSON text."""

    id: int
    kind: str
    data: str

    @functools.cached_property
    def frame(self) -> bytes:
        """The event as a Server-Sent Events frame, encoded once for every browser."""
        return f"id: {self.id}\nevent: {self.kind}\ndata: {self.data}\n\n".encode()


class EventRing:
    """Numbers the bus's events and keeps the last ``size`` of them."""

    def __init__(self, size: int) -> None:
        self._events: deque[Numbered] = deque(maxlen=size)
        self._last = 0
        self._arrived = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._joined: tuple[tuple[int, int], bytes] = ((-1, -1), b"")
        self.closed = False  # no event will come any more: readers end

    @property
    def last_id(self) -> int:
        """The number of the newest event (0 before the first)."""
        return self._last

    def add(self, event: Event) -> Numbered:
        """Number an event and keep it; wakes everyone waiting for one."""
        self._last += 1
        numbered = Numbered(self._last, event.kind, json.dumps(event.to_dict()))
        self._events.append(numbered)
        self._arrived.set()
        self._arrived = asyncio.Event()
        return numbered

    def since(self, last_id: int) -> list[Numbered] | None:
        """The events after ``last_id``, oldest first; None when some of them are no
        longer kept (or the number was never given): the reader must start again."""
        if last_id > self._last or last_id < 0:
            return None
        missed = self._last - last_id
        if missed > len(self._events):
            return None
        kept = len(self._events)  # the newest are at the right end: O(missed), not O(kept)
        return [self._events[i] for i in range(kept - missed, kept)]

    def frames_since(self, last_id: int) -> bytes | None:
        """The Server-Sent Events frames of the events after ``last_id``, as one piece
        (``b""`` when there are none; None as :meth:`since`). Browsers that are at the
        same place, as they are while they keep up, share one piece."""
        key = (last_id, self._last)
        if self._joined[0] == key:
            return self._joined[1]
        missed = self.since(last_id)
        if missed is None:
            return None
        self._joined = (key, b"".join(e.frame for e in missed))
        return self._joined[1]

    async def wait(self, last_id: int, timeout: float) -> bool:
        """Wait until there is an event after ``last_id``; False after ``timeout``."""
        if self._last > last_id:
            return True
        arrived = self._arrived
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await arrived.wait()
        return self._last > last_id

    # --- fed by the bus ---------------------------------------------------------------

    def start(self, bus: EventBus) -> None:
        """Read every event of ``bus`` from now on, until :meth:`close`."""
        self._pump = asyncio.create_task(self._read(bus))

    async def _read(self, bus: EventBus) -> None:
        while True:
            subscription = bus.subscribe()
            async for event in subscription:
                self.add(event)  # a Resync too: browsers must read the page again
                if isinstance(event, Resync):
                    log.warning("the web page fell behind the events; browsers resync")
            if not subscription.fell_behind:
                break  # the bus was closed
        self.closed = True
        self._arrived.set()

    async def close(self) -> None:
        """Stop reading the bus and wake every reader, who then ends."""
        self.closed = True
        self._arrived.set()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
