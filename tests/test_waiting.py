"""Why a queued build waits, said from its needs and the scheduler's view alone (no I/O),
and the same words in ``superci status``'s document."""

from __future__ import annotations

from superci.labels import Offer
from superci.scheduler import RunnerView, Scheduler
from superci.status import RunnerState
from superci.waiting import why_waiting

SHA = "ab" * 20
LINUX = Offer({}, {"os": ("linux",), "python": ("3.11", "3.12")})
GPU = Offer({"gpu": "true"}, {"os": ("linux",), "python": ("3.12",)}, exclusive=True)


def runner(
    name: str,
    state: RunnerState = RunnerState.IDLE,
    offer: Offer = LINUX,
    benched_until: float | None = None,
) -> RunnerView:
    build = SHA if state is RunnerState.BUSY else None
    return RunnerView(
        name, f"{name}.lan", state, 0.0, build, 1 if build else None, benched_until, "",
        False, offer,
    )  # fmt: skip


def why(needs: dict[str, str], runners: list[RunnerView], position: int = 0, now: float = 0.0):
    """The reason without the place in line (tested on its own below)."""
    reason = why_waiting(needs, runners, position, now)
    return reason.rsplit("; ", 1)[0]


def test_with_no_runner_connected_the_queue_says_so_with_each_build_s_place():
    gone = [runner("gone", RunnerState.DISCONNECTED)]
    assert [why_waiting({}, gone, n, 0.0) for n in range(3)] == [
        "no runner connected; next in line",
        "no runner connected; 1 build ahead",
        "no runner connected; 2 builds ahead",
    ]
    assert why({"os": "linux"}, []) == "no runner connected"


def test_a_need_no_connected_runner_has_is_named():
    pool = [runner("a"), runner("b", offer=GPU)]
    assert why({"python": "3.13"}, pool) == "no connected runner has python=3.13"
    assert why({"python": "3.13", "os": "darwin"}, pool) == (
        "no connected runner has python=3.13 os=darwin"
    )


def test_needs_each_met_by_some_runner_but_none_all_together_are_named_together():
    pool = [runner("a"), runner("b", offer=Offer({"gpu": "true"}, {"os": ("darwin",)}))]
    assert why({"gpu": "true", "os": "linux"}, pool) == (
        "no connected runner has all of gpu=true os=linux"
    )


def test_exclusive_runners_that_have_the_needs_but_refuse_the_build_are_named():
    pool = [runner("gpu-1", offer=GPU)]
    assert why({"os": "linux"}, pool) == (
        "no connected runner has all of os=linux (exclusive runners gpu-1 take only builds "
        "that need their own labels)"
    )
    assert why({}, pool) == (
        "every connected runner is exclusive (exclusive runners gpu-1 take only builds that "
        "need their own labels)"
    )


def test_busy_runners_that_take_the_build_are_counted():
    pool = [runner(n, RunnerState.BUSY) for n in ("a", "b", "c")] + [runner("g", offer=GPU)]
    assert why({"python": "3.11"}, pool) == "all 3 matching runners busy"
    assert why({}, pool) == "all 3 runners busy"
    assert why({}, pool[:1]) == "the only runner, a, is busy"


def test_a_benched_runner_is_named_with_the_time_it_has_left():
    pool = [runner("a", RunnerState.BUSY), runner("b", RunnerState.BENCHED, benched_until=130.4)]
    assert why({}, pool, now=100.0) == "1 runner busy, runner b benched (30s left)"
    assert why({"os": "linux"}, pool[1:], now=200.0) == "runner b benched (0s left)"


def test_an_idle_runner_that_takes_the_build_is_named():
    pool = [runner("a"), runner("g", RunnerState.BUSY, GPU)]
    assert why({"gpu": "true"}, pool) == "the only matching runner, g, is busy"
    assert why({"gpu": "true"}, [runner("g", offer=GPU)]) == "about to start on g"
    assert why({}, [runner("a"), runner("b")]) == "about to start (2 runners idle)"


def test_the_scheduler_s_own_view_gives_the_reasons_in_queue_order():
    scheduler = Scheduler(heartbeat_timeout=10.0, max_attempts=3, build_timeout=60.0)
    for n in (1, 2):
        scheduler.add_build(n, f"{n:02x}" * 20, "main", 0.0)
    view = scheduler.view()
    assert [q.build_id for q in view.queue] == [1, 2]
    assert [why_waiting(q.needs, view.runners, n, 0.0) for n, q in enumerate(view.queue)] == [
        "no runner connected; next in line",
        "no runner connected; 1 build ahead",
    ]
