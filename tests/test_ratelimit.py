"""Log lines a stranger can cause are bounded per second, and what was left out is said."""

import logging

from helpers import FakeClock

from superci.ratelimit import RateLimitedLog


def test_a_flood_of_lines_is_cut_to_the_burst_and_the_next_line_counts_the_rest(caplog):
    caplog.set_level(logging.WARNING, logger="test.flood")
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("test.flood"), burst=3, period=1.0, clock=clock)
    written = [limited.log(logging.WARNING, "refused %s", n) for n in range(100)]
    assert written == [True] * 3 + [False] * 97
    assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1", "refused 2"]

    clock.advance(1.0)
    assert limited.log(logging.WARNING, "refused %s", "late")
    assert caplog.records[-1].getMessage() == "refused late (97 similar lines left out)"
    assert limited.log(logging.WARNING, "refused %s", "next")
    assert caplog.records[-1].getMessage() == "refused next"


def test_lines_within_the_rate_are_all_written(caplog):
    caplog.set_level(logging.INFO, logger="test.calm")
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("test.calm"), burst=2, period=1.0, clock=clock)
    for n in range(5):
        assert limited.log(logging.INFO, "line %d", n)
        clock.advance(0.5)
    assert len(caplog.records) == 5


def test_an_address_with_too_many_failures_waits_until_the_oldest_leaves_the_window():
    from superci.ratelimit import FailureLimit

    clock = FakeClock()
    limit = FailureLimit(limit=3, window=60.0, clock=clock)
    for _ in range(3):
        assert limit.wait("10.0.0.1") == 0.0
        limit.failed("10.0.0.1")
        clock.advance(10.0)
    assert limit.wait("10.0.0.1") == 30.0  # the oldest, 30 s ago, leaves the window in 30 s
    assert limit.wait("10.0.0.2") == 0.0, "other addresses are not held back"
    clock.advance(30.0)
    assert limit.wait("10.0.0.1") == 0.0
    limit.failed("10.0.0.1")  # back to three in the window: the second is the oldest now
    assert limit.wait("10.0.0.1") == 10.0


def test_a_success_forgets_the_failures_and_the_addresses_kept_are_bounded():
    from superci.ratelimit import FailureLimit

    clock = FakeClock()
    limit = FailureLimit(limit=1, window=60.0, clock=clock, max_keys=2)
    limit.failed("a")
    limit.succeeded("a")
    assert limit.wait("a") == 0.0
    for key in ("a", "b", "c"):  # "a" is the longest quiet: it goes
        limit.failed(key)
    assert [limit.wait(key) > 0 for key in ("a", "b", "c")] == [False, True, True]
