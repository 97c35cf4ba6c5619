"""The dispatcher as a server: real TCP on 127.0.0.1, spoken to by raw sockets, clients and
fake runners that play the protocol by hand.

Heartbeat deadlines use a :class:`FakeClock`: a runner is "silent" exactly when the test
moves the clock past the timeout, and the watchdog looks every 10 ms.
"""

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from helpers import (
    FAST_WATCHDOG,
    HELLO_CLIENT,
    HELLO_RUNNER,
    FakeClock,
    FakeRunner,
    Harness,
    async_test,
    exchange_raw,
    frame,
    frames_until_closed,
)
from support import WAIT, eventually

from superci import protocol
from superci.errors import StorageError
from superci.results import RESULT_FILE

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"


def timestamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# --- submitting builds -------------------------------------------------------------------


@async_test()
async def test_submit_is_acknowledged_only_once_the_build_is_in_the_database(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        reply = await h.submit(SHA, "feature/login")

        row = h.db_build(reply.build_id)  # our own connection: what is on disk
        assert row is not None
        assert (row["sha"], row["branch"], row["status"]) == (SHA, "feature/login", "queued")
        assert (reply.sha, reply.queued, reply.status) == (SHA, True, "queued")


@async_test()
async def test_a_known_commit_is_not_queued_twice(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        first = await h.submit(SHA)
        again = await h.submit(SHA)
        rebuild_while_queued = await h.submit(SHA, rebuild=True)

        assert first.queued
        assert (again.build_id, again.queued) == (first.build_id, False)
        assert (rebuild_while_queued.build_id, rebuild_while_queued.queued) == (
            first.build_id,
            False,
        )
        assert h.db_build(first.build_id + 1) is None


@async_test()
async def test_rebuild_queues_a_commit_again_only_once_its_build_is_finished(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        first = await h.submit(SHA)
        build = await runner.expect(protocol.Build)

        while_running = await h.submit(SHA, rebuild=True)
        assert (while_running.build_id, while_running.queued) == (first.build_id, False)
        assert while_running.status == "running"

        assert (await runner.result(build, "failed")).accepted
        without_rebuild = await h.submit(SHA)
        assert (without_rebuild.queued, without_rebuild.status) == (False, "failed")

        rebuilt = await h.submit(SHA, rebuild=True)
        assert rebuilt.queued and rebuilt.build_id != first.build_id
        assert h.db_build(rebuilt.build_id)["status"] in ("queued", "running")
        second = await runner.expect(protocol.Build)
        assert (second.build_id, second.sha, second.attempt) == (rebuilt.build_id, SHA, 1)


# --- hostile input -----------------------------------------------------------------------

REGISTER = protocol.encode(protocol.Register(name="runner-1", host="h", pid=1))

HOSTILE = {
    "random-bytes": (b"\x7f" + random.Random(1).randbytes(63), "frame-too-large"),
    "huge-length-prefix": (b"\xff\xff\xff\xff{}", "frame-too-large"),
    "random-bytes-in-a-frame": (frame(random.Random(2).randbytes(40)), "bad-message"),
    "json-not-an-object": (frame([1, 2, 3]), "bad-message"),
    "unknown-type": (HELLO_CLIENT + frame({"type": "launch", "target": "moon"}), "unknown-type"),
    "message-before-hello": (
        protocol.encode(protocol.Submit(sha=SHA, branch="main")),
        "handshake",
    ),
    "wrong-protocol-version": (
        frame({"type": "hello", "version": 99, "role": "client"}),
        "version",
    ),
    "client-sends-a-runner-message": (
        HELLO_CLIENT + protocol.encode(protocol.Heartbeat()),
        "unexpected",
    ),
    "runner-sends-a-client-message": (
        HELLO_RUNNER + REGISTER + protocol.encode(protocol.Submit(sha=SHA, branch="main")),
        "unexpected",
    ),
    "runner-does-not-register-first": (
        HELLO_RUNNER + protocol.encode(protocol.Heartbeat()),
        "handshake",
    ),
    "sha-that-is-a-path": (
        HELLO_CLIENT + frame({"type": "submit", "sha": "../" * 13 + "x", "branch": "main"}),
        "bad-message",
    ),
}


@pytest.mark.parametrize("data, code", HOSTILE.values(), ids=HOSTILE.keys())
@async_test()
async def test_hostile_input_gets_an_error_frame_and_a_closed_connection(tmp_path, data, code):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        frames = await exchange_raw(h.address, data)

        assert frames, "the connection was closed without an error frame"
        error = frames[-1]
        assert isinstance(error, protocol.Error), frames
        assert error.code == code, error
        assert all(f.type in ("welcome", "registered") for f in frames[:-1]), frames
        assert (await h.submit(SHA)).queued, "the dispatcher must still serve"


@async_test()
async def test_a_truncated_frame_then_close_leaves_the_dispatcher_serving(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        reader, writer = await asyncio.open_connection(h.address.host, h.address.port)
        writer.write(HELLO_CLIENT + protocol.HEADER.pack(100) + b'{"type": "sub')
        writer.write_eof()  # the peer stops sending halfway through a frame
        frames = await frames_until_closed(reader)
        writer.close()

        assert [f.type for f in frames] in (["welcome"], ["welcome", "error"])
        assert (await h.submit(SHA)).queued


@pytest.mark.parametrize(
    "opening",
    [b"", HELLO_CLIENT[:7], HELLO_RUNNER],
    ids=["silent", "half-a-hello", "runner-never-registers"],
)
@async_test()
async def test_a_connection_that_never_completes_the_handshake_is_closed(tmp_path, opening):
    async with Harness(tmp_path, settings=replace(FAST_WATCHDOG, handshake_timeout=0.2)) as h:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(h.address.host, h.address.port)
        writer.write(opening)  # ... and nothing more, without closing
        frames = await frames_until_closed(reader)
        elapsed = time.monotonic() - started
        writer.close()

        assert isinstance(frames[-1], protocol.Error) and frames[-1].code == "timeout", frames
        assert 0.2 <= elapsed < WAIT
        assert (await h.submit(SHA)).queued


@pytest.mark.parametrize("holds_the_build", [True, False], ids=["own-build", "other-build"])
@pytest.mark.parametrize("data", ["no*base64*here", "éé=="], ids=["bad-alphabet", "not-ascii"])
@async_test()
async def test_malformed_output_gets_an_error_frame_and_a_closed_connection(
    tmp_path, data, holds_the_build
):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        submitted = await h.submit(SHA)
        build = await runner.expect(protocol.Build)
        build_id = build.build_id if holds_the_build else build.build_id + 100

        await runner.send(protocol.Output(build_id=build_id, attempt=1, offset=0, data=data))
        frames = await runner.closed_by_peer()

        assert [(f.type, getattr(f, "code", None)) for f in frames] == [("error", "bad-message")]
        assert h.output_log(SHA) == b""
        # The runner's connection is gone, so is its lease; the build waits for another.
        assert h.db_build(submitted.build_id)["status"] == "queued"
        assert (await h.submit(OTHER_SHA)).queued


# --- a build's output and result ---------------------------------------------------------


@async_test()
async def test_a_finished_builds_counts_are_logged_stored_and_in_the_status(tmp_path, caplog):
    counts = {"run": 7, "passed": 3, "failed": 1, "errors": 2, "skipped": 1}
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        submitted = await h.submit(SHA)
        build = await runner.expect(protocol.Build)
        with caplog.at_level(logging.INFO, logger="superci.dispatcher"):
            ack = await runner.result(
                build, "failed", exit_code=1, message="tests failed (exit code 1)", counts=counts
            )
        assert ack.accepted
        assert h.dispatcher is not None and h.store is not None
        status = h.dispatcher.query(protocol.Query(what="status", limit=5))
        [shown] = json.loads(status.document or "{}")["builds"]

    assert (
        f"build {submitted.build_id} of {SHA[:12]}: failed (3 passed, 1 failed, 2 errors,"
        " 1 skipped): tests failed (exit code 1)"
    ) in caplog.messages
    assert json.loads(h.db_build(submitted.build_id)["tests"]) == counts
    assert shown["tests"] == counts


@async_test()
async def test_output_and_result_of_a_build_end_up_in_test_results(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        runner, registered = await FakeRunner.connect(h.address, "runner-1")
        assert registered.output_offset is None
        before = time.time()
        submitted = await h.submit(SHA, "feature/x")
        build = await runner.expect(protocol.Build)
        assert (build.build_id, build.attempt, build.sha, build.branch) == (
            submitted.build_id,
            1,
            SHA,
            "feature/x",
        )

        log = b"superci: building\nline two\n\xff\xfe not UTF-8 \x00\nline four\n"
        await runner.output(build, 0, log[:10])
        await runner.round_trip()
        assert h.output_log(SHA) == log[:10], "the log grows while the build runs"
        await runner.output(build, 10, log[10:25])
        await runner.output(build, 5, log[5:30])  # a resend overlapping what is there
        await runner.output(build, 0, log[:12])  # wholly old: adds nothing
        await runner.output(build, 30, log[30:])
        ack = await runner.result(
            build,
            "failed",
            exit_code=1,
            output_bytes=len(log),
            message="tests failed (exit code 1)",
            counts={"run": 3, "passed": 2, "failed": 1, "errors": 0, "skipped": 0},
            failures=["tests.test_app.AppTest.test_login"],
        )
        after = time.time()

        assert (ack.build_id, ack.attempt, ack.accepted, ack.retry) == (
            build.build_id,
            1,
            True,
            False,
        )
        assert h.output_log(SHA) == log
        document = h.result_json(SHA)
        assert document == h.results.documents[0]
        assert document["status"] == "failed"
        assert document["attempt"] == 1
        assert document["runner"] == "runner-1"
        assert document["runners"] == ["runner-1"]
        assert document["exit_code"] == 1
        assert document["build_id"] == build.build_id
        assert (document["sha"], document["branch"]) == (SHA, "feature/x")
        assert document["message"] == "tests failed (exit code 1)"
        assert document["tests"] == {"run": 3, "passed": 2, "failed": 1, "errors": 0, "skipped": 0}
        assert document["failures"] == ["tests.test_app.AppTest.test_login"]
        assert document["duration"] == 0.25
        queued, started, finished = (
            timestamp(document[k]) for k in ("queued_at", "started_at", "finished_at")
        )
        assert before - 0.01 <= queued <= started <= finished <= after + 0.01
        row = h.db_build(build.build_id)
        assert (row["status"], row["attempt"], row["runner"]) == ("failed", 1, "runner-1")
        assert row["finished_at"] is not None


@async_test()
async def test_a_runner_gets_the_ack_of_its_result_before_its_next_build(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        await h.submit(SHA)
        await h.submit(OTHER_SHA)
        build = await runner.expect(protocol.Build)

        await runner.send(
            protocol.Result(
                build_id=build.build_id, attempt=1, status="passed", duration=1.0, output_bytes=0
            )
        )
        first, second = await runner.channel.receive(), await runner.channel.receive()

        # A runner holds a build until its result is acknowledged; a build arriving
        # before the ack would find it busy.
        assert (first.type, second.type) == ("result_ack", "build")
        assert first.accepted and second.sha == OTHER_SHA


@async_test()
async def test_a_forged_result_is_refused_and_writes_nothing(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        holder, _ = await FakeRunner.connect(h.address, "holder")
        submitted = await h.submit(SHA)
        build = await holder.expect(protocol.Build)
        forger, _ = await FakeRunner.connect(h.address, "forger")

        not_its_build = await forger.result(build)
        unknown_build = await forger.result(build, build_id=build.build_id + 1)
        wrong_attempt = await holder.result(build, attempt=2)

        assert (not_its_build.accepted, not_its_build.retry) == (False, False)
        assert "not leased to this connection" in not_its_build.reason
        assert not unknown_build.accepted and "not running" in unknown_build.reason
        assert not wrong_attempt.accepted and "stale" in wrong_attempt.reason
        assert h.result_files(SHA) == []
        assert h.results.documents == []
        assert h.db_build(submitted.build_id)["status"] == "running"

        assert (await holder.result(build, "passed")).accepted
        resent = await holder.result(build, "failed")
        assert not resent.accepted
        assert [d["status"] for d in h.results.documents] == ["passed"]
        assert h.result_json(SHA)["status"] == "passed"
        assert h.result_files(SHA) == [RESULT_FILE]


@async_test()
async def test_a_result_of_a_replaced_session_is_refused(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        old, _ = await FakeRunner.connect(h.address, "runner-1")
        await h.submit(SHA)
        first = await old.expect(protocol.Build)

        # The same runner comes back on a new connection without claiming its build.
        new, registered = await FakeRunner.connect(h.address, "runner-1")
        assert registered.output_offset is None
        second = await new.expect(protocol.Build)
        closed = await old.closed_by_peer()

        assert (second.build_id, second.attempt) == (first.build_id, 2)
        assert [(f.type, f.code) for f in closed] == [("error", "closed")]
        assert "replaced" in closed[0].message
        stale = await new.result(first)  # attempt 1: the lease the old session held
        assert not stale.accepted and "stale" in stale.reason
        assert h.results.documents == []

        assert (await new.result(second)).accepted
        assert not (await new.result(second)).accepted
        assert len(h.results.documents) == 1
        document = h.result_json(SHA)
        assert (document["attempt"], document["runners"]) == (2, ["runner-1", "runner-1"])
        assert h.result_files(SHA) == [RESULT_FILE]


# --- lost runners ------------------------------------------------------------------------


@async_test()
async def test_the_build_of_a_silent_runner_goes_to_another_runner(tmp_path):
    clock = FakeClock()
    async with Harness(tmp_path, settings=FAST_WATCHDOG, heartbeat_timeout=1.0, clock=clock) as h:
        silent, _ = await FakeRunner.connect(h.address, "silent")
        submitted = await h.submit(SHA)
        first = await silent.expect(protocol.Build)
        await silent.output(first, 0, b"attempt 1 output\n")
        await silent.round_trip()
        other, _ = await FakeRunner.connect(h.address, "other")

        clock.advance(0.9)
        await other.round_trip()  # "other" speaks at +0.9 s; "silent" last spoke at 0
        assert h.db_build(submitted.build_id)["attempt"] == 1
        clock.advance(0.6)  # "silent" is quiet for 1.5 s > 1 s; "other" for 0.6 s

        second = await other.expect(protocol.Build)
        assert (second.build_id, second.attempt, second.sha) == (first.build_id, 2, SHA)
        closed = await silent.closed_by_peer()
        assert [(f.type, f.code) for f in closed] == [("error", "closed")]
        assert "no heartbeat" in closed[0].message
        assert h.output_log(SHA) == b"", "attempt 2 starts a fresh log"

        # The silent runner was only slow: it comes back claiming its lease, with its result.
        late, registered = await FakeRunner.connect(h.address, "silent", lease=(first.build_id, 1))
        assert registered.output_offset is None
        cancel = await late.expect(protocol.Cancel)
        assert (cancel.build_id, cancel.attempt) == (first.build_id, 1)
        refused = await late.result(first)
        assert not refused.accepted and "stale" in refused.reason
        assert h.result_json(SHA) is None

        assert (await other.result(second)).accepted
        document = h.result_json(SHA)
        assert (document["attempt"], document["runner"]) == (2, "other")
        assert document["runners"] == ["silent", "other"]
        assert len(h.results.documents) == 1


@async_test()
async def test_a_build_whose_runners_are_all_lost_ends_as_an_error_naming_them(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG, max_attempts=2) as h:
        first_runner, _ = await FakeRunner.connect(h.address, "runner-a")
        submitted = await h.submit(SHA)
        await first_runner.expect(protocol.Build)
        second_runner, _ = await FakeRunner.connect(h.address, "runner-b")

        await first_runner.close()
        second = await second_runner.expect(protocol.Build)
        assert second.attempt == 2
        await second_runner.close()
        document = await h.results.wait(SHA)

        assert document["status"] == "error"
        assert "runner lost" in document["message"]
        assert "runner-a" in document["message"] and "runner-b" in document["message"]
        assert (document["attempt"], document["runners"]) == (2, ["runner-a", "runner-b"])
        assert h.result_json(SHA) == document
        row = h.db_build(submitted.build_id)
        assert (row["status"], row["message"]) == ("error", document["message"])


# --- a restarted dispatcher --------------------------------------------------------------


@async_test()
async def test_a_restarted_dispatcher_dispatches_the_builds_it_had_queued(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        first = await h.submit(SHA)
        second = await h.submit(OTHER_SHA)
        await h.restart()

        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        build = await runner.expect(protocol.Build)
        assert (build.build_id, build.sha, build.attempt) == (first.build_id, SHA, 1)
        assert (await runner.result(build)).accepted
        build = await runner.expect(protocol.Build)
        assert (build.build_id, build.sha, build.attempt) == (second.build_id, OTHER_SHA, 1)
        again = await h.submit(OTHER_SHA)
        assert (again.build_id, again.queued) == (second.build_id, False)


async def _stop_while_running(h: Harness, runner: FakeRunner) -> None:
    """Stop the dispatcher as its process would end, and let the runner notice."""
    await h.dispatcher.close()
    await runner.closed_by_peer()  # meanwhile the old server's connections wind down
    await h.stop()


@async_test()
async def test_a_restarted_dispatcher_adopts_a_running_build_when_its_runner_claims_it(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        submitted = await h.submit(SHA)
        build = await runner.expect(protocol.Build)
        log = b"first line\nsecond line\nthird line\n"
        await runner.output(build, 0, log[:15])
        await runner.round_trip()

        await _stop_while_running(h, runner)
        assert h.db_build(submitted.build_id)["status"] == "running"
        await h.start(h.address.port)
        back, registered = await FakeRunner.connect(
            h.address, "runner-1", lease=(build.build_id, 1)
        )

        assert registered.output_offset == 15
        await back.output(build, 11, log[11:])  # from a little before the offset it was told
        ack = await back.result(build, output_bytes=len(log))
        assert ack.accepted
        document = h.result_json(SHA)
        assert (document["status"], document["attempt"], document["runner"]) == (
            "passed",
            1,
            "runner-1",
        )
        assert h.output_log(SHA) == log


@async_test()
async def test_a_restarted_dispatcher_requeues_a_running_build_nobody_claims(tmp_path):
    clock = FakeClock()
    async with Harness(tmp_path, settings=FAST_WATCHDOG, heartbeat_timeout=1.0, clock=clock) as h:
        gone, _ = await FakeRunner.connect(h.address, "gone")
        submitted = await h.submit(SHA)
        first = await gone.expect(protocol.Build)
        await gone.output(first, 0, b"attempt 1\n")
        await gone.round_trip()
        await _stop_while_running(h, gone)
        await h.start(h.address.port)

        clock.advance(0.9)
        other, _ = await FakeRunner.connect(h.address, "other")  # idle: nothing is queued
        assert h.db_build(submitted.build_id)["status"] == "running"
        clock.advance(0.6)  # "gone" has not claimed its build for 1.5 s > 1 s

        second = await other.expect(protocol.Build)
        assert (second.build_id, second.attempt) == (first.build_id, 2)
        row = h.db_build(submitted.build_id)
        assert (row["status"], row["attempt"], row["runner"]) == ("running", 2, "other")
        assert json.loads(row["runners"]) == ["gone", "other"]
        assert "lost with runner gone" in row["message"]

        late, registered = await FakeRunner.connect(h.address, "gone", lease=(first.build_id, 1))
        assert registered.output_offset is None
        assert (await late.expect(protocol.Cancel)).build_id == first.build_id
        assert (await other.result(second)).accepted
        assert h.result_json(SHA)["attempt"] == 2


# --- a result that cannot be written -----------------------------------------------------


def make_unwritable(folder: Path):
    """Make writing into ``folder`` fail; returns the function that undoes it.

    chmod where permission bits apply; as root they do not, so a file takes the
    folder's place instead (the folder is kept aside and put back by the undo).
    """
    folder.chmod(0o555)
    probe = folder / ".probe"
    try:
        probe.touch()
    except PermissionError:
        return lambda: folder.chmod(0o755)
    probe.unlink()
    folder.chmod(0o755)
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    folder.write_text("a file where the results of this commit should go\n")

    def undo() -> None:
        folder.unlink()
        aside.rename(folder)

    return undo


@async_test()
async def test_a_result_that_cannot_be_written_is_retried_and_recorded_once(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        submitted = await h.submit(SHA)
        build = await runner.expect(protocol.Build)
        await runner.output(build, 0, b"all output\n")

        undo = make_unwritable(h.folder(SHA))
        try:
            failed = await runner.result(build, output_bytes=11)
        finally:
            undo()

        assert (failed.accepted, failed.retry) == (False, True)
        assert "cannot write the result" in failed.reason
        assert h.db_build(submitted.build_id)["status"] == "running"
        assert h.results.documents == []
        assert h.result_json(SHA) is None

        assert (await runner.result(build, output_bytes=11)).accepted
        again = await runner.result(build, output_bytes=11)
        assert (again.accepted, again.retry) == (False, False)
        assert len(h.results.documents) == 1
        assert h.result_json(SHA)["status"] == "passed"
        assert h.db_build(submitted.build_id)["status"] == "passed"
        assert h.result_files(SHA) == [RESULT_FILE]
        assert h.output_log(SHA) == b"all output\n"


# --- runners that leave on purpose -------------------------------------------------------


@async_test()
async def test_a_runner_that_leaves_mid_build_gives_it_back_without_using_an_attempt(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG, max_attempts=1) as h:
        submitted = await h.submit(SHA)
        for name in ("first", "second", "third"):  # more departures than max_attempts
            runner, _ = await FakeRunner.connect(h.address, name)
            build = await runner.expect(protocol.Build)
            await runner.send(protocol.Leaving(reason="runner stopped"))
            frames = await runner.closed_by_peer()  # the dispatcher took note and closed
            assert any(isinstance(f, protocol.Error) and "left" in f.message for f in frames)
            row = h.db_build(submitted.build_id)
            assert (row["status"], row["lost"]) == ("queued", 0)
            assert "given back" in row["message"] and name in row["message"]

        last, _ = await FakeRunner.connect(h.address, "last")
        build = await last.expect(protocol.Build)
        assert build.attempt == 4
        assert (await last.result(build)).accepted
        document = await h.results.wait(SHA)
        assert document["status"] == "passed"
        assert document["runners"] == ["first", "second", "third", "last"]


@async_test()
async def test_a_result_sent_just_before_leaving_is_recorded(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        runner, _ = await FakeRunner.connect(h.address, "runner")
        await h.submit(SHA)
        build = await runner.expect(protocol.Build)
        result = protocol.Result(
            build_id=build.build_id, attempt=build.attempt, status="passed",
            exit_code=0, duration=0.1, output_bytes=0,
        )  # fmt: skip
        await runner.send(result)
        await runner.send(protocol.Leaving(reason="runner stopped"))
        await runner.closed_by_peer()
        document = await h.results.wait(SHA)
        assert (document["status"], document["attempt"]) == ("passed", 1)
        assert len(h.results.documents) == 1


@async_test()
async def test_lost_runners_are_counted_across_a_dispatcher_restart(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG, max_attempts=2) as h:
        submitted = await h.submit(SHA)
        lost, _ = await FakeRunner.connect(h.address, "lost")
        await lost.expect(protocol.Build)
        await lost.close()  # lost: counted
        await eventually(lambda: h.db_build(submitted.build_id)["status"] == "queued")
        await h.restart()
        again, _ = await FakeRunner.connect(h.address, "again")
        await again.expect(protocol.Build)
        await again.close()  # the second loss reaches max_attempts
        document = await h.results.wait(SHA)
        assert document["status"] == "error"
        assert "runner lost on 2 attempts" in document["message"]


# --- the group commit ----------------------------------------------------------------------


def fail_commits(store, *outcomes: BaseException | None) -> list[BaseException | None]:
    """Make the store's next transactions end as ``outcomes`` say, in order: None commits,
    an exception is raised inside the transaction (rolled back for real). Returns what is
    left to happen, so a test can see every outcome was used."""
    real = store.transaction
    left = list(outcomes)

    @contextlib.contextmanager
    def transaction():
        with real():
            yield
            if left and (error := left.pop(0)) is not None:
                raise error

    store.transaction = transaction
    return left


@pytest.mark.parametrize(
    "failure",
    [StorageError("database or disk is full (injected)"), RuntimeError("a bug (injected)")],
    ids=["storage-error", "unexpected-error"],
)
@async_test()
async def test_a_build_goes_out_only_once_the_commit_that_leased_it_succeeded(tmp_path, failure):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        await h.submit(SHA)
        runner, _ = await FakeRunner.connect(h.address, "r1")
        first = await runner.expect(protocol.Build)
        second_id = (await h.submit(OTHER_SHA)).build_id
        left = fail_commits(h.store, None, failure)  # the results commit, then the hand-out

        ack = await runner.result(first)

        assert ack.accepted and left == []
        assert h.result_json(SHA)["status"] == "passed"
        await eventually(lambda: h.db_build(second_id)["status"] == "running", WAIT,
                         "the build to be handed out again on a later tick")  # fmt: skip
        await runner.round_trip()  # everything the dispatcher sent so far has arrived
        sent = [m for m in runner.inbox if isinstance(m, protocol.Build)]
        assert [(b.build_id, b.attempt, b.sha) for b in sent] == [(second_id, 1, OTHER_SHA)]
        assert h.db_build(second_id)["attempt"] == 1  # given back, not counted


@async_test()
async def test_what_a_rolled_back_hand_out_did_is_never_published(tmp_path):
    async with Harness(tmp_path) as h:
        await h.submit(SHA)
        runner, _ = await FakeRunner.connect(h.address, "r1")
        first = await runner.expect(protocol.Build)
        second_id = (await h.submit(OTHER_SHA)).build_id
        watcher = h.dispatcher.bus.subscribe()
        left = fail_commits(h.store, None, StorageError("disk full (injected)"))

        await runner.result(first)
        await eventually(lambda: h.db_build(second_id)["status"] == "running", WAIT,
                         "the build to be handed out again on a later tick")  # fmt: skip

        assert left == []
        seen = []
        while (event := watcher.take()) is not None:
            seen.append(event.to_dict())
        started = [e for e in seen if e["event"] == "started"]
        assert [(e["build_id"], e["attempt"]) for e in started] == [(second_id, 1)]  # once
        pool = [(e["event"], e.get("build_id")) for e in seen if e.get("runner") == "r1"
                and e["event"] in ("busy", "idle")]  # fmt: skip
        assert pool == [("idle", None), ("busy", second_id)]
        kinds = [e["event"] for e in seen]
        assert kinds.index("finished") < kinds.index("started")


@async_test()
async def test_a_requeue_written_in_a_hand_out_that_rolled_back_is_written_again(
    tmp_path, monkeypatch
):
    """Build A's requeue could not be written when its runner was lost; it is written in
    the transaction that hands A out again, and that transaction rolls back: the requeue
    must still be due, not lost with the rollback (else A's lost runner is never counted)."""
    async with Harness(tmp_path) as h:
        assert h.store is not None
        build_a = (await h.submit(SHA)).build_id
        lost, _ = await FakeRunner.connect(h.address, "lost")
        await lost.expect(protocol.Build)
        await h.submit(OTHER_SHA)
        other, _ = await FakeRunner.connect(h.address, "other")
        build_b = await other.expect(protocol.Build)

        real = type(h.store).mark_queued
        store = h.store

        def only_in_a_transaction(self, *args, **kwargs):
            if not store._in_transaction:  # the watchdog's own retries keep failing
                raise StorageError("database is locked (injected)")
            return real(self, *args, **kwargs)

        monkeypatch.setattr(type(h.store), "mark_queued", only_in_a_transaction)
        await lost.close()  # lost: its requeue cannot be written now
        await eventually(lambda: h.dispatcher.scheduler.queued(), WAIT, "A to wait again")
        left = fail_commits(h.store, None, StorageError("disk full (injected)"))

        assert (await other.result(build_b)).accepted  # A is handed out, then rolled back
        assert left == []
        monkeypatch.setattr(type(h.store), "mark_queued", real)
        again = await other.expect(protocol.Build)  # sent only once its lease is stored
        assert again.build_id == build_a
        row = h.db_build(build_a)
        assert (row["status"], row["runner"]) == ("running", "other")
        assert row["lost"] == 1 and "lost with runner lost" in row["message"]
