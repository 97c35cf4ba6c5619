"""``superci watch``: the dispatcher's events live, through the real command line, against
a real dispatcher and runner; and a watcher that falls behind is told so and dropped."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import FAILING_TEST, PASSING_TEST, Process, Repo, Superci, wait_until
from helpers import HARNESS_SETTINGS, Harness, async_test, eventually

from superci import client, defaults, protocol
from superci.channel import Address, Channel
from superci.errors import DispatcherUnavailable, RemoteError
from superci.events import BuildQueued

SHA = "ab" * 20


def json_events(process: Process) -> list[dict[str, Any]]:
    """Every complete line the watcher printed, each parsed as JSON."""
    lines = process.log_path.read_text().splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]


def kinds_for(events: list[dict[str, Any]], sha: str) -> list[str]:
    return [e["event"] for e in events if e.get("sha") == sha]


def notify(superci: Superci, sha: str) -> None:
    done = superci.notify(sha, "--branch", "main")
    assert done.returncode == 0, done.stderr


def test_watch_prints_builds_and_runners_live_as_lines_and_as_json(
    repo: Repo, superci: Superci, tmp_path: Path
):
    passing = repo.commit({"tests/test_ok.py": PASSING_TEST}, "passing")
    failing = repo.commit({"tests/test_broken.py": FAILING_TEST}, "failing")
    dispatcher = superci.dispatcher()
    as_json = superci.start("watch", "--dispatcher-server", superci.address, "--json",
                            name="watch-json")  # fmt: skip
    human = superci.start("watch", "--dispatcher-server", superci.address, name="watch")
    wait_until(lambda: dispatcher.log.count("is watching the events") == 2, 30, "two watchers")

    runner = superci.runner(repo.clone(tmp_path / "runner-a"), "runner-a")
    as_json.wait_for_log(r'"event": "joined"')
    notify(superci, passing)
    as_json.wait_for_log(rf'"event": "finished", [^\n]*"sha": "{passing}"')
    notify(superci, failing)
    as_json.wait_for_log(rf'"event": "finished", [^\n]*"sha": "{failing}"')
    runner.stop()
    as_json.wait_for_log(r'"event": "left"')
    human.wait_for_log(r"runner runner-a left")

    events = json_events(as_json)  # every line is one JSON object
    for sha in (passing, failing):
        kinds = kinds_for(events, sha)
        assert kinds[:2] == ["queued", "started"] and kinds[-1] == "finished", kinds
        assert set(kinds[2:-1]) == {"output"}, kinds
        outputs = [e for e in events if e["event"] == "output" and e["sha"] == sha]
        log = superci.output(sha).encode()
        assert sum(e["length"] for e in outputs) == len(log)  # every byte, once, in order
        assert [e["offset"] for e in outputs][0] == 0
    finished = {e["sha"]: e for e in events if e["event"] == "finished"}
    assert finished[passing]["status"] == "passed" and finished[failing]["status"] == "failed"
    assert finished[failing]["tests"]["failed"] == 1
    assert all(superci.result(sha) is not None for sha in finished)
    pool = [(e["event"], e.get("build_id")) for e in events if e.get("runner") == "runner-a"
            and e["event"] in ("joined", "busy", "idle", "left")]  # fmt: skip
    first, second = finished[passing]["build_id"], finished[failing]["build_id"]
    assert pool == [("joined", None), ("busy", first), ("idle", None), ("busy", second),
                    ("idle", None), ("left", None)]  # fmt: skip

    lines = human.log
    for sha, build in ((passing, first), (failing, second)):
        head = f"build {build} {sha[:12]} (main)"
        assert f"{head} queued" in lines
        assert f"{head} started on runner-a, attempt 1" in lines
        assert f"{head} output: " in lines
    assert f"build {first} {passing[:12]} (main) passed on runner-a in " in lines
    assert f"build {second} {failing[:12]} (main) failed on runner-a in " in lines
    assert "runner runner-a joined from " in lines and "runner runner-a busy with build" in lines
    assert as_json.popen.poll() is None and human.popen.poll() is None  # still watching


@async_test()
async def test_a_watcher_that_falls_behind_gets_a_resync_and_the_cli_exits_2(tmp_path: Path):
    async with Harness(tmp_path) as h:
        assert h.dispatcher is not None and h.address is not None
        watcher = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "superci", "watch", "--json",
            "--dispatcher-server", str(h.address),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        bus = h.dispatcher.bus
        await eventually(lambda: len(bus) == 1, what="the watcher to subscribe")
        # More events in one turn of the loop than a watcher's queue holds: it cannot
        # have read any of them, whatever its speed.
        limit = defaults.EVENT_QUEUE_EVENTS  # the bound of each subscriber's queue
        for build_id in range(1, limit + 50):
            bus.publish(BuildQueued(build_id=build_id, sha=SHA, branch="main"))
        async with asyncio.timeout(30):
            out, err = await watcher.communicate()
        assert watcher.returncode == 2, err
        lines = [json.loads(line) for line in out.decode().splitlines()]
        assert [e["build_id"] for e in lines[:-1]] == list(range(1, limit + 1))
        assert lines[-1]["event"] == "resync"
        assert b"fell behind the dispatcher's events" in err
        assert len(bus) == 0  # dropped at once: nothing more is queued for it


@async_test()
async def test_a_watcher_is_told_each_event_once_stored_and_may_not_send_requests(
    tmp_path: Path,
):
    async with Harness(tmp_path) as h:
        assert h.dispatcher is not None and h.address is not None
        bus = h.dispatcher.bus
        got: list[dict[str, Any]] = []
        watching = asyncio.create_task(client.watch(h.address, got.append))
        await eventually(lambda: len(bus) == 1, what="the watcher")
        await h.submit(SHA)
        await eventually(lambda: got, what="the queued event")
        assert got[0]["event"] == "queued" and got[0]["sha"] == SHA
        assert h.db_build(got[0]["build_id"]) is not None  # stored before it was told
        watching.cancel()
        await eventually(lambda: len(bus) == 0, what="the watcher that left to be gone")

        async with client.connection(h.address) as channel:
            await channel.send(protocol.Watch())
            await eventually(lambda: len(bus) == 1, what="the second watcher")
            await channel.send(protocol.Query(what="status"))
            with pytest.raises(RemoteError, match="a watcher cannot send query"):
                await channel.receive(5)
        assert len(bus) == 0


@async_test()
async def test_a_quiet_dispatcher_sends_keepalives_that_the_watcher_never_shows(
    tmp_path: Path,
):
    settings = replace(HARNESS_SETTINGS, log_keepalive_interval=0.05)
    async with Harness(tmp_path, settings=settings) as h:
        assert h.address is not None
        async with client.connection(h.address) as channel:
            await channel.send(protocol.Watch())
            first = await channel.receive(5)  # nothing happened: a keep-alive
            assert isinstance(first, protocol.Event)
            assert json.loads(first.document) == {"event": "keepalive"}
        got: list[dict[str, Any]] = []
        watching = asyncio.create_task(client.watch(h.address, got.append))
        await asyncio.sleep(0.3)  # several keep-alive intervals, nothing to show
        assert got == [] and not watching.done()
        await h.submit(SHA)
        await eventually(lambda: got, what="the queued event")
        assert [e["event"] for e in got] == ["queued"]
        watching.cancel()


@async_test()
async def test_a_watcher_that_hears_nothing_for_several_keepalives_says_the_link_is_cut():
    silent = await asyncio.start_server(_welcome_then_nothing, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    async with silent:
        with pytest.raises(DispatcherUnavailable, match="no word from the dispatcher"):
            await client.watch(Address("127.0.0.1", port), lambda _: None, silence=0.2)


async def _welcome_then_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    """A dispatcher whose link is cut after the handshake: it answers, then never again."""
    channel = Channel(reader, writer)
    await channel.receive(5)  # the hello
    await channel.send(protocol.Welcome(version=protocol.PROTOCOL_VERSION, server="test"))
    await channel.receive(5)  # the watch request
    await asyncio.Event().wait()  # and silence, until the test ends
