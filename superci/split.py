"""One job's test suite split over several participants, as a pure state machine.

Participants (one test process each) pull batches of test ids until none are left. The
longest-known tests go first and batches shrink towards the end (guided self-scheduling:
a batch holds about ``remaining / (divisor × width)`` seconds of tests, at least one
test), so every participant finishes within a test or two of the others. Nothing here
touches a socket, a file or the clock: every event carries ``now``, as in
:mod:`superci.scheduler`.

Faults cost as little as they can. A participant that is *lost* hands back only what it
held (counted towards each batch's attempts); the test it had started is *suspect* and
is rerun alone, so a test that kills its process is pinned down and ends as an error
after ``max_crashes`` deaths while the rest of the suite passes. A participant that
*leaves* on purpose hands its batches back without an attempt. Every collected test
ends with exactly one result: one that is never reported ends as an ``error`` naming
it, never as a silent pass.
"""

from __future__ import annotations

import enum
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from superci.errors import StaleResult
from superci.summary import Summary

#: Seconds assumed for every test when no duration at all is known (a first build).
DEFAULT_DURATION = 1.0
#: Batches hold about remaining / (GUIDED_DIVISOR × participants) seconds: 2 hands out
#: half of an even share at first, leaving room to even out the differences later.
GUIDED_DIVISOR = 2.0
#: Times a batch may be lost with its participant before its tests end as errors.
MAX_ATTEMPTS = 3
#: Deaths of its test process while a test ran before that test ends as an error: one
#: death may be a runner killed from outside, two while running the same test alone is
#: that test.
MAX_CRASHES = 2
#: Batches one participant may hold: the one it runs and the next, asked for before its
#: last test so fixtures shared with the next batch stay set up (as pytest-xdist does).
MAX_HELD = 2


class TestOutcome(enum.StrEnum):
    """How one test ended."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"


#: The key of each outcome in :class:`superci.summary.Summary` counts.
COUNT_KEYS = {
    TestOutcome.PASSED: "passed",
    TestOutcome.FAILED: "failed",
    TestOutcome.ERROR: "errors",
    TestOutcome.SKIPPED: "skipped",
}


@dataclass(frozen=True)
class TestResult:
    """One test's outcome; ``participant`` is who ran it ("" when nobody did)."""

    __test__ = False

    test: str
    outcome: TestOutcome
    duration: float = 0.0
    message: str = ""
    participant: str = ""


@dataclass(frozen=True)
class Batch:
    """Tests handed to one participant; ``attempts`` is how often they were lost before."""

    id: int
    tests: tuple[str, ...]
    attempts: int = 0


@dataclass(frozen=True)
class Wait:
    """Nothing to hand out now, but others hold tests that may come back if they are lost."""

    holders: tuple[str, ...]


@dataclass(frozen=True)
class Done:
    """Every test has its result (or the split ended): nothing more to ask for."""


@dataclass(frozen=True)
class SplitSummary:
    """Counts summed over every test, who ran what, and how long each participant worked
    (the sum of its tests' durations; when it joined and when its last result came)."""

    summary: Summary
    ran: dict[str, list[str]]
    busy: dict[str, float]
    joined: dict[str, float]
    last_result: dict[str, float]


@dataclass
class _Work:
    """Tests waiting to be handed out again, and who lost them."""

    tests: tuple[str, ...]
    attempts: int
    lost_by: list[str] = field(default_factory=list)


@dataclass
class _Held:
    batch: Batch
    lost_by: list[str]
    started: str | None = None  # the test it said it started and has not reported


@dataclass
class _Participant:
    name: str
    held: dict[int, _Held] = field(default_factory=dict)


def estimates(tests: Sequence[str], durations: Mapping[str, float]) -> dict[str, float]:
    """Each test's expected seconds: its known duration, else the median of the known ones
    of this suite, else :data:`DEFAULT_DURATION`."""
    known = [durations[t] for t in tests if t in durations and durations[t] >= 0]
    typical = statistics.median(known) if known else DEFAULT_DURATION
    return {t: durations[t] if durations.get(t, -1.0) >= 0 else typical for t in tests}


def updated_durations(
    old: Mapping[str, float], measured: Mapping[str, float], weight: float
) -> dict[str, float]:
    """The moving average kept per test id: ``weight`` of each new measurement and the rest
    of the old average; a test measured for the first time takes its measurement, and
    one not measured this time keeps its old value."""
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"weight must be in (0, 1], not {weight}")
    new = dict(old)
    for test, seconds in measured.items():
        if seconds < 0:
            continue
        new[test] = seconds if test not in old else (1 - weight) * old[test] + weight * seconds
    return new


class Split:
    """The tests of one job, the participants running them and every result so far.

    ``kept``: results an earlier attempt of the build recorded before its runner was lost
    (see :mod:`superci.splitbuild`); those tests are not handed out again."""

    def __init__(
        self,
        tests: Sequence[str],
        durations: Mapping[str, float],
        width: int,
        *,
        kept: Mapping[str, TestResult] | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        max_crashes: int = MAX_CRASHES,
        divisor: float = GUIDED_DIVISOR,
    ) -> None:
        if width < 1:
            raise ValueError(f"a split needs at least one participant, not {width}")
        unique = list(dict.fromkeys(tests))
        self.tests: tuple[str, ...] = tuple(unique)
        self.width = width
        self.max_attempts = max_attempts
        self.max_crashes = max_crashes
        self.divisor = divisor
        self.estimate = estimates(unique, durations)
        self.results: dict[str, TestResult] = {
            t: kept[t] for t in unique if kept is not None and t in kept
        }
        #: The tests in the order their results were recorded (kept ones first): a host
        #: keeps its dispatcher up to date by sending what is new at the end.
        self.recorded: list[str] = list(self.results)
        self.kept_count = len(self.results)
        order = {t: i for i, t in enumerate(unique)}
        ahead = sorted(unique, key=lambda t: (-self.estimate[t], order[t]))
        self._fresh: deque[str] = deque(t for t in ahead if t not in self.results)
        self._returned: deque[_Work] = deque()
        self._participants: dict[str, _Participant] = {}
        self._crashes: dict[str, list[str]] = {}
        self._joined: dict[str, float] = {}
        self._last_result: dict[str, float] = {}
        self._next_id = 1
        self.ended: str | None = None  # why it ended before every test ran, if it did

    # --- state -------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Every collected test has its result."""
        return len(self.results) == len(self.tests)

    @property
    def participants(self) -> tuple[str, ...]:
        return tuple(self._participants)

    @property
    def handing_out(self) -> bool:
        """Whether tests wait to be handed out (a participant joining now gets work)."""
        return bool(self._fresh or self._returned)

    def remaining_estimate(self) -> float:
        """Seconds of tests not handed out yet (those handed back included)."""
        back = sum(self.estimate[t] for work in self._returned for t in work.tests)
        return back + sum(self.estimate[t] for t in self._fresh)

    def held(self, participant: str) -> tuple[Batch, ...]:
        known = self._participants.get(participant)
        return tuple(h.batch for h in known.held.values()) if known else ()

    # --- participants ------------------------------------------------------------------

    def join(self, participant: str, now: float) -> bool:
        """Admit ``participant`` if the split is not over and fewer than ``width`` take part."""
        if participant in self._participants:
            return True
        if self.done or self.ended is not None or len(self._participants) >= self.width:
            return False
        self._participants[participant] = _Participant(participant)
        self._joined.setdefault(participant, now)
        return True

    def leave(self, participant: str, now: float) -> None:
        """``participant`` stops on purpose: what it held goes back, no attempt counted."""
        gone = self._participants.pop(participant, None)
        if gone is None:
            return
        for held in reversed(list(gone.held.values())):
            self._hand_back(held, held.batch.attempts, held.lost_by, suspect=None)

    def lose(self, participant: str, now: float, reason: str = "") -> None:
        """``participant`` is gone unasked (its process died, its runner was lost): each
        batch it held goes back to the front, one attempt more; the test it was running is
        suspect and goes back alone, or ends as an error if it killed its process before."""
        gone = self._participants.pop(participant, None)
        if gone is None:
            return
        why = f"{participant} ({reason})" if reason else participant
        for held in reversed(list(gone.held.values())):
            suspect = held.started
            if suspect is not None and suspect not in self.results:
                self._crashes.setdefault(suspect, []).append(why)
                if len(self._crashes[suspect]) >= self.max_crashes:
                    self._record_error(suspect, self._crash_message(suspect))
                    suspect = None
            self._hand_back(held, held.batch.attempts + 1, [*held.lost_by, why], suspect)

    def _hand_back(
        self, held: _Held, attempts: int, lost_by: list[str], suspect: str | None
    ) -> None:
        left = tuple(t for t in held.batch.tests if t not in self.results and t != suspect)
        if attempts >= self.max_attempts:
            for test in (*left, *([suspect] if suspect else [])):
                self._record_error(
                    test,
                    f"{test}: not run, its batch was lost {attempts} times with its "
                    f"participant ({', '.join(lost_by)})",
                )
            return
        if left:
            self._returned.appendleft(_Work(left, attempts, lost_by))
        if suspect is not None:  # first, alone: if it kills its process again, it is the one
            self._returned.appendleft(_Work((suspect,), attempts, lost_by))

    def _crash_message(self, test: str) -> str:
        deaths = self._crashes[test]
        return (
            f"{test}: the test process died while running it, {len(deaths)} times "
            f"(on {'; '.join(deaths)})"
        )

    # --- batches -----------------------------------------------------------------------

    def next_batch(self, participant: str, now: float) -> Batch | Wait | Done:
        """The next batch for ``participant``: tests handed back first, then the longest
        of the rest, about remaining / (divisor × width) seconds of them."""
        known = self._known(participant)
        if self.done or self.ended is not None:
            return Done()
        if len(known.held) >= MAX_HELD:
            holding = ", ".join(str(i) for i in known.held)
            raise StaleResult(f"{participant} already holds batches {holding}")
        if self._returned:
            work = self._returned.popleft()
            return self._hand_out(known, work.tests, work.attempts, work.lost_by)
        if not self._fresh:
            holders = tuple(p.name for p in self._participants.values() if p.held)
            return Wait(holders) if holders else Done()
        target = self.remaining_estimate() / (self.divisor * self.width)
        tests = [self._fresh.popleft()]
        total = self.estimate[tests[0]]
        while self._fresh and total + self.estimate[self._fresh[0]] <= target:
            total += self.estimate[self._fresh[0]]
            tests.append(self._fresh.popleft())
        return self._hand_out(known, tuple(tests), 0, [])

    def _hand_out(
        self, known: _Participant, tests: tuple[str, ...], attempts: int, lost_by: list[str]
    ) -> Batch:
        batch = Batch(self._next_id, tests, attempts)
        self._next_id += 1
        known.held[batch.id] = _Held(batch, list(lost_by))
        return batch

    def started(self, participant: str, batch_id: int, test: str, now: float) -> None:
        """``participant`` starts ``test``: if it is lost before reporting, the test is suspect."""
        held = self._holding(participant, batch_id, test)
        held.started = test

    def report(
        self, participant: str, batch_id: int, results: Iterable[TestResult], now: float
    ) -> None:
        """Record results from the holder of ``batch_id``, each test once; any stale one
        (not its batch, not in it, already reported) refuses them all."""
        results = list(results)
        known = self._known(participant)
        held = known.held.get(batch_id)
        if held is None:
            raise StaleResult(f"batch {batch_id} is not held by {participant}")
        for result in results:
            self._holding(participant, batch_id, result.test)
        if len({r.test for r in results}) != len(results):
            raise StaleResult(f"a test is reported twice in one report of batch {batch_id}")
        for result in results:
            self._record(TestResult(
                result.test, result.outcome, max(result.duration, 0.0), result.message,
                participant,
            ))  # fmt: skip
            if held.started == result.test:
                held.started = None
        self._last_result[participant] = now
        if all(t in self.results for t in held.batch.tests):
            del known.held[batch_id]

    def finish_batch(self, participant: str, batch_id: int, now: float) -> list[str]:
        """``participant`` ran all of ``batch_id`` it could: each test of it still without a
        result ends as an error naming it. Returns those tests."""
        known = self._known(participant)
        held = known.held.pop(batch_id, None)
        if held is None:
            return []
        missing = [t for t in held.batch.tests if t not in self.results]
        for test in missing:
            self._record_error(
                test, f"{test}: collected but never reported by {participant}", participant
            )
        return missing

    def _known(self, participant: str) -> _Participant:
        known = self._participants.get(participant)
        if known is None:
            raise StaleResult(f"{participant} does not take part in this split (any more)")
        return known

    def _holding(self, participant: str, batch_id: int, test: str) -> _Held:
        held = self._known(participant).held.get(batch_id)
        if held is None:
            raise StaleResult(f"batch {batch_id} is not held by {participant}")
        if test not in held.batch.tests:
            raise StaleResult(f"{test} is not in batch {batch_id}")
        if test in self.results:
            raise StaleResult(f"{test} is already reported")
        return held

    def _record_error(self, test: str, message: str, participant: str = "") -> None:
        self._record(TestResult(test, TestOutcome.ERROR, 0.0, message, participant))

    def _record(self, result: TestResult) -> None:
        self.results[result.test] = result
        self.recorded.append(result.test)

    # --- the end -----------------------------------------------------------------------

    def end(self, reason: str, now: float) -> list[str]:
        """Stop handing out tests (cancel, time limit, nobody left): every test without a
        result ends as an error naming it and ``reason``. Returns those tests."""
        if self.ended is None and not self.done:
            self.ended = reason
        missing = [t for t in self.tests if t not in self.results]
        for test in missing:
            self._record_error(test, f"{test}: not run: {reason}")
        self._fresh.clear()
        self._returned.clear()
        for known in self._participants.values():
            known.held.clear()
        return missing

    def cancel(self, now: float) -> list[str]:
        return self.end("the split was cancelled", now)

    def summary(self) -> SplitSummary:
        """Counts over every test (in collection order), who ran what and for how long."""
        counts = {"run": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
        failures: list[str] = []
        ran: dict[str, list[str]] = {}
        busy: dict[str, float] = {}
        for test in self.tests:
            result = self.results.get(test)
            if result is None:
                continue
            counts["run"] += 1
            counts[COUNT_KEYS[result.outcome]] += 1
            if result.outcome in (TestOutcome.FAILED, TestOutcome.ERROR):
                failures.append(test)
            if result.participant:
                ran.setdefault(result.participant, []).append(test)
                busy[result.participant] = busy.get(result.participant, 0.0) + result.duration
        return SplitSummary(
            Summary(counts, failures), ran, busy, dict(self._joined), dict(self._last_result)
        )
