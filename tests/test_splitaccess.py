"""Who may connect to a split's sockets: the runner and its build user; anyone else is
refused before a word of theirs reaches the split (real sockets, real uids)."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from helpers import async_test
from support import WAIT, eventually

from superci import protocol, splitaccess
from superci.split import Split
from superci.splitaccess import SocketAccess, admitted, peer_uid
from superci.splitsource import BatchSource, LocalSplit
from superci.splittunnel import SeatTunnel, SplitLink

#: Uids of no one's processes but this test's children: the build user, and a stranger.
BUILD_UID, STRANGER_UID = 64999, 64998

as_root = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="processes of other uids need Linux and root (CI runs as root)",
)


@pytest.mark.parametrize(
    ("peer", "shared", "admits"),
    [(1000, True, True), (2000, True, True), (3000, True, False), (0, True, False),
     (None, True, False), (1000, False, True), (2000, False, True), (None, False, True)],
)  # fmt: skip
def test_only_the_runner_and_its_build_user_are_admitted(peer, shared, admits):
    assert admitted(peer, frozenset({1000, 2000}), shared) is admits


def test_without_a_build_user_only_the_runner_is_admitted_and_its_folder_stays_private():
    access = SocketAccess()
    assert access.uids == {os.geteuid()} and not access.shared
    folder = access.folder()
    try:
        assert folder.stat().st_mode & 0o777 == 0o700
    finally:
        folder.rmdir()


def test_with_a_build_user_the_folder_may_be_entered_not_listed_and_its_sockets_unguessable():
    access = SocketAccess(build_uid=BUILD_UID)
    assert access.uids == {os.geteuid(), BUILD_UID} and access.shared
    folder = access.folder()
    try:
        assert folder.stat().st_mode & 0o777 == 0o711
        sockets = [access.socket_in(folder), access.socket_in(folder)]
        assert all(p.parent == folder and len(p.name) == len("batches-.sock") + 16 for p in sockets)
        assert sockets[0] != sockets[1]  # made by secrets
        assert len(str(sockets[0])) < 100  # a unix socket's path has at most 107 bytes
    finally:
        folder.rmdir()


@async_test()
async def test_a_socket_refuses_connections_beyond_what_a_split_needs(tmp_path, caplog):
    path = SocketAccess().socket_in(tmp_path)
    source = BatchSource(path, LocalSplit(Split(["t"], {}, 1)))
    opened: list[asyncio.StreamWriter] = []
    async with source:
        for _ in range(splitaccess.MAX_CONNECTIONS):
            _, writer = await asyncio.open_unix_connection(path)
            opened.append(writer)
        await eventually(lambda: len(source._connections) == splitaccess.MAX_CONNECTIONS)
        reader, writer = await asyncio.open_unix_connection(path)
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # cut at once
        writer.close()
        for one in opened:
            one.close()
    assert "more than a split needs" in caplog.text


def test_the_peer_of_a_connection_is_the_uid_of_the_process_at_its_other_end():
    if not hasattr(socket, "SO_PEERCRED"):
        pytest.skip("NOT TESTED: this system has no SO_PEERCRED")
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_uid(left) == os.geteuid()
    assert peer_uid(None) is None


def test_a_peer_the_system_cannot_name_is_refused_when_the_socket_is_shared(monkeypatch):
    monkeypatch.delattr(splitaccess.socket, "SO_PEERCRED", raising=False)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_uid(left) is None
    assert not admitted(None, SocketAccess(BUILD_UID).uids, shared=True)


# --- processes of other uids, on real sockets -----------------------------------------

HELLO = json.dumps({"type": "hello", "participant": "p.1"}).encode() + b"\n"
BYE = json.dumps({"type": "bye"}).encode() + b"\n"


def _hello_as(uid: int, path: str, answers: Connection) -> None:
    """In a child of its own, as ``uid``: say hello at ``path`` and hand back the answer
    (b"" when the connection is cut), then bye."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    answer = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(WAIT)
            sock.connect(path)
            sock.sendall(HELLO)
            with sock.makefile("rb") as lines:
                answer = lines.readline()
            if answer:
                sock.sendall(BYE)
    except OSError as e:
        answer = f"error: {e}".encode() if not isinstance(e, ConnectionError) else b""
    answers.send(answer)


def hello_as(uid: int, path: Path) -> bytes:
    """What a process of ``uid`` that says hello at ``path`` is answered (blocks)."""
    context = multiprocessing.get_context("fork")
    answers, child_end = context.Pipe(duplex=False)
    child = context.Process(target=_hello_as, args=(uid, str(path), child_end))
    child.start()
    try:
        if not answers.poll(WAIT):
            raise AssertionError(f"no answer from the process of uid {uid}")
        answer: bytes = answers.recv()
        return answer
    finally:
        child.join(WAIT)
        if child.is_alive():
            child.kill()


class Joins(LocalSplit):
    """A split that notes who asked to join it."""

    def __init__(self, split: Split) -> None:
        super().__init__(split)
        self.joined: list[str] = []

    async def join(self, participant: str) -> bool:
        self.joined.append(participant)
        return await super().join(participant)


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    folder = SocketAccess(BUILD_UID).folder()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@as_root
@async_test()
async def test_a_process_of_another_uid_is_refused_by_the_batch_source_and_never_joins(
    shared_folder, caplog
):
    caplog.set_level(logging.WARNING, logger="superci.splitaccess")
    backend = Joins(Split(["a", "b"], {}, width=2))
    path = shared_folder / "batches.sock"
    async with BatchSource(path, backend, SocketAccess(BUILD_UID)):
        assert path.stat().st_mode & 0o777 == 0o666  # the check below is what keeps out

        assert await asyncio.to_thread(hello_as, STRANGER_UID, path) == b""
        assert backend.joined == []
        assert f"refused a connection from uid {STRANGER_UID}" in caplog.text

        welcome = await asyncio.to_thread(hello_as, BUILD_UID, path)
        assert json.loads(welcome) == {"type": "welcome"}
        assert backend.joined == ["p.1"]
    assert caplog.text.count("refused a connection") == 1  # the build user was not


@as_root
@async_test()
async def test_a_process_of_another_uid_is_refused_by_a_seat_tunnel_and_nothing_is_carried(
    shared_folder, caplog
):
    caplog.set_level(logging.WARNING, logger="superci.splitaccess")
    carried: asyncio.Queue[protocol.Message] = asyncio.Queue()  # what goes to the host

    async def send(message: protocol.Message) -> None:
        carried.put_nowait(message)

    build = protocol.Build(build_id=7, attempt=1, sha="0" * 40, branch="main", seat=1)
    link = SplitLink(build, send)
    path = shared_folder / "seat.sock"
    async with SeatTunnel(path, link, seat=1, access=SocketAccess(BUILD_UID)) as tunnel:
        link.seat = tunnel
        assert await asyncio.to_thread(hello_as, STRANGER_UID, path) == b""
        assert carried.empty()
        assert f"refused a connection from uid {STRANGER_UID}" in caplog.text

        admitted_hello = asyncio.ensure_future(asyncio.to_thread(hello_as, BUILD_UID, path))
        async with asyncio.timeout(WAIT):
            line = await carried.get()
        assert isinstance(line, protocol.SplitLine)
        assert json.loads(line.line) == json.loads(HELLO)
        link.receive(protocol.ForwardedReply(build_id=7, attempt=1, seat=1, conn=line.conn,
                                             line='{"type": "welcome"}'))  # fmt: skip
        assert json.loads(await admitted_hello) == {"type": "welcome"}
