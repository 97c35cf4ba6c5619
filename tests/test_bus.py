"""The event bus and its events, as pure logic: ordering, bounded queues, resync, held
events, the pool as events, and each event's JSON and human forms."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Coroutine
from typing import Any

from superci.bus import EventBus
from superci.events import (
    BuildCancelled,
    BuildFinished,
    BuildOutput,
    BuildQueued,
    BuildStarted,
    Event,
    Resync,
    RunnerBusy,
    RunnerIdle,
    RunnerJoined,
    RunnerLeft,
    Seat,
    build_ended,
    pool_changes,
)
from superci.status import BuildStatus, RunnerState
from superci.tables import event_line

SHA = "3f2a9c41d0e7" + "0" * 28
#: Bound for any await here; reached only when the bus is broken.
WAIT = 5.0


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(WAIT):
            return await coro

    return asyncio.run(bounded())


def queued(build_id: int) -> BuildQueued:
    return BuildQueued(build_id=build_id, sha=SHA, branch="main")


def output(data: bytes, offset: int = 0) -> BuildOutput:
    return BuildOutput(build_id=1, sha=SHA, branch="main", offset=offset, data=data)


def drain(subscription: Any) -> list[Event]:
    got = []
    while (event := subscription.take()) is not None:
        got.append(event)
    return got


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def test_every_subscriber_gets_every_event_in_publishing_order_stamped_by_the_bus_clock():
    bus = EventBus(clock=Clock())
    first, second = bus.subscribe(), bus.subscribe()
    for build_id in (1, 2, 3):
        bus.publish(queued(build_id))
    for subscription in (first, second):
        got = drain(subscription)
        assert [e.build_id for e in got] == [1, 2, 3]  # type: ignore[attr-defined]
        assert [e.time for e in got] == [1001.0, 1002.0, 1003.0]


def test_a_subscriber_gets_events_from_when_it_subscribed():
    bus = EventBus()
    bus.publish(queued(1))
    late = bus.subscribe()
    bus.publish(queued(2))
    assert [e.build_id for e in drain(late)] == [2]  # type: ignore[attr-defined]


def test_a_slow_subscriber_is_dropped_with_a_resync_while_a_fast_one_keeps_every_event():
    bus = EventBus(max_events=3)
    fast, slow = bus.subscribe(), bus.subscribe()
    fast_got: list[Event] = []
    for build_id in range(1, 11):
        bus.publish(queued(build_id))
        fast_got += drain(fast)  # the fast one reads as events come; the slow one never
    assert [e.build_id for e in fast_got] == list(range(1, 11))  # type: ignore[attr-defined]
    slow_got = drain(slow)
    assert [type(e) for e in slow_got] == [BuildQueued] * 3 + [Resync]
    assert [e.build_id for e in slow_got[:3]] == [1, 2, 3]  # type: ignore[attr-defined]
    assert slow.fell_behind and len(bus) == 1  # dropped: nothing more is queued for it
    assert run(slow.next()) is None


def test_output_bytes_count_against_a_subscribers_bound_and_free_room_once_read():
    bus = EventBus(max_bytes=10)
    reader = bus.subscribe()
    bus.publish(output(b"12345678"))
    assert [e.data for e in drain(reader)] == [b"12345678"]  # type: ignore[attr-defined]
    bus.publish(output(b"abcdefgh", 8))  # room again: the first 8 bytes were read
    bus.publish(output(b"ABC", 16))  # 11 bytes queued would pass the bound
    got = drain(reader)
    assert [type(e) for e in got] == [BuildOutput, Resync]
    assert got[0].data == b"abcdefgh"  # type: ignore[attr-defined]


def test_publishing_never_awaits_and_memory_stays_bounded_with_readers_that_never_read():
    assert not inspect.iscoroutinefunction(EventBus.publish)
    bus = EventBus(max_events=5, max_bytes=1000)
    stuck = [bus.subscribe() for _ in range(100)]
    for i in range(1000):  # no event loop runs here at all
        bus.publish(output(b"x" * 100, i * 100))
    assert len(bus) == 0  # every stuck reader was dropped
    assert all(len(s) <= 5 + 1 and s.fell_behind for s in stuck)  # its events and a resync


def test_a_filtered_subscriber_gets_only_what_it_wants_and_only_that_counts():
    bus = EventBus(max_events=2)
    builds_only = bus.subscribe(lambda e: isinstance(e, BuildFinished))
    for _ in range(5):
        bus.publish(RunnerJoined(runner="runner-a"))
    bus.publish(build_ended(result("passed")))
    got = drain(builds_only)
    assert [type(e) for e in got] == [BuildFinished] and not builds_only.fell_behind


def test_a_waiting_reader_is_woken_by_a_publish_and_by_close():
    async def main() -> list[Event | None]:
        bus = EventBus()
        subscription = bus.subscribe()
        reader = asyncio.create_task(subscription.next())
        await asyncio.sleep(0)
        assert not reader.done()
        bus.publish(queued(1))
        first = await reader
        later = asyncio.create_task(subscription.next())
        await asyncio.sleep(0)
        bus.close()
        return [first, await later]

    first, last = run(main())
    assert isinstance(first, BuildQueued) and last is None


def test_closing_the_bus_leaves_each_reader_what_was_queued():
    async def main() -> list[Event]:
        bus = EventBus()
        subscription = bus.subscribe()
        bus.publish(queued(1))
        bus.close()
        bus.publish(queued(2))  # after close: nobody gets it
        return [event async for event in subscription]

    assert [e.build_id for e in run(main())] == [1]  # type: ignore[attr-defined]


def test_events_held_in_a_block_go_out_after_it_and_are_dropped_by_an_exception():
    bus = EventBus()
    subscription = bus.subscribe()
    with bus.held():
        bus.publish(queued(1))
        with bus.held():  # nested: joins the outer block
            bus.publish(queued(2))
        assert drain(subscription) == []  # not committed yet
    assert [e.build_id for e in drain(subscription)] == [1, 2]  # type: ignore[attr-defined]
    try:
        with bus.held():
            bus.publish(queued(3))
            raise RuntimeError("the transaction rolled back")
    except RuntimeError:
        pass
    bus.publish(queued(4))
    assert [e.build_id for e in drain(subscription)] == [4]  # type: ignore[attr-defined]


# --- the events themselves -----------------------------------------------------------


def result(status: str) -> dict[str, Any]:
    return {
        "sha": SHA, "branch": "main", "build_id": 12, "status": status, "message": "1 failed",
        "runner": "runner-a", "attempt": 1, "duration": 6.75,
        "tests": {"run": 4, "passed": 3, "failed": 1}, "failures": ["t"],
    }  # fmt: skip


def test_a_recorded_result_becomes_finished_or_cancelled():
    finished = build_ended(result("failed"))
    cancelled = build_ended(result("cancelled"))
    assert type(finished) is BuildFinished and finished.status is BuildStatus.FAILED
    assert type(cancelled) is BuildCancelled and isinstance(cancelled, BuildFinished)
    assert cancelled.to_dict()["event"] == "cancelled"


def test_every_event_is_a_json_object_and_output_says_where_not_what():
    events = [
        queued(1), BuildStarted(build_id=1, sha=SHA, branch="main", runner="r", attempt=2),
        output(b"\x1b[31mred\n", 40), build_ended(result("passed")),
        RunnerJoined(runner="r", host="box"), RunnerLeft(runner="r"),
        RunnerBusy(runner="r", build_id=1), RunnerIdle(runner="r"), Resync(),
    ]  # fmt: skip
    for event in events:
        body = json.loads(json.dumps(event.to_dict()))
        assert body["event"] == event.kind and "time" in body
    body = output(b"\x1b[31mred\n", 40).to_dict()
    assert body["offset"] == 40 and body["length"] == 9 and "data" not in body
    assert build_ended(result("passed")).to_dict()["tests"] == {"run": 4, "passed": 3,
                                                               "failed": 1}  # fmt: skip


def test_the_pool_as_events_joined_busy_idle_benched_left():
    idle, host = RunnerState.IDLE, "box"
    a_idle = {"a": Seat(idle, None, host)}
    assert pool_changes({}, a_idle) == [RunnerJoined(runner="a", host=host)]
    a_busy = {"a": Seat(RunnerState.BUSY, 7, host)}
    assert pool_changes(a_idle, a_busy) == [RunnerBusy(runner="a", build_id=7)]
    a_next = {"a": Seat(RunnerState.BUSY, 8, host)}
    assert pool_changes(a_busy, a_next) == [RunnerBusy(runner="a", build_id=8)]
    assert pool_changes(a_busy, a_idle) == [RunnerIdle(runner="a")]
    a_benched = {"a": Seat(RunnerState.BENCHED, None, host)}
    assert pool_changes(a_busy, a_benched) == [RunnerIdle(runner="a", benched=True)]
    assert pool_changes(a_benched, a_idle) == [RunnerIdle(runner="a")]
    assert pool_changes(a_idle, a_idle) == []
    assert pool_changes(a_busy, {}) == [RunnerLeft(runner="a")]


def test_an_event_line_says_what_happened_and_is_safe_to_print():
    started = BuildStarted(build_id=12, sha=SHA, branch="main", runner="runner-a", attempt=1)
    line = event_line(started.to_dict())
    assert line.endswith(" build 12 3f2a9c41d0e7 (main) started on runner-a, attempt 1")
    assert line[:8].count(":") == 2  # the local time, HH:MM:SS
    failed = event_line(build_ended(result("failed")).to_dict())
    assert failed.endswith(
        "build 12 3f2a9c41d0e7 (main) failed on runner-a in 6.8s "
        "[3 passed, 1 failed, 0 errors, 0 skipped]: 1 failed"
    )
    hostile = {**result("failed"), "message": "\x1b]0;owned\x07ok\x1b[2J\nFORGED"}
    line = event_line(build_ended(hostile).to_dict())
    assert "\x1b" not in line and "\n" not in line and line.endswith(": ok FORGED")
    assert event_line({"event": "surprise", "time": 0}).endswith(" surprise")
    assert event_line(Resync().to_dict()).endswith("fell behind the events; some were missed")
