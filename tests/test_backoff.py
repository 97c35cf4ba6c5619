import random

from superci.backoff import Backoff


def test_backoff_doubles_up_to_the_cap_within_the_jitter():
    backoff = Backoff(initial=0.5, cap=4.0, jitter=0.2, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, base in zip(delays, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0], strict=True):
        assert base * 0.8 <= delay <= base * 1.2


def test_backoff_jitter_spreads_the_retries():
    delays = {Backoff(initial=1.0, jitter=0.2).next_delay() for _ in range(20)}
    assert len(delays) > 1


def test_backoff_reset_starts_from_the_initial_delay_again():
    backoff = Backoff(initial=1.0, cap=8.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0
