"""Following a build's log live: the output of a running build, taken from the event bus.

A follower gets the log file as it stands, then the bytes of every output event of its
build as the dispatcher publishes them, until the build ends. The bus bounds what waits
for it: a reader that falls that far behind is dropped rather than allowed to grow the
dispatcher.
"""

from __future__ import annotations

from superci import defaults
from superci.bus import EventBus
from superci.events import BuildFinished, BuildOutput, Event, Resync


class LogFollower:
    """One reader of one build's live output, subscribed to the bus from its creation."""

    def __init__(self, bus: EventBus, build_id: int, limit: int = defaults.MAX_SEND_BUFFER):
        def wants(event: Event) -> bool:
            return isinstance(event, BuildOutput | BuildFinished) and event.build_id == build_id

        self._subscription = bus.subscribe(wants, max_bytes=limit)
        self.ended = False
        self.overflowed = False

    async def next(self) -> bytes | None:
        """The next chunk, or None once the build ended (or the reader fell behind)."""
        while (event := await self._subscription.next()) is not None:
            if isinstance(event, BuildOutput) and event.data:
                return event.data
            if isinstance(event, BuildFinished):
                self.ended = True
                self.close()
            elif isinstance(event, Resync):
                self.overflowed = True
        return None

    def close(self) -> None:
        """Stop following (the reader went away, or the build ended)."""
        self._subscription.close()
