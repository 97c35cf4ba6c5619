"""The dispatcher's event bus: every event to every subscriber, never at the dispatcher's cost.

Publishing is synchronous and O(subscribers): it stamps the event, appends it to each
subscriber's own bounded queue and returns, so a slow reader cannot slow dispatch. A
subscriber whose queue would pass its bound (events, or output bytes) is dropped at once:
it keeps what it had, then gets a final :class:`~superci.events.Resync` and must read
the state again. Memory per subscriber is bounded whatever it does.

Events published inside :meth:`EventBus.held` wait until the block ends, so the
dispatcher publishes what a transaction changed only once it is committed, and nothing
of one that rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

from superci import defaults
from superci.events import Event, Resync

E = TypeVar("E", bound=Event)

Filter = Callable[[Event], bool]


class Subscription:
    """One subscriber's bounded queue; read it with :meth:`next` (or ``async for``)."""

    def __init__(self, bus: EventBus, wants: Filter | None, max_events: int, max_bytes: int):
        self._bus = bus
        self._wants = wants
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._queue: deque[Event] = deque()
        self._bytes = 0
        self._wakeup = asyncio.Event()
        self.fell_behind = False  # dropped by the bus: a Resync follows what is queued
        self.closed = False  # no event will be added any more

    def __len__(self) -> int:
        return len(self._queue)

    def offer(self, event: Event) -> bool:
        """Queue an event it wants (called by the bus); False once it fell behind."""
        if self.closed:
            return False
        if self._wants is not None and not self._wants(event):
            return True
        held = event.held_bytes
        if len(self._queue) >= self._max_events or self._bytes + held > self._max_bytes:
            self.fell_behind = True
            self._queue.append(Resync(time=event.time))
            self.closed = True
        else:
            self._queue.append(event)
            self._bytes += held
        self._wakeup.set()
        return not self.fell_behind

    def take(self) -> Event | None:
        """The next queued event without waiting, or None if there is none now."""
        if not self._queue:
            return None
        event = self._queue.popleft()
        self._bytes -= event.held_bytes
        return event

    async def next(self) -> Event | None:
        """The next event, waiting for it; None once the subscription is over (closed,
        or after the Resync of one that fell behind)."""
        while not self._queue:
            if self.closed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self.take()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while (event := await self.next()) is not None:
            yield event

    def close(self) -> None:
        """Stop receiving: what is queued can still be read, then :meth:`next` ends."""
        self.closed = True
        self._bus.unsubscribe(self)
        self._wakeup.set()


class EventBus:
    """Hands each published event to every subscriber's queue, in publishing order."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        max_events: int = defaults.EVENT_QUEUE_EVENTS,
        max_bytes: int = defaults.MAX_SEND_BUFFER,
    ) -> None:
        self._clock = clock
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._subscribers: dict[Subscription, None] = {}  # insertion-ordered set
        self._held: list[Event] | None = None

    def __len__(self) -> int:
        """How many subscribers there are."""
        return len(self._subscribers)

    def subscribe(
        self,
        wants: Filter | None = None,
        *,
        max_events: int | None = None,
        max_bytes: int | None = None,
    ) -> Subscription:
        """A new subscriber, from the next event on; ``wants`` picks the events it gets
        (only those count against its bounds)."""
        subscription = Subscription(
            self,
            wants,
            self._max_events if max_events is None else max_events,
            self._max_bytes if max_bytes is None else max_bytes,
        )
        self._subscribers[subscription] = None
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.pop(subscription, None)

    def publish(self, event: E) -> E:
        """Stamp the event with the time and queue it for every subscriber; never waits.
        Returns the stamped event."""
        stamped = dataclasses.replace(event, time=self._clock())
        if self._held is not None:
            self._held.append(stamped)
        else:
            self._deliver(stamped)
        return stamped

    def _deliver(self, event: Event) -> None:
        behind = [s for s in self._subscribers if not s.offer(event)]
        for subscription in behind:
            self.unsubscribe(subscription)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold what is published inside until the block ends; an exception discards it
        (wrap a transaction: its events go out once it committed, or never). Nested use
        joins the outer block."""
        if self._held is not None:
            yield
            return
        self._held = []
        try:
            yield
        except BaseException:
            self._held = None
            raise
        held, self._held = self._held, None
        for event in held:
            self._deliver(event)

    def close(self) -> None:
        """End every subscription (each still reads what is queued for it)."""
        for subscription in list(self._subscribers):
            subscription.close()
