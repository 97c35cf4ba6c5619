"""A commit's several jobs through a real dispatcher on a real socket, played by fake
runners: jobs side by side, one after another, skipped when the one before failed, and
each job's files in its own folder."""

import json

from helpers import FakeRunner, Harness, async_test

from superci import client, protocol
from superci.status import BuildStatus
from superci.store import Store
from superci.tables import commit_summary

SHA = "a" * 40
THREE_JOBS = """
[jobs.lint]
command = "ruff check ."
[jobs.tests]
command = "python -m pytest -q"
[jobs.docs]
command = "sphinx-build docs build"
after = ["tests"]
"""


async def submit(harness: Harness, config: str, sha: str = SHA, rebuild: bool = False):
    assert harness.address is not None
    return await client.submit_async(harness.address, sha, "main", rebuild, config=config)


async def ask(harness: Harness, message: protocol.Message) -> protocol.Reply:
    assert harness.address is not None
    reply = await client.request(harness.address, message)
    assert isinstance(reply, protocol.Reply)
    return reply


async def show(harness: Harness, job: str | None = None) -> tuple[str, dict]:
    reply = await ask(harness, protocol.Query(what="show", commit=SHA, job=job))
    return reply.status, json.loads(reply.document)


@async_test()
async def test_lint_and_tests_run_at_once_and_docs_runs_after_tests_passed(tmp_path):
    async with Harness(tmp_path) as harness:
        assert harness.address is not None
        one, _ = await FakeRunner.connect(harness.address, "one")
        two, _ = await FakeRunner.connect(harness.address, "two")
        submitted = await submit(harness, THREE_JOBS)
        assert submitted.queued and submitted.build_id == 1
        first, second = await one.expect(protocol.Build), await two.expect(protocol.Build)
        assert {first.job, second.job} == {"lint", "tests"}
        assert first.build_id != second.build_id and first.sha == second.sha == SHA
        status, document = await show(harness)
        assert status == "running"
        assert [(j["job"], j["status"]) for j in document["jobs"]] == [
            ("lint", "running"), ("tests", "running"), ("docs", "queued")
        ]  # fmt: skip
        assert document["jobs"][2]["waiting"] == "after tests"

        tests_runner = one if first.job == "tests" else two
        tests = first if first.job == "tests" else second
        await tests_runner.output(tests, 0, b"tests ran\n")
        assert (await tests_runner.result(tests, "passed", output_bytes=10)).accepted
        docs = await tests_runner.expect(protocol.Build)  # handed out once tests passed
        assert docs.job == "docs" and docs.build_id == 3
        lint_runner, lint = (two, second) if tests_runner is one else (one, first)
        assert (await lint_runner.result(lint, "passed")).accepted
        assert (await tests_runner.result(docs, "passed")).accepted
        await harness.results.wait(SHA)

        status, document = await show(harness)
        assert status == "passed" and document["not_passed"] == []
        folder = harness.folder(SHA)
        assert (folder / "jobs" / "tests" / "output.log").read_bytes() == b"tests ran\n"
        result = json.loads((folder / "jobs" / "tests" / "result.json").read_text())
        assert (result["job"], result["round"], result["status"]) == ("tests", 1, "passed")
        commit = json.loads((folder / "result.json").read_text())  # the commit's document
        assert (commit["status"], commit["round"], "build_id" in commit) == ("passed", 1, False)
        assert [j["job"] for j in commit["jobs"]] == ["lint", "tests", "docs"]
        await one.close()
        await two.close()


@async_test()
async def test_failing_tests_skip_docs_and_fail_the_commit_and_show_names_them(tmp_path):
    async with Harness(tmp_path) as harness:
        assert harness.address is not None
        runner, _ = await FakeRunner.connect(harness.address, "one")
        await submit(harness, THREE_JOBS)
        lint = await runner.expect(protocol.Build)
        assert (await runner.result(lint, "passed")).accepted
        tests = await runner.expect(protocol.Build)
        assert tests.job == "tests"
        assert (await runner.result(tests, "failed", message="tests failed (exit code 1)")).accepted
        await runner.round_trip()

        status, document = await show(harness)
        assert status == "failed"
        assert document["not_passed"] == ["tests", "docs"]
        docs = document["jobs"][2]
        assert (docs["status"], docs["message"]) == (
            "skipped",
            "skipped: tests did not pass (failed)",
        )
        text = commit_summary(document)
        assert "status   failed (3 jobs, round 1)" in text
        assert "not passed: tests, docs" in text
        skipped = json.loads((harness.folder(SHA) / "jobs" / "docs" / "result.json").read_text())
        assert skipped["status"] == "skipped" and skipped["build_id"] == 3

        status, one_job = await show(harness, "tests")  # show --job
        assert (status, one_job["job"], one_job["status"]) == ("failed", "tests", "failed")
        unknown = await ask(harness, protocol.Query(what="show", commit=SHA, job="tset"))
        assert unknown.status == "unknown"
        assert "has no job 'tset'; its jobs: lint, tests, docs" in unknown.message

        # known: not queued again; --rebuild makes a new round of every job
        assert not (await submit(harness, THREE_JOBS)).queued
        rebuilt = await submit(harness, THREE_JOBS, rebuild=True)
        assert rebuilt.queued and rebuilt.build_id == 4
        again = await runner.expect(protocol.Build)
        assert (again.job, again.build_id) == ("lint", 4)
        cancelled = await ask(harness, protocol.CancelRequest(commit=SHA))
        assert cancelled.status == "cancelling"
        assert "cancelling lint, tests, docs" in cancelled.message
        await runner.expect(protocol.Cancel)
        assert (await runner.result(again, "cancelled")).accepted
        await runner.round_trip()
        status, document = await show(harness)
        assert document["round"] == 4 and status == "cancelled"
        assert [j["status"] for j in document["jobs"]] == ["cancelled"] * 3
        # the earlier round's summary was kept aside
        kept = json.loads((harness.folder(SHA) / "builds" / "1" / "result.json").read_text())
        assert kept["status"] == "failed"
        await runner.close()


@async_test()
async def test_a_commit_result_that_cannot_be_written_holds_up_no_job_s_result(tmp_path):
    """The commit's document is derived from its jobs': a top-level result.json superci
    cannot read (say, a file someone put there) is logged, and every job still ends."""
    async with Harness(tmp_path) as harness:
        assert harness.address is not None
        runner, _ = await FakeRunner.connect(harness.address, "one")
        await submit(harness, THREE_JOBS)
        folder = harness.folder(SHA)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").write_text("not json")
        for _ in range(3):
            build = await runner.expect(protocol.Build)
            assert (await runner.result(build, "passed")).accepted, build.job
        status, document = await show(harness)
        assert status == "passed" and [j["status"] for j in document["jobs"]] == ["passed"] * 3
        assert (folder / "result.json").read_text() == "not json", "not superci's: left alone"
        await runner.close()


@async_test()
async def test_more_than_64_jobs_end_the_commit_at_once_as_an_error(tmp_path):
    config = f"[matrix]\na = {json.dumps(list('123456789'))}\nb = {json.dumps(list('12345678'))}\n"
    async with Harness(tmp_path) as harness:
        submitted = await submit(harness, config)
        assert submitted.status == "error"
        result = await harness.results.wait(SHA)
        assert "the jobs expand to 72 jobs; a commit may have at most 64" in result["message"]
        assert result["message"].endswith("nothing was built")


@async_test()
async def test_a_restarted_dispatcher_still_runs_docs_after_tests(tmp_path):
    async with Harness(tmp_path) as harness:
        assert harness.address is not None
        runner, _ = await FakeRunner.connect(harness.address, "one")
        await submit(harness, THREE_JOBS)
        lint = await runner.expect(protocol.Build)
        assert (await runner.result(lint, "passed")).accepted
        tests = await runner.expect(protocol.Build)
        assert (await runner.result(tests, "passed")).accepted
        docs = await runner.expect(protocol.Build)
        await runner.close()
        await harness.restart()
        # the runner comes back with its lease of docs, which it keeps
        runner, registered = await FakeRunner.connect(
            harness.address, "one", (docs.build_id, docs.attempt)
        )
        assert registered.output_offset == 0
        assert (await runner.result(docs, "passed")).accepted
        await runner.round_trip()
        status, _ = await show(harness)
        assert status == "passed"
        await runner.close()


@async_test()
async def test_a_rebuild_with_other_jobs_moves_the_earlier_rounds_files_aside(tmp_path):
    async with Harness(tmp_path) as harness:
        assert harness.address is not None
        runner, _ = await FakeRunner.connect(harness.address, "one")
        await submit(harness, 'command = "true"\n')  # one default job: today's layout
        build = await runner.expect(protocol.Build)
        assert build.job == "default"
        assert (await runner.result(build, "passed")).accepted
        folder = harness.folder(SHA)
        assert json.loads((folder / "result.json").read_text())["job"] == "default"

        await submit(harness, '[jobs.lint]\n[jobs.tests]\nafter = ["lint"]\n', rebuild=True)
        assert not (folder / "result.json").exists()  # the top holds no other round's verdict
        assert json.loads((folder / "builds" / "1" / "result.json").read_text())["build_id"] == 1
        for _ in range(2):
            assert not (folder / "result.json").exists(), "written once every job has ended"
            build = await runner.expect(protocol.Build)
            assert (await runner.result(build, "passed")).accepted
        assert json.loads((folder / "result.json").read_text())["status"] == "passed"

        await submit(harness, 'command = "true"\n', rebuild=True)  # one job again
        assert not (folder / "result.json").exists()
        kept = json.loads((folder / "builds" / "2" / "result.json").read_text())
        assert (kept["round"], kept["status"]) == (2, "passed")
        build = await runner.expect(protocol.Build)
        assert (build.job, build.build_id) == ("default", 4)
        await runner.close()


@async_test()
async def test_the_web_page_and_api_list_a_commits_jobs_as_show_does(tmp_path):
    from test_web import text, web

    async with web(tmp_path) as (harness, session):
        await submit(harness, THREE_JOBS)  # no runner: every job waits
        document = json.loads(await text(session, f"/api/commit/{SHA}"))
        assert document == (await show(harness))[1]
        assert [(j["job"], j["waiting"]) for j in document["jobs"]][2] == ("docs", "after tests")
        page = await text(session, f"/commit/{SHA}")
        assert "<h2>Jobs (3)</h2>" in page
        rows = [page.index(f"<td>{job}</td>") for job in ("lint", "tests", "docs")]
        assert rows == sorted(rows)
        assert "after tests" in page


@async_test()
async def test_the_badge_shows_the_newest_finished_round_as_one_status(tmp_path):
    """Lint passing last does not hide the tests that failed; a round still running does
    not replace the one that finished."""
    from test_web import web

    async def badge(session) -> str:
        async with session.get("/badge/main.svg") as response:
            return (await response.text()).split("<title>")[1].split("</title>")[0]

    async with web(tmp_path) as (harness, session):
        assert harness.address is not None
        runner, _ = await FakeRunner.connect(harness.address, "one")
        await submit(harness, THREE_JOBS)
        assert await badge(session) == "build: unknown"
        lint = await runner.expect(protocol.Build)
        assert (await runner.result(lint, "passed")).accepted
        tests = await runner.expect(protocol.Build)
        assert (await runner.result(tests, "failed")).accepted  # docs: skipped
        await runner.round_trip()
        assert await badge(session) == "build: failing"

        await submit(harness, THREE_JOBS, rebuild=True)
        lint = await runner.expect(protocol.Build)
        assert (await runner.result(lint, "passed")).accepted  # its tests still to run
        await runner.round_trip()
        assert await badge(session) == "build: failing"
        await runner.close()


def test_outcome_and_event_lines_name_the_job_of_a_commit_of_several():
    from superci.tables import event_line
    from superci.up import format_outcome

    result = {"status": "passed", "sha": SHA, "branch": "main", "job": "tests (python=3.12)",
              "duration": 1.0, "runner": "r1", "message": "tests passed"}  # fmt: skip
    assert "(main) job tests (python=3.12) in 1.0s on r1" in format_outcome(result)
    assert " job " not in format_outcome({**result, "job": "default"})
    started = {"event": "started", "build_id": 2, "sha": SHA, "branch": "main", "job": "lint",
               "runner": "r1", "attempt": 1}  # fmt: skip
    assert event_line(started).endswith(f"build 2 {SHA[:12]} (main) job lint started on r1, "
                                        "attempt 1")  # fmt: skip


@async_test()
async def test_a_lost_runner_re_runs_only_its_own_cell_of_the_matrix(tmp_path):
    async with Harness(tmp_path) as harness:
        assert harness.address is not None
        one, _ = await FakeRunner.connect(harness.address, "one")
        two, _ = await FakeRunner.connect(harness.address, "two")
        await submit(harness, '[matrix]\nx = ["a", "b"]\n')
        first, second = await one.expect(protocol.Build), await two.expect(protocol.Build)
        assert (first.job, second.job) == ("default (x=a)", "default (x=b)")
        await two.close()  # lost with its cell
        assert (await one.result(first, "passed")).accepted
        again = await one.expect(protocol.Build)
        assert (again.job, again.build_id, again.attempt) == ("default (x=b)", 2, 2)
        assert (await one.result(again, "passed")).accepted
        await one.round_trip()
        status, document = await show(harness)
        assert status == "passed"
        assert [(j["build_id"], j["runner"]) for j in document["jobs"]] == [(1, "one"), (2, "one")]
        assert harness.db_build(1)["attempt"] == 1  # the other cell ran once
        await one.close()


@async_test()
async def test_a_rebuild_without_the_file_runs_the_jobs_the_commit_had(tmp_path):
    async with Harness(tmp_path) as harness:
        await submit(harness, THREE_JOBS)  # no runner: all wait
        cancelled = await ask(harness, protocol.CancelRequest(commit=SHA))
        assert (cancelled.status, cancelled.message) == ("cancelled", "cancelled lint, tests, docs")
        rebuilt = await submit(harness, None, rebuild=True)  # the web page's rebuild, say
        assert rebuilt.queued and rebuilt.build_id == 4
        status, document = await show(harness)
        assert (status, document["round"]) == ("queued", 4)
        assert [j["job"] for j in document["jobs"]] == ["lint", "tests", "docs"]
        assert harness.db_build(6)["after_jobs"] == '["tests"]'


def stopped_before_the_commit_result(harness: Harness, *jobs: tuple[str, BuildStatus]) -> int:
    """The state a dispatcher stopped in: every job of a round of ``SHA`` ended (each
    with its folder), the commit's own result.json not written yet. Returns the round."""
    (harness.results_dir / SHA / "jobs").mkdir(parents=True)
    store = Store(harness.db_path)
    try:
        round_id = None
        for job, status in jobs:
            build = store.add_build(SHA, "main", 1.0, job=job, round=round_id)
            round_id = round_id or build.id
            store.finish(build.id, status, 2.0, f"{job}: {status}")
            (harness.results_dir / SHA / "jobs" / job).mkdir()
    finally:
        store.close()
    assert round_id is not None
    return round_id


@async_test()
async def test_a_restarted_dispatcher_writes_a_commit_result_it_did_not_get_to_write(tmp_path):
    harness = Harness(tmp_path)
    round_id = stopped_before_the_commit_result(
        harness, ("lint", BuildStatus.PASSED), ("tests", BuildStatus.FAILED)
    )

    async with harness as h:
        document = h.result_json(SHA)

    assert document is not None
    assert (document["round"], document["status"], document["not_passed"]) == (
        round_id, "failed", ["tests"],
    )  # fmt: skip
    assert [job["job"] for job in document["jobs"]] == ["lint", "tests"]


@async_test()
async def test_a_round_of_one_named_job_gets_its_commit_result_after_a_restart_too(tmp_path):
    harness = Harness(tmp_path)
    round_id = stopped_before_the_commit_result(harness, ("docs", BuildStatus.PASSED))

    async with harness as h:
        document = h.result_json(SHA)

    assert document is not None and document["round"] == round_id
    assert document["status"] == "passed"


@async_test()
async def test_a_restarted_dispatcher_leaves_a_result_file_it_does_not_recognise(tmp_path):
    harness = Harness(tmp_path)
    stopped_before_the_commit_result(harness, ("lint", BuildStatus.PASSED))
    theirs = harness.results_dir / SHA / "result.json"
    for text in ('["not", "a", "result"]', '{"written": "by someone else"}'):
        theirs.write_text(text)
        async with harness:
            pass
        assert theirs.read_text() == text
