"""The batch source: a unix socket the runner hosts for its test process, speaking the
line-JSON protocol of :mod:`superci.splitclient`, forwarding every message to a
:class:`SplitBackend`.

The backend decides (a :class:`superci.split.Split` behind it); the source only parses,
validates and carries messages, and turns a connection that ends without ``bye`` into a
loss, which is how a test process that crashed or was killed hands its batch back.
:class:`LocalSplit` is the backend for a split held in this process (tests, a lone
runner); the dispatcher's split will be another backend, reached over superci's protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from superci.errors import ProtocolError, StaleResult
from superci.split import Batch, Done, Split, TestOutcome, TestResult, Wait
from superci.splitaccess import SocketAccess
from superci.splitclient import MAX_LINE, encode

log = logging.getLogger(__name__)

#: Seconds a connection may stay open after its test process ended (its children may
#: hold the socket): then it is cut.
SETTLE_TIMEOUT = 5.0


class SplitBackend(Protocol):
    """Where the source forwards a participant's messages (one split)."""

    async def join(self, participant: str) -> bool: ...

    async def next_batch(self, participant: str, wait: bool) -> Batch | Wait | Done:
        """With ``wait``, never :class:`Wait`: the answer comes once there is one."""
        ...

    async def started(self, participant: str, batch_id: int, test: str) -> None: ...

    async def report(self, participant: str, batch_id: int, result: TestResult) -> None: ...

    async def finish_batch(self, participant: str, batch_id: int) -> None: ...

    async def leave(self, participant: str, lost: bool, reason: str) -> None: ...


class LocalSplit:
    """A :class:`Split` in this process, as a backend: waiting participants are woken by
    every change that may give them work (a loss, a result, the end)."""

    def __init__(self, split: Split, clock: Callable[[], float] = time.monotonic) -> None:
        self.split = split
        self.clock = clock
        self.finished = asyncio.Event()  # every test has a result
        self.waiting: set[str] = set()  # participants waiting for tests others hold
        self._changed = asyncio.Condition()

    async def _notify(self) -> None:
        if self.split.done:
            self.finished.set()
        async with self._changed:
            self._changed.notify_all()

    async def join(self, participant: str) -> bool:
        return self.split.join(participant, self.clock())

    async def next_batch(self, participant: str, wait: bool) -> Batch | Wait | Done:
        async with self._changed:
            try:
                while True:
                    answer = self.split.next_batch(participant, self.clock())
                    if not (wait and isinstance(answer, Wait)):
                        return answer
                    self.waiting.add(participant)
                    await self._changed.wait()
            finally:
                self.waiting.discard(participant)

    async def started(self, participant: str, batch_id: int, test: str) -> None:
        self.split.started(participant, batch_id, test, self.clock())

    async def report(self, participant: str, batch_id: int, result: TestResult) -> None:
        self.split.report(participant, batch_id, [result], self.clock())
        await self._notify()

    async def finish_batch(self, participant: str, batch_id: int) -> None:
        self.split.finish_batch(participant, batch_id, self.clock())
        await self._notify()

    async def leave(self, participant: str, lost: bool, reason: str) -> None:
        if lost:
            self.split.lose(participant, self.clock(), reason)
        else:
            self.split.leave(participant, self.clock())
        await self._notify()

    async def end(self, reason: str) -> list[str]:
        """Stop the split (cancel, time limit): waiting participants are told it is done."""
        missing = self.split.end(reason, self.clock())
        await self._notify()
        return missing


def parse(line: bytes) -> dict[str, Any]:
    """One message, its fields checked; :class:`ProtocolError` saying what is wrong."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"not a JSON line: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    kind = message.get("type")
    fields = FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    for name, kinds in fields.items():
        value = message.get(name)
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            named = " or ".join(k.__name__ for k in kinds)
            raise ProtocolError(f"{kind}: {name!r} must be {named}")
    if kind == "result":
        if message["outcome"] not in TestOutcome.__members__.values():
            raise ProtocolError(f"result: unknown outcome {message['outcome']!r}")
        if not math.isfinite(message["duration"]):
            raise ProtocolError("result: duration must be a finite number")
    return message


FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"participant": (str,)},
    "next": {"wait": (bool,)},
    "started": {"batch": (int,), "test": (str,)},
    "result": {
        "batch": (int,),
        "test": (str,),
        "outcome": (str,),
        "duration": (int, float),
        "message": (str,),
    },
    "finished": {"batch": (int,)},
    "bye": {},
}


class BatchSource:
    """A unix socket at ``path``; each connection is one participant of the backend's split.
    ``access``: whose connections it takes (default: the runner's own only)."""

    def __init__(
        self, path: Path, backend: SplitBackend, access: SocketAccess | None = None
    ) -> None:
        self.path = Path(path)
        self.backend = backend
        self.access = access or SocketAccess()
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._named: dict[asyncio.Task[None], str] = {}  # connection → its participant

    async def __aenter__(self) -> BatchSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=MAX_LINE)
        self.access.open(self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def settle(self, participant: str | None = None, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until the connections of ``participant`` (and those that have not said who
        they are; None: every one) have ended, as each does soon after its test process
        exits; one still open after ``timeout`` is cut, and its participant lost."""
        await asyncio.sleep(0)  # a connection the process made just before it exited
        tasks = {
            task for task in self._connections
            if participant is None or self._named.get(task) in (None, participant)
        }  # fmt: skip
        await end_within(tasks, timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.access.admits(writer, f"batch source {self.path}", len(self._connections)):
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._converse(reader, writer)
        finally:
            self._connections.discard(task)
            self._named.pop(task, None)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        participant: str | None = None
        lost, reason = True, "its connection ended without a goodbye"
        try:
            hello = parse(await reader.readuntil(b"\n"))
            if hello["type"] != "hello":
                raise ProtocolError("the first message must be hello")
            if not await self.backend.join(hello["participant"]):
                writer.write(encode({"type": "done"}))
                return
            participant = hello["participant"]
            task = asyncio.current_task()
            if task is not None:
                self._named[task] = participant
            writer.write(encode({"type": "welcome"}))
            while True:
                message = parse(await reader.readuntil(b"\n"))
                if message["type"] == "bye":
                    lost = False
                    return
                await self._handle(participant, message, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.LimitOverrunError:
            reason = f"it sent a line over {MAX_LINE} bytes"
            writer.write(encode({"type": "error", "message": reason}))
        except (ProtocolError, StaleResult) as e:
            reason = f"it broke the batch protocol: {e}"
            log.warning("split participant %s: %s", participant or "(before hello)", reason)
            writer.write(encode({"type": "error", "message": str(e)}))
        finally:
            if participant is not None:
                await self.backend.leave(participant, lost, "" if not lost else reason)

    async def _handle(
        self,
        participant: str,
        message: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        kind = message["type"]
        if kind == "next":
            answer = await self._next(participant, message["wait"], reader)
            writer.write(encode(answer))
            await writer.drain()
            return
        try:
            if kind == "started":
                await self.backend.started(participant, message["batch"], message["test"])
            elif kind == "result":
                result = TestResult(
                    message["test"], TestOutcome(message["outcome"]),
                    float(message["duration"]), message["message"], participant,
                )  # fmt: skip
                await self.backend.report(participant, message["batch"], result)
            elif kind == "finished":
                await self.backend.finish_batch(participant, message["batch"])
            else:
                raise ProtocolError(f"{kind} is not sent by a participant after hello")
        except StaleResult as e:  # a late or repeated report: refused, the split goes on
            log.info("split participant %s: refused: %s", participant, e)

    async def _next(
        self, participant: str, wait: bool, reader: asyncio.StreamReader
    ) -> dict[str, Any]:
        """The answer to ``next``; while it waits, a connection that ends is a loss at once
        (a participant sends nothing while it waits)."""
        asking = asyncio.ensure_future(self.backend.next_batch(participant, wait))
        ended = asyncio.ensure_future(reader.read(1))
        try:
            await asyncio.wait({asking, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (asking, ended):
                task.cancel()
            # A cancelled read still waits on the stream until it has run: let it.
            await asyncio.gather(asking, ended, return_exceptions=True)
        if not ended.cancelled() and ended.result():
            raise ProtocolError("a participant sends nothing while it waits for a batch")
        if asking.cancelled():
            raise ConnectionError("the participant left while it waited for a batch")
        answer = asking.result()
        if isinstance(answer, Batch):
            return {"type": "batch", "id": answer.id, "tests": list(answer.tests)}
        return {"type": "done"} if isinstance(answer, Done) else {"type": "none"}


async def end_within(tasks: set[asyncio.Task[None]], timeout: float) -> None:
    """Wait for ``tasks`` (connections) to end; those still running after ``timeout`` are
    cancelled, and waited for."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
