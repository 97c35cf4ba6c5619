"""Shared pieces of the integration tests: an in-process dispatcher on real TCP, a fake
runner that speaks the protocol by hand, git repositories, and bounded waits.

pytest-asyncio is not used: :func:`async_test` runs an ``async def`` test with
``asyncio.run`` under an overall time limit, so a hang fails the test instead of the run.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from support import WAIT, eventually

from superci import client, protocol
from superci.channel import Address, Channel
from superci.dispatcher import Dispatcher
from superci.errors import ConnectionClosed, RemoteError
from superci.results import LOG_FILE, RESULT_FILE, ResultsFolder
from superci.settings import DispatcherSettings, with_given
from superci.store import Store

#: No single test should come near this (seconds); it only turns a hang into a failure.
TEST_LIMIT = 20.0
#: How long a finished test waits for leftover tasks (connections closing) to end.
SETTLE = 1.0

M = TypeVar("M", bound=protocol.Message)


def async_test(limit: float = TEST_LIMIT) -> Callable[[Callable[..., Any]], Callable[..., None]]:
    """Run an ``async def`` test function in a fresh event loop, bounded by ``limit``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., None]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            async def main() -> None:
                async with asyncio.timeout(limit):
                    await fn(*args, **kwargs)
                # Let closed connections finish winding down rather than be cancelled
                # mid-close by asyncio.run (which 3.11 reports as an error in a callback).
                others = asyncio.all_tasks() - {asyncio.current_task()}
                if others:
                    await asyncio.wait(others, timeout=SETTLE)

            asyncio.run(main())

        return wrapper

    return decorate


class FakeClock:
    """A monotonic clock the test moves by hand, so heartbeat deadlines are exact."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ResultLog:
    """The dispatcher's ``on_result`` hook: every result document it records, in order."""

    def __init__(self) -> None:
        self.documents: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def __call__(self, document: dict[str, Any]) -> None:
        self.documents.append(document)
        self._changed.set()

    def for_sha(self, sha: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d["sha"] == sha]

    async def wait(self, sha: str, timeout: float = WAIT) -> dict[str, Any]:
        """The first result recorded for ``sha``, waiting for it if need be."""
        try:
            async with asyncio.timeout(timeout):
                while not (found := self.for_sha(sha)):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no result for {sha} within {timeout}s") from None
        return found[0]


#: A Harness's dispatcher unless told otherwise: a runner silent for 1 s is dead, so
#: tests of lost runners take a second, not ten.
HARNESS_SETTINGS = DispatcherSettings(heartbeat_timeout=1.0)
#: ... and with a watchdog that looks every 10 ms instead of every 0.5 s, for tests that
#: wait on its checks.
FAST_WATCHDOG = replace(HARNESS_SETTINGS, heartbeat_check_interval=0.01)


class Harness:
    """A Dispatcher on 127.0.0.1 with its database and results under one folder.

    :meth:`restart` closes it and starts a new one on the same files and port, as a
    restarted dispatcher process would. ``heartbeat_timeout`` and ``max_attempts``, when
    given, override their field of ``settings``.
    """

    def __init__(
        self,
        root: Path,
        *,
        settings: DispatcherSettings = HARNESS_SETTINGS,
        heartbeat_timeout: float | None = None,
        max_attempts: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.root = root
        self.results_dir = root / "test_results"
        self.db_path = root / "superci.db"
        self.settings = with_given(
            settings, heartbeat_timeout=heartbeat_timeout, max_attempts=max_attempts
        )
        self.clock = clock or FakeClock()
        self.results = ResultLog()
        self.dispatcher: Dispatcher | None = None
        self.store: Store | None = None
        self.address: Address | None = None

    async def start(self, port: int = 0) -> Address:
        self.store = Store(self.db_path)
        self.dispatcher = Dispatcher(
            self.store,
            ResultsFolder(self.results_dir),
            settings=self.settings,
            clock=self.clock,
            on_result=self.results,
        )
        self.address = await self.dispatcher.start("127.0.0.1", port)
        return self.address

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.close()
            self.dispatcher = None
        if self.store is not None:
            self.store.close()
            self.store = None

    async def restart(self) -> Address:
        assert self.address is not None
        await self.stop()
        return await self.start(self.address.port)

    async def __aenter__(self) -> Harness:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- what a client sees ---------------------------------------------------------

    async def submit(self, sha: str, branch: str = "main", rebuild: bool = False):
        assert self.address is not None
        return await client.submit_async(self.address, sha, branch, rebuild, timeout=WAIT)

    # --- what is on disk ------------------------------------------------------------

    def folder(self, sha: str) -> Path:
        return self.results_dir / sha

    def result_json(self, sha: str) -> dict[str, Any] | None:
        return ResultsFolder(self.results_dir).read_result(sha)

    def output_log(self, sha: str) -> bytes:
        path = self.folder(sha) / LOG_FILE
        return path.read_bytes() if path.exists() else b""

    def result_files(self, sha: str) -> list[str]:
        """Every file of the commit's folder that is, or could become, a result.json."""
        folder = self.folder(sha)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if RESULT_FILE in p.name)

    def db_build(self, build_id: int) -> dict[str, Any] | None:
        """The build's row, read through a connection of our own: what is on disk."""
        db = sqlite3.connect(self.db_path)
        try:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM builds WHERE id = ?", (build_id,)).fetchone()
        finally:
            db.close()
        return dict(row) if row is not None else None

    async def wait_for_log(self, sha: str, text: bytes, timeout: float = WAIT) -> bytes:
        await eventually(
            lambda: text in self.output_log(sha), timeout, f"{text!r} in the log of {sha[:12]}"
        )
        return self.output_log(sha)


#: What a real runner keeps across reconnects: the identity issued to its name (its
#: identity file) and its process's instance, by (dispatcher port, name).
_KEPT: dict[tuple[int, str], tuple[str | None, str]] = {}
#: Passed as ``identity`` or ``instance``: use what this name was given before (the same
#: runner reconnecting), or nothing / a fresh instance the first time.
KEPT: Any = object()


class FakeRunner:
    """A runner played by the test, one frame at a time.

    Frames the test did not ask for yet wait in an inbox, so asking for a ``result_ack``
    does not lose a ``build`` the dispatcher sent first. By default it keeps the identity
    issued to its name and its instance, like the same runner reconnecting; pass
    ``identity``/``instance`` to play another runner.
    """

    def __init__(self, name: str, channel: Channel) -> None:
        self.name = name
        self.channel = channel
        self.inbox: list[protocol.Message] = []
        self.identity: str | None = None  # the secret it showed, or was issued

    @classmethod
    async def connect(
        cls,
        address: Address,
        name: str,
        lease: tuple[int, int] | None = None,
        *,
        identity: str | None = KEPT,
        instance: str | None = KEPT,
        host: str = "test",
        **offer: Any,
    ) -> tuple[FakeRunner, protocol.Registered]:
        """``offer``: the register's labels, facts and exclusive, when given."""
        kept_identity, kept_instance = _KEPT.get(
            (address.port, name), (None, secrets.token_hex(16))
        )
        identity = kept_identity if identity is KEPT else identity
        instance = kept_instance if instance is KEPT else instance
        channel = await client.connect(address, "runner", timeout=WAIT)
        runner = cls(name, channel)
        build_id, attempt = lease if lease is not None else (None, None)
        await channel.send(
            protocol.Register(name=name, host=host, pid=os.getpid(), build_id=build_id,
                              attempt=attempt, identity=identity, instance=instance, **offer)
        )  # fmt: skip
        registered = await runner.expect(protocol.Registered)
        runner.identity = registered.identity or identity
        _KEPT[(address.port, name)] = (runner.identity, instance or secrets.token_hex(16))
        return runner, registered

    async def send(self, message: protocol.Message) -> None:
        await self.channel.send(message)

    async def expect(self, kind: type[M], timeout: float = WAIT) -> M:
        """The next frame of this kind (earlier frames of other kinds stay in the inbox)."""
        for i, message in enumerate(self.inbox):
            if isinstance(message, kind):
                del self.inbox[i]
                return message
        async with asyncio.timeout(timeout):
            while True:
                message = await self.channel.receive()
                if isinstance(message, kind):
                    return message
                self.inbox.append(message)

    async def output(self, build: protocol.Build, offset: int, data: bytes) -> None:
        await self.send(
            protocol.Output(
                build_id=build.build_id,
                attempt=build.attempt,
                offset=offset,
                data=base64.b64encode(data).decode("ascii"),
            )
        )

    async def result(
        self,
        build: protocol.Build,
        status: str = "passed",
        *,
        attempt: int | None = None,
        build_id: int | None = None,
        output_bytes: int = 0,
        **fields: Any,
    ) -> protocol.ResultAck:
        """Report a result (by default for ``build``'s lease) and return the dispatcher's ack."""
        fields.setdefault("exit_code", 0 if status == "passed" else 1)
        await self.send(
            protocol.Result(
                build_id=build.build_id if build_id is None else build_id,
                attempt=build.attempt if attempt is None else attempt,
                status=status,
                duration=0.25,
                output_bytes=output_bytes,
                **fields,
            )
        )
        return await self.expect(protocol.ResultAck)

    async def round_trip(self) -> None:
        """Make sure everything sent so far was handled: any runner frame counts as a sign
        of life, and a result (here for a build that does not exist) always gets an ack."""
        ack = await self.result(
            protocol.Build(build_id=10**9, attempt=1, sha="0" * 40, branch="main")
        )
        assert not ack.accepted

    async def closed_by_peer(self, timeout: float = WAIT) -> list[protocol.Message]:
        """Read until the dispatcher closes the connection; returns what came (an error
        frame as a :class:`protocol.Error`)."""
        frames: list[protocol.Message] = list(self.inbox)
        self.inbox.clear()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    frames.append(await self.channel.receive())
                except RemoteError as e:
                    frames.append(protocol.Error(code=e.code, message=str(e)))
                except ConnectionClosed:
                    return frames

    async def close(self) -> None:
        await self.channel.close()


# --- raw connections ------------------------------------------------------------------


async def exchange_raw(address: Address, data: bytes, timeout: float = WAIT) -> list[Any]:
    """Send raw bytes and collect every frame until the dispatcher closes."""
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(data)
        await writer.drain()
        return await frames_until_closed(reader, timeout)
    finally:
        writer.close()


async def _read(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read(65536)
    except ConnectionError:
        return b""


async def frames_until_closed(reader: asyncio.StreamReader, timeout: float = WAIT) -> list[Any]:
    decoder = protocol.Decoder()
    frames: list[Any] = []
    async with asyncio.timeout(timeout):
        while data := await _read(reader):
            decoder.feed(data)
            while (message := decoder.next_message()) is not protocol.NEED_DATA:
                frames.append(message)
    return frames


def frame(body: dict[str, Any] | bytes) -> bytes:
    """One frame of arbitrary content, valid or not."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return protocol.HEADER.pack(len(payload)) + payload


HELLO_CLIENT = protocol.encode(protocol.Hello(version=protocol.PROTOCOL_VERSION, role="client"))
HELLO_RUNNER = protocol.encode(protocol.Hello(version=protocol.PROTOCOL_VERSION, role="runner"))
