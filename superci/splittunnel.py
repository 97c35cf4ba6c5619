"""A split's connections across runners: a participant's test process on one runner talks
to the batch source on the build's own runner (the *host*), through the dispatcher.

The participant's runner hosts a unix socket (:class:`SeatTunnel`) that looks to its
test process exactly like a batch source: every line the process sends goes out as a
:class:`~superci.protocol.SplitLine` on that connection, every answer comes back as a
:class:`~superci.protocol.ForwardedReply`. On the host, :class:`HostTunnels` opens one
connection to its real batch source per tunnelled connection and carries the lines both
ways. Lines are carried, never parsed for meaning: the batch source alone decides. A
connection that ends on either side ends on the other, so a participant whose runner is
lost is a connection that ended without a goodbye: the batch source hands its batch back.

:class:`SplitLink` is one build's end of those messages in the runner: the executor
sends through it and the session routes the dispatcher's split messages to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superci import protocol, splitkept
from superci.split import TestResult
from superci.splitaccess import SocketAccess
from superci.splitclient import MAX_LINE
from superci.splitsource import SETTLE_TIMEOUT, end_within

log = logging.getLogger(__name__)

#: Sends one message to the dispatcher (quietly: a lost connection loses the line, and
#: the split treats that participant as lost).
Send = Callable[[protocol.Message], Awaitable[None]]
#: The longest line carried (the protocol's text limit): a longer one ends its connection.
MAX_TUNNEL_LINE = min(MAX_LINE, protocol.MAX_DOCUMENT)
#: Output of one seat the host keeps for the build's log (its tail beyond this).
MAX_SEAT_OUTPUT = 1024 * 1024
#: Test ids asked about in one request: the answer carries their durations and kept
#: results (see superci.splitkept), well inside a frame.
IDS_PER_REQUEST = 100


@dataclass(frozen=True)
class Known:
    """What the dispatcher knows of a suite's tests: their average durations, and the
    results an earlier attempt of this build kept (see :mod:`superci.splitkept`)."""

    durations: dict[str, float]
    kept: dict[str, TestResult]


@dataclass
class SeatOutput:
    """What the host heard of one seat: its runner, its output and how it ended."""

    runner: str = ""
    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0
    ended: str | None = None

    def add(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_SEAT_OUTPUT:
            cut = len(self.data) - MAX_SEAT_OUTPUT
            self.dropped += cut
            del self.data[:cut]


class SplitLink:
    """One build's split messages in the runner: sends for the executor, and what the
    dispatcher forwards (durations, tunnelled lines, seats' output and ends)."""

    def __init__(self, build: protocol.Build, send: Send) -> None:
        self.build = build
        self._send = send
        self._requests = itertools.count(1)
        self._known: dict[int, asyncio.Future[protocol.SplitDurations]] = {}
        self.host: HostTunnels | None = None  # on the build's own runner, while it splits
        self.seat: SeatTunnel | None = None  # on a participant's runner
        self.seats: dict[int, SeatOutput] = {}
        self.seat_changed = asyncio.Event()
        self.seat_width: int | None = None  # what the host last asked for (None: nothing)
        #: The host's split, told of a reconnect (see :meth:`reconnected`).
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None
        self._asked: dict[int, protocol.SplitTests] = {}  # requests not answered yet
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def lease(self) -> dict[str, int]:
        return {"build_id": self.build.build_id, "attempt": self.build.attempt}

    async def send(self, message: protocol.Message) -> None:
        await self._send(message)

    async def known(self, tests: Iterable[str], timeout: float) -> Known:
        """What the dispatcher knows of ``tests`` (asked in parts the protocol carries;
        ids it cannot carry get nothing); what has not come within ``timeout`` is left
        out: the split goes on with the median, and runs those tests."""
        ids = [t for t in tests if len(t) <= protocol.MAX_STRING]
        asked = []
        for start in range(0, len(ids), IDS_PER_REQUEST):
            request = next(self._requests)
            self._known[request] = asyncio.get_running_loop().create_future()
            asked.append(request)
            part = ids[start : start + IDS_PER_REQUEST]
            self._asked[request] = protocol.SplitTests(**self.lease, request=request, tests=part)
            await self._send(self._asked[request])
        known = Known({}, {})
        try:
            async with asyncio.timeout(timeout):
                for request in asked:
                    answer = await self._known[request]
                    known.durations.update(answer.durations)
                    known.kept.update((r.test, r) for r in splitkept.results(answer))
        except TimeoutError:
            log.warning("build %d: no durations from the dispatcher within %gs",
                        self.build.build_id, timeout)  # fmt: skip
        finally:
            for request in asked:
                self._known.pop(request, None)
                self._asked.pop(request, None)
        return known

    async def keep(self, results: Iterable[TestResult]) -> None:
        """Send results the split recorded, for the dispatcher to keep with the build."""
        for part in splitkept.parts(results):
            lease = self.lease
            await self._send(protocol.SplitKept(build_id=lease["build_id"],
                                                attempt=lease["attempt"], **part))  # fmt: skip

    async def want_seats(self, width: int) -> None:
        """Ask for seats up to ``width`` participants in all (0: no more), numbered after
        every seat this host has heard of."""
        self.seat_width = width
        known = set(self.seats) | (self.host.seen if self.host is not None else set())
        next_seat = max(known, default=0) + 1
        await self._send(protocol.SplitSeats(**self.lease, width=width, next_seat=next_seat))

    async def reconnected(self) -> None:
        """The host connected again and kept its build (after a dispatcher restart, say):
        what went through the old connection may be lost. Requests not answered are sent
        again; a seat not heard from since counts as ended unless it says otherwise (a
        restarted dispatcher knows none); the split, if it is held yet, takes it from
        there (:meth:`superci.splitbuild.HostedSplit.reconnected`), else seats are asked
        for again."""
        if self.seat_width is None:  # not a host, or not splitting yet
            return
        for request in list(self._asked.values()):
            await self._send(request)
        self.seats_silent("no word from it since the build's runner reconnected")
        if self.on_reconnect is not None:
            await self.on_reconnect()
            return
        if self.host is not None:
            self.host.hang_up_all()
        await self.want_seats(self.seat_width)

    async def measured(self, durations: dict[str, float]) -> None:
        """Send the tests' measured durations, in parts the protocol carries."""
        items = [(t, s) for t, s in durations.items() if len(t) <= protocol.MAX_STRING]
        for start in range(0, len(items), protocol.MAX_LIST):
            part = dict(items[start : start + protocol.MAX_LIST])
            await self._send(protocol.SplitMeasured(**self.lease, durations=part))

    def receive(self, message: protocol.Message) -> None:
        """A split message from the dispatcher for this build."""
        match message:
            case protocol.SplitDurations():
                future = self._known.get(message.request)
                if future is not None and not future.done():
                    future.set_result(message)
            case protocol.ForwardedLine() | protocol.ForwardedClose():
                if self.host is not None:
                    self.host.receive(message)
                elif isinstance(message, protocol.ForwardedLine):  # too late: hang up
                    self._later(protocol.SplitHangUp(
                        **self.lease, seat=message.seat, conn=message.conn,
                        reason="the split is over",
                    ))  # fmt: skip
            case protocol.ForwardedReply() | protocol.ForwardedHangUp():
                if self.seat is not None:
                    self.seat.receive(message)
            case protocol.ForwardedOutput():
                seat = self.seats.setdefault(message.seat, SeatOutput(message.runner))
                seat.runner = message.runner or seat.runner
                seat.add(protocol.unpack_data(message.data))
                self.seat_changed.set()
            case protocol.ForwardedSeatEnd():
                seat = self.seats.setdefault(message.seat, SeatOutput(message.runner))
                seat.runner = message.runner or seat.runner
                seat.ended = message.message
                self.seat_changed.set()

    def _later(self, message: protocol.Message) -> None:
        task = asyncio.ensure_future(self._send(message))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def seats_silent(self, why: str) -> None:
        """Every seat that has not said it ended counts as ended, for ``why``: it will not
        say so (one that still does has the last word)."""
        for seat in self.seats.values():
            if seat.ended is None:
                seat.ended = why
        self.seat_changed.set()

    async def seats_ended(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until every seat heard of has said it ended."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while any(s.ended is None for s in self.seats.values()):
                    self.seat_changed.clear()
                    await self.seat_changed.wait()


class HostTunnels:
    """On the host: one connection to the batch source at ``socket`` per tunnelled one.
    Seats may connect before the source is up (they check out while the host collects):
    their lines wait until :attr:`ready` is set."""

    def __init__(self, socket: Path, link: SplitLink) -> None:
        self.socket = socket
        self.link = link
        self.ready = asyncio.Event()
        self._closed = asyncio.Event()
        self._queues: dict[tuple[int, int], asyncio.Queue[str | None]] = {}
        self._hung_up: set[tuple[int, int]] = set()  # connections ended by this host
        self._tasks: set[asyncio.Task[None]] = set()
        self.seen: set[int] = set()  # every seat a line came from

    def receive(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.ForwardedLine):
            key = (message.seat, message.conn)
            self.seen.add(message.seat)
            if key in self._hung_up:  # late: its answer would come from a new connection
                return
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = asyncio.Queue()
                task = asyncio.create_task(self._carry(key, queue))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            queue.put_nowait(message.line)
        elif isinstance(message, protocol.ForwardedClose):
            for key, queue in list(self._queues.items()):
                if key[0] == message.seat and message.conn in (0, key[1]):
                    queue.put_nowait(None)

    async def _carry(self, key: tuple[int, int], queue: asyncio.Queue[str | None]) -> None:
        """Write the seat's lines to a connection of our own; send back what it answers."""
        seat, conn = key
        if not await self._ready():
            self._queues.pop(key, None)
            await self._hang_up(seat, conn, "the split ended before it began")
            return
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket, limit=MAX_LINE)
        except OSError as e:
            log.warning("split seat %d: cannot reach the batch source: %s", seat, e)
            await self._hang_up(seat, conn, str(e))
            return
        answers = asyncio.create_task(self._answer(seat, conn, reader))
        try:
            while (line := await queue.get()) is not None:
                writer.write(line.encode("utf-8") + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            await asyncio.gather(answers, return_exceptions=True)
            self._queues.pop(key, None)

    async def _ready(self) -> bool:
        """Wait until the batch source is up (True) or the tunnels close first (False)."""
        waits = {asyncio.ensure_future(self.ready.wait()),
                 asyncio.ensure_future(self._closed.wait())}  # fmt: skip
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        return self.ready.is_set() and not self._closed.is_set()

    async def _answer(self, seat: int, conn: int, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                text = line.decode("utf-8", "replace").rstrip("\n")
                if len(text) > MAX_TUNNEL_LINE:
                    break
                await self.link.send(protocol.SplitReply(**self.link.lease, seat=seat,
                                                         conn=conn, line=text))  # fmt: skip
        except (ConnectionError, OSError, ValueError):
            pass
        await self._hang_up(seat, conn, "the batch source ended the connection")
        queue = self._queues.get((seat, conn))
        if queue is not None:
            queue.put_nowait(None)

    async def _hang_up(self, seat: int, conn: int, reason: str) -> None:
        await self.link.send(protocol.SplitHangUp(**self.link.lease, seat=seat, conn=conn,
                                                  reason=reason[: protocol.MAX_TEXT]))  # fmt: skip

    def hang_up_all(self) -> None:
        """End every tunnelled connection (each seat is told); lines that come later on
        one of them are dropped."""
        for key, queue in list(self._queues.items()):
            queue.put_nowait(None)
            self._hung_up.add(key)
        self._queues.clear()

    async def close(self) -> None:
        self._closed.set()
        for queue in list(self._queues.values()):
            queue.put_nowait(None)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=SETTLE_TIMEOUT)
        for task in list(self._tasks):
            task.cancel()


class SeatTunnel:
    """On a participant's runner: a unix socket at ``path`` its test process connects to
    as to a batch source; each connection is carried to the host. ``left`` says, per
    participant that joined, whether it was lost (its connection ended without goodbye).
    ``access``: whose connections it takes (default: the runner's own only)."""

    def __init__(
        self, path: Path, link: SplitLink, seat: int, access: SocketAccess | None = None
    ) -> None:
        self.path = Path(path)
        self.link = link
        self.seat = seat
        self.access = access or SocketAccess()
        self.left: dict[str, bool] = {}
        self._conns = itertools.count(1)
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._joined: dict[int, str] = {}  # connection → participant, once welcomed
        self._named: dict[int, str] = {}  # connection → the participant its hello named
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._conn_of: dict[asyncio.Task[None], int] = {}

    async def __aenter__(self) -> SeatTunnel:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path,
                                                       limit=MAX_LINE)  # fmt: skip
        self.access.open(self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def settle(self, participant: str | None = None, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until the connections of ``participant`` (and those not named yet; None:
        every one) have ended (cut after ``timeout``)."""
        await asyncio.sleep(0)
        names = {task: self._named.get(self._conn_of.get(task, 0)) for task in self._connections}
        tasks = {
            t for t, name in names.items() if participant is None or name in (None, participant)
        }
        await end_within(tasks, timeout)

    def receive(self, message: protocol.Message) -> None:
        writer = self._writers.get(getattr(message, "conn", 0))
        if writer is None:
            return
        if isinstance(message, protocol.ForwardedHangUp):
            writer.close()
            return
        assert isinstance(message, protocol.ForwardedReply)
        conn = message.conn
        kind = _kind(message.line)
        if kind == "welcome" and conn in self._named:
            self._joined[conn] = self._named[conn]
        writer.write(message.line.encode("utf-8") + b"\n")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        where = f"seat {self.seat}'s tunnel {self.path}"
        if not self.access.admits(writer, where, len(self._connections)):
            writer.close()  # never carried: the host hears nothing of it
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = next(self._conns)
        self._conn_of[task] = conn
        self._writers[conn] = writer
        said_bye = False
        try:
            while line := await reader.readline():
                text = line.decode("utf-8", "replace").rstrip("\n")
                if len(text) > MAX_TUNNEL_LINE:
                    break
                message = _parsed(text)
                if message.get("type") == "hello" and isinstance(message.get("participant"), str):
                    self._named[conn] = message["participant"]
                said_bye = message.get("type") == "bye"
                await self.link.send(protocol.SplitLine(**self.link.lease, seat=self.seat,
                                                        conn=conn, line=text))  # fmt: skip
        except (ConnectionError, OSError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            self._connections.discard(task)
            self._conn_of.pop(task, None)
            self._writers.pop(conn, None)
            participant = self._joined.pop(conn, None)
            self._named.pop(conn, None)
            if participant is not None:
                self.left[participant] = not said_bye
            with contextlib.suppress(Exception):
                await self.link.send(protocol.SplitClose(**self.link.lease, seat=self.seat,
                                                         conn=conn, reason="ended"))  # fmt: skip
            writer.close()


def _parsed(line: str) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _kind(line: str) -> str:
    kind = _parsed(line).get("type")
    return kind if isinstance(kind, str) else ""
