"""The dispatcher's recovery branches, each driven: a watchdog tick that raises, a build
that cannot be started, output that cannot be stored. (The store's own rollback is in
test_store.py.) Real TCP, a fake runner, a FakeClock; the watchdog looks every 10 ms."""

import logging

from helpers import FAST_WATCHDOG, FakeClock, FakeRunner, Harness, async_test
from support import eventually

from superci import protocol
from superci.errors import StorageError
from superci.results import ResultsFolder

SHA = "0123456789abcdef0123456789abcdef01234567"


class BreakableClock(FakeClock):
    """A FakeClock that raises while ``broken``: whatever reads it then fails."""

    broken = False

    def __call__(self) -> float:
        if self.broken:
            raise RuntimeError("the clock broke")
        return self.now


@async_test()
async def test_the_watchdog_outlives_ticks_that_raise_and_still_finds_a_silent_runner(
    tmp_path, caplog
):
    clock = BreakableClock()
    async with Harness(tmp_path, settings=FAST_WATCHDOG, heartbeat_timeout=1.0, clock=clock) as h:
        silent, _ = await FakeRunner.connect(h.address, "silent")
        submitted = await h.submit(SHA)
        await silent.expect(protocol.Build)

        clock.broken = True  # only the watchdog reads the clock now: no one else speaks
        await eventually(
            lambda: caplog.text.count("internal error in the heartbeat and deadline checks") >= 3,
            what="three ticks that raised",
        )
        clock.broken = False
        clock.advance(1.5)  # "silent" is quiet past the timeout: the next tick must see it

        closed = await silent.closed_by_peer()
        assert [f.type for f in closed] == ["error"] and "no heartbeat" in closed[0].message
        row = h.db_build(submitted.build_id)
        assert (row["status"], row["runner"], row["lost"]) == ("queued", None, 1)


@async_test()
async def test_a_build_that_cannot_be_started_waits_uncounted_and_starts_once_it_can(
    tmp_path, caplog
):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        blocker = h.folder(SHA)
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("a file where the build's results folder should go\n")
        caplog.set_level(logging.ERROR)
        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        submitted = await h.submit(SHA)

        await eventually(
            lambda: f"cannot start build {submitted.build_id} yet" in caplog.text,
            what="the start to fail",
        )
        await runner.round_trip()  # the runner stays connected, and idle
        row = h.db_build(submitted.build_id)
        assert (row["status"], row["attempt"], row["runner"], row["lost"]) == (
            "queued", 0, None, 0,
        )  # fmt: skip

        blocker.unlink()  # the disk is fixed: a later tick hands the build out
        build = await runner.expect(protocol.Build)
        assert (build.build_id, build.attempt, build.sha) == (submitted.build_id, 1, SHA)
        await runner.output(build, 0, b"ran\n")
        assert (await runner.result(build, output_bytes=4)).accepted
        row = h.db_build(submitted.build_id)
        assert (row["status"], row["attempt"], row["lost"]) == ("passed", 1, 0)
        assert h.output_log(SHA) == b"ran\n"


@async_test()
async def test_output_that_cannot_be_stored_detaches_the_runner_which_resends_it(
    tmp_path, monkeypatch
):
    append_output = ResultsFolder.append_output
    failures = [StorageError("cannot write the log: No space left on device")]

    def fails_once(self, *args, **kwargs):
        if failures:
            raise failures.pop()
        return append_output(self, *args, **kwargs)

    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        submitted = await h.submit(SHA)
        build = await runner.expect(protocol.Build)
        await runner.output(build, 0, b"one\n")
        await runner.round_trip()

        monkeypatch.setattr(ResultsFolder, "append_output", fails_once)
        await runner.output(build, 4, b"two\n")
        await runner.closed_by_peer()  # detached: the connection goes, the lease stays
        row = h.db_build(submitted.build_id)
        assert (row["status"], row["attempt"], row["runner"], row["lost"]) == (
            "running", 1, "runner-1", 0,
        )  # fmt: skip

        back, registered = await FakeRunner.connect(
            h.address, "runner-1", lease=(build.build_id, build.attempt)
        )
        assert registered.output_offset == 4  # what the log really holds
        await back.output(build, 4, b"two\n")
        assert (await back.result(build, output_bytes=8)).accepted
    assert h.output_log(SHA) == b"one\ntwo\n"
    assert (h.result_json(SHA)["status"], h.result_json(SHA)["attempt"]) == ("passed", 1)
    row = h.db_build(submitted.build_id)
    assert (row["status"], row["attempt"], row["lost"]) == ("passed", 1, 0)
