"""A split's results kept with its build: as protocol fields (pure), and through a real
dispatcher from one attempt's runner to the next, across a restart."""

import json

from helpers import FAST_WATCHDOG, FakeRunner, Harness, async_test
from support import eventually

from superci import protocol, splitkept
from superci.split import TestOutcome, TestResult

SHA = "0123456789abcdef0123456789abcdef01234567"


def result(test: str, message: str = "", participant: str = "r1.1") -> TestResult:
    outcome = TestOutcome.FAILED if message else TestOutcome.PASSED
    return TestResult(test, outcome, 0.5, message, participant)


def test_kept_results_travel_in_parts_a_frame_holds_and_come_back_the_same():
    results = [result(f"t.py::test_{i}", "x" * 3000 if i % 2 else "") for i in range(1500)]
    parts = list(splitkept.parts(results))
    assert len(parts) > 2
    back: list[TestResult] = []
    for part in parts:
        message = protocol.SplitKept(build_id=1, attempt=1, **part)
        assert len(protocol.encode(message)) < protocol.MAX_DOCUMENT
        assert len(part["outcomes"]) <= protocol.MAX_LIST
        back += splitkept.results(protocol.from_dict(json.loads(protocol.encode(message)[4:])))
    assert back == results


def test_only_results_a_participant_reported_are_kept_and_long_messages_are_cut():
    made_up = TestResult("t.py::lost", TestOutcome.ERROR, 0.0, "not run: cancelled", "")
    long = result("t.py::long", "y" * (protocol.MAX_TEXT + 50))
    odd_id = result("t.py::" + "z" * protocol.MAX_STRING)
    (part,) = splitkept.parts([made_up, long, odd_id])
    assert list(part["outcomes"]) == ["t.py::long"]
    assert part["messages"]["t.py::long"] == "y" * protocol.MAX_TEXT


def test_the_answer_to_a_request_holds_what_its_budget_holds_and_leaves_the_rest():
    results = [result(f"t.py::test_{i}", "m" * 1000) for i in range(50)]
    fields = splitkept.fields(results, budget=20_000)
    assert 0 < len(fields["outcomes"]) < 50  # the rest run again
    assert splitkept.fields([], budget=20_000)["outcomes"] == {}


def kept(build: protocol.Build, *results: TestResult) -> protocol.SplitKept:
    return protocol.SplitKept(build_id=build.build_id, attempt=build.attempt,
                              **splitkept.fields(results))  # fmt: skip


async def known_to(runner: FakeRunner, build: protocol.Build) -> protocol.SplitDurations:
    await runner.send(protocol.SplitTests(build_id=build.build_id, attempt=build.attempt,
                                          request=1, tests=["t::a", "t::b", "t::c"]))  # fmt: skip
    return await runner.expect(protocol.SplitDurations)


@async_test()
async def test_results_one_attempt_kept_reach_the_next_attempts_runner_across_a_restart(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        first, _ = await FakeRunner.connect(h.address, "runner-1")
        await h.submit(SHA)
        build = await first.expect(protocol.Build)
        await first.send(kept(build, result("t::a"), result("t::b", "assert 1 == 2")))
        await first.round_trip()
        await first.channel.close()  # lost: the build goes back to the queue
        await eventually(lambda: h.db_build(build.build_id)["status"] == "queued")
        await h.restart()

        second, _ = await FakeRunner.connect(h.address, "runner-2")
        again = await second.expect(protocol.Build)
        assert (again.build_id, again.attempt) == (build.build_id, 2)
        answer = await known_to(second, again)
        assert {r.test: r for r in splitkept.results(answer)} == {
            "t::a": result("t::a"), "t::b": result("t::b", "assert 1 == 2"),
        }  # fmt: skip


@async_test()
async def test_results_from_a_runner_without_the_lease_are_not_kept(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        holder, _ = await FakeRunner.connect(h.address, "holder")
        other, _ = await FakeRunner.connect(h.address, "other")
        await h.submit(SHA)
        build = await holder.expect(protocol.Build)
        await other.send(kept(build, result("t::a", participant="other.1")))
        await other.round_trip()
        stale = protocol.SplitKept(build_id=build.build_id, attempt=build.attempt + 1,
                                   **splitkept.fields([result("t::b")]))  # fmt: skip
        await holder.send(stale)
        answer = await known_to(holder, build)
        assert answer.outcomes == {}
