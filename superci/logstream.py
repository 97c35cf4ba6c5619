"""Following a build's log live: the output of a running build, pushed to each reader.

A follower gets the log file as it stands, then every new chunk as the dispatcher
receives it, until the build ends. Chunks wait in memory only up to a bound: a reader
that falls that far behind is dropped rather than allowed to grow the dispatcher.
"""

from __future__ import annotations

import asyncio
from collections import deque

from superci import defaults


class LogFollower:
    """The queue between the dispatcher receiving output and one client reading it."""

    def __init__(self, limit: int = defaults.MAX_SEND_BUFFER) -> None:
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._limit = limit
        self._wakeup = asyncio.Event()
        self.ended = False
        self.overflowed = False

    def push(self, data: bytes) -> None:
        if self.overflowed or not data:
            return
        if self._queued + len(data) > self._limit:
            self.overflowed = True
        else:
            self._chunks.append(data)
            self._queued += len(data)
        self._wakeup.set()

    def end(self) -> None:
        """The build is over; the reader gets what is queued, then stops."""
        self.ended = True
        self._wakeup.set()

    async def next(self) -> bytes | None:
        """The next chunk, or None once the build ended (or the reader fell behind)."""
        while not self._chunks:
            if self.ended or self.overflowed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        data = self._chunks.popleft()
        self._queued -= len(data)
        return data


class LogFollowers:
    """Every reader following a running build's log, by commit: output received is pushed
    to each, and the end of the build ends them all."""

    def __init__(self) -> None:
        self._by_sha: dict[str, set[LogFollower]] = {}

    def follow(self, sha: str) -> LogFollower:
        follower = LogFollower()
        self._by_sha.setdefault(sha, set()).add(follower)
        return follower

    def forget(self, sha: str, follower: LogFollower) -> None:
        """The reader went away (or its build ended): nothing more is pushed to it."""
        followers = self._by_sha.get(sha)
        if followers is not None:
            followers.discard(follower)
            if not followers:
                del self._by_sha[sha]

    def push(self, sha: str, data: bytes) -> None:
        for follower in self._by_sha.get(sha, ()):
            follower.push(data)

    def end(self, sha: str) -> None:
        """The commit's build ended: its readers get what is queued, then stop."""
        for follower in self._by_sha.pop(sha, ()):
            follower.end()
