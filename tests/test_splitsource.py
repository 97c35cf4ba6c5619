"""The batch source on a real unix socket, spoken to line by line: what it answers, what
it refuses, and how a connection that ends hands its batch back."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import async_test
from support import WAIT, eventually

from superci.errors import ProtocolError
from superci.split import Split, TestOutcome
from superci.splitclient import MAX_LINE
from superci.splitsource import BatchSource, LocalSplit, parse

TESTS = ["a", "b", "c", "d"]


class Peer:
    """One participant's end of the socket, speaking raw lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, path: Path, name: str | None = None) -> Peer:
        peer = cls(*await asyncio.open_unix_connection(path, limit=MAX_LINE))
        if name is not None:
            assert await peer.ask({"type": "hello", "participant": name}) == {"type": "welcome"}
        return peer

    async def send(self, message: dict[str, Any] | bytes) -> None:
        line = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        self.writer.write(line)
        await self.writer.drain()

    async def answer(self) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            line = await self.reader.readline()
        assert line, "the source closed the connection"
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ask(self, message: dict[str, Any] | bytes) -> dict[str, Any]:
        await self.send(message)
        return await self.answer()

    async def closed(self) -> bool:
        async with asyncio.timeout(WAIT):
            return await self.reader.read() == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sci-source-") as folder:
        yield Path(folder) / "split.sock"


def source(path: Path, width: int = 2) -> tuple[BatchSource, LocalSplit]:
    backend = LocalSplit(Split(TESTS, {}, width=width, divisor=1.0))
    return BatchSource(path, backend), backend


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"{not json\n", "not a JSON line"),
        (b"[1, 2]\n", "a message must be a JSON object"),
        (b'{"type": "shout"}\n', "unknown message type 'shout'"),
        (b'{"type": "next", "wait": 1}\n', "next: 'wait' must be bool"),
        (b'{"type": "started", "batch": true, "test": "a"}\n', "started: 'batch' must be int"),
        (
            b'{"type": "result", "batch": 1, "test": "a", "outcome": "great", "duration": 1,'
            b' "message": ""}\n',
            "result: unknown outcome 'great'",
        ),
        (
            b'{"type": "result", "batch": 1, "test": "a", "outcome": "passed",'
            b' "duration": NaN, "message": ""}\n',
            "result: duration must be a finite number",
        ),
    ],
)
def test_a_malformed_message_is_refused_saying_what_is_wrong(line, error):
    with pytest.raises(ProtocolError, match=error):
        parse(line)


@async_test()
async def test_a_participant_that_breaks_the_protocol_is_told_why_and_its_batch_goes_back(
    socket_path,
):
    src, backend = source(socket_path)
    async with src:
        bad, good = await Peer.connect(src.path, "bad"), await Peer.connect(src.path, "good")
        batch = await bad.ask({"type": "next", "wait": True})
        assert batch == {"type": "batch", "id": 1, "tests": ["a", "b"]}
        assert await bad.ask(b"{not json\n") == {
            "type": "error", "message": "not a JSON line: Expecting property name enclosed in "
            "double quotes: line 1 column 2 (char 1)",
        }  # fmt: skip
        assert await bad.closed()
        await eventually(lambda: "bad" not in backend.split.participants)
        again = await good.ask({"type": "next", "wait": True})
        assert again == {"type": "batch", "id": 2, "tests": ["a", "b"]}
        assert backend.split.held("good")[0].attempts == 1
        await good.close()


@async_test()
async def test_the_first_message_must_be_hello(socket_path):
    src, _ = source(socket_path)
    async with src:
        peer = await Peer.connect(src.path)
        answer = await peer.ask({"type": "next", "wait": True})
        assert answer == {"type": "error", "message": "the first message must be hello"}
        assert await peer.closed()


@async_test()
async def test_a_participant_beyond_the_width_is_told_the_split_is_done(socket_path):
    src, _ = source(socket_path, width=1)
    async with src:
        first = await Peer.connect(src.path, "first")
        extra = await Peer.connect(src.path)
        assert await extra.ask({"type": "hello", "participant": "extra"}) == {"type": "done"}
        assert await extra.closed()
        await first.close()


@async_test()
async def test_a_late_result_is_refused_and_the_participant_goes_on(socket_path):
    src, backend = source(socket_path)
    async with src:
        peer = await Peer.connect(src.path, "p")
        batch = await peer.ask({"type": "next", "wait": True})
        result = {"type": "result", "batch": batch["id"], "outcome": "passed", "duration": 0.5}
        await peer.send(result | {"test": "a", "message": ""})
        await peer.send(result | {"test": "a", "message": "again"})  # refused: already reported
        await peer.send(result | {"test": "b", "message": ""})
        second = await peer.ask({"type": "next", "wait": False})
        assert second["type"] == "batch" and second["tests"] == ["c"]
        assert backend.split.results["a"].message == ""
        assert backend.split.results["b"].outcome == TestOutcome.PASSED
        await peer.send({"type": "bye"})
        assert await peer.closed()
        assert backend.split.participants == ()
        assert [b.tests for b in backend.split.held("p")] == []


@async_test()
async def test_a_waiting_participant_gets_a_lost_batch_or_done_when_the_split_ends(socket_path):
    src, backend = source(socket_path)
    async with src:
        holder, waiter = await Peer.connect(src.path, "holder"), await Peer.connect(src.path, "w")
        for _ in range(2):
            assert (await holder.ask({"type": "next", "wait": True}))["type"] == "batch"
        assert (await waiter.ask({"type": "next", "wait": True}))["type"] == "batch"
        await waiter.send({"type": "finished", "batch": 3})  # "d" never reported: an error
        assert (await waiter.ask({"type": "next", "wait": False})) == {"type": "none"}
        await waiter.send({"type": "next", "wait": True})
        await eventually(lambda: backend.waiting == {"w"}, what="w to wait")
        await holder.close()  # lost: both its batches come back, the first to the waiter
        assert await waiter.answer() == {"type": "batch", "id": 4, "tests": ["a", "b"]}
        assert backend.split.results["d"].message == "d: collected but never reported by w"
        await waiter.send({"type": "next", "wait": True})
        assert await waiter.answer() == {"type": "batch", "id": 5, "tests": ["c"]}
        await waiter.send({"type": "next", "wait": True})  # holds two: refused as a bug
        answer = await waiter.answer()
        assert answer == {"type": "error", "message": "w already holds batches 4, 5"}


async def one_waiting(src: BatchSource, backend: LocalSplit) -> tuple[Peer, Peer]:
    """``holder`` holds the first two batches; ``w`` got the last one and now waits, for
    theirs may come back."""
    holder, waiter = await Peer.connect(src.path, "holder"), await Peer.connect(src.path, "w")
    for _ in range(2):
        assert (await holder.ask({"type": "next", "wait": True}))["type"] == "batch"
    assert (await waiter.ask({"type": "next", "wait": True}))["tests"] == ["d"]
    await waiter.send({"type": "next", "wait": True})
    await eventually(lambda: backend.waiting == {"w"}, what="w to wait")
    return holder, waiter


@async_test()
async def test_cancel_tells_a_waiting_participant_the_split_is_done(socket_path):
    src, backend = source(socket_path)
    async with src:
        holder, waiter = await one_waiting(src, backend)
        assert await backend.end("the build was cancelled") == TESTS
        assert await waiter.answer() == {"type": "done"}
        assert backend.split.results["a"].message == "a: not run: the build was cancelled"
        await holder.close()
        await waiter.close()


@async_test()
async def test_a_participant_that_dies_while_it_waits_is_lost_at_once(socket_path):
    src, backend = source(socket_path)
    async with src:
        holder, waiter = await one_waiting(src, backend)
        await waiter.close()
        await eventually(lambda: "w" not in backend.split.participants, what="w to be lost")
        assert [b.tests for b in backend.split.held("holder")] == [("a", "b"), ("c",)]
        await holder.close()


@async_test()
async def test_a_participant_that_talks_while_it_waits_is_told_it_broke_the_protocol(socket_path):
    src, backend = source(socket_path)
    async with src:
        holder, waiter = await one_waiting(src, backend)
        answer = await waiter.ask({"type": "bye"})
        assert answer == {
            "type": "error", "message": "a participant sends nothing while it waits for a batch"
        }  # fmt: skip
        assert await waiter.closed()
        await holder.close()
