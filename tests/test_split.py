"""One job's split, driven event by event with a fake clock."""

import heapq

import pytest
from helpers import FakeClock

from superci.errors import StaleResult
from superci.split import (
    DEFAULT_DURATION,
    Batch,
    Done,
    Split,
    TestOutcome,
    TestResult,
    Wait,
    estimates,
    updated_durations,
)

PASSED = TestOutcome.PASSED


def names(n: int) -> list[str]:
    return [f"t{i:02}" for i in range(n)]


def passed(test: str, duration: float = 0.1) -> TestResult:
    return TestResult(test, PASSED, duration)


def run_batch(split: Split, who: str, batch: Batch, now: float) -> None:
    for test in batch.tests:
        split.started(who, batch.id, test, now)
        split.report(who, batch.id, [passed(test)], now)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --- estimates and batches ------------------------------------------------------------


def test_a_test_never_seen_is_expected_to_take_the_median_of_the_known_ones():
    known = {"a": 1.0, "b": 3.0, "c": 10.0, "elsewhere": 100.0}
    assert estimates(["a", "b", "c", "new"], known) == {"a": 1.0, "b": 3.0, "c": 10.0, "new": 3.0}
    assert estimates(["x", "y"], {}) == {"x": DEFAULT_DURATION, "y": DEFAULT_DURATION}


def test_longest_known_tests_go_first_and_batches_shrink_towards_the_end(clock):
    durations = {t: float(i + 1) for i, t in enumerate(names(20))}  # t19 is the longest
    split = Split(names(20), durations, width=2)
    assert split.join("p", clock())
    handed: list[Batch] = []
    while isinstance(batch := split.next_batch("p", clock()), Batch):
        handed.append(batch)
        run_batch(split, "p", batch, clock())
    order = [t for b in handed for t in b.tests]
    assert order == sorted(names(20), key=lambda t: -durations[t])
    seconds = [sum(durations[t] for t in b.tests) for b in handed]
    assert seconds[0] <= sum(durations.values()) / (2 * 2)  # about remaining / (k × width)
    assert seconds[-1] < seconds[0] / 4
    assert len(handed[-1].tests) >= 1 and split.done


def test_a_test_longer_than_a_batch_is_a_batch_of_its_own(clock):
    split = Split(["huge", "small"], {"huge": 100.0, "small": 1.0}, width=4)
    split.join("p", clock())
    assert split.next_batch("p", clock()).tests == ("huge",)


def test_participants_join_up_to_the_width_and_none_once_it_is_over(clock):
    split = Split(names(3), {}, width=2)
    assert split.join("a", clock()) and split.join("b", clock())
    assert split.join("a", clock())  # again: already in
    assert not split.join("c", clock())
    split.leave("b", clock())
    assert split.join("c", clock())
    split.cancel(clock())
    split.leave("c", clock())
    assert not split.join("d", clock())


def test_a_participant_that_joins_during_the_split_gets_the_tests_left(clock):
    split = Split(names(12), {}, width=16)  # parallel = "auto": at most 16, joining as they come
    split.join("early", clock())
    first = split.next_batch("early", clock())
    clock.advance(5.0)
    assert split.join("late", clock())
    second = split.next_batch("late", clock())
    assert set(first.tests).isdisjoint(second.tests) and second.tests


# --- results ----------------------------------------------------------------------------


def test_each_test_is_recorded_once_and_only_from_the_holder_of_its_batch(clock):
    split = Split(names(4), {}, width=2, divisor=1.0)
    split.join("a", clock()), split.join("b", clock())
    batch = split.next_batch("a", clock())
    test = batch.tests[0]
    assert len(batch.tests) == 2
    with pytest.raises(StaleResult, match="not held by b"):
        split.report("b", batch.id, [passed(test)], clock())
    with pytest.raises(StaleResult, match="not in batch"):
        split.report("a", batch.id, [passed("elsewhere")], clock())
    with pytest.raises(StaleResult, match="does not take part"):
        split.report("stranger", batch.id, [passed(test)], clock())
    split.report("a", batch.id, [passed(test)], clock())
    with pytest.raises(StaleResult, match="already reported"):
        split.report("a", batch.id, [TestResult(test, TestOutcome.FAILED)], clock())
    assert split.results[test] == TestResult(test, PASSED, 0.1, "", "a")


def test_a_report_with_one_stale_result_records_none_of_it(clock):
    split = Split(["x", "y"], {}, width=1)
    split.join("a", clock())
    batch = split.next_batch("a", clock())
    assert batch.tests == ("x",)  # half of an even share: one test
    with pytest.raises(StaleResult):
        split.report("a", batch.id, [passed("x"), passed("y")], clock())
    assert split.results == {}


def test_a_participant_holds_its_batch_and_the_next_at_most(clock):
    split = Split(names(10), {}, width=4)
    split.join("a", clock())
    split.next_batch("a", clock()), split.next_batch("a", clock())
    with pytest.raises(StaleResult, match="already holds"):
        split.next_batch("a", clock())


def test_a_participant_waits_while_others_hold_tests_then_is_done(clock):
    split = Split(["x", "y"], {"x": 1.0, "y": 1.0}, width=2)
    split.join("a", clock()), split.join("b", clock())
    x, y = split.next_batch("a", clock()), split.next_batch("b", clock())
    run_batch(split, "a", x, clock())
    assert split.next_batch("a", clock()) == Wait(("b",))
    run_batch(split, "b", y, clock())
    assert split.done
    assert split.next_batch("a", clock()) == Done()


# --- faults -----------------------------------------------------------------------------


def test_a_lost_participant_costs_only_its_outstanding_batch(clock):
    durations = {t: 1.0 for t in names(16)}
    split = Split(names(16), durations, width=2)
    split.join("a", clock()), split.join("b", clock())
    first = split.next_batch("a", clock())
    run_batch(split, "a", first, clock())
    held = split.next_batch("a", clock())
    split.started("a", held.id, held.tests[0], clock())
    split.report("a", held.id, [passed(held.tests[0])], clock())
    split.lose("a", clock(), "connection reset")
    assert all(split.results[t].participant == "a" for t in first.tests)  # kept
    again = split.next_batch("b", clock())  # the reported test is kept, the rest comes back
    assert len(held.tests) >= 2
    assert again.tests == held.tests[1:] and again.attempts == 1


def test_the_test_running_when_its_process_died_is_rerun_alone_first(clock):
    split = Split(names(8), {}, width=2)
    split.join("a", clock()), split.join("b", clock())
    held = split.next_batch("a", clock())
    assert len(held.tests) >= 2
    split.started("a", held.id, held.tests[0], clock())
    split.lose("a", clock(), "exit code -9")
    alone = split.next_batch("b", clock())
    assert alone.tests == held.tests[:1] and alone.attempts == 1
    run_batch(split, "b", alone, clock())  # it passes: the runner was killed from outside
    rest = split.next_batch("b", clock())
    assert rest.tests == held.tests[1:] and rest.attempts == 1
    assert split.results[held.tests[0]].outcome == PASSED


def test_a_test_that_kills_its_process_twice_is_an_error_and_the_rest_runs(clock):
    split = Split(["crash", "ok1", "ok2"], {"crash": 3.0, "ok1": 1.0, "ok2": 1.0}, width=3)
    for who in ("a", "b", "c"):
        split.join(who, clock())
    first = split.next_batch("a", clock())
    assert first.tests == ("crash",)
    split.started("a", first.id, "crash", clock())
    split.lose("a", clock(), "exit code 3")
    second = split.next_batch("b", clock())
    assert second.tests == ("crash",)
    split.started("b", second.id, "crash", clock())
    split.lose("b", clock(), "exit code 3")
    error = split.results["crash"]
    assert error.outcome == TestOutcome.ERROR
    assert error.message == (
        "crash: the test process died while running it, 2 times "
        "(on a (exit code 3); b (exit code 3))"
    )
    while isinstance(batch := split.next_batch("c", clock()), Batch):
        run_batch(split, "c", batch, clock())
    assert split.done and split.summary().summary.counts["passed"] == 2


def test_a_batch_lost_too_many_times_ends_its_tests_as_errors_naming_them(clock):
    split = Split(["x", "y"], {"x": 1.0, "y": 1.0}, width=1, max_attempts=2)
    for who in ("a", "b"):
        split.join(who, clock())
        batch = split.next_batch(who, clock())
        split.lose(who, clock(), "gone")
    assert batch.attempts == 1
    assert split.results["x"].outcome == TestOutcome.ERROR
    assert split.results["x"].message == (
        "x: not run, its batch was lost 2 times with its participant (a (gone), b (gone))"
    )
    assert "y" not in split.results


def test_leaving_on_purpose_hands_the_batch_back_without_an_attempt(clock):
    split = Split(names(6), {}, width=2)
    split.join("a", clock()), split.join("b", clock())
    held = split.next_batch("a", clock())
    split.started("a", held.id, held.tests[0], clock())
    split.leave("a", clock())
    again = split.next_batch("b", clock())
    assert again.tests == held.tests and again.attempts == 0


def test_results_of_a_lost_participant_that_come_late_are_refused(clock):
    split = Split(names(4), {}, width=2)
    split.join("a", clock()), split.join("b", clock())
    held = split.next_batch("a", clock())
    split.lose("a", clock())
    with pytest.raises(StaleResult):
        split.report("a", held.id, [passed(held.tests[0])], clock())
    again = split.next_batch("b", clock())
    with pytest.raises(StaleResult):
        split.report("a", again.id, [passed(held.tests[0])], clock())


def test_a_collected_test_never_reported_ends_as_an_error_naming_it(clock):
    split = Split(["x", "silent"], {"x": 1.0, "silent": 1.0}, width=1, divisor=1.0)
    split.join("a", clock())
    batch = split.next_batch("a", clock())
    assert batch.tests == ("x", "silent")
    split.report("a", batch.id, [passed("x")], clock())
    assert split.finish_batch("a", batch.id, clock()) == ["silent"]
    assert split.results["silent"] == TestResult(
        "silent", TestOutcome.ERROR, 0.0, "silent: collected but never reported by a", "a"
    )
    assert split.done


def test_cancel_ends_every_unreported_test_as_an_error_and_refuses_what_comes_later(clock):
    split = Split(names(4), {}, width=1)
    split.join("a", clock())
    batch = split.next_batch("a", clock())
    assert split.cancel(clock()) == names(4)
    for r in split.results.values():
        assert r.outcome == TestOutcome.ERROR
        assert r.message == f"{r.test}: not run: the split was cancelled"
    assert split.next_batch("a", clock()) == Done()
    with pytest.raises(StaleResult):
        split.report("a", batch.id, [passed(batch.tests[0])], clock())


# --- summary and durations --------------------------------------------------------------


def test_the_summary_sums_counts_over_every_test_and_says_who_ran_what(clock):
    split = Split(["p1", "f1", "s1", "e1"], {}, width=2, divisor=1.0)
    split.join("a", clock()), split.join("b", clock())
    one, two = split.next_batch("a", clock()), split.next_batch("b", clock())
    three = split.next_batch("b", clock())
    assert (one.tests, two.tests, three.tests) == (("p1", "f1"), ("s1",), ("e1",))
    split.report("a", one.id, [passed("p1", 1.0), TestResult("f1", TestOutcome.FAILED, 2.0)], 5)
    split.report("b", two.id, [TestResult("s1", TestOutcome.SKIPPED, 0.5)], 6)
    split.finish_batch("b", three.id, 7)
    summary = split.summary()
    assert summary.summary.counts == {"run": 4, "passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    assert summary.summary.failures == ["f1", "e1"]
    assert summary.ran == {"a": ["p1", "f1"], "b": ["s1", "e1"]}
    assert summary.busy == {"a": 3.0, "b": 0.5}
    assert summary.joined == {"a": clock(), "b": clock()}
    assert summary.last_result == {"a": 5, "b": 6}


def test_durations_are_a_moving_average_per_test():
    old = {"a": 10.0, "kept": 3.0}
    assert updated_durations(old, {"a": 20.0, "new": 4.0}, 0.25) == {
        "a": 12.5, "kept": 3.0, "new": 4.0,
    }  # fmt: skip
    assert old == {"a": 10.0, "kept": 3.0}
    with pytest.raises(ValueError, match="weight"):
        updated_durations(old, {}, 0.0)


def finish_times(split: Split, real: dict[str, float], now: float) -> dict[str, float]:
    """Four participants, a to d, run the split in simulated time from ``now`` (each test
    takes its ``real`` seconds): when each found nothing left for it."""
    events: list[tuple[float, str]] = []
    for who in "abcd":
        split.join(who, now)
        heapq.heappush(events, (now, who))
    finished: dict[str, float] = {}
    while events:
        now, who = heapq.heappop(events)
        answer = split.next_batch(who, now)
        if not isinstance(answer, Batch):  # nothing left for it: done, or waiting
            finished[who] = now
            continue
        for test in answer.tests:
            now += real[test]
            split.report(who, answer.id, [passed(test, real[test])], now)
        heapq.heappush(events, (now, who))
    return finished


def test_participants_sharing_known_durations_finish_within_the_last_small_tests(clock):
    """Four participants driven in simulated time finish within 0.3 s of each other."""
    durations = {t: 0.1 + 0.1 * (i % 12) for i, t in enumerate(names(24))}
    split = Split(names(24), durations, width=4)
    finished = finish_times(split, durations, clock())
    assert max(finished.values()) - min(finished.values()) <= 0.3 + 1e-9
    assert split.summary().summary.counts["passed"] == 24


def test_participants_with_no_known_durations_finish_within_the_longest_test(clock):
    """A first build: every test is guessed alike, yet the batches shrink, so four
    participants in simulated time finish within one test of each other."""
    real = {t: 0.1 + 0.1 * (i % 12) for i, t in enumerate(names(24))}
    split = Split(names(24), {}, width=4)
    finished = finish_times(split, real, clock())
    assert max(finished.values()) - min(finished.values()) <= max(real.values()) + 1e-9


# --- a split resumed by a new host ------------------------------------------------------


def test_results_kept_from_a_lost_host_are_not_handed_out_again(clock):
    old = Split(names(6), {}, width=2)
    assert old.join("host.1", clock()) and old.join("seat.1", clock())
    finished = old.next_batch("seat.1", clock())
    assert isinstance(finished, Batch)
    run_batch(old, "seat.1", finished, clock())
    held = old.next_batch("host.1", clock())  # the host dies holding this one
    assert isinstance(held, Batch)
    kept = {t: old.results[t] for t in old.recorded}

    new = Split(names(6), {}, width=2, kept=kept)
    assert new.kept_count == len(finished.tests) and new.recorded == list(finished.tests)
    assert new.join("host2.1", clock())
    handed: list[str] = []
    while isinstance(batch := new.next_batch("host2.1", clock()), Batch):
        handed += batch.tests
        run_batch(new, "host2.1", batch, clock())
    assert new.done
    assert sorted(handed) == sorted(set(names(6)) - set(finished.tests))
    assert set(held.tests) <= set(handed)  # only what the lost host held runs again
    ran = new.summary().ran
    assert ran["seat.1"] == list(finished.tests) and len(ran["host2.1"]) == len(handed)


def test_a_split_whose_every_result_was_kept_is_done_at_once(clock):
    kept = {t: passed(t) for t in names(3)}
    split = Split(names(3), {}, width=2, kept=kept | {"gone": passed("gone")})
    assert split.done and split.tests == tuple(names(3))  # a kept test not collected: left out
    assert not split.join("p", clock())
    assert split.summary().summary.counts["passed"] == 3


def test_results_are_recorded_in_order_once_each_errors_included(clock):
    split = Split(names(3), {}, width=1)
    assert split.join("p", clock())
    batch = split.next_batch("p", clock())
    assert isinstance(batch, Batch) and len(batch.tests) == 1
    run_batch(split, "p", batch, clock())
    split.end("the build was cancelled", clock())
    assert split.recorded[0] == batch.tests[0]
    assert sorted(split.recorded) == names(3) and len(split.recorded) == 3
