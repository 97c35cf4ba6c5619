"""One split build on a runner: as its *host* (the build's own runner) or in a *seat*.

The host collects the suite's ids, asks the dispatcher for their known durations, holds
the :class:`~superci.split.Split` behind a batch source, asks the dispatcher for seats
(free runners that take part through :mod:`superci.splittunnel`) and takes part itself.
Once every test has its result, the host alone makes the build's one result: counts
summed, one JUnit report (:mod:`superci.splitjunit`), ``split.json`` naming every runner
and what it ran, and each seat's output as a section of the build's log. A seat only
runs test processes against the host's batch source and says when it is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from superci.config import split_width
from superci.errors import ConfigError
from superci.execute import Execution
from superci.split import Batch, Done, Split, TestOutcome, Wait
from superci.splitaccess import SocketAccess
from superci.splitjunit import junit_xml
from superci.splitrunner import (
    RunCommand,
    TookPart,
    WatchedSource,
    collect,
    plugin_folder,
    runner_of,
    take_part,
)
from superci.splitsource import LocalSplit
from superci.splittunnel import HostTunnels, SeatTunnel, SplitLink
from superci.testtool import TestTool

log = logging.getLogger(__name__)

#: Seconds the host waits for the durations it asked the dispatcher for.
DURATIONS_TIMEOUT = 10.0
#: Seconds the host waits, once every test has its result, for seats to say they ended
#: (their output comes with it, for the build's log).
SEATS_END_TIMEOUT = 10.0
#: Seconds the host gathers results before it sends them to be kept: one message (and one
#: transaction in the dispatcher) for many, at the cost of running again what a host lost
#: within that time had finished.
KEEP_INTERVAL = 0.25

Say = Callable[[str], Awaitable[None]]
Emit = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class SplitOutcome:
    """How a split ended on this runner: the execution the verdict is judged on, and (on
    the host) the build's report, ``split.json`` and the tests each runner ran."""

    execution: Execution
    message: str = ""
    report: bytes | None = None
    document: bytes = b""
    ran: dict[str, int] = field(default_factory=dict)
    took_part: bool = True  # a seat's test processes took part until it was done


class HostedSplit(LocalSplit):
    """The host's split: once nothing is left to hand out, the dispatcher is told to offer
    no more seats (a runner joining then would only be told it is done); the results it
    records go to the dispatcher to keep (see :meth:`keep_sending`)."""

    def __init__(self, split: Split, link: SplitLink, tunnels: HostTunnels, runner: str) -> None:
        super().__init__(split)
        self.link = link
        self.tunnels = tunnels
        self.runner = runner
        self.seats_closed = False
        self.began = self.clock()  # participants' times in split.json count from here
        self._recorded = asyncio.Event()
        self._sent = split.kept_count  # results the dispatcher has: those it gave back

    async def _notify(self) -> None:
        await super()._notify()
        self._recorded.set()

    async def next_batch(self, participant: str, wait: bool) -> Batch | Wait | Done:
        answer = await super().next_batch(participant, wait)
        await self.close_seats()
        return answer

    async def close_seats(self, force: bool = False) -> None:
        if not self.seats_closed and (force or not self.split.handing_out):
            self.seats_closed = True
            await self.link.want_seats(0)

    async def keep_sending(self) -> None:
        """Send the dispatcher the results recorded, gathered for :data:`KEEP_INTERVAL`
        into one message, so that a new host, should this one be lost, runs only the
        rest. Runs until cancelled."""
        while True:
            await self._recorded.wait()
            await asyncio.sleep(KEEP_INTERVAL)
            self._recorded.clear()
            new = self.split.recorded[self._sent :]
            self._sent += len(new)
            await self.link.keep(self.split.results[test] for test in new)

    async def reconnected(self) -> None:
        """The runner connected again: what went through the dispatcher may be lost. The
        seats' participants leave (uncounted: the host cut them off) and their connections
        are hung up, seats are asked for again while tests are left, and every result of
        this attempt is sent again."""
        for participant in self.split.participants:
            if runner_of(participant) != self.runner:
                self.split.leave(participant, self.clock())
        self.tunnels.hang_up_all()
        self._sent = self.split.kept_count
        await self._notify()  # wakes the keeper, and participants waiting for work
        if self.split.handing_out:
            self.seats_closed = False
            await self.link.want_seats(self.split.width)
        elif self.seats_closed:
            await self.link.want_seats(0)


async def host(
    link: SplitLink, tool: TestTool, run: RunCommand, environment: dict[str, str],
    parallel: int, runner: str, scratch: Path, say: Say, emit: Emit,
    access: SocketAccess | None = None, ids: Path | None = None,
) -> SplitOutcome:  # fmt: skip
    """Collect, split over up to ``parallel`` runners (this one included), and make the
    build's one result. :class:`ConfigError` when the suite cannot be collected.
    ``access``: who may connect to the batch source (the runner, its build user); ``ids``:
    where the collection writes the ids (a file the test process may write; default in
    ``scratch``)."""
    plugins = plugin_folder(scratch)
    width = split_width(parallel)
    access = access or SocketAccess()
    folder = access.folder()
    tunnels = link.host = HostTunnels(access.socket_in(folder), link)
    try:  # seats check out and start their test processes while this runner collects
        await link.want_seats(width)
        backend, took = await _collect_and_take_part(
            link, tool, run, environment, plugins, width, runner,
            ids or scratch / "split-ids.json", tunnels, say, access,
        )  # fmt: skip
    finally:
        link.host = None
        await tunnels.close()
        _remove(folder)
    await _seat_sections(link, say, emit)
    return await _outcome(link, backend, took)


async def _collect_and_take_part(
    link: SplitLink, tool: TestTool, run: RunCommand, environment: dict[str, str],
    plugins: Path, width: int, runner: str, ids: Path, tunnels: HostTunnels, say: Say,
    access: SocketAccess,
) -> tuple[HostedSplit, TookPart]:  # fmt: skip
    """Collect, hold the split behind a batch source, and take part until it is done."""
    collected = await collect(tool, run, environment, plugins, ids)
    if collected.errors:
        for error in collected.errors:
            await say(f"could not collect: {error}")
        raise ConfigError(f"{tool.name} could not collect {len(collected.errors)} test "
                          f"file(s), first: {collected.errors[0].splitlines()[0]}")  # fmt: skip
    known = await link.known(collected.tests, DURATIONS_TIMEOUT)
    split = Split(collected.tests, known.durations, width, kept=known.kept)
    backend = HostedSplit(split, link, tunnels, runner)
    await say(f"splitting {len(split.tests)} tests over up to {width} runners "
              f"(durations known for {len(known.durations)})")  # fmt: skip
    await _say_kept(split, say)
    if not split.handing_out:  # every result was kept: nothing for a seat to do
        await backend.close_seats(force=True)
    keeper = asyncio.create_task(backend.keep_sending())
    link.on_reconnect = backend.reconnected
    try:
        async with WatchedSource(tunnels.socket, backend, access) as source:
            tunnels.ready.set()
            took = TookPart(())
            if not split.done:
                took = await take_part(tool, run, environment, plugins, source, runner)
            log.info("build %d: this runner's part of the split is done", link.build.build_id)
            await _end_unfinished(backend, took)
            await backend.close_seats(force=True)
            if any(execution.cancelled for _, execution in took.launches):
                # The dispatcher stopped the seats with the build: none will say it ended.
                link.seats_silent("stopped with the build, which was cancelled")
            await link.seats_ended(SEATS_END_TIMEOUT)
            log.info("build %d: the split's seats ended", link.build.build_id)
    finally:
        link.on_reconnect = None
        await _stop(keeper, f"build {link.build.build_id}: keeping the split's results")
    return backend, took


async def _stop(task: asyncio.Task[None], what: str) -> None:
    """Cancel a task that runs until cancelled; how it failed before, if it did, is logged."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("%s failed", what)


async def _say_kept(split: Split, say: Say) -> None:
    """Say which results an earlier attempt kept, and those that did not pass with their
    messages: that attempt's log is not kept."""
    if not split.kept_count:
        return
    kept = [split.results[test] for test in split.recorded[: split.kept_count]]
    runners = sorted({runner_of(r.participant) for r in kept})
    rest = len(split.tests) - len(kept)
    await say(f"kept {len(kept)} results from an earlier attempt of this build (run on "
              f"{', '.join(runners)}); running the other {rest}")  # fmt: skip
    for result in kept:
        if result.outcome in (TestOutcome.FAILED, TestOutcome.ERROR):
            message = f":\n{result.message.rstrip()}" if result.message.strip() else ""
            where = runner_of(result.participant)
            await say(f"kept: {result.test} {result.outcome} on {where}{message}")


async def _end_unfinished(backend: HostedSplit, took: TookPart) -> None:
    """The host's own test process is done: every test has its result, or the split ends
    here (stopped, or the host could not take part), each test left an error naming why."""
    if backend.split.done:
        return
    stopped = [e for _, e in took.launches if e.cancelled or e.timed_out]
    if stopped and stopped[-1].timed_out:
        reason = "the build timed out"
    elif stopped:
        reason = "the build was cancelled"
    else:
        reason = f"the build's own runner stopped taking part: {took.problem or 'it left'}"
    await backend.end(reason)


async def _seat_sections(link: SplitLink, say: Say, emit: Emit) -> None:
    """Each seat's output, as a section of the build's log, in seat order."""
    for number, seat in sorted(link.seats.items()):
        await say(f"--- seat {number}: runner {seat.runner or '?'} ---")
        if seat.dropped:
            await say(f"({seat.dropped} earlier bytes of this seat's output were dropped)")
        if seat.data:
            await emit(bytes(seat.data) + (b"" if seat.data.endswith(b"\n") else b"\n"))
        await say(f"--- end of seat {number}: {seat.ended or 'it did not say it ended'} ---")


async def _outcome(link: SplitLink, backend: HostedSplit, took: TookPart) -> SplitOutcome:
    """The build's one result from the split's, and the durations measured for the next."""
    split = backend.split
    measured = {
        test: result.duration for test, result in split.results.items()
        if result.outcome is not TestOutcome.ERROR and result.participant
    }  # fmt: skip
    await link.measured(measured)
    summary = split.summary()
    by_runner: dict[str, list[str]] = {}
    for participant, tests in summary.ran.items():
        by_runner.setdefault(runner_of(participant), []).extend(tests)
    ran = dict(Counter({runner: len(tests) for runner, tests in by_runner.items()}))
    document = {
        "tests": len(split.tests),
        "kept": split.kept_count,
        "width": split.width,
        "ended": split.ended,
        "runners": {runner: {"ran": tests} for runner, tests in by_runner.items()},
        "participants": {
            participant: {
                "runner": runner_of(participant), "ran": len(tests),
                "busy": round(summary.busy.get(participant, 0.0), 3),
                "joined": _since(summary.joined.get(participant), backend.began),
                "last_result": _since(summary.last_result.get(participant), backend.began),
            }
            for participant, tests in summary.ran.items()
        },
    }  # fmt: skip
    counts = summary.summary.counts
    stopped = [e for _, e in took.launches if e.cancelled or e.timed_out]
    last = took.launches[-1][1] if took.launches else None
    execution = Execution(
        exit_code=1 if counts["failed"] or counts["errors"] else 0,
        timed_out=any(e.timed_out for e in stopped),
        cancelled=any(e.cancelled for e in stopped),
        duration=last.duration if last else 0.0,
    )
    message = f"split over {len(ran)} runner{'s' if len(ran) != 1 else ''}"
    return SplitOutcome(execution, message, junit_xml(split),
                        json.dumps(document, indent=1).encode(), ran)  # fmt: skip


async def seat(
    link: SplitLink, tool: TestTool, run: RunCommand, environment: dict[str, str],
    runner: str, scratch: Path, access: SocketAccess | None = None,
) -> SplitOutcome:  # fmt: skip
    """Take part in the host's split through a tunnel until it is done for this seat;
    ``access``: who may connect to the tunnel (the runner, its build user)."""
    plugins = plugin_folder(scratch)
    access = access or SocketAccess()
    folder = access.folder()
    try:
        async with SeatTunnel(access.socket_in(folder), link, link.build.seat,
                              access) as tunnel:  # fmt: skip
            link.seat = tunnel
            try:
                took = await take_part(tool, run, environment, plugins, tunnel, runner)
            finally:
                link.seat = None
            log.info("build %d: seat %d done", link.build.build_id, link.build.seat)
    finally:
        _remove(folder)
    last = took.launches[-1][1] if took.launches else Execution(None, False, False, 0.0)
    ran = len(took.launches)
    message = took.problem or f"done ({ran} test process{'es' if ran != 1 else ''})"
    return SplitOutcome(last, message, took_part=not took.problem)


def _since(moment: float | None, start: float) -> float | None:
    return None if moment is None else round(moment - start, 3)


def _remove(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink(missing_ok=True)
    folder.rmdir()
