"""A split build's seats in the scheduler, event by event with a fake clock: who gets a
seat and when, and what becomes of the seats when a runner or the build goes."""

import pytest
from helpers import FakeClock
from test_scheduler import add, register, sha

from superci.errors import StaleResult
from superci.scheduler import (
    CancelLease,
    Lease,
    Proof,
    Requeue,
    Scheduler,
    SeatLost,
    StartBuild,
    StartSeat,
)
from superci.status import BuildStatus, RunnerState

TIMEOUT = 10.0


@pytest.fixture
def sched() -> Scheduler:
    return Scheduler(heartbeat_timeout=TIMEOUT, max_attempts=3)


def seat(session: int, runner: str, build_id: int, number: int) -> StartSeat:
    return StartSeat(session, runner, build_id, 1, number, sha(build_id), "main")


def splitting(s: Scheduler, runners: int, width: int, now: float = 0.0):
    """Build 1 on r1, which asks for ``width`` participants; r2.. registered before."""
    for n in range(1, runners + 1):
        register(s, f"r{n}", n, now)
    (started,) = add(s, 1, now)
    assert isinstance(started, StartBuild) and started.runner == "r1"
    return s.open_seats(1, 1, "r1", 1, width, now)


def test_free_runners_get_seats_up_to_the_width_and_show_as_busy(sched):
    actions = splitting(sched, 4, width=3)
    assert actions == [seat(2, "r2", 1, 1), seat(3, "r3", 1, 2)]
    states = {r.name: (r.state, r.build_id) for r in sched.view().runners}
    assert states["r2"] == (RunnerState.BUSY, 1) and states["r4"] == (RunnerState.IDLE, None)


def test_a_queued_build_goes_before_a_seat(sched):
    register(sched, "r1", 1)
    add(sched, 1)
    sched.open_seats(1, 1, "r1", 1, 4, 0.0)
    add(sched, 2)  # waits: nobody is free
    assert register(sched, "r2", 2) == [StartBuild(2, "r2", 2, 1, sha(2), "main")]
    assert register(sched, "r3", 3) == [seat(3, "r3", 1, 1)]


def test_a_runner_that_registers_during_the_build_gets_a_seat(sched):
    splitting(sched, 1, width=16)
    assert register(sched, "r2", 2, 5.0) == [seat(2, "r2", 1, 1)]


def test_width_zero_offers_no_more_seats_and_keeps_those_taken(sched):
    splitting(sched, 2, width=4)
    assert sched.open_seats(1, 1, "r1", 1, 0, 1.0) == []
    assert register(sched, "r3", 3, 2.0) == []
    assert sched.check_seat(1, 1, 1, "r2", 2).build_id == 1


def test_a_seat_that_ends_frees_its_runner_for_the_next_build(sched):
    splitting(sched, 2, width=2)
    add(sched, 2)
    assert sched.end_seat(1, 1, 1, "r2", 2, 1.0) == [StartBuild(2, "r2", 2, 1, sha(2), "main")]
    with pytest.raises(StaleResult):
        sched.check_seat(1, 1, 1, "r2", 2)


def test_a_lost_seat_runner_costs_the_build_nothing_and_tells_its_runner(sched):
    clock = FakeClock()
    splitting(sched, 3, width=3, now=clock())
    clock.advance(TIMEOUT / 2)
    sched.heartbeat("r1", 1, clock())
    sched.heartbeat("r3", 3, clock())
    clock.advance(TIMEOUT / 2 + 1)
    actions = sched.check_heartbeats(clock())
    lost = [a for a in actions if isinstance(a, SeatLost)]
    assert [(a.session, a.seat, a.runner) for a in lost] == [(1, 1, "r2")]
    assert not any(isinstance(a, Requeue) for a in actions)
    job = sched.jobs[1]
    assert (job.status, job.attempt, job.lost, job.seats) == (BuildStatus.RUNNING, 1, 0, {2: "r3"})


def test_a_seat_runner_that_reconnects_loses_its_seat_and_is_told_to_drop_it(sched):
    splitting(sched, 2, width=2)
    registration = sched.register("r2", 7, "r2.lan", 2, Lease(1, 1), 1.0, proof=Proof.PROVEN,
                                  instance="r2")  # fmt: skip
    assert SeatLost(1, 1, 1, 1, "r2", "runner reconnected") in registration.actions
    assert registration.kept is None and registration.disowned == Lease(1, 1)
    assert CancelLease(7, 1, 1, "lease expired") in registration.actions
    assert sched.jobs[1].seats == {2: "r2"}  # free again, it takes a seat of its own


def test_a_seat_cannot_send_the_builds_result(sched):
    splitting(sched, 2, width=2)
    with pytest.raises(StaleResult, match="holds seat 1 of build 1, not the build"):
        sched.accept_result(1, 1, "r2", 2, BuildStatus.PASSED, "")


def test_when_the_builds_runner_is_lost_every_seat_is_stopped_and_freed(sched):
    splitting(sched, 3, width=3)
    actions = sched.disconnect("r1", 1, 1.0)
    assert [a for a in actions if isinstance(a, CancelLease)] == [
        CancelLease(2, 1, 1, "the build went back to the queue: connection closed"),
        CancelLease(3, 1, 1, "the build went back to the queue: connection closed"),
    ]
    started = [a for a in actions if isinstance(a, StartBuild)]
    assert len(started) == 1 and started[0].attempt == 2  # a freed seat runner takes it


def test_cancel_stops_the_build_and_every_seat(sched):
    splitting(sched, 3, width=3)
    actions = sched.cancel(1, 1.0)
    assert sorted(a.session for a in actions if isinstance(a, CancelLease)) == [1, 2, 3]
    assert sched.jobs[1].seats == {}
    assert {r.name for r in sched.view().runners if r.state is RunnerState.IDLE} == {"r2", "r3"}


def test_the_end_of_the_build_frees_its_seats(sched):
    splitting(sched, 2, width=2)
    actions = sched.finish(1, 1.0, status=BuildStatus.PASSED)
    assert CancelLease(2, 1, 1, "the build ended") in actions
    assert all(r.state is RunnerState.IDLE for r in sched.view().runners)


def test_only_the_builds_runner_may_open_seats(sched):
    splitting(sched, 2, width=2)
    with pytest.raises(StaleResult):
        sched.open_seats(1, 1, "r2", 2, 4, 1.0)


def test_seats_asked_for_again_are_numbered_after_those_the_host_knows(sched):
    register(sched, "r1", 1)
    add(sched, 1)  # as after a restart: the host knows seats 1 and 2, the scheduler none
    assert sched.open_seats(1, 1, "r1", 1, 3, 0.0, next_seat=3) == []
    assert register(sched, "r2", 2, 1.0) == [seat(2, "r2", 1, 3)]
    sched.open_seats(1, 1, "r1", 1, 3, 2.0, next_seat=1)  # never numbered back
    assert register(sched, "r3", 3, 3.0) == [seat(3, "r3", 1, 4)]
