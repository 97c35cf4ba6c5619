"""The real runner process, in its own git clone, against an in-process Dispatcher on real TCP.

The tested project is a git repository (the ``repo`` fixture of conftest.py) whose tests
are unittest files; the runner clones it and fetches every commit it is asked to build.
Builds that must be caught mid-run wait on gate files the test creates.
"""

import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import FAILING_TEST, PASSING_TEST
from helpers import FAST_WATCHDOG, FakeClock, Harness, async_test
from support import WAIT, eventually, free_port, process_alive
from test_dispatcher import make_unwritable

from superci import client, defaults, protocol
from superci import executor as executor_module
from superci.channel import Address
from superci.errors import ConfigError, DispatcherUnavailable
from superci.runner import RunnerProcess
from superci.workspace import Workspace

PYTHON = shlex.quote(sys.executable)
#: Time for one build of these tiny projects (fetch, checkout, start Python, run tests).
BUILD_WAIT = 15.0


@pytest.fixture
def workspace(repo, tmp_path) -> Workspace:
    """The runner's own clone of the project, made before any commit under test."""
    repo.commit({"README": "a project\n", "tests/__init__.py": ""}, "start")
    return Workspace.clone(str(repo.path), tmp_path / "runner-clone")


def new_runner(h: Harness, workspace: Workspace, **options) -> RunnerProcess:
    options.setdefault("heartbeat_interval", 0.2)
    options.setdefault("kill_grace", 1.0)
    return RunnerProcess(h.address, workspace, "runner-1", **options)


@contextlib.asynccontextmanager
async def running(runner: RunnerProcess):
    """Run the runner as a task; cancel it (and its build) at the end."""
    task = asyncio.create_task(runner.run_forever())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(WAIT):
                await task


def config(command: str) -> str:
    """A .superci.toml naming ``command`` (TOML basic strings take JSON escapes)."""
    return f"command = {json.dumps(command)}\n"


def gated_script(gates: Path, body: str) -> str:
    """A Python build script with ``wait(name)``: block until gate file ``name`` exists."""
    return textwrap.dedent(f"""\
        import os, pathlib, sys, time

        GATES = pathlib.Path({str(gates)!r})


        def wait(name):
            deadline = time.monotonic() + 60
            while not (GATES / name).exists():
                if time.monotonic() > deadline:
                    sys.exit("gate " + name + " never opened")
                time.sleep(0.01)


        """) + textwrap.dedent(body)


# --- ordinary builds ---------------------------------------------------------------------


@async_test()
async def test_a_passing_and_a_failing_commit_are_reported_as_such(tmp_path, repo, workspace):
    passing = repo.commit({"tests/test_arithmetic.py": PASSING_TEST}, "passing")
    failing = repo.commit({"tests/test_arithmetic.py": FAILING_TEST}, "failing")
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h, running(new_runner(h, workspace)):
        await h.submit(passing)
        await h.submit(failing)  # queued behind: handed out once the first is acknowledged
        passed = await h.results.wait(passing, BUILD_WAIT)
        failed = await h.results.wait(failing, BUILD_WAIT)

    assert h.result_json(passing) == passed
    assert (passed["status"], passed["exit_code"], passed["runner"]) == ("passed", 0, "runner-1")
    assert passed["tests"] == {"run": 1, "passed": 1, "failed": 0, "errors": 0, "skipped": 0}
    assert passed["failures"] == []
    log = h.output_log(passing).decode()
    assert f"superci: building {passing} (main) attempt 1 on runner-1\n" in log
    assert f"superci: $ {defaults.TEST_COMMAND}\n" in log
    assert "passing test ran" in log and "Ran 1 test" in log
    assert log.endswith("superci: tests passed (exit code 0)\n")

    assert h.result_json(failing) == failed
    assert (failed["status"], failed["exit_code"]) == ("failed", 1)
    assert failed["tests"] == {"run": 1, "passed": 0, "failed": 1, "errors": 0, "skipped": 0}
    assert [name.rsplit(".", 1)[-1] for name in failed["failures"]] == ["test_broken"]
    log = h.output_log(failing).decode()
    assert f"superci: building {failing} (main) attempt 1 on runner-1\n" in log
    assert "failing test ran" in log and "AssertionError: 4 != 5" in log
    assert log.endswith("superci: tests failed (exit code 1)\n")


@pytest.mark.parametrize(
    ("asked", "limit", "named"),
    [("1e300", defaults.MAX_TIMEOUT, "21600"), ("120", 60.0, "60")],
    ids=["endless", "above-max-timeout"],
)
@async_test()
async def test_a_commit_asking_for_a_time_limit_above_the_runners_max_is_an_error_naming_it(
    tmp_path, repo, workspace, asked, limit, named
):
    sha = repo.commit({".superci.toml": f"timeout = {asked}\n", "tests/test_ok.py": PASSING_TEST})
    async with (
        Harness(tmp_path, settings=FAST_WATCHDOG) as h,
        running(new_runner(h, workspace, build_timeout=min(limit, 60.0), max_timeout=limit)),
    ):
        await h.submit(sha)
        result = await h.results.wait(sha, BUILD_WAIT)
    assert result["status"] == "error"
    assert f"limit of {named} seconds (--max-timeout)" in result["message"]
    assert "passing test ran" not in h.output_log(sha).decode()


def test_a_runner_whose_own_timeout_is_above_its_max_timeout_is_refused(workspace):
    with pytest.raises(ConfigError, match=r"--timeout\) is above its limit of 60 seconds"):
        RunnerProcess(Address("127.0.0.1", 1), workspace, "r", build_timeout=61.0, max_timeout=60.0)


@async_test()
async def test_the_command_of_superci_toml_runs_with_the_build_in_its_environment(
    tmp_path, repo, workspace
):
    command = f"{PYTHON} show_env.py"
    show_env = textwrap.dedent("""\
        import os

        for name in ("SUPERCI_COMMIT", "SUPERCI_BRANCH", "SUPERCI_BUILD_ID",
                     "SUPERCI_ATTEMPT", "CI"):
            print(f"{name}={os.environ.get(name, '<unset>')}")
    """)
    sha = repo.commit({".superci.toml": config(command), "show_env.py": show_env}, "custom")
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h, running(new_runner(h, workspace)):
        submitted = await h.submit(sha, "feature/env")
        result = await h.results.wait(sha, BUILD_WAIT)

    assert (result["status"], result["branch"]) == ("passed", "feature/env")
    lines = h.output_log(sha).decode().splitlines()
    assert f"superci: $ {command}" in lines
    assert "Ran" not in "".join(lines), "the default unittest command must not run"
    first = lines.index(f"superci: $ {command}") + 2  # after the line saying how it is contained
    assert lines[first : first + 5] == [
        f"SUPERCI_COMMIT={sha}",
        "SUPERCI_BRANCH=feature/env",
        f"SUPERCI_BUILD_ID={submitted.build_id}",
        "SUPERCI_ATTEMPT=1",
        "CI=true",
    ]


@async_test()
async def test_a_commit_missing_from_the_repository_ends_as_an_error(tmp_path, workspace):
    missing = "0123456789abcdef0123456789abcdef01234567"
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h, running(new_runner(h, workspace)):
        await h.submit(missing)
        result = await h.results.wait(missing, BUILD_WAIT)

    assert result["status"] == "error"
    assert result["exit_code"] is None
    assert missing in result["message"] and "not found" in result["message"]
    assert result["message"] in h.output_log(missing).decode()


@async_test()
async def test_a_failure_inside_the_runner_ends_the_build_as_an_error_and_the_runner_goes_on(
    tmp_path, repo, workspace, monkeypatch
):
    first = repo.commit({"tests/test_arithmetic.py": PASSING_TEST}, "first")
    second = repo.commit({"tests/test_arithmetic.py": PASSING_TEST + "# again\n"}, "second")
    real_run_command = executor_module.run_command
    calls = []

    async def failing_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("the disk of /tmp is full")
        return await real_run_command(*args, **kwargs)

    monkeypatch.setattr(executor_module, "run_command", failing_once)
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h, running(new_runner(h, workspace)):
        await h.submit(first)
        failed = await h.results.wait(first, BUILD_WAIT)
        await h.submit(second)
        passed = await h.results.wait(second, BUILD_WAIT)

    assert failed["status"] == "error"
    assert "the runner failed: RuntimeError: the disk of /tmp is full" in failed["message"]
    assert passed["status"] == "passed"


@async_test()
async def test_a_build_cancelled_while_its_checkout_runs_never_starts_its_tests(
    tmp_path, repo, workspace, monkeypatch
):
    sha = repo.commit({"tests/test_arithmetic.py": PASSING_TEST}, "passing")
    checkout_started, release = threading.Event(), threading.Event()
    real_prepare = workspace.prepare

    def slow_prepare(commit: str) -> None:
        checkout_started.set()
        assert release.wait(WAIT), "the test never let the checkout finish"
        real_prepare(commit)

    monkeypatch.setattr(workspace, "prepare", slow_prepare)
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        runner = new_runner(h, workspace)
        async with running(runner):
            await h.submit(sha)
            await eventually(checkout_started.is_set, WAIT, "the checkout to start")
            reply = await client.request(h.address, protocol.CancelRequest(commit=sha))
            await eventually(
                lambda: runner._current is not None and runner._current.cancel.is_set(),
                WAIT,
                "the runner to take the cancel in",
            )
            release.set()
            result = await h.results.wait(sha, BUILD_WAIT)

    assert reply.status == "cancelling"
    assert result["status"] == "cancelled"
    log = h.output_log(sha).decode()
    assert "cancelled before the tests started" in log and "passing test ran" not in log


# --- connection trouble ------------------------------------------------------------------


@async_test()
async def test_a_runner_started_before_the_dispatcher_registers_once_it_listens(
    tmp_path, repo, workspace, monkeypatch
):
    refused = asyncio.Event()
    failures = 0
    real_connect = client.connect

    async def counting_connect(*args, **kwargs):
        nonlocal failures
        try:
            return await real_connect(*args, **kwargs)
        except DispatcherUnavailable:
            failures += 1
            if failures >= 2:
                refused.set()
            raise

    monkeypatch.setattr(client, "connect", counting_connect)
    sha = repo.commit({"tests/test_arithmetic.py": PASSING_TEST}, "passing")
    h = Harness(tmp_path, settings=FAST_WATCHDOG)
    port = free_port()
    runner = RunnerProcess(
        Address("127.0.0.1", port), workspace, "runner-1", heartbeat_interval=0.2
    )
    async with running(runner):
        async with asyncio.timeout(WAIT):
            await refused.wait()  # it was turned away twice and is still trying
        await h.start(port)
        try:
            await h.submit(sha)
            result = await h.results.wait(sha, BUILD_WAIT)
        finally:
            await h.stop()

    assert (result["status"], result["runner"]) == ("passed", "runner-1")


@async_test()
async def test_a_runner_carries_its_build_across_a_dispatcher_restart(tmp_path, repo, workspace):
    gates = tmp_path / "gates"
    gates.mkdir()
    script = gated_script(
        gates,
        """\
        def say(*words):
            print(*words, flush=True)

        for i in range(1, 4):
            say("before", i)
        wait("one")
        for i in range(1, 4):
            say("middle", i)
        (GATES / "middle-printed").touch()
        wait("two")
        for i in range(1, 4):
            say("after", i)
        """,
    )
    command = f"{PYTHON} gated.py"
    sha = repo.commit({".superci.toml": config(command), "gated.py": script}, "gated")
    # A frozen clock: the restarted dispatcher keeps the lease for the runner however long
    # the reconnection takes.
    h = Harness(tmp_path, settings=FAST_WATCHDOG, clock=FakeClock())
    await h.start()
    try:
        async with running(new_runner(h, workspace)):
            submitted = await h.submit(sha)
            await h.wait_for_log(sha, b"before 3\n", BUILD_WAIT)

            await h.stop()
            # As after a crash, the dispatcher lacks the last bytes the runner sent it.
            log = h.folder(sha) / "output.log"
            os.truncate(log, log.read_bytes().index(b"before 2\n"))
            (gates / "one").touch()  # output while no dispatcher is there to take it
            await eventually(lambda: (gates / "middle-printed").exists(), what="middle output")
            await h.start(h.address.port)

            await h.wait_for_log(sha, b"middle 3\n")  # resent once the runner was adopted
            (gates / "two").touch()
            result = await h.results.wait(sha, BUILD_WAIT)
    finally:
        await h.stop()

    assert (result["status"], result["attempt"], result["runners"]) == ("passed", 1, ["runner-1"])
    assert h.db_build(submitted.build_id)["status"] == "passed"
    lines = h.output_log(sha).decode().splitlines()
    assert lines.pop(2).startswith("superci: contained by ")
    assert lines == [
        f"superci: building {sha} (main) attempt 1 on runner-1",
        f"superci: $ {command}",
        *(f"{part} {i}" for part in ("before", "middle", "after") for i in range(1, 4)),
        # a script, not a test tool: nothing to count, and the verdict says so
        "superci: tests passed (exit code 0), but superci could not read test counts from"
        " the output",
    ]


# --- cancelled builds --------------------------------------------------------------------


class BlockingProject:
    """A commit whose first attempt blocks until killed (its pid in a file), and a
    passing commit to be built next."""

    def __init__(self, repo, gates: Path) -> None:
        gates.mkdir()
        script = gated_script(
            gates,
            """\
            attempt = os.environ["SUPERCI_ATTEMPT"]
            if attempt == "1":
                (GATES / "pid.tmp").write_text(str(os.getpid()))
                os.replace(GATES / "pid.tmp", GATES / "attempt-1.pid")  # never half-written
                wait("never")
                sys.exit("attempt 1 was not killed")
            print("attempt", attempt, "ran to the end")
            """,
        )
        self.command = f"{PYTHON} gated.py"
        self.pid_file = gates / "attempt-1.pid"
        self.blocked = repo.commit(
            {".superci.toml": config(self.command), "gated.py": script}, "blocks"
        )
        files = {".superci.toml": "", "gated.py": "", "tests/test_arithmetic.py": PASSING_TEST}
        self.passing = repo.commit(files, "passes")

    async def started(self, h: Harness) -> int:
        """The pid of attempt 1 once it runs and every frame sent so far was handled."""
        await eventually(self.pid_file.exists, BUILD_WAIT, "attempt 1 to start")
        await h.wait_for_log(self.blocked, f"superci: $ {self.command}\n".encode())
        return int(self.pid_file.read_text())


@async_test()
async def test_a_runner_told_to_cancel_kills_its_build_and_takes_the_next(
    tmp_path, repo, workspace
):
    project = BlockingProject(repo, tmp_path / "gates")
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h, running(new_runner(h, workspace)):
        await h.submit(project.blocked)
        await h.submit(project.passing)
        pid = await project.started(h)

        reply = await client.request(h.address, protocol.CancelRequest(commit=project.blocked))
        cancelled = await h.results.wait(project.blocked, BUILD_WAIT)
        assert not process_alive(pid), "the cancelled build's process must be killed"
        after = await h.results.wait(project.passing, BUILD_WAIT)

    assert reply.status == "cancelling"
    assert (cancelled["status"], cancelled["attempt"]) == ("cancelled", 1)
    assert "cancelled by request" in cancelled["message"]
    assert h.output_log(project.blocked).decode().endswith("superci: cancelled\n")
    assert (after["status"], after["attempt"], after["runner"]) == ("passed", 1, "runner-1")


@async_test()
async def test_a_runner_whose_lease_expired_kills_its_build_and_takes_the_next(
    tmp_path, repo, workspace
):
    project = BlockingProject(repo, tmp_path / "gates")
    clock = FakeClock()
    async with Harness(tmp_path, settings=FAST_WATCHDOG, heartbeat_timeout=1.0, clock=clock) as h:
        # No heartbeats during the test: the runner is silent exactly when the clock says so.
        async with running(new_runner(h, workspace, heartbeat_interval=60)):
            await h.submit(project.blocked)
            await h.submit(project.passing)
            pid = await project.started(h)

            # The dispatcher declares the runner dead and re-queues its build; the runner
            # reconnects claiming the lease, is told it is gone (no output offset, and a
            # cancel), and gets the build again as attempt 2.
            clock.advance(5)
            retried = await h.results.wait(project.blocked, BUILD_WAIT)
            assert not process_alive(pid), "attempt 1's process must be killed"
            after = await h.results.wait(project.passing, BUILD_WAIT)

    assert (retried["status"], retried["attempt"]) == ("passed", 2)
    assert retried["runners"] == ["runner-1", "runner-1"]
    log = h.output_log(project.blocked).decode()
    assert f"superci: building {project.blocked} (main) attempt 2 on runner-1\n" in log
    assert "attempt 2 ran to the end\n" in log
    assert "attempt 1" not in log, "attempt 2's log starts empty"
    assert (after["status"], after["attempt"]) == ("passed", 1)


@async_test()
async def test_a_cancelled_builds_log_ends_its_cut_line_before_superci_says_so(
    tmp_path, repo, workspace
):
    gates = tmp_path / "gates"
    gates.mkdir()
    script = gated_script(
        gates,
        """\
        sys.stdout.write("half a line")
        sys.stdout.flush()
        (GATES / "printed").touch()
        wait("never")
        """,
    )
    sha = repo.commit({".superci.toml": config(f"{PYTHON} gated.py"), "gated.py": script})
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h, running(new_runner(h, workspace)):
        await h.submit(sha)
        await eventually((gates / "printed").exists, BUILD_WAIT, "the half line")
        await h.wait_for_log(sha, b"half a line")
        await client.request(h.address, protocol.CancelRequest(commit=sha))
        cancelled = await h.results.wait(sha, BUILD_WAIT)

    assert cancelled["status"] == "cancelled"
    assert h.output_log(sha).decode().endswith("\nhalf a line\nsuperci: cancelled\n")


@async_test(limit=60)
async def test_a_repository_needing_pytest_is_an_error_when_the_builds_python_lacks_it(
    tmp_path, repo, workspace, monkeypatch
):
    bare = tmp_path / "bare"  # a Python without pytest: a venv without even pip
    await asyncio.to_thread(
        lambda: subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60
        )
    )
    python = str(bare / "bin" / "python")
    monkeypatch.setattr(sys, "executable", python)  # the runner's own, so the build's python
    sha = repo.commit({"tests/test_plain.py": "def test_x():\n    assert 1 + 1 == 2\n"})
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h, running(new_runner(h, workspace)):
        await h.submit(sha)
        result = await h.results.wait(sha, BUILD_WAIT)

    assert result["status"] == "error"
    assert result["message"] == (
        f"pytest is not installed for {python}: install it for the runner's Python"
        " (python -m pip install pytest), or set command in .superci.toml"
    )
    log = h.output_log(sha).decode()
    assert "superci: no command in .superci.toml: using pytest, as tests/test_plain.py has" in log
    assert log.endswith(f"superci: {result['message']}\n")


@async_test()
async def test_a_runner_stopped_while_its_result_waits_to_be_resent_starts_nothing_after(
    tmp_path, repo, workspace, caplog
):
    """The resend a refused result waits for is a task of the runner, ended when it stops;
    nothing of the runner starts once it has stopped."""
    gates = tmp_path / "gates"
    gates.mkdir()
    script = gated_script(gates, 'print("started", flush=True)\nwait("go")\n')
    toml = config(f"{PYTHON} gated.py") + "allow_no_tests = true\n"
    sha = repo.commit({".superci.toml": toml, "gated.py": script}, "gated")
    started_after_stop: list[str] = []
    loop = asyncio.get_running_loop()
    stopped = False

    def recording_factory(loop, coro, **kwargs):
        if stopped:
            started_after_stop.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        async with running(new_runner(h, workspace)):
            await h.submit(sha)
            await h.wait_for_log(sha, b"started\n")
            undo = make_unwritable(h.folder(sha))  # the result cannot be written: retry
            (gates / "go").touch()
            await eventually(
                lambda: "result not recorded, the runner will retry" in caplog.text,
                what="the dispatcher to refuse the result for now",
            )
            loop.set_task_factory(recording_factory)
        stopped = True
        try:
            await asyncio.sleep(4 * defaults.BACKOFF_INITIAL)  # past the resend's delay
        finally:
            loop.set_task_factory(None)
            undo()
    assert started_after_stop == []


# --- labels -------------------------------------------------------------------------


@async_test(limit=30)
async def test_an_exclusive_runner_hands_back_a_build_whose_commit_needs_none_of_its_labels(
    repo, workspace, tmp_path
):
    sha = repo.commit({"tests/test_ok.py": PASSING_TEST})  # no .superci.toml: no needs
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        runner = new_runner(h, workspace, given_labels={"gpu": "true"}, exclusive=True)
        async with running(runner):
            await eventually(lambda: h.dispatcher.scheduler.runners, what="the runner to join")
            lying = 'needs = {gpu = "true"}'  # what a confused submitter said
            submitted = await client.submit_async(h.address, sha, "main", config=lying)

            def handed_back():
                row = h.db_build(submitted.build_id)
                return row if row["status"] == "queued" and row["attempt"] == 1 else None

            row = await eventually(handed_back, BUILD_WAIT, "the build to be handed back")
            assert (row["lost"], json.loads(row["needs"])) == (0, {})
            assert "this runner is exclusive" in row["message"]
            [queued] = json.loads(h.dispatcher.query(protocol.Query(what="status")).document)[
                "queue"
            ]
            assert queued["waiting"].startswith("every connected runner is exclusive")
            assert h.result_json(sha) is None
