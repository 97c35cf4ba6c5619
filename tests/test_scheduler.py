"""The dispatcher's decisions, driven event by event with a fake clock."""

import pytest
from helpers import FakeClock

from superci import defaults, identity
from superci.errors import RunnerRefused, StaleResult, UnknownBuild
from superci.labels import Offer
from superci.scheduler import (
    CancelLease,
    CloseSession,
    EndBuild,
    Job,
    Kept,
    Lease,
    Outcome,
    Proof,
    QueuedView,
    Requeue,
    Scheduler,
    StartBuild,
    identify,
)
from superci.status import BuildStatus, RunnerState

TIMEOUT = 10.0


def sha(n: int) -> str:
    return f"{n:040x}"


def start(session: int, runner: str, build_id: int, attempt: int, branch: str = "main"):
    return StartBuild(session, runner, build_id, attempt, sha(build_id), branch)


@pytest.fixture
def sched() -> Scheduler:
    return Scheduler(heartbeat_timeout=TIMEOUT, max_attempts=3)


def register(s: Scheduler, name: str, session: int, now: float = 0.0, lease=None):
    return s.register(
        name, session, f"{name}.lan", 1000 + session, lease, now, proof=Proof.PROVEN, instance=name
    ).actions


def add(s: Scheduler, build_id: int, now: float = 0.0, branch: str = "main"):
    return s.add_build(build_id, sha(build_id), branch, now)


def replaced(name: str, session: int) -> str:
    """Why the old session of a runner registering again with ``register`` is closed."""
    return (
        f"replaced by a new session of runner {name} from {name}.lan (pid {1000 + session}); "
        "if that is another machine, give each runner its own --name"
    )


def of_type(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


# --- dispatch order ---------------------------------------------------------------------


def test_oldest_build_is_dispatched_first(sched):
    for build_id in (3, 1, 2):
        assert add(sched, build_id) == []
    assert [job.build_id for job in sched.queued()] == [1, 2, 3]
    assert register(sched, "r1", 1) == [start(1, "r1", 1, 1)]
    assert register(sched, "r2", 2) == [start(2, "r2", 2, 1)]
    assert [job.build_id for job in sched.queued()] == [3]


def test_build_goes_to_the_longest_idle_runner(sched):
    register(sched, "r1", 1, now=0.0)
    register(sched, "r2", 2, now=1.0)
    register(sched, "r3", 3, now=2.0)
    assert add(sched, 1) == [start(1, "r1", 1, 1)]
    # r1 becomes idle again after r2 and r3 were already waiting: it goes to the back
    assert sched.finish(1, 0.0) == []
    assert add(sched, 2) == [start(2, "r2", 2, 1)]
    assert add(sched, 3) == [start(3, "r3", 3, 1)]
    assert add(sched, 4) == [start(1, "r1", 4, 1)]


def test_build_waits_while_no_runner_is_idle_and_goes_out_when_one_registers(sched):
    assert add(sched, 1) == []
    assert sched.jobs[1].status is BuildStatus.QUEUED
    assert sched.jobs[1].attempt == 0
    assert register(sched, "r1", 1) == [start(1, "r1", 1, 1)]
    job = sched.jobs[1]
    assert (job.status, job.attempt, job.runner, job.runners) == (
        BuildStatus.RUNNING, 1, "r1", ["r1"],
    )  # fmt: skip
    assert sched.runners["r1"].state is RunnerState.BUSY
    assert sched.queued() == []


def test_build_waits_for_a_busy_runner_and_goes_out_when_it_finishes(sched):
    register(sched, "r1", 1)
    assert add(sched, 1) == [start(1, "r1", 1, 1)]
    assert add(sched, 2, branch="feature/x") == []
    assert [job.build_id for job in sched.queued()] == [2]
    assert sched.finish(1, 0.0) == [start(1, "r1", 2, 1, branch="feature/x")]
    assert 1 not in sched.jobs
    assert sched.runners["r1"].build_id == 2


def test_finish_frees_the_runner_when_nothing_waits(sched):
    register(sched, "r1", 1)
    add(sched, 1)
    assert sched.finish(1, 0.0) == []
    assert sched.runners["r1"].state is RunnerState.IDLE
    assert sched.runners["r1"].build_id is None


def test_finish_of_an_unknown_build_raises(sched):
    with pytest.raises(UnknownBuild):
        sched.finish(42, 0.0)


# --- death by silence or by closed connection -------------------------------------------


def test_runner_is_not_dead_at_exactly_the_timeout_but_is_just_after(sched):
    register(sched, "r1", 1, now=100.0)
    add(sched, 1)
    assert sched.check_heartbeats(100.0 + TIMEOUT) == []
    assert "r1" in sched.runners
    actions = sched.check_heartbeats(100.0 + TIMEOUT + 0.001)
    assert actions == [
        CloseSession(1, "runner declared dead: no heartbeat for 10.0s"),
        Requeue(1, 1, "r1", "no heartbeat for 10.0s"),
    ]
    assert "r1" not in sched.runners
    assert sched.jobs[1].status is BuildStatus.QUEUED
    assert sched.jobs[1].runner is None


def test_heartbeats_keep_a_runner_alive(sched):
    register(sched, "r1", 1, now=0.0)
    sched.heartbeat("r1", 1, now=8.0)
    sched.heartbeat("r1", 1, now=16.0)
    assert sched.check_heartbeats(25.0) == []
    assert sched.runners["r1"].last_seen == 16.0
    assert sched.check_heartbeats(26.5) != []
    assert "r1" not in sched.runners


def test_build_of_a_silent_runner_goes_to_another_runner_with_the_attempt_raised(sched):
    register(sched, "r1", 1, now=0.0)
    add(sched, 1)
    register(sched, "r2", 2, now=5.0)
    actions = sched.check_heartbeats(11.0)
    assert of_type(actions, CloseSession) == [CloseSession(1, actions[0].reason)]
    assert of_type(actions, Requeue) == [Requeue(1, 1, "r1", "no heartbeat for 11.0s")]
    assert of_type(actions, StartBuild) == [start(2, "r2", 1, 2)]
    assert sched.jobs[1].runners == ["r1", "r2"]


def test_a_lost_build_is_not_handed_to_another_runner_that_is_silent_too(sched):
    # all three runners went quiet (e.g. the dispatcher was paused): one sweep must not
    # burn every attempt on runners it is about to declare dead anyway
    for session, name in enumerate(["a", "b", "c"], start=1):
        register(sched, name, session, now=0.0)
    add(sched, 1)
    actions = sched.check_heartbeats(20.0)
    assert of_type(actions, StartBuild) == []
    assert of_type(actions, EndBuild) == []
    assert of_type(actions, Requeue) == [Requeue(1, 1, "a", "no heartbeat for 20.0s")]
    assert sorted(a.session for a in of_type(actions, CloseSession)) == [1, 2, 3]
    assert sched.runners == {}
    assert register(sched, "d", 4, now=21.0) == [start(4, "d", 1, 2)]


def test_disconnect_is_death_at_once(sched):
    register(sched, "r1", 1)
    register(sched, "r2", 2)
    add(sched, 1)
    actions = sched.disconnect("r1", 1, 0.0)
    assert actions == [
        CloseSession(1, "runner declared dead: connection closed"),
        Requeue(1, 1, "r1", "connection closed"),
        start(2, "r2", 1, 2),
    ]
    assert "r1" not in sched.runners


def test_disconnect_of_an_idle_runner_only_removes_it(sched):
    register(sched, "r1", 1)
    assert sched.disconnect("r1", 1, 0.0) == [
        CloseSession(1, "runner declared dead: connection closed")
    ]
    assert sched.runners == {}
    assert add(sched, 1) == []


def test_disconnect_of_an_already_replaced_session_changes_nothing(sched):
    register(sched, "r1", 1)
    add(sched, 1)
    register(sched, "r1", 2, lease=Lease(1, 1))  # adopted by the new session
    assert sched.disconnect("r1", 1, 0.0) == []
    assert sched.runners["r1"].session == 2
    assert sched.runners["r1"].build_id == 1
    assert sched.jobs[1].status is BuildStatus.RUNNING
    assert sched.jobs[1].attempt == 1


def test_disconnect_of_an_unknown_runner_changes_nothing(sched):
    assert sched.disconnect("ghost", 7, 0.0) == []


def test_gives_up_after_max_attempts_naming_every_lost_runner(sched):
    add(sched, 1)
    for attempt, name in enumerate(["alpha", "beta", "gamma"], start=1):
        assert register(sched, name, attempt) == [start(attempt, name, 1, attempt)]
        actions = sched.disconnect(name, attempt, 0.0)
    assert of_type(actions, Requeue) == []
    (give_up,) = of_type(actions, EndBuild)
    assert give_up.build_id == 1
    assert give_up.status == "error"
    assert "runner lost" in give_up.reason
    for name in ("alpha", "beta", "gamma"):
        assert name in give_up.reason
    assert 1 not in sched.jobs
    assert sched.queued() == []
    assert register(sched, "delta", 9) == []  # nothing left to hand out


def test_requeue_before_the_last_attempt_does_not_give_up(sched):
    add(sched, 1)
    register(sched, "a", 1)
    assert of_type(sched.disconnect("a", 1, 0.0), EndBuild) == []
    register(sched, "b", 2)
    assert of_type(sched.disconnect("b", 2, 0.0), EndBuild) == []
    assert sched.jobs[1].attempt == 2


# --- leases ---------------------------------------------------------------------------


@pytest.fixture
def leased(sched):
    """r1 (session 1) holds build 1 attempt 2; r2 (session 2) holds build 2."""
    register(sched, "r0", 9)
    add(sched, 1)
    sched.disconnect("r0", 9, 0.0)  # attempt 1 lost
    register(sched, "r1", 1)
    register(sched, "r2", 2)
    add(sched, 2)
    assert sched.jobs[1].lease == Lease(1, 2)
    assert sched.runners["r1"].build_id == 1
    assert sched.runners["r2"].build_id == 2
    return sched


def test_check_lease_accepts_the_current_holder(leased):
    job = leased.check_lease(1, 2, "r1", 1)
    assert job is leased.jobs[1]
    assert job.runner == "r1"


def test_result_from_a_stale_attempt_is_refused(leased):
    with pytest.raises(StaleResult, match="attempt 1 is stale"):
        leased.check_lease(1, 1, "r1", 1)
    with pytest.raises(StaleResult):
        leased.check_lease(1, 3, "r1", 1)


def test_result_from_another_session_of_the_holder_is_refused(leased):
    with pytest.raises(StaleResult, match="not leased to this connection"):
        leased.check_lease(1, 2, "r1", 99)


def test_result_from_a_runner_not_holding_the_build_is_refused(leased):
    with pytest.raises(StaleResult, match="not leased to this connection"):
        leased.check_lease(1, 2, "r2", 2)
    with pytest.raises(StaleResult):
        leased.check_lease(1, 2, "stranger", 1)


def test_result_for_an_unknown_build_is_refused(leased):
    with pytest.raises(StaleResult, match="not running"):
        leased.check_lease(77, 1, "r1", 1)


def test_result_for_a_queued_build_is_refused(sched):
    add(sched, 1)
    with pytest.raises(StaleResult):
        sched.check_lease(1, 0, "r1", 1)


def test_exactly_one_result_is_accepted_when_a_dead_runner_comes_back(sched):
    register(sched, "r1", 1, now=0.0)
    add(sched, 1)
    register(sched, "r2", 2, now=8.0)
    actions = sched.check_heartbeats(10.5)  # r1 declared dead, r2 takes attempt 2
    assert start(2, "r2", 1, 2) in actions
    # the "dead" r1 was only slow: its late result on the old connection is refused
    with pytest.raises(StaleResult):
        sched.check_lease(1, 1, "r1", 1)
    # it reconnects and claims its old lease: told to cancel, not adopted
    assert register(sched, "r1", 3, now=11.0, lease=Lease(1, 1)) == [
        CancelLease(3, 1, 1, "lease expired")
    ]
    with pytest.raises(StaleResult):
        sched.check_lease(1, 1, "r1", 3)
    # the current holder's result is the one accepted
    assert sched.check_lease(1, 2, "r2", 2).attempt == 2
    sched.finish(1, 0.0)
    # and nothing about build 1 is accepted afterwards, from anyone
    for attempt, name, session in [(2, "r2", 2), (1, "r1", 3), (1, "r1", 1)]:
        with pytest.raises(StaleResult):
            sched.check_lease(1, attempt, name, session)
    with pytest.raises(UnknownBuild):
        sched.finish(1, 0.0)


# --- reconnects -----------------------------------------------------------------------


def test_reconnect_replaces_the_old_session_and_requeues_its_build(sched):
    register(sched, "r1", 1)
    add(sched, 1)
    actions = register(sched, "r1", 2, now=3.0)
    assert actions == [
        CloseSession(1, replaced("r1", 2)),
        Requeue(1, 1, "r1", "runner reconnected without its build"),
        start(2, "r1", 1, 2),  # the new session is idle, so it gets the build again
    ]
    assert sched.runners["r1"].session == 2
    with pytest.raises(StaleResult):
        sched.check_lease(1, 1, "r1", 1)


def test_reconnect_of_an_idle_runner_just_replaces_the_session(sched):
    register(sched, "r1", 1)
    assert register(sched, "r1", 2) == [CloseSession(1, replaced("r1", 2))]
    assert sched.runners["r1"].session == 2
    assert sched.runners["r1"].state is RunnerState.IDLE
    assert add(sched, 1) == [start(2, "r1", 1, 1)]


def test_reconnect_that_claims_its_current_lease_is_adopted(sched):
    register(sched, "r1", 1)
    add(sched, 1)
    add(sched, 2)
    actions = register(sched, "r1", 2, now=4.0, lease=Lease(1, 1))
    assert actions == [CloseSession(1, replaced("r1", 2))]
    runner = sched.runners["r1"]
    assert (runner.session, runner.build_id, runner.state) == (2, 1, RunnerState.BUSY)
    assert sched.jobs[1].attempt == 1
    assert sched.check_lease(1, 1, "r1", 2) is sched.jobs[1]
    assert [job.build_id for job in sched.queued()] == [2]  # it stays busy


def test_registration_claiming_a_stale_lease_is_told_to_cancel(sched):
    register(sched, "r1", 1)
    add(sched, 1)
    sched.disconnect("r1", 1, 0.0)
    register(sched, "r2", 2)  # takes attempt 2
    actions = register(sched, "r1", 3, lease=Lease(1, 1))
    assert actions == [CancelLease(3, 1, 1, "lease expired")]
    assert sched.runners["r1"].state is RunnerState.IDLE
    assert sched.runners["r2"].build_id == 1


def test_registration_claiming_an_unknown_build_is_told_to_cancel_and_then_used(sched):
    add(sched, 5)
    actions = register(sched, "r1", 1, lease=Lease(99, 4))
    assert actions == [CancelLease(1, 99, 4, "lease expired"), start(1, "r1", 5, 1)]


def test_heartbeats_from_a_replaced_session_keep_nothing_alive(sched):
    register(sched, "r1", 1, now=0.0)
    add(sched, 1)
    register(sched, "r1", 2, now=1.0, lease=Lease(1, 1))
    for t in (5.0, 9.0, 10.5):
        sched.heartbeat("r1", 1, now=t)  # the ghost of the old connection
    assert sched.runners["r1"].last_seen == 1.0
    actions = sched.check_heartbeats(11.5)
    assert CloseSession(2, "runner declared dead: no heartbeat for 10.5s") in actions
    assert Requeue(1, 1, "r1", "no heartbeat for 10.5s") in actions


def test_heartbeat_of_an_unknown_runner_is_ignored(sched):
    sched.heartbeat("ghost", 1, now=1.0)
    assert sched.runners == {}


# --- restore after a dispatcher restart -----------------------------------------------


def job(build_id: int, status=BuildStatus.QUEUED, attempt=0, runner=None, runners=()):
    return Job(build_id, sha(build_id), "main", status, attempt, runner, list(runners))


def test_restore_queues_jobs_in_id_order(sched):
    assert sched.restore([job(3), job(1, attempt=1, runners=["old"]), job(2)], now=0.0) == []
    assert [j.build_id for j in sched.queued()] == [1, 2, 3]
    # a job that was already tried once goes out as its next attempt
    assert register(sched, "r1", 1) == [start(1, "r1", 1, 2)]
    assert sched.jobs[1].runners == ["old", "r1"]


def test_restore_dispatches_at_once_to_runners_already_registered(sched):
    register(sched, "r1", 1)
    assert sched.restore([job(2), job(1)], now=0.0) == [start(1, "r1", 1, 1)]


def test_restore_queues_a_running_job_without_a_runner(sched):
    sched.restore([job(1, status=BuildStatus.RUNNING, attempt=1, runner=None)], now=0.0)
    assert sched.jobs[1].status is BuildStatus.QUEUED
    assert register(sched, "r1", 1) == [start(1, "r1", 1, 2)]


@pytest.fixture
def restored(sched):
    """Build 4 was running as attempt 2 on r1 when the previous dispatcher stopped."""
    running = job(4, BuildStatus.RUNNING, attempt=2, runner="r1", runners=["r0", "r1"])
    assert sched.restore([running, job(5)], now=100.0) == []
    return sched


def test_restored_running_job_is_held_by_a_disconnected_placeholder(restored):
    placeholder = restored.runners["r1"]
    assert placeholder.state is RunnerState.DISCONNECTED
    assert placeholder.build_id == 4
    assert restored.jobs[4].status is BuildStatus.RUNNING
    assert [j.build_id for j in restored.queued()] == [5]
    with pytest.raises(StaleResult):  # a placeholder has no connection to accept from
        restored.check_lease(4, 2, "r1", 1)


def test_restored_build_is_adopted_when_its_runner_reconnects_with_the_lease(restored):
    assert restored.check_heartbeats(100.0 + TIMEOUT) == []
    assert register(restored, "r1", 7, now=105.0, lease=Lease(4, 2)) == []
    runner = restored.runners["r1"]
    assert (runner.session, runner.build_id, runner.state) == (7, 4, RunnerState.BUSY)
    assert restored.check_lease(4, 2, "r1", 7).attempt == 2
    assert [j.build_id for j in restored.queued()] == [5]


def test_restored_build_is_requeued_when_its_runner_does_not_return_in_time(restored):
    assert restored.check_heartbeats(100.0 + TIMEOUT) == []
    actions = restored.check_heartbeats(100.0 + TIMEOUT + 0.5)
    assert actions == [Requeue(4, 2, "r1", "no heartbeat for 10.5s")]  # no session to close
    assert "r1" not in restored.runners
    assert register(restored, "r2", 8, now=111.0) == [start(8, "r2", 4, 3)]
    # r1 coming back late with its old lease is told to cancel and gets the next build
    assert register(restored, "r1", 9, now=112.0, lease=Lease(4, 2)) == [
        CancelLease(9, 4, 2, "lease expired"),
        start(9, "r1", 5, 1),
    ]


def test_restored_build_is_requeued_when_its_runner_returns_without_it(restored):
    actions = register(restored, "r1", 7, now=101.0)
    assert actions == [
        Requeue(4, 2, "r1", "runner reconnected without its build"),
        start(7, "r1", 4, 3),
    ]


# --- cancel and deadlines -----------------------------------------------------------------


@pytest.fixture
def timed() -> Scheduler:
    return Scheduler(heartbeat_timeout=1000.0, max_attempts=3, build_timeout=60.0, stop_grace=5.0)


def test_cancel_of_a_queued_build_ends_it_at_once_and_it_is_never_dispatched(timed):
    add(timed, 1)
    assert timed.cancel(1, now=0.0) == [EndBuild(1, BuildStatus.CANCELLED, "cancelled")]
    assert 1 not in timed.jobs
    assert register(timed, "r1", 1) == []


def test_cancel_of_a_running_build_asks_its_runner_to_stop_and_keeps_the_lease(timed):
    add(timed, 1)
    register(timed, "r1", 1)
    assert timed.cancel(1, now=1.0, reason="by request") == [CancelLease(1, 1, 1, "by request")]
    assert timed.check_lease(1, 1, "r1", 1).stopping is BuildStatus.CANCELLED
    assert timed.cancel(1, now=2.0) == []  # asking twice changes nothing
    assert timed.finish(1, now=3.0) == []
    assert timed.runners["r1"].state is RunnerState.IDLE


def test_cancel_of_an_unknown_build_is_refused(timed):
    with pytest.raises(UnknownBuild):
        timed.cancel(99, now=0.0)


def test_build_past_its_deadline_is_stopped_as_timeout_by_the_dispatcher(timed):
    add(timed, 1)
    register(timed, "r1", 1, now=0.0)
    timed.started(timed.jobs[1], timeout=10.0, kill_grace=2.0, now=0.0)
    deadline = 10.0 + 2.0 + 5.0  # timeout + kill grace + DEADLINE_MARGIN
    assert timed.check_deadlines(deadline) == []
    (cancel,) = timed.check_deadlines(deadline + 0.1)
    assert isinstance(cancel, CancelLease) and (cancel.session, cancel.build_id) == (1, 1)
    assert timed.jobs[1].stopping is BuildStatus.TIMEOUT


def test_a_runner_announcing_an_endless_limit_is_held_to_the_dispatchers_build_timeout(timed):
    """A hostile or misconfigured runner says timeout=1e300 and kill_grace=1e300: the
    dispatcher still stops the build after its own --build-timeout (60 here) plus grace."""
    add(timed, 1)
    register(timed, "r1", 1, now=0.0)
    timed.started(timed.jobs[1], timeout=1e300, kill_grace=1e300, now=0.0)
    deadline = 60.0 + 60.0 + 5.0  # capped timeout + capped kill grace + DEADLINE_MARGIN
    assert timed.check_deadlines(deadline) == []
    (cancel,) = timed.check_deadlines(deadline + 0.1)
    assert isinstance(cancel, CancelLease) and timed.jobs[1].stopping is BuildStatus.TIMEOUT
    assert of_type(timed.check_deadlines(deadline + 0.1 + 65.1), EndBuild) != []


def test_build_without_a_started_message_gets_the_dispatchers_default_deadline(timed):
    add(timed, 1)
    register(timed, "r1", 1, now=0.0)
    assert timed.check_deadlines(60.0 + 5.0) == []
    assert of_type(timed.check_deadlines(65.1), CancelLease) != []


def test_runner_that_does_not_stop_a_build_in_time_is_dropped_and_the_build_ends(timed):
    add(timed, 1)
    add(timed, 2)
    register(timed, "wedged", 1, now=0.0)
    timed.cancel(1, now=10.0)
    assert timed.check_deadlines(15.0) == []  # within the stop grace
    actions = timed.check_deadlines(15.1)
    (end,) = of_type(actions, EndBuild)
    assert end.build_id == 1 and end.status is BuildStatus.CANCELLED
    assert "wedged did not stop it" in end.reason
    assert of_type(actions, CloseSession) == [
        CloseSession(1, "runner declared dead: did not stop a build")
    ]
    assert of_type(actions, Requeue) == [] and "wedged" not in timed.runners
    assert [job.build_id for job in timed.queued()] == [2]  # build 2 waits for a live runner


def test_runner_lost_while_stopping_a_build_ends_it_as_asked_not_requeued(timed):
    add(timed, 1)
    register(timed, "r1", 1)
    timed.cancel(1, now=1.0)
    actions = timed.disconnect("r1", 1, now=2.0)
    assert of_type(actions, Requeue) == []
    (end,) = of_type(actions, EndBuild)
    assert end.status is BuildStatus.CANCELLED


def test_a_stop_may_take_the_runners_own_kill_grace_before_it_is_given_up_on(timed):
    add(timed, 1)
    register(timed, "r1", 1, now=0.0)
    timed.started(timed.jobs[1], timeout=100.0, kill_grace=30.0, now=0.0)
    timed.cancel(1, now=10.0)
    assert of_type(timed.check_deadlines(10.0 + 30.0 + 5.0), EndBuild) == []
    assert of_type(timed.check_deadlines(10.0 + 30.0 + 5.1), EndBuild) != []


def test_a_stop_asked_for_before_a_reconnect_is_asked_again_of_the_adopted_session(timed):
    add(timed, 1)
    register(timed, "r1", 1, now=0.0)
    timed.cancel(1, now=1.0, reason="by request")
    actions = register(timed, "r1", 2, now=2.0, lease=Lease(1, 1))
    assert CancelLease(2, 1, 1, "by request") in actions
    assert timed.jobs[1].stopping is BuildStatus.CANCELLED


# --- runners that leave on purpose --------------------------------------------------------


def test_a_runner_that_leaves_gives_its_build_back_without_counting_an_attempt(sched):
    add(sched, 1)
    register(sched, "a", 1)
    actions = sched.leave("a", 1, "runner stopped", 0.0)
    assert actions == [
        CloseSession(1, "runner a left: runner stopped"),
        Requeue(1, 1, "a", "runner stopped", counted=False),
    ]
    assert "a" not in sched.runners
    assert sched.jobs[1].lost == 0
    assert [job.build_id for job in sched.queued()] == [1]
    assert sched.disconnect("a", 1, 0.0) == []  # the close that follows changes nothing


def test_runners_that_leave_do_not_use_up_the_attempts_of_a_build(sched):
    add(sched, 1)
    for session in range(1, 6):  # five stops in a row, more than max_attempts
        register(sched, f"r{session}", session)
        assert of_type(sched.leave(f"r{session}", session, "stopped", 0.0), EndBuild) == []
    assert register(sched, "last", 9) == [start(9, "last", 1, 6)]
    assert sched.jobs[1].lost == 0


def test_only_lost_runners_count_towards_max_attempts(sched):
    add(sched, 1)
    register(sched, "a", 1)
    sched.leave("a", 1, "stopped", 0.0)
    for session, name in ((2, "b"), (3, "c")):
        register(sched, name, session)
        assert of_type(sched.disconnect(name, session, 0.0), EndBuild) == []
    register(sched, "d", 4)
    (give_up,) = of_type(sched.disconnect("d", 4, 0.0), EndBuild)
    assert give_up.status == "error"
    assert "runner lost on 3 attempts" in give_up.reason


def test_a_build_that_keeps_sending_its_runners_away_ends_as_an_error():
    sched = Scheduler(heartbeat_timeout=TIMEOUT, max_attempts=3, max_handbacks=4)
    add(sched, 1)
    for session in range(1, 4):
        register(sched, "r", session)
        assert of_type(sched.leave("r", session, "cannot build", 0.0), EndBuild) == []
    register(sched, "r", 4)
    (give_up,) = of_type(sched.leave("r", 4, "cannot build", 0.0), EndBuild)
    assert give_up.status == "error"
    assert "left while building it 4 times" in give_up.reason
    assert "cannot build" in give_up.reason
    assert 1 not in sched.jobs


def test_a_runner_leaving_while_asked_to_stop_its_build_ends_it_as_asked(sched):
    add(sched, 1)
    register(sched, "a", 1)
    sched.cancel(1, 0.0)
    actions = sched.leave("a", 1, "runner stopped", 0.0)
    (ended,) = of_type(actions, EndBuild)
    assert ended.status == "cancelled"
    assert of_type(actions, Requeue) == []


def test_leaving_of_a_replaced_session_changes_nothing(sched):
    add(sched, 1)
    register(sched, "a", 1)
    register(sched, "a", 2, lease=Lease(1, 1))  # adopted by the new session
    assert sched.leave("a", 1, "stopped", 0.0) == []
    assert sched.runners["a"].build_id == 1


def test_an_idle_runner_that_leaves_is_no_longer_handed_builds(sched):
    register(sched, "a", 1)
    assert sched.leave("a", 1, "stopped", 0.0) == [CloseSession(1, "runner a left: stopped")]
    assert add(sched, 1) == []


# --- faults: builds that cannot start, output that cannot be stored, a paused dispatcher --


def test_a_build_that_cannot_be_started_is_given_back_uncounted_and_its_runner_stays(sched):
    register(sched, "r1", 1)
    assert add(sched, 1) == [start(1, "r1", 1, 1)]

    sched.give_back(1, 1)  # e.g. the results disk is full

    job = sched.jobs[1]
    assert (job.status, job.attempt, job.lost, job.runners) == (BuildStatus.QUEUED, 0, 0, [])
    assert sched.runners["r1"].state is RunnerState.IDLE
    assert [j.build_id for j in sched.queued()] == [1]
    # Handed out again only on a later dispatch, under the same attempt number.
    assert sched.dispatch(1.0) == [start(1, "r1", 1, 1)]


def test_giving_back_a_lease_that_is_no_longer_current_changes_nothing(sched):
    register(sched, "r1", 1)
    add(sched, 1)
    sched.check_heartbeats(TIMEOUT + 1)  # r1 is lost: build 1 waits, attempt 1 counted
    sched.give_back(1, 1)
    assert sched.jobs[1].lost == 1 and sched.jobs[1].attempt == 1


def test_a_detached_runner_keeps_its_lease_and_is_adopted_when_it_registers_again(sched):
    register(sched, "r1", 1)
    add(sched, 1)

    actions = sched.detach("r1", 1, 5.0)  # its output could not be stored

    assert actions == [CloseSession(1, "the dispatcher could not store the output; resend it")]
    assert sched.disconnect("r1", 1, 5.0) == []  # the closed connection is no loss
    again = register(sched, "r1", 2, 6.0, lease=Lease(1, 1))
    assert again == []
    assert sched.runners["r1"].build_id == 1 and sched.jobs[1].lost == 0
    assert sched.check_lease(1, 1, "r1", 2) is sched.jobs[1]


def test_a_detached_runner_that_never_comes_back_is_judged_by_the_heartbeat_timeout(sched):
    register(sched, "r1", 1)
    add(sched, 1)
    sched.detach("r1", 1, 5.0)
    assert sched.check_heartbeats(5.0 + TIMEOUT - 1) == []
    lost = sched.check_heartbeats(5.0 + TIMEOUT + 1)
    assert of_type(lost, Requeue) and sched.jobs[1].lost == 1


def test_a_dispatcher_resumed_after_a_pause_does_not_judge_runners_by_the_pause(sched):
    register(sched, "r1", 1, 0.0)
    register(sched, "r2", 2, 0.0)
    sched.heartbeat("r1", 1, 9.0)  # r1 heartbeat just before the pause; r2 silent since 0
    sched.check_heartbeats(9.5)

    sched.resumed(30.0)  # paused from 9.5 to 40: its heartbeats wait in the sockets

    assert sched.check_heartbeats(40.0) == []
    sched.heartbeat("r1", 1, 40.0)  # the waiting heartbeat is read after the tick
    # r2 was already silent for 9.5 s before the pause: judged on that, not on the pause.
    dead = sched.check_heartbeats(41.0)
    assert [a.session for a in of_type(dead, CloseSession)] == [2]
    assert "r1" in sched.runners


# --- benching a runner whose checkouts keep failing ------------------------------------


def fail_checkout(s: Scheduler, build_id: int, now: float, runner: str = "r1"):
    """Build ``build_id`` is running on ``runner``; its checkout fails."""
    assert s.jobs[build_id].runner == runner
    return s.finish(build_id, now, checkout_error=f"commit {sha(build_id)} not found")


def test_a_runner_whose_checkouts_of_three_different_commits_fail_is_benched_with_a_reason(
    sched,
):
    register(sched, "r1", 1)
    for build_id in (1, 2, 3, 4):
        add(sched, build_id)
    fail_checkout(sched, 1, 10.0)
    fail_checkout(sched, 2, 11.0)
    assert fail_checkout(sched, 3, 12.0) == []  # benched: build 4 is not handed to it
    runner = sched.runners["r1"]
    assert runner.state is RunnerState.BENCHED
    assert runner.benched_until == 12.0 + defaults.BENCH_TIME
    assert runner.bench_reason == (
        f"checkouts of 3 different commits failed in a row, no builds for "
        f"{defaults.BENCH_TIME:g}s; last: commit {sha(3)} not found"
    )
    assert [job.build_id for job in sched.queued()] == [4]
    sched.heartbeat("r1", 1, 12.0)
    assert sched.check_heartbeats(12.0 + TIMEOUT / 2) == []  # benched, alive, in the pool


def test_one_missing_commit_rebuilt_again_and_again_benches_no_runner(sched):
    register(sched, "r1", 1)
    for build_id in (1, 2, 3, 4):
        sched.add_build(build_id, sha(99), "main", 0.0)  # one commit, four builds of it
        sched.finish(build_id, float(build_id), checkout_error="commit not found")
    assert sched.runners["r1"].state is RunnerState.IDLE


def test_a_good_checkout_between_failures_clears_the_runners_record(sched):
    register(sched, "r1", 1)
    for build_id in range(1, 6):
        add(sched, build_id)
    fail_checkout(sched, 1, 1.0)
    fail_checkout(sched, 2, 2.0)
    sched.finish(3, 3.0)  # checked out and built (whatever its verdict)
    fail_checkout(sched, 4, 4.0)
    fail_checkout(sched, 5, 5.0)
    assert sched.runners["r1"].state is RunnerState.IDLE


def test_a_benched_runner_gets_builds_after_its_time_and_is_benched_longer_on_one_more_failure(
    sched,
):
    register(sched, "r1", 1)
    for build_id in (1, 2, 3, 4, 5):
        add(sched, build_id)
    for build_id in (1, 2, 3):
        fail_checkout(sched, build_id, 0.0)
    assert sched.check_benched(defaults.BENCH_TIME - 1) == []
    back = defaults.BENCH_TIME
    assert sched.check_benched(back) == [start(1, "r1", 4, 1)]
    fail_checkout(sched, 4, back)  # on probation: one more failure benches it, for longer
    runner = sched.runners["r1"]
    assert runner.state is RunnerState.BENCHED
    assert runner.benched_until == back + 2 * defaults.BENCH_TIME
    assert sched.check_benched(back + 2 * defaults.BENCH_TIME) == [start(1, "r1", 5, 1)]
    sched.finish(5, back + 2 * defaults.BENCH_TIME + 1)  # a good checkout: record cleared
    assert (runner.benches, runner.failed_checkouts) == (0, [])


def test_the_bench_time_doubles_up_to_its_cap(sched):
    register(sched, "r1", 1)
    now = 0.0
    for build_id in range(1, 12):
        add(sched, build_id)
        if sched.runners["r1"].state is RunnerState.BENCHED:
            now = sched.runners["r1"].benched_until
            sched.check_benched(now)
        fail_checkout(sched, build_id, now)
    runner = sched.runners["r1"]
    assert runner.benched_until - now == defaults.BENCH_MAX


def test_the_bench_limits_and_the_deadline_margin_are_the_schedulers_own():
    sched = Scheduler(
        heartbeat_timeout=1000.0, deadline_margin=1.0, bench_after=1, bench_time=7.0, bench_max=10.0
    )
    register(sched, "r1", 1)
    for build_id in (1, 2, 3):
        add(sched, build_id)
    assert sched.stop_grace == defaults.KILL_GRACE + 1.0
    fail_checkout(sched, 1, 0.0)  # one failure is enough here
    runner = sched.runners["r1"]
    assert runner.benched_until == 7.0
    sched.check_benched(7.0)
    fail_checkout(sched, 2, 7.0)
    assert runner.benched_until == 7.0 + 10.0  # 14 s doubled, capped at 10
    sched.check_benched(17.0)
    sched.started(sched.jobs[3], timeout=10.0, kill_grace=2.0, now=17.0)
    assert sched.jobs[3].deadline == 17.0 + 10.0 + 2.0 + 1.0


def test_a_benched_runner_that_registers_again_starts_with_a_clean_record(sched):
    """Registering again as a new process (a restart): its operator says it is mended."""
    register(sched, "r1", 1)
    for build_id in (1, 2, 3, 4):
        add(sched, build_id)
    for build_id in (1, 2, 3):
        fail_checkout(sched, build_id, 0.0)
    sched.disconnect("r1", 1, 1.0)  # stopped, then started again
    restarted = sched.register(
        "r1", 2, "r1.lan", 1002, None, 1.0, proof=Proof.PROVEN, instance="r1-restarted"
    ).actions
    assert restarted[-1] == start(2, "r1", 4, 1)
    assert sched.runners["r1"].failed_checkouts == []


@pytest.mark.parametrize("how", ["replaced", "reconnected"])
def test_a_benched_runner_that_reconnects_stays_benched(sched, how):
    """The same process coming back (a network blip) mends nothing."""
    register(sched, "r1", 1)
    for build_id in (1, 2, 3, 4):
        add(sched, build_id)
    for build_id in (1, 2, 3):
        fail_checkout(sched, build_id, 0.0)
    if how == "reconnected":
        sched.disconnect("r1", 1, 1.0)
    actions = register(sched, "r1", 2, now=2.0)
    assert of_type(actions, StartBuild) == []  # build 4 is not handed to it
    runner = sched.runners["r1"]
    assert runner.state is RunnerState.BENCHED and len(runner.failed_checkouts) == 3
    assert [job.build_id for job in sched.queued()] == [4]
    assert sched.check_benched(defaults.BENCH_TIME + 1.0)[-1] == start(2, "r1", 4, 1)


def test_other_runners_take_the_builds_a_benched_runner_does_not(sched):
    register(sched, "r1", 1)
    for build_id in (1, 2, 3, 4):
        add(sched, build_id)
    for build_id in (1, 2, 3):
        fail_checkout(sched, build_id, 0.0)
    assert register(sched, "r2", 2, now=1.0) == [start(2, "r2", 4, 1)]


# --- who may register under a name ----------------------------------------------------------


def claim(s: Scheduler, name: str, session: int, now: float, *, proof: Proof, instance: str,
          host: str = "other.lan", lease=None):  # fmt: skip
    return s.register(name, session, host, 7, lease, now, proof=proof, instance=instance).actions


@pytest.mark.parametrize("proof", [Proof.UNPROVEN, Proof.NEW])
def test_a_busy_runners_name_and_lease_give_a_stranger_nothing(sched, proof):
    add(sched, 1)
    register(sched, "busy", 1)
    with pytest.raises(RunnerRefused, match=r"connected from 'busy.lan' .*--name") as refused:
        claim(sched, "busy", 2, 1.0, proof=proof, instance="x", lease=Lease(1, 1))
    assert refused.value.code == "name-taken"
    assert (sched.runners["busy"].session, sched.jobs[1].runner) == (1, "busy")
    with pytest.raises(StaleResult):
        sched.check_lease(1, 1, "busy", 2)
    assert sched.check_lease(1, 1, "busy", 1) is sched.jobs[1]


def test_an_unproven_claim_on_a_name_nobody_holds_is_told_to_forget_the_runner(sched):
    with pytest.raises(RunnerRefused, match="forget-runner gone") as refused:
        sched.admit("gone", "x", Proof.UNPROVEN, 0.0, last_host="old.lan")
    assert "'old.lan'" in str(refused.value) and refused.value.code == "name-taken"


def test_a_lease_held_since_a_dispatcher_restart_is_adopted_only_with_the_identity(sched):
    sched.restore([Job(1, sha(1), "main", BuildStatus.RUNNING, 1, "r1", ["r1"])], 0.0)
    for proof in (Proof.NEW, Proof.UNPROVEN):
        with pytest.raises(RunnerRefused, match="r1"):
            claim(sched, "r1", 2, 1.0, proof=proof, instance="x", lease=Lease(1, 1))
    actions = claim(sched, "r1", 3, 1.0, proof=Proof.PROVEN, instance="y", lease=Lease(1, 1))
    assert actions == [] and sched.check_lease(1, 1, "r1", 3) is sched.jobs[1]


def test_a_copy_with_the_same_identity_is_refused_while_the_first_is_heard_from(sched):
    register(sched, "r1", 1, now=0.0)  # instance "r1"
    sched.heartbeat("r1", 1, now=9.0)
    with pytest.raises(RunnerRefused, match=r"'r1.lan'.*same identity.*--name") as refused:
        claim(sched, "r1", 2, 9.5, proof=Proof.PROVEN, instance="copy")
    assert refused.value.code == "identity-in-use"
    assert sched.runners["r1"].session == 1
    actions = claim(sched, "r1", 3, 9.0 + TIMEOUT + 0.1, proof=Proof.PROVEN, instance="copy")
    assert [close.session for close in of_type(actions, CloseSession)] == [1]
    assert sched.runners["r1"].session == 3


def test_the_same_runner_reconnecting_replaces_its_ghost_at_once_and_keeps_its_build(sched):
    add(sched, 1)
    register(sched, "r1", 1, now=0.0)
    sched.heartbeat("r1", 1, now=5.0)
    actions = register(sched, "r1", 2, now=5.1, lease=Lease(1, 1))
    assert actions == [CloseSession(1, replaced("r1", 2))]
    assert sched.check_lease(1, 1, "r1", 2) is sched.jobs[1]


def test_a_new_name_is_admitted_and_a_proven_one_after_its_runner_died(sched):
    assert claim(sched, "fresh", 1, 0.0, proof=Proof.NEW, instance="a") == []
    sched.disconnect("fresh", 1, 0.5)
    assert claim(sched, "fresh", 2, 0.6, proof=Proof.PROVEN, instance="b") == []
    assert sched.runners["fresh"].session == 2


# --- decisions the dispatcher only carries out ----------------------------------------------


def test_a_runner_reconnecting_with_its_lease_keeps_its_build(sched):
    add(sched, 1)
    register(sched, "r1", 1, now=0.0)
    registration = sched.register(
        "r1", 2, "r1.lan", 1002, Lease(1, 1), 1.0, proof=Proof.PROVEN, instance="r1"
    )
    assert registration.kept == Kept(1, 1, sha(1))
    assert registration.disowned is None
    assert registration.actions == [CloseSession(1, replaced("r1", 2))]


def test_a_runner_reconnecting_with_a_lease_that_moved_on_is_disowned_and_told_to_drop_it(sched):
    add(sched, 1)
    register(sched, "r1", 1, now=0.0)
    sched.disconnect("r1", 1, now=1.0)  # attempt 1 lost
    register(sched, "r2", 2, now=2.0)  # takes attempt 2
    registration = sched.register(
        "r1", 3, "r1.lan", 1003, Lease(1, 1), 3.0, proof=Proof.PROVEN, instance="r1"
    )
    assert registration.kept is None
    assert registration.disowned == Lease(1, 1)
    assert registration.actions == [CancelLease(3, 1, 1, "lease expired")]


def test_a_runner_registering_without_a_lease_keeps_nothing_and_disowns_nothing(sched):
    registration = sched.register(
        "r1", 1, "r1.lan", 1001, None, 0.0, proof=Proof.NEW, instance="r1"
    )
    assert (registration.kept, registration.disowned, registration.actions) == (None, None, [])


@pytest.mark.parametrize("reported", [BuildStatus.CANCELLED, BuildStatus.TIMEOUT])
@pytest.mark.parametrize("asked", [BuildStatus.CANCELLED, BuildStatus.TIMEOUT])
def test_a_build_asked_to_stop_ends_as_the_dispatcher_asked(timed, asked, reported):
    add(timed, 1)
    register(timed, "r1", 1)
    timed.cancel(1, now=1.0, status=asked, reason="why we stopped it")
    outcome = timed.accept_result(1, 1, "r1", 1, reported, "killed by SIGTERM")
    assert outcome == Outcome(Lease(1, 1), sha(1), asked, "why we stopped it")


def test_a_build_that_finished_before_it_could_be_stopped_keeps_its_own_result(timed):
    add(timed, 1)
    register(timed, "r1", 1)
    timed.cancel(1, now=1.0, reason="by request")
    outcome = timed.accept_result(1, 1, "r1", 1, BuildStatus.PASSED, "")
    assert (outcome.status, outcome.message) == (BuildStatus.PASSED, "")


def test_a_cancelled_result_of_a_build_nobody_stopped_is_the_runners_own(timed):
    add(timed, 1)
    register(timed, "r1", 1)
    outcome = timed.accept_result(1, 1, "r1", 1, BuildStatus.CANCELLED, "stopped on the runner")
    assert (outcome.status, outcome.message) == (BuildStatus.CANCELLED, "stopped on the runner")


def test_a_result_from_a_stale_lease_is_not_accepted(leased):
    with pytest.raises(StaleResult):
        leased.accept_result(1, 1, "r1", 1, BuildStatus.PASSED, "")


def test_a_lease_stays_current_until_its_build_ends_or_moves_to_another_attempt(sched):
    add(sched, 1)
    register(sched, "r1", 1, now=0.0)
    assert sched.is_current(Lease(1, 1))
    assert not sched.is_current(Lease(1, 2)) and not sched.is_current(Lease(7, 1))
    sched.disconnect("r1", 1, now=1.0)  # lost: queued again
    assert not sched.is_current(Lease(1, 1))
    register(sched, "r2", 2, now=2.0)
    assert sched.is_current(Lease(1, 2)) and not sched.is_current(Lease(1, 1))
    sched.finish(1, now=3.0)
    assert not sched.is_current(Lease(1, 2))


def test_a_lease_is_still_current_after_its_runner_reconnected_and_kept_it(sched):
    add(sched, 1)
    register(sched, "r1", 1, now=0.0)
    register(sched, "r1", 2, now=1.0, lease=Lease(1, 1))
    assert sched.is_current(Lease(1, 1))


def test_a_name_without_an_identity_is_new_and_its_secret_alone_proves_it():
    secret = identity.new_secret()
    stored = identity.digest(secret)
    assert identify(None, None) is Proof.NEW
    assert identify(secret, None) is Proof.NEW
    assert identify(secret, stored) is Proof.PROVEN
    assert identify(identity.new_secret(), stored) is Proof.UNPROVEN
    assert identify(None, stored) is Proof.UNPROVEN


def test_the_view_lists_runners_by_name_and_the_queue_in_handout_order(timed):
    for build_id in (4, 1, 3, 2):
        add(timed, build_id)
    register(timed, "zed", 1, now=1.0)  # takes build 1
    register(timed, "amy", 2, now=2.0)  # takes build 2
    view = timed.view()
    amy, zed = view.runners
    assert (amy.name, amy.state, amy.build_sha, amy.host, amy.last_seen) == (
        "amy",
        RunnerState.BUSY,
        sha(2),
        "amy.lan",
        2.0,
    )
    assert (zed.name, zed.build_sha) == ("zed", sha(1))
    assert view.queue == (QueuedView(3, sha(3), "main", 0), QueuedView(4, sha(4), "main", 0))
    timed.finish(1, now=3.0)  # zed takes build 3
    assert view.runners[1].build_sha == sha(1)  # a snapshot: it does not change later
    assert timed.view().runners[1].build_sha == sha(3)
    assert [queued.build_id for queued in timed.view().queue] == [4]


# --- found in review: restore, wedged runners, leaving ----------------------------------


def test_a_restore_where_one_runner_held_two_running_builds_queues_the_older_one(sched):
    """The database can say a runner runs two builds (a requeue whose write never landed
    before a restart): only the newest lease can be its own, the other waits again."""
    older = Job(1, sha(1), "main", BuildStatus.RUNNING, attempt=1, runner="r1", runners=["r1"])
    newer = Job(2, sha(2), "main", BuildStatus.RUNNING, attempt=1, runner="r1", runners=["r1"])
    assert sched.restore([older, newer], 0.0) == []
    assert [job.build_id for job in sched.queued()] == [1]
    assert sched.runners["r1"].build_id == 2
    actions = register(sched, "r1", 1, 1.0, lease=Lease(2, 1))
    assert sched.runners["r1"].build_id == 2  # kept its own build
    assert of_type(actions, StartBuild) == []  # busy: build 1 waits for another runner
    assert register(sched, "r2", 2, 1.0) == [start(2, "r2", 1, 2)]


def test_a_runner_busy_with_another_build_is_not_dropped_for_one_it_never_stopped():
    sched = Scheduler(heartbeat_timeout=1000.0, max_attempts=3, build_timeout=60.0, stop_grace=5.0)
    stale = Job(1, sha(1), "main", BuildStatus.RUNNING, attempt=1, runner="r1", runners=["r1"])
    sched.restore([stale], 0.0)
    sched.jobs[1].stopping, sched.jobs[1].stop_by, sched.jobs[1].stop_reason = (
        BuildStatus.CANCELLED, 10.0, "cancelled")  # fmt: skip
    sched.runners["r1"].build_id = None  # it has moved on (the record was stale)
    register(sched, "r1", 1, 1.0)
    add(sched, 2)
    assert sched.runners["r1"].build_id == 2
    actions = sched.check_deadlines(11.0)
    assert [(a.build_id, a.status) for a in of_type(actions, EndBuild)] == [(1, "cancelled")]
    assert of_type(actions, CloseSession) == []  # r1 is busy with build 2, not wedged
    assert sched.runners["r1"].build_id == 2


def test_a_leaving_runner_whose_last_result_frees_it_is_handed_nothing_more(sched):
    register(sched, "r1", 1)
    add(sched, 1)
    add(sched, 2)
    sched.leaving("r1", 1)
    assert sched.finish(1, 1.0) == []  # free again, but it said it leaves
    actions = sched.leave("r1", 1, "runner stopped", 1.0)
    assert of_type(actions, Requeue) == [] and of_type(actions, StartBuild) == []
    assert [job.build_id for job in sched.queued()] == [2]
    assert sched.jobs[2].attempt == 0  # never handed out, so nothing to give back


# --- labels: builds go to runners that offer what they need ---------------------------


def offering(given=None, exclusive=False, **facts):
    """A runner's offer: ``given`` labels (--label) and detected ``facts`` (lists)."""
    return Offer(dict(given or {}), {k: tuple(v) for k, v in facts.items()}, exclusive)


def join(s: Scheduler, name: str, session: int, offer: Offer, now: float = 0.0):
    return s.register(
        name, session, f"{name}.lan", 1000 + session, None, now,
        proof=Proof.PROVEN, instance=name, offer=offer,
    ).actions  # fmt: skip


def add_needing(s: Scheduler, build_id: int, now: float = 0.0, **needs: str):
    return s.add_build(build_id, sha(build_id), "main", now, needs)


LINUX = offering(os=["linux"], arch=["x86_64"], python=["3.11", "3.12"])
MAC = offering(os=["darwin"], arch=["arm64"], python=["3.12"])
GPU = offering({"gpu": "true"}, exclusive=True, os=["linux"], python=["3.12"])


def test_a_build_with_needs_goes_only_to_a_runner_that_offers_every_one(sched):
    clock = FakeClock()
    join(sched, "linux", 1, LINUX, clock())
    join(sched, "mac", 2, MAC, clock())
    assert add_needing(sched, 1, clock(), os="darwin") == [start(2, "mac", 1, 1)]
    assert add_needing(sched, 2, clock(), os="linux", python="3.11") == [start(1, "linux", 2, 1)]


def test_a_python_need_matches_any_of_the_runners_versions(sched):
    join(sched, "mac", 2, MAC)
    join(sched, "linux", 1, LINUX)
    assert add_needing(sched, 1, python="3.11") == [start(1, "linux", 1, 1)]
    assert add_needing(sched, 2, python="3.12") == [start(2, "mac", 2, 1)]


def test_a_given_label_replaces_a_detected_fact_of_the_same_key(sched):
    join(sched, "pinned", 1, offering({"python": "3.11"}, python=["3.11", "3.12"]))
    assert add_needing(sched, 1, python="3.12") == []
    assert add_needing(sched, 2, python="3.11") == [start(1, "pinned", 2, 1)]


def test_a_build_nobody_matches_stays_queued_uncounted_while_later_builds_pass_it(sched):
    clock = FakeClock()
    join(sched, "linux", 1, LINUX, clock())
    assert add_needing(sched, 1, clock(), python="3.13") == []
    assert add(sched, 2) == [start(1, "linux", 2, 1)]  # the one behind it is not held up
    clock.advance(3 * TIMEOUT)
    sched.heartbeat("linux", 1, clock())
    assert sched.check_heartbeats(clock()) == []
    assert sched.finish(2, clock()) == []  # free again, and still not for build 1
    job = sched.jobs[1]
    assert (job.status, job.attempt, job.lost) == (BuildStatus.QUEUED, 0, 0)
    assert [j.build_id for j in sched.queued()] == [1]
    assert sched.view().queue[0].needs == {"python": "3.13"}


def test_a_waiting_build_starts_as_soon_as_a_matching_runner_registers(sched):
    clock = FakeClock()
    join(sched, "linux", 1, LINUX, clock())
    add_needing(sched, 1, clock(), gpu="true")
    clock.advance(60)
    assert join(sched, "gpu", 2, GPU, clock()) == [start(2, "gpu", 1, 1)]
    assert sched.jobs[1].attempt == 1


def test_an_exclusive_runner_takes_only_builds_that_need_one_of_its_own_labels(sched):
    join(sched, "gpu", 1, GPU)
    assert add(sched, 1) == []  # no needs: not for an exclusive runner
    assert add_needing(sched, 2, os="linux") == []  # a detected fact alone is not enough
    assert add_needing(sched, 3, gpu="true", os="linux") == [start(1, "gpu", 3, 1)]
    assert [j.build_id for j in sched.queued()] == [1, 2]
    assert join(sched, "linux", 2, LINUX) == [start(2, "linux", 1, 1)]


def test_a_runner_that_finds_the_build_needs_more_hands_it_back_uncounted_with_the_needs(sched):
    clock = FakeClock()
    join(sched, "linux", 1, LINUX, clock())
    assert add(sched, 1, clock()) == [start(1, "linux", 1, 1)]  # submitted without its config
    actions = sched.unsuited(1, 1, "linux", 1, {"gpu": "true"}, "lacks gpu=true", clock())
    assert actions == [Requeue(1, 1, "linux", "lacks gpu=true", False, {"gpu": "true"})]
    job = sched.jobs[1]
    assert (job.status, job.lost, job.needs) == (BuildStatus.QUEUED, 0, {"gpu": "true"})
    assert sched.runners["linux"].state is RunnerState.IDLE
    assert join(sched, "gpu", 2, GPU, clock()) == [start(2, "gpu", 1, 2)]


def test_an_unsuited_message_for_a_lease_not_held_is_stale(sched):
    join(sched, "linux", 1, LINUX)
    add(sched, 1)
    with pytest.raises(StaleResult):
        sched.unsuited(1, 2, "linux", 1, {"gpu": "true"}, "stale", 0.0)
    assert sched.jobs[1].status is BuildStatus.RUNNING


def test_restored_builds_keep_their_needs_after_a_dispatcher_restart():
    clock = FakeClock()
    restored = [Job(1, sha(1), "main", needs={"gpu": "true"}), Job(2, sha(2), "main")]
    after = Scheduler(heartbeat_timeout=TIMEOUT)
    assert after.restore(restored, clock()) == []
    assert join(after, "linux", 1, LINUX, clock()) == [start(1, "linux", 2, 1)]
    assert [j.build_id for j in after.queued()] == [1]
    assert join(after, "gpu", 2, GPU, clock()) == [start(2, "gpu", 1, 1)]


def test_the_view_shows_each_runners_labels_and_each_queued_builds_needs(sched):
    join(sched, "gpu", 1, GPU)
    add_needing(sched, 1, python="3.13")
    view = sched.view()
    assert view.runners[0].offer == GPU
    assert view.queue[0].needs == {"python": "3.13"}
