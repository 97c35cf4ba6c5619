"""Why a queued build waits, said from the scheduler's view alone (no I/O), and the same
words in ``superci status``'s document."""

from __future__ import annotations

from superci.scheduler import PoolView, QueuedView, RunnerView, Scheduler
from superci.status import RunnerState
from superci.waiting import why_waiting

SHA = "ab" * 20


def runner(name: str, state: RunnerState, benched_until: float | None = None) -> RunnerView:
    build = SHA if state is RunnerState.BUSY else None
    return RunnerView(name, "box", state, 0.0, build, 1 if build else None, benched_until, "")


def pool(*runners: RunnerView, queued: int = 3) -> PoolView:
    queue = tuple(QueuedView(n, SHA, "main", 0) for n in range(1, queued + 1))
    return PoolView(tuple(runners), queue)


def test_with_no_runner_connected_the_queue_says_so_with_each_build_s_place():
    empty = pool(runner("gone", RunnerState.DISCONNECTED))
    assert [why_waiting(empty, n, 0.0) for n in range(3)] == [
        "no runner connected; next in line",
        "no runner connected; 1 build ahead",
        "no runner connected; 2 builds ahead",
    ]


def test_busy_runners_are_counted():
    assert why_waiting(pool(runner("a", RunnerState.BUSY)), 0, 0.0) == (
        "the runner is busy; next in line"
    )
    both = pool(runner("a", RunnerState.BUSY), runner("b", RunnerState.BUSY))
    assert why_waiting(both, 1, 0.0) == "all 2 runners busy; 1 build ahead"


def test_a_benched_runner_is_named_with_the_time_it_has_left():
    view = pool(runner("a", RunnerState.BUSY), runner("b", RunnerState.BENCHED, 130.4))
    assert why_waiting(view, 0, 100.0) == "1 runner busy, runner b benched (30s left); next in line"
    alone = pool(runner("b", RunnerState.BENCHED, 90.0))
    assert why_waiting(alone, 2, 100.0) == "runner b benched (0s left); 2 builds ahead"


def test_a_build_with_an_idle_runner_is_about_to_be_handed_out():
    view = pool(runner("a", RunnerState.IDLE), runner("b", RunnerState.BUSY))
    assert why_waiting(view, 0, 0.0) == "being handed to an idle runner; next in line"


def test_the_scheduler_s_own_view_gives_the_reasons_in_queue_order():
    scheduler = Scheduler(heartbeat_timeout=10.0, max_attempts=3, build_timeout=60.0)
    for n in (1, 2):
        scheduler.add_build(n, f"{n:02x}" * 20, "main", 0.0)
    view = scheduler.view()
    assert [q.build_id for q in view.queue] == [1, 2]
    assert [why_waiting(view, n, 0.0) for n in range(2)] == [
        "no runner connected; next in line",
        "no runner connected; 1 build ahead",
    ]
