"""A commit's several jobs in the scheduler: each leased on its own, ``after`` holding a
job back until the jobs it names passed, and skipping it when one did not."""

import pytest
from test_scheduler import TIMEOUT, of_type, register, sha

from superci.scheduler import EndBuild, Job, Requeue, Scheduler, StartBuild
from superci.status import BuildStatus

SHA = sha(1)


@pytest.fixture
def sched() -> Scheduler:
    return Scheduler(heartbeat_timeout=TIMEOUT, max_attempts=3)


def job(build_id: int, key: str, after: tuple[str, ...] = (), round_id: int = 1) -> Job:
    return Job(build_id, SHA, "main", job=key, round=round_id, after=after)


def started(actions) -> dict[str, str]:
    """The job each runner was handed, by runner."""
    return {a.runner: a.job for a in of_type(actions, StartBuild)}


LINT, TESTS_11, TESTS_12, DOCS = "lint", "tests (python=3.11)", "tests (python=3.12)", "docs"


def three_jobs() -> list[Job]:
    """lint and a two-cell tests matrix at once, docs after tests."""
    return [job(1, LINT), job(2, TESTS_11), job(3, TESTS_12), job(4, DOCS, ("tests",))]


def test_matrix_cells_and_named_jobs_are_each_leased_to_their_own_runner(sched):
    for name, session in (("r1", 1), ("r2", 2), ("r3", 3), ("r4", 4)):
        register(sched, name, session)
    actions = sched.add_round(three_jobs(), 0.0)
    assert started(actions) == {"r1": LINT, "r2": TESTS_11, "r3": TESTS_12}
    assert [(a.build_id, a.attempt) for a in of_type(actions, StartBuild)] == [(1, 1), (2, 1),
                                                                              (3, 1)]  # fmt: skip
    assert [q.job for q in sched.view().queue] == [DOCS]
    assert sched.view().queue[0].waiting_for == (TESTS_11, TESTS_12)


def test_a_job_runs_only_once_every_job_it_runs_after_passed(sched):
    register(sched, "r1", 1)
    register(sched, "r2", 2)
    sched.add_round(three_jobs(), 0.0)  # r1: lint, r2: tests 3.11
    assert sched.finish(2, 1.0, status=BuildStatus.PASSED) == [
        StartBuild(2, "r2", 3, 1, SHA, "main", TESTS_12)
    ]
    assert sched.view().queue[0].waiting_for == (TESTS_12,)
    actions = sched.finish(1, 2.0, status=BuildStatus.PASSED)  # lint: r1 is free, docs waits
    assert of_type(actions, StartBuild) == []
    assert sched.finish(3, 3.0, status=BuildStatus.PASSED) == [
        StartBuild(1, "r1", 4, 1, SHA, "main", DOCS)
    ]


def test_a_job_after_one_that_failed_is_skipped_with_the_reason_and_others_run(sched):
    register(sched, "r1", 1)
    sched.add_round(
        [job(1, "build"), job(2, "tests", ("build",)), job(3, "docs", ("tests",)), job(4, "lint")],
        0.0,
    )
    actions = sched.finish(1, 1.0, status=BuildStatus.FAILED)
    assert of_type(actions, EndBuild) == [
        EndBuild(2, BuildStatus.SKIPPED, "skipped: build did not pass (failed)"),
        EndBuild(3, BuildStatus.SKIPPED, "skipped: tests did not pass (skipped)"),
    ]
    assert started(actions) == {"r1": "lint"}  # the job that depends on nothing runs
    sched.finish(4, 2.0, status=BuildStatus.PASSED)
    assert sched.rounds == {} and sched.jobs == {}  # nothing is kept once the round ended


def test_a_job_after_a_cancelled_or_lost_one_is_skipped_too(sched):
    register(sched, "r1", 1)
    sched.add_round([job(1, "tests"), job(2, "docs", ("tests",))], 0.0)
    actions = sched.cancel(1, 1.0)  # running: its runner is asked to stop it first
    assert of_type(actions, EndBuild) == []
    actions = sched.disconnect("r1", 1, 2.0)  # lost while stopping: it ends as cancelled
    assert of_type(actions, EndBuild) == [
        EndBuild(1, BuildStatus.CANCELLED, "cancelled; runner r1 lost while stopping it"),
        EndBuild(2, BuildStatus.SKIPPED, "skipped: tests did not pass (cancelled)"),
    ]


def test_a_lost_runner_requeues_only_its_own_job_of_the_matrix(sched):
    register(sched, "r1", 1)
    register(sched, "r2", 2)
    sched.add_round([job(1, TESTS_11), job(2, TESTS_12)], 0.0)
    actions = sched.disconnect("r2", 2, 1.0)
    assert of_type(actions, Requeue) == [
        Requeue(2, 1, "r2", "connection closed"),
    ]
    assert [q.job for q in sched.view().queue] == [TESTS_12]
    assert sched.jobs[1].status is BuildStatus.RUNNING and sched.jobs[1].attempt == 1
    register(sched, "r3", 3, now=2.0)
    assert sched.jobs[2].attempt == 2 and sched.jobs[2].runner == "r3"


def test_a_restarted_dispatcher_knows_how_the_finished_jobs_of_a_round_ended(sched):
    finished = [job(1, "lint"), job(2, "tests")]
    finished[0].status, finished[1].status = BuildStatus.PASSED, BuildStatus.PASSED
    register(sched, "r1", 1)
    actions = sched.restore([job(3, "docs", ("tests", "lint"))], 0.0, ended=finished)
    assert started(actions) == {"r1": "docs"}

    other = Scheduler(heartbeat_timeout=TIMEOUT)
    failed = job(1, "tests")
    failed.status = BuildStatus.ERROR
    actions = other.restore([job(2, "docs", ("tests",))], 0.0, ended=[failed])
    assert actions == [EndBuild(2, BuildStatus.SKIPPED, "skipped: tests did not pass (error)")]


def test_rounds_of_one_commit_wait_only_for_their_own_jobs(sched):
    register(sched, "r1", 1)
    sched.add_round([job(1, "tests")], 0.0)
    sched.finish(1, 1.0, status=BuildStatus.PASSED)
    # a rebuild: a new round, whose docs waits for its own tests, not the earlier round's
    actions = sched.add_round([job(2, "tests", round_id=2), job(3, "docs", ("tests",), 2)], 2.0)
    assert started(actions) == {"r1": "tests"}
    assert [q.job for q in sched.view().queue] == ["docs"]
