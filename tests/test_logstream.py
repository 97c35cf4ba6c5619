"""LogFollower: one reader of a build's output events on the bus, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from superci.bus import EventBus
from superci.events import BuildFinished, BuildOutput
from superci.logstream import LogFollower
from superci.status import BuildStatus

#: Bound for any await in these tests; only reached when the follower is broken.
WAIT = 5.0


BUILD = 7
SHA = "a" * 40


class Build:
    """A bus and one build on it: the dispatcher's side of a follower."""

    def __init__(self) -> None:
        self.bus = EventBus(clock=lambda: 0.0)
        self.offset = 0

    def follower(self, limit: int) -> LogFollower:
        return LogFollower(self.bus, BUILD, limit=limit)

    def push(self, data: bytes) -> None:
        """New output of the build, as the dispatcher publishes it."""
        self.bus.publish(BuildOutput(build_id=BUILD, sha=SHA, branch="main",
                                     offset=self.offset, data=data))  # fmt: skip
        self.offset += len(data)

    def end(self) -> None:
        self.bus.publish(
            BuildFinished(build_id=BUILD, sha=SHA, branch="main", status=BuildStatus.PASSED)
        )


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(WAIT):
            return await coro

    return asyncio.run(bounded())


async def drain(follower: LogFollower) -> list[bytes | None]:
    """Everything the reader gets, up to and including the None that ends it."""
    got: list[bytes | None] = []
    while (chunk := await follower.next()) is not None:
        got.append(chunk)
    return [*got, None]


def test_pushed_chunks_are_delivered_in_order_then_none_after_end():
    async def main() -> list[bytes | None]:
        build = Build()
        follower = build.follower(1000)
        for chunk in (b"one\n", b"two\n", b"three\n"):
            build.push(chunk)
        build.end()
        return await drain(follower)

    assert run(main()) == [b"one\n", b"two\n", b"three\n", None]


def test_a_waiting_reader_is_woken_by_each_push_and_by_the_end():
    async def main() -> list[bytes | None]:
        build = Build()
        follower = build.follower(1000)
        reader = asyncio.create_task(drain(follower))
        await asyncio.sleep(0)  # the reader is now waiting on an empty queue
        assert not reader.done()
        build.push(b"live line\n")
        await asyncio.sleep(0)
        build.push(b"")  # nothing to deliver: ignored
        build.push(b"another\n")
        build.end()
        return await reader

    assert run(main()) == [b"live line\n", b"another\n", None]


def test_next_keeps_waiting_while_the_build_runs_and_nothing_was_pushed():
    async def main() -> None:
        build = Build()
        follower = build.follower(1000)
        waiting = asyncio.create_task(follower.next())
        done, _ = await asyncio.wait({waiting}, timeout=0.05)
        assert not done  # no chunk, no end: the reader waits
        build.end()
        assert await waiting is None

    run(main())


def test_a_push_beyond_the_limit_marks_the_reader_overflowed_and_ends_it():
    async def main() -> tuple[LogFollower, list[bytes | None]]:
        build = Build()
        follower = build.follower(10)
        build.push(b"123456")
        build.push(b"7890ab")  # 12 bytes queued would pass the limit
        build.push(b"c")  # later output is not queued any more
        return follower, await drain(follower)

    follower, got = run(main())
    assert follower.overflowed
    assert not follower.ended
    assert got == [b"123456", None]


def test_an_overflow_wakes_a_reader_that_waits_on_an_empty_queue():
    async def main() -> tuple[LogFollower, bytes | None]:
        build = Build()
        follower = build.follower(10)
        reader = asyncio.create_task(follower.next())
        await asyncio.sleep(0)
        build.push(b"x" * 11)
        return follower, await reader

    follower, got = run(main())
    assert follower.overflowed and got is None


def test_chunks_taken_by_the_reader_free_room_under_the_limit():
    async def main() -> tuple[LogFollower, list[bytes | None]]:
        build = Build()
        follower = build.follower(10)
        got: list[bytes | None] = []
        for chunk in (b"12345678", b"abcdefgh", b"ABCDEFGH"):
            build.push(chunk)
            got.append(await follower.next())
        build.end()
        got.append(await follower.next())
        return follower, got

    follower, got = run(main())
    assert not follower.overflowed
    assert got == [b"12345678", b"abcdefgh", b"ABCDEFGH", None]
