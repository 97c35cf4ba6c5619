"""Strangers cannot starve anyone: floods of silent sockets, running the dispatcher out of
file descriptors, slow and stopped log readers, endless ``logs --follow``, oversized
replies and terminal escapes, each against real processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import Repo, Superci
from helpers import HARNESS_SETTINGS, FakeRunner, Harness, async_test
from support import WAIT, eventually, rss_mib, slow_readers, wait_until

from superci import client, protocol
from superci.channel import Address, parse_address
from superci.up import format_outcome

pytestmark = pytest.mark.e2e

#: Silent sockets of the slowloris, each opened again as soon as the dispatcher closes it.
SLOWLORIS = 1000
#: Bound on a command getting in during the flood (seconds). The target is 2 s (see
#: scripts/bench.py, scenario "flood", for the measured figure); this bound includes the
#: start of a Python process and leaves room for a loaded 2-core machine, yet stays
#: below the 5 s in which silent sockets would time out and free their slots by themselves.
GET_IN = 4.5
#: A 20 MiB log, read by 100 slow readers at once.
LOG_MIB, READERS = 20, 100
#: The dispatcher's memory above idle while they read (MiB).
READERS_RSS_CEILING = 100
MIB = 1024 * 1024


def raise_file_limit(wanted: int) -> None:
    """The test process holds the flood's sockets (and the dispatcher inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard file descriptor limit ({hard}) is below {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Slowloris:
    """``count`` TCP connections that never say a word, each reopened when it is closed;
    run in a thread of its own so the test can start processes meanwhile."""

    def __init__(self, address: Address, count: int) -> None:
        self.address = address
        self.count = count
        self.opened = 0
        self.reopened = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def __enter__(self) -> Slowloris:
        self._thread.start()
        wait_until(lambda: self.opened >= self.count, 30, "the slowloris to open its sockets")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        tasks = [asyncio.create_task(self._hold()) for _ in range(self.count)]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _hold(self) -> None:
        first = True
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.address.host, self.address.port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            self.opened += first
            self.reopened += not first
            first = False
            try:
                while await reader.read(65536):
                    pass
            except OSError:
                pass
            finally:
                writer.close()


def timed(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "superci", *args], capture_output=True, text=True, timeout=60,
        cwd=cwd,
    )  # fmt: skip
    return time.monotonic() - start, done


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_slowloris_of_1000_silent_sockets_keeps_out_neither_notify_status_nor_a_runner(
    superci: Superci, repo: Repo, tmp_path: Path, tls: bool, request: pytest.FixtureRequest
):
    raise_file_limit(4 * SLOWLORIS)
    sha = repo.commit({"tests/test_ok.py": "import unittest\n"}, "first")
    server, client_args = [], []
    if tls:
        files = request.getfixturevalue("tls_files")
        server = ["--tls-cert", str(files["cert"]), "--tls-key", str(files["key"])]
        client_args = ["--tls-ca", str(files["ca"])]
    superci.dispatcher(0, *server)
    address = ["--dispatcher-server", superci.address, *client_args]
    clone = repo.clone(tmp_path / "runner-clone")
    with Slowloris(parse_address(superci.address), SLOWLORIS) as flood:
        took_notify, notified = timed(["notify", *address, sha], tmp_path)
        took_status, status = timed(["status", *address], tmp_path)
        start = time.monotonic()
        runner = superci.start(
            "runner", *address, "--name", "runner-a", str(clone), name="runner-a"
        )
        runner.wait_for_log("registered with the dispatcher", 30)
        took_runner = time.monotonic() - start
        reopened = flood.reopened
    print(f"during the flood ({reopened} reopened): notify {took_notify:.2f}s, "
          f"status {took_status:.2f}s, runner registered {took_runner:.2f}s")  # fmt: skip
    assert notified.returncode == 0 and "queued" in notified.stdout, notified.stderr
    assert status.returncode == 0 and "Queue (1)" in status.stdout, status.stderr
    assert reopened > 0, "the dispatcher never dropped a silent socket"
    assert max(took_notify, took_status, took_runner) < GET_IN
    assert superci.wait_for_result(sha)["status"] in ("passed", "error", "failed")


def test_running_the_dispatcher_out_of_file_descriptors_is_logged_once_a_second(
    superci: Superci, tmp_path: Path
):
    raise_file_limit(4 * SLOWLORIS)
    dispatcher = superci.dispatcher()
    pid = dispatcher.popen.pid
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    # Room for the database and a few connections, far less than the flood's sockets.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 48, hard))
    address = ["--dispatcher-server", superci.address]
    with Slowloris(parse_address(superci.address), SLOWLORIS):
        dispatcher.wait_for_log("cannot accept connections", 10)
        time.sleep(3)  # the flood goes on: a few seconds of a full descriptor table
    # The operator raises the limit, as the log line says: the queue of connections the
    # flood left behind is taken at once, and nothing was lost meanwhile.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))
    took, notified = timed(["notify", *address, "ab" * 20], tmp_path)
    assert notified.returncode == 0 and "queued" in notified.stdout, notified.stderr
    assert took < GET_IN
    lines = [line for line in dispatcher.log.splitlines() if "cannot accept" in line]
    print(f"{len(lines)} lines about running out of descriptors")
    assert lines and "Too many open files" in lines[0]
    stamps = [dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in lines]
    gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(gap >= 0.95 for gap in gaps), gaps
    assert "socket.accept() out of system resource" not in dispatcher.log


# --- log readers --------------------------------------------------------------------


def write_big_log(results: Path, sha: str, mib: int) -> bytes:
    """A log as a long build leaves it (written here: what matters is its size)."""
    folder = results / sha
    folder.mkdir(parents=True, exist_ok=True)
    line = b"x" * 1023 + b"\n"
    (folder / "output.log").write_bytes(line * 1024 * mib)
    return line


def test_100_slow_log_readers_keep_the_dispatcher_memory_bounded(superci: Superci, tmp_path):
    raise_file_limit(1024)
    dispatcher = superci.dispatcher()
    sha = "d" * 40
    assert superci.notify(sha).returncode == 0
    write_big_log(superci.results, sha, LOG_MIB)
    idle = rss_mib(dispatcher.popen.pid)
    address = parse_address(superci.address)
    peak, received = asyncio.run(
        slow_readers(address, sha, READERS, dispatcher.popen.pid, seconds=3.0)
    )
    print(f"{READERS} slow readers of a {LOG_MIB} MiB log: dispatcher RSS {idle:.0f} MiB idle, "
          f"peak {peak - idle:.1f} MiB above; {received / MIB:.0f} MiB read")  # fmt: skip
    assert received > READERS * protocol.DATA_CHUNK, "the readers did read"
    assert peak - idle < READERS_RSS_CEILING
    # A reader that reads it all gets every byte, in order.
    done = subprocess.run(
        [sys.executable, "-m", "superci", "logs", "--dispatcher-server", superci.address, sha],
        capture_output=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert (
        done.returncode == 0 and done.stdout == (superci.results / sha / "output.log").read_bytes()
    )


@async_test()
async def test_a_log_reader_that_stops_reading_is_dropped(tmp_path):
    sha = "e" * 40
    async with Harness(tmp_path, settings=replace(HARNESS_SETTINGS, send_timeout=0.5)) as h:
        assert h.address is not None and h.dispatcher is not None
        await h.submit(sha)
        write_big_log(h.results_dir, sha, 8)
        channel = await client.connect(h.address, "client", timeout=WAIT)
        await channel.send(protocol.LogRequest(commit=sha))
        # It never reads: the socket buffers fill, then the dispatcher gives up on it.
        await eventually(lambda: not h.dispatcher._connections, WAIT, "the reader to be dropped")
        await channel.close()


def test_logs_follow_of_a_queued_build_gets_keepalives_and_ends_after_the_idle_bound(
    superci: Superci, tmp_path: Path
):
    idle = 1.5
    superci.dispatcher(0, "--log-idle-timeout", str(idle))
    sha = "f" * 40
    assert superci.notify(sha).returncode == 0  # no runner: it stays queued

    async def follow() -> tuple[list[protocol.Message], float]:
        frames: list[protocol.Message] = []
        start = time.monotonic()
        async with client.connection(parse_address(superci.address)) as channel:
            await channel.send(protocol.LogRequest(commit=sha, follow=True))
            while not isinstance(frame := await channel.receive(WAIT), protocol.Reply):
                frames.append(frame)
            frames.append(frame)
        return frames, time.monotonic() - start

    frames, took = asyncio.run(follow())
    *keepalives, reply = frames
    assert len(keepalives) >= 2 and all(f == protocol.LogData(data="") for f in keepalives)
    assert isinstance(reply, protocol.Reply) and reply.status == "idle"
    assert idle <= took < idle + WAIT
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "superci", "logs", "--follow", "--dispatcher-server",
         superci.address, sha],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"is still queued but said nothing for {idle:g}s" in done.stderr
    assert "run the command again" in done.stderr
    assert time.monotonic() - start < idle + WAIT


# --- replies ------------------------------------------------------------------------


def test_a_status_of_1000_builds_with_long_branch_names_fits_in_one_frame(
    superci: Superci, tmp_path: Path
):
    superci.dispatcher()
    address = parse_address(superci.address)
    # Quotes are escaped twice on the way (in the document, then in the frame).
    branches = [f'{i:04d}/"quoted"-' + '"x' * 90 for i in range(1000)]
    shas = [f"{i:040x}" for i in range(1, 1001)]

    async def submit_all() -> None:
        async with client.connection(address) as channel:
            for sha, branch in zip(shas, branches, strict=True):
                await channel.send(protocol.Submit(sha=sha, branch=branch))
            for _ in shas:
                assert isinstance(await channel.receive(WAIT), protocol.Submitted)

    asyncio.run(submit_all())
    args = ["--dispatcher-server", superci.address, "--limit", "1000"]
    as_json = subprocess.run(
        [sys.executable, "-m", "superci", "status", "--json", *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["truncated"] is True and document["queued"] == 1000
    left_out = document["left_out"]
    assert left_out["builds"] > 0 and len(document["builds"]) + left_out["builds"] == 1000
    assert len(document["queue"]) + left_out.get("queue", 0) == 1000
    newest_first = [b["sha"] for b in document["builds"]]
    assert newest_first == shas[::-1][: len(newest_first)], "the oldest builds are left out"
    table = subprocess.run(
        [sys.executable, "-m", "superci", "status", *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "Queue (1000)" in table.stdout
    assert re.search(r"reply was too long; left out: \d+ builds", table.stderr)


# --- terminal escapes ---------------------------------------------------------------

ESCAPES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
HOSTILE_HOST = "evil\x1b]0;pwned\x07host\x1b[2J"
HOSTILE_TEST = "test_\x1b[8mhidden\x1b[0m_\x9b31mred"
HOSTILE_MESSAGE = "1 failed\x1b[1A\x1b[2K\rPASSED everything\x07"


def test_terminal_escapes_in_a_test_name_a_message_and_a_host_name_are_stripped_in_show_and_status(
    superci: Superci, tmp_path: Path
):
    superci.dispatcher()
    address = parse_address(superci.address)
    sha = "a1" * 20
    assert superci.notify(sha).returncode == 0

    async def hostile_runner() -> None:
        channel = await client.connect(address, "runner", timeout=WAIT)
        runner = FakeRunner("runner-x", channel)
        await channel.send(protocol.Register(name="runner-x", host=HOSTILE_HOST, pid=os.getpid()))
        await runner.expect(protocol.Registered)
        build = await runner.expect(protocol.Build)
        ack = await runner.result(
            build, "failed", message=HOSTILE_MESSAGE, failures=[HOSTILE_TEST],
            counts={"run": 1, "failed": 1},
        )  # fmt: skip
        assert ack.accepted
        status = subprocess.run(
            [sys.executable, "-m", "superci", "status", "--dispatcher-server", superci.address],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        await runner.close()
        return status

    status = asyncio.run(hostile_runner())
    show = subprocess.run(
        [sys.executable, "-m", "superci", "show", "--dispatcher-server", superci.address, sha],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert status.returncode == 0 and show.returncode == 0, status.stderr + show.stderr
    assert "evilhost" in status.stdout and "1 failed PASSED everything" in status.stdout
    assert "test_hidden_red" in show.stdout and "1 failed PASSED everything" in show.stdout
    assert not ESCAPES.search(status.stdout.replace("\n", "")), repr(status.stdout)
    assert not ESCAPES.search(show.stdout.replace("\n", "")), repr(show.stdout)
    # The JSON keeps the text as it was: a script gets the truth, escaped by JSON.
    as_json = subprocess.run(
        [sys.executable, "-m", "superci", "show", "--json", "--dispatcher-server",
         superci.address, sha],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(as_json.stdout)["failures"] == [HOSTILE_TEST]


def test_terminal_escapes_in_what_up_prints_are_stripped():
    line = format_outcome(
        {"status": "failed", "sha": "b" * 40, "branch": "main\x1b[31m", "duration": 1.0,
         "tests": {"run": 1, "failed": 1}, "runner": "r\x9b2J", "message": HOSTILE_MESSAGE}
    )  # fmt: skip
    assert not ESCAPES.search(line), repr(line)
    assert line.endswith("(main) in 1.0s [0 passed, 1 failed, 0 errors, 0 skipped] on r: "
                         "1 failed PASSED everything")  # fmt: skip


@pytest.fixture(autouse=True)
def _no_stray_tls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("SUPERCI_TLS", "SUPERCI_TLS_CA", "SUPERCI_TOKEN", "SUPERCI_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    yield
