"""What happens to one build, end to end: deadlines that kill the whole process tree,
cancel, live logs, the log cap, test counts and JUnit reports, the build environment,
workspace isolation, and `superci status`/`show`.

The dispatcher and runners are the real programs, started as subprocesses on real TCP
with real git clones. The dispatcher-side deadline is driven in-process instead, with a
fake clock and a runner that speaks the protocol by hand: the real timings (time limit
+ kill grace + margin) would take over a minute.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from conftest import FAILING_TEST, GATED_TEST, PASSING_TEST, Repo, Superci
from support import build_processes, eventually, process_alive, wait_until

from superci import client, defaults, protocol
from superci.channel import Channel
from superci.dispatcher import Dispatcher
from superci.errors import RemoteError
from superci.results import ResultsFolder
from superci.settings import DispatcherSettings
from superci.store import Store

pytestmark = pytest.mark.e2e

#: Runner options for every build here: bounded, and quick to stop a build.
RUNNER_OPTIONS = ("--timeout", "60", "--kill-grace", "1")
MARKER_RE = re.compile(
    r"\[superci: (\d+) bytes of output dropped here to keep this log under (\d+) bytes\]"
)


# --- helpers --------------------------------------------------------------------------


def start(superci: Superci, clone: Path, *dispatcher_args: str, runner_args: tuple[str, ...] = ()):
    """A dispatcher and one runner, ``runner-a``, working in ``clone``."""
    superci.dispatcher(0, *dispatcher_args)
    return superci.runner(clone, "runner-a", *RUNNER_OPTIONS, *runner_args)


def cli(superci: Superci, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One client command of the real CLI against the test's dispatcher."""
    return subprocess.run(
        [sys.executable, "-m", "superci", command, "--dispatcher-server", superci.address, *args],
        capture_output=True, text=True, timeout=30, cwd=superci.root,
    )  # fmt: skip


def notify(superci: Superci, sha: str, *args: str) -> None:
    done = superci.notify(sha, *args)
    assert done.returncode == 0 and "queued" in done.stdout, done.stdout + done.stderr


def make_gate(tmp_path: Path, name: str = "gate") -> Path:
    gate = tmp_path / name
    gate.mkdir()
    return gate


def read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="checking for surviving processes needs /proc"
)


# --- time limits ------------------------------------------------------------------------

HANGING_TEST = """\
import os
import pathlib
import subprocess
import sys
import time
import unittest

PIDS = pathlib.Path({pids!r})
GRANDCHILD = '''
import os, pathlib, signal, sys, time
pids = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: (pids / "grandchild-got-sigterm").touch())
(pids / "grandchild.tmp").write_text(str(os.getpid()))
os.replace(pids / "grandchild.tmp", pids / "grandchild")
time.sleep(120)
'''


class Hangs(unittest.TestCase):
    def test_hangs_with_a_grandchild_that_ignores_sigterm(self):
        (PIDS / "test.tmp").write_text(str(os.getpid()))
        os.replace(PIDS / "test.tmp", PIDS / "test")
        subprocess.Popen([sys.executable, "-c", GRANDCHILD, str(PIDS)])
        time.sleep(120)
"""


@needs_proc
def test_timeout_kills_the_whole_tree_including_a_grandchild_that_ignores_sigterm(
    repo: Repo, superci: Superci, tmp_path: Path
):
    pids = make_gate(tmp_path, "pids")
    hanging = HANGING_TEST.format(pids=str(pids))
    sha = repo.commit({".superci.toml": "timeout = 1\n", "tests/test_hangs.py": hanging})
    start(superci, repo.clone(tmp_path / "runner-a"), runner_args=("--kill-grace", "0.5"))
    notify(superci, sha)

    result = superci.wait_for_result(sha, timeout=30)

    assert result["status"] == "timeout"
    assert "limit of 1s" in result["message"]
    assert result["exit_code"] is None
    test_pid, grandchild_pid = read_int(pids / "test"), read_int(pids / "grandchild")
    assert test_pid is not None and grandchild_pid is not None, "the build never got going"
    assert (pids / "grandchild-got-sigterm").exists()  # it was asked first, and refused
    assert not process_alive(grandchild_pid) and not process_alive(test_pid)
    assert build_processes(sha) == []

    (repo.path / "tests/test_hangs.py").unlink()
    after = repo.commit({".superci.toml": "timeout = 30\n", "tests/test_math.py": PASSING_TEST})
    notify(superci, after)
    next_result = superci.wait_for_result(after, timeout=30)
    assert (next_result["status"], next_result["runner"]) == ("passed", "runner-a")


SHA = "d" * 40


class FakeClock:
    """The dispatcher's monotonic clock, moved by the test."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_bounded(coro: Coroutine[Any, Any, None], limit: float = 20.0) -> None:
    async def main() -> None:
        async with asyncio.timeout(limit):
            await coro

    asyncio.run(main())


#: The kill grace the hand-written runner of DeadlineStage announces.
WEDGED_KILL_GRACE = 60


class DeadlineStage:
    """An in-process dispatcher on real TCP with a fake clock and a watchdog that looks
    every 10 ms, and one hand-driven runner that has started a build with a 1 s limit
    and a 60 s kill grace."""

    def __init__(self, root: Path) -> None:
        self.clock = FakeClock()
        self.store = Store(root / "superci.db")
        self.results = ResultsFolder(root / "test_results")
        # Heartbeats never run out here: this runner is alive, just not stopping its build.
        settings = DispatcherSettings(
            heartbeat_timeout=1e6, build_timeout=3600, heartbeat_check_interval=0.01
        )
        self.dispatcher = Dispatcher(self.store, self.results, settings=settings, clock=self.clock)
        self.runner: Channel | None = None
        self.build: protocol.Build | None = None

    async def __aenter__(self) -> DeadlineStage:
        address = await self.dispatcher.start("127.0.0.1", 0)
        self.runner = await client.connect(address, "runner")
        await self.runner.send(protocol.Register(name="wedged", host="box", pid=1))
        assert isinstance(await self.runner.receive(5), protocol.Registered)
        self.dispatcher.submit(SHA, "main")
        build = await self.runner.receive(5)
        assert isinstance(build, protocol.Build) and build.sha == SHA
        self.build = build
        await self.runner.send(
            protocol.Started(build_id=build.build_id, attempt=build.attempt, timeout=1,
                             kill_grace=WEDGED_KILL_GRACE)
        )  # fmt: skip
        job = self.dispatcher.scheduler.jobs[build.build_id]
        await eventually(
            lambda: job.deadline == self.deadline, what="the runner's limit to be applied"
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.runner is not None:
            await self.runner.close()
        await self.dispatcher.close()
        self.store.close()

    @property
    def deadline(self) -> float:
        return 1000.0 + 1 + WEDGED_KILL_GRACE + defaults.DEADLINE_MARGIN

    async def next_message(self, timeout: float = 5.0) -> protocol.Message:
        assert self.runner is not None
        return await self.runner.receive(timeout)


def test_dispatcher_times_out_a_build_its_heartbeating_runner_never_stops(
    tmp_path: Path,
):
    async def main() -> None:
        async with DeadlineStage(tmp_path) as stage:
            assert stage.build is not None
            stage.clock.now = stage.deadline - 0.5
            with pytest.raises(TimeoutError):  # ~20 watchdog rounds: not overdue yet
                await stage.next_message(timeout=0.2)

            stage.clock.now = stage.deadline + 0.5
            cancel = await stage.next_message()
            assert isinstance(cancel, protocol.Cancel)
            assert (cancel.build_id, cancel.attempt) == (stage.build.build_id, 1)
            assert "time limit" in cancel.reason
            assert stage.store.latest_for(SHA).status == "running"  # type: ignore[union-attr]
            assert stage.runner is not None
            await stage.runner.send(protocol.Heartbeat())  # alive, but never reports back

            # A stop may take the runner's own kill grace (plus the margin), no more.
            stage.clock.now += WEDGED_KILL_GRACE + defaults.DEADLINE_MARGIN + 1
            with pytest.raises(RemoteError, match="did not stop a build"):
                await stage.next_message()

            result = stage.results.read_result(SHA)
            assert result is not None and result["status"] == "timeout"
            assert "overstayed its time limit" in result["message"]
            assert "wedged did not stop it" in result["message"]
            assert stage.store.latest_for(SHA).status == "timeout"  # type: ignore[union-attr]
            assert "wedged" not in stage.dispatcher.scheduler.runners

    run_bounded(main())


def test_a_runner_that_obeys_the_dispatchers_deadline_gets_timeout_recorded_and_stays(
    tmp_path: Path,
):
    async def main() -> None:
        async with DeadlineStage(tmp_path) as stage:
            assert stage.build is not None and stage.runner is not None
            stage.clock.now = stage.deadline + 0.5
            assert isinstance(await stage.next_message(), protocol.Cancel)

            lease = {"build_id": stage.build.build_id, "attempt": stage.build.attempt}
            await stage.runner.send(
                protocol.Result(**lease, status="cancelled", exit_code=None, duration=70.0,
                                output_bytes=0, message="cancelled")
            )  # fmt: skip
            ack = await stage.next_message()
            assert isinstance(ack, protocol.ResultAck) and ack.accepted

            result = stage.results.read_result(SHA)
            assert result is not None and result["status"] == "timeout"
            assert "overstayed its time limit" in result["message"]
            other = "e" * 40
            stage.dispatcher.submit(other, "main")
            build = await stage.next_message()  # the runner is free for the next build
            assert isinstance(build, protocol.Build) and build.sha == other
            await stage.runner.send(
                protocol.Result(build_id=build.build_id, attempt=build.attempt, status="passed",
                                exit_code=0, duration=1.0, output_bytes=0, message="ok")
            )  # fmt: skip
            ack = await stage.next_message()
            assert isinstance(ack, protocol.ResultAck) and ack.accepted
            assert stage.results.read_result(other)["status"] == "passed"  # type: ignore[index]

    run_bounded(main())


# --- cancel -----------------------------------------------------------------------------


def test_cancel_of_a_queued_build_ends_it_at_once_and_it_never_runs(
    repo: Repo, superci: Superci, tmp_path: Path
):
    queued = repo.commit({"tests/test_math.py": PASSING_TEST})
    superci.dispatcher()
    notify(superci, queued)  # no runner yet: it waits in the queue

    done = cli(superci, "cancel", queued)

    assert done.returncode == 0, done.stderr
    assert "cancelled" in done.stdout
    result = superci.result(queued)  # written before the reply: no waiting
    assert result is not None and result["status"] == "cancelled"
    assert result["attempt"] == 0 and result["runner"] is None

    later = repo.commit({"tests/test_math.py": PASSING_TEST + "# later\n"})
    superci.runner(repo.clone(tmp_path / "runner-a"), "runner-a", *RUNNER_OPTIONS)
    notify(superci, later)
    assert superci.wait_for_result(later)["status"] == "passed"
    assert superci.result(queued)["status"] == "cancelled"  # type: ignore[index]
    assert not (superci.results / queued / "output.log").exists()  # it never started

    again = cli(superci, "cancel", queued)
    assert again.returncode == 1
    assert "already finished (cancelled); nothing to cancel" in again.stdout


def test_cancel_of_a_running_build_stops_it_and_the_runner_takes_the_next_build(
    repo: Repo, superci: Superci, tmp_path: Path
):
    gate = make_gate(tmp_path)
    running = repo.commit({"tests/test_gated.py": GATED_TEST.format(gate=str(gate))})
    start(superci, repo.clone(tmp_path / "runner-a"))
    notify(superci, running)
    wait_until(lambda: (gate / "started-1").exists(), 30, "the build to start")

    done = cli(superci, "cancel", running)

    assert done.returncode == 0, done.stderr
    assert "being stopped on runner runner-a" in done.stdout
    result = superci.wait_for_result(running, timeout=30)
    assert result["status"] == "cancelled"
    assert result["message"] == "cancelled by request"
    assert "after the gate" not in superci.output(running)
    if Path("/proc").exists():
        assert build_processes(running) == []

    (repo.path / "tests/test_gated.py").unlink()
    following = repo.commit({"tests/test_math.py": PASSING_TEST})
    notify(superci, following)
    assert superci.wait_for_result(following, timeout=30)["runner"] == "runner-a"
    assert superci.result(following)["status"] == "passed"  # type: ignore[index]

    finished = cli(superci, "cancel", following)
    assert finished.returncode == 1
    assert "already finished (passed); nothing to cancel" in finished.stdout


def test_cancel_of_an_unknown_commit_says_so_and_fails(superci: Superci):
    superci.dispatcher()

    done = cli(superci, "cancel", "f" * 40)

    assert done.returncode == 1
    assert f"no build of {'f' * 40} is known" in done.stdout


# --- live logs and the log cap --------------------------------------------------------


@pytest.mark.parametrize(("outcome", "exit_code"), [("passed", 0), ("failed", 1)])
def test_a_running_builds_output_is_in_output_log_and_logs_follow_streams_it_live(
    repo: Repo, superci: Superci, tmp_path: Path, outcome: str, exit_code: int
):
    gate = make_gate(tmp_path)
    files = {"tests/test_gated.py": GATED_TEST.format(gate=str(gate))}
    if outcome == "failed":
        files["tests/test_zz_broken.py"] = FAILING_TEST  # runs after the gate opens
    sha = repo.commit(files)
    start(superci, repo.clone(tmp_path / "runner-a"))
    notify(superci, sha)
    wait_until(lambda: (gate / "started-1").exists(), 30, "the test to print and wait")

    # Printed just before the test wrote started-1; the build cannot end until the gate opens.
    wait_until(lambda: "before the gate" in superci.output(sha), 3, "the line in output.log")
    assert superci.result(sha) is None
    follow_out, follow_err = tmp_path / "follow.out", tmp_path / "follow.err"
    with open(follow_out, "wb") as out, open(follow_err, "wb") as err:
        follower = subprocess.Popen(
            [sys.executable, "-m", "superci", "logs", "--follow", "--dispatcher-server",
             superci.address, sha],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=tmp_path,
        )  # fmt: skip
    try:
        wait_until(lambda: b"before the gate" in follow_out.read_bytes(), 30, "logs --follow")
        assert follower.poll() is None and superci.result(sha) is None  # still running

        (gate / "open").touch()
        assert follower.wait(timeout=30) == exit_code, follow_err.read_text()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(timeout=10)

    result = superci.wait_for_result(sha)
    assert result["status"] == outcome
    log = (superci.results / sha / "output.log").read_bytes()
    assert follow_out.read_bytes() == log  # everything, once, in order
    assert b"after the gate" in log
    assert f"superci: build {outcome}" in follow_err.read_text()
    printed = cli(superci, "logs", sha)
    assert printed.returncode == 0 and printed.stdout.encode() == log


CHATTY_TEST = """\
import sys
import unittest


class Chatty(unittest.TestCase):
    def test_prints_a_megabyte(self):
        filler = "x" * 90
        for i in range(11000):
            sys.stdout.write(f"{i:08d} {filler}\\n")
        sys.stdout.write("LAST LINE OF THE TEST\\n")
        sys.stdout.flush()
"""


def test_a_build_printing_past_the_cap_keeps_a_bounded_log_with_marker_and_summary(
    repo: Repo, superci: Superci, tmp_path: Path
):
    cap = 65536
    sha = repo.commit({"tests/test_chatty.py": CHATTY_TEST})
    start(superci, repo.clone(tmp_path / "runner-a"), "--max-log-bytes", str(cap))
    notify(superci, sha)

    result = superci.wait_for_result(sha, timeout=30)

    log = (superci.results / sha / "output.log").read_bytes()
    assert len(log) <= cap
    text = log.decode()
    markers = MARKER_RE.findall(text)
    assert len(markers) == 1
    dropped, noted_cap = map(int, markers[0])
    assert noted_cap == cap and dropped > 11000 * 100 - cap
    assert text.startswith(f"superci: building {sha}")  # the head
    assert "LAST LINE OF THE TEST" in text  # the tail, with the summaries
    assert re.search(r"^Ran 1 test in [\d.]+s\n\nOK$", text, re.M)
    assert text.endswith("superci: tests passed (exit code 0)\n")
    assert result["status"] == "passed"
    assert result["tests"] == {"run": 1, "passed": 1, "failed": 0, "errors": 0, "skipped": 0}


# --- test counts and JUnit reports ----------------------------------------------------

MIXED_UNITTEST = """\
import unittest


class Mixed(unittest.TestCase):
    def test_passes(self):
        pass

    def test_fails(self):
        self.assertEqual(1 + 1, 3)

    def test_errors(self):
        raise RuntimeError("boom")

    @unittest.skip("not today")
    def test_skipped(self):
        pass
"""

MIXED_PYTEST = """\
import pytest


@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")


def test_passes():
    pass


def test_fails():
    assert 1 + 1 == 3


def test_errors_in_setup(broken):
    pass


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass
"""

ONE_OF_EACH = {"run": 4, "passed": 1, "failed": 1, "errors": 1, "skipped": 1}


def junit_cases(path: Path) -> dict[str, str]:
    """Test name → outcome, as a JUnit report read with the standard library says."""
    cases = {}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome = next(
            (tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None), "pass"
        )
        cases[f"{case.get('classname')}.{case.get('name')}"] = outcome
    return cases


def test_a_unittest_builds_result_has_its_counts_and_failing_test_names(
    repo: Repo, superci: Superci, tmp_path: Path
):
    sha = repo.commit({"tests/test_mixed.py": MIXED_UNITTEST})
    start(superci, repo.clone(tmp_path / "runner-a"))
    notify(superci, sha)

    result = superci.wait_for_result(sha)

    assert result["status"] == "failed" and result["exit_code"] == 1
    assert result["tests"] == ONE_OF_EACH
    assert sorted(result["failures"]) == [
        "test_mixed.Mixed.test_errors",
        "test_mixed.Mixed.test_fails",
    ]
    assert not (superci.results / sha / "junit.xml").exists()  # unittest writes none


def test_a_pytest_builds_result_has_its_counts_and_a_junit_report_that_matches(
    repo: Repo, superci: Superci, tmp_path: Path
):
    sha = repo.commit(
        {".superci.toml": 'command = "python -m pytest -q"\n', "tests/test_mixed.py": MIXED_PYTEST}
    )  # fmt: skip
    start(superci, repo.clone(tmp_path / "runner-a"))
    notify(superci, sha)

    result = superci.wait_for_result(sha)

    assert result["status"] == "failed"
    assert result["tests"] == ONE_OF_EACH
    cases = junit_cases(superci.results / sha / "junit.xml")
    assert cases == {
        "tests.test_mixed.test_passes": "pass",
        "tests.test_mixed.test_fails": "failure",
        "tests.test_mixed.test_errors_in_setup": "error",
        "tests.test_mixed.test_skipped": "skipped",
    }
    assert sorted(result["failures"]) == sorted(
        name for name, outcome in cases.items() if outcome in ("failure", "error")
    )
    assert "1 failed, 1 passed, 1 skipped, 1 error" in superci.output(sha)


def test_a_repository_that_names_its_own_junit_report_gets_that_report_stored(
    repo: Repo, superci: Superci, tmp_path: Path
):
    config = (
        'command = "python -m pytest -q -o junit_suite_name=own-report'
        ' --junitxml=reports/junit.xml"\n'
        'junit = "reports/junit.xml"\n'
    )
    sha = repo.commit({".superci.toml": config, "tests/test_mixed.py": MIXED_PYTEST})
    start(superci, repo.clone(tmp_path / "runner-a"))
    notify(superci, sha)

    result = superci.wait_for_result(sha)

    stored = superci.results / sha / "junit.xml"
    suites = list(ElementTree.parse(stored).getroot().iter("testsuite"))
    assert [suite.get("name") for suite in suites] == ["own-report"]
    assert len(junit_cases(stored)) == 4
    assert result["tests"] == ONE_OF_EACH


# --- the build's environment and workspace --------------------------------------------

ENVIRONMENT_TEST = """\
import json
import os
import pathlib
import subprocess
import unittest

NAMES = ["CI", "SUPERCI", "SUPERCI_COMMIT", "SUPERCI_BRANCH", "SUPERCI_BUILD_ID",
         "SUPERCI_ATTEMPT"]


class Environment(unittest.TestCase):
    def test_the_build_says_it_is_ci_and_which_build_it_is(self):
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        self.assertEqual(os.environ["CI"], "true")
        self.assertEqual(os.environ["SUPERCI"], "1")
        self.assertEqual(os.environ["SUPERCI_COMMIT"], head)
        self.assertEqual(os.environ["SUPERCI_ATTEMPT"], "1")
        self.assertTrue(os.environ["SUPERCI_BUILD_ID"].isdigit())
        pathlib.Path({out!r}).write_text(json.dumps({{n: os.environ[n] for n in NAMES}}))
"""


def test_the_build_environment_names_ci_the_commit_branch_build_and_attempt(
    repo: Repo, superci: Superci, tmp_path: Path
):
    out = tmp_path / "environment.json"
    sha = repo.commit({"tests/test_environment.py": ENVIRONMENT_TEST.format(out=str(out))})
    start(superci, repo.clone(tmp_path / "runner-a"))
    notify(superci, sha, "--branch", "feature/env")

    result = superci.wait_for_result(sha)

    assert result["status"] == "passed", superci.output(sha)
    assert json.loads(out.read_text()) == {
        "CI": "true",
        "SUPERCI": "1",
        "SUPERCI_COMMIT": sha,
        "SUPERCI_BRANCH": "feature/env",
        "SUPERCI_BUILD_ID": str(result["build_id"]),
        "SUPERCI_ATTEMPT": "1",
    }


MESSY_TEST = """\
import pathlib
import unittest


class MakesAMess(unittest.TestCase):
    def test_leaves_files_behind(self):
        pathlib.Path("leftover.txt").write_text("untracked")
        pathlib.Path("build").mkdir()
        pathlib.Path("build/artifact.bin").write_bytes(b"ignored")
        pathlib.Path("cache.tmp").write_text("ignored too")
        pathlib.Path("README").write_text("edited by a test")
"""

CLEAN_TEST = """\
import pathlib
import unittest


class StartsClean(unittest.TestCase):
    def test_nothing_of_the_previous_build_is_left(self):
        for name in ("leftover.txt", "build", "cache.tmp"):
            self.assertFalse(pathlib.Path(name).exists(), name + " survived the reset")
        self.assertEqual(pathlib.Path("README").read_text(), "as committed\\n")
"""


def test_files_a_build_leaves_behind_are_gone_before_the_next_build_on_that_runner(
    repo: Repo, superci: Superci, tmp_path: Path
):
    files = {".gitignore": "build/\n*.tmp\n", "README": "as committed\n"}
    messy = repo.commit({**files, "tests/test_mess.py": MESSY_TEST})
    clone = repo.clone(tmp_path / "runner-a")
    start(superci, clone)
    notify(superci, messy)
    assert superci.wait_for_result(messy)["status"] == "passed"
    assert (clone / "leftover.txt").exists() and (clone / "build/artifact.bin").exists()

    (repo.path / "tests/test_mess.py").unlink()
    clean = repo.commit({"tests/test_clean.py": CLEAN_TEST})
    notify(superci, clean)

    result = superci.wait_for_result(clean)
    assert result["status"] == "passed", superci.output(clean)
    assert result["tests"]["run"] == 1
    assert result["runner"] == superci.result(messy)["runner"] == "runner-a"  # type: ignore[index]


# --- seeing the system ------------------------------------------------------------------


def table_rows(text: str, title: str) -> list[list[str]]:
    block = next(b for b in text.split("\n\n") if b.startswith(title))
    # Cells are two or more spaces apart (subjects and counts have single spaces).
    return [re.split(r" {2,}", line) for line in block.splitlines()[2:]]  # title, header


def test_status_and_show_describe_the_runners_the_queue_the_builds_and_failing_tests(
    repo: Repo, superci: Superci, tmp_path: Path
):
    gate = make_gate(tmp_path)
    running = repo.commit({"tests/test_gated.py": GATED_TEST.format(gate=str(gate))})
    (repo.path / "tests/test_gated.py").unlink()
    failing = repo.commit({"tests/test_broken.py": FAILING_TEST})
    start(superci, repo.clone(tmp_path / "runner-a"))
    notify(superci, running)
    wait_until(lambda: (gate / "started-1").exists(), 30, "the first build to start")
    notify(superci, failing)  # the only runner is busy: it waits

    busy = cli(superci, "status")
    assert busy.returncode == 0, busy.stderr
    [runner] = table_rows(busy.stdout, "Runners (1)")
    assert runner[:4] == ["runner-a", socket.gethostname(), "busy", running[:12]]
    assert re.fullmatch(r"\d+\.\ds", runner[4])
    waiting = "the only runner, runner-a, is busy; next in line"
    assert table_rows(busy.stdout, "Queue (1)") == [
        ["2", failing[:12], "-", "main", "0", "-", waiting]
    ]
    # Notified from outside a clone: no subject or author until the runner says them.
    assert [row[:7] for row in table_rows(busy.stdout, "Last builds")] == [
        ["2", failing[:12], "-", "main", "-", "-", "queued"],
        ["1", running[:12], "-", "main", "-", "-", "running"],
    ]
    document = json.loads(cli(superci, "status", "--json").stdout)
    assert set(document) == {"runners", "queue", "queued", "builds"}
    assert [(r["name"], r["state"], r["build"]) for r in document["runners"]] == [
        ("runner-a", "busy", running)
    ]
    assert document["runners"][0]["since_heartbeat"] < 5
    assert [q["sha"] for q in document["queue"]] == [failing]
    assert {b["sha"]: b["status"] for b in document["builds"]} == {
        running: "running",
        failing: "queued",
    }

    (gate / "open").touch()
    superci.wait_for_result(running)
    superci.wait_for_result(failing)

    idle = cli(superci, "status")
    [runner] = table_rows(idle.stdout, "Runners (1)")
    assert runner[:4] == ["runner-a", socket.gethostname(), "idle", "-"]
    assert table_rows(idle.stdout, "Queue (0)") == []
    last = {row[1]: row for row in table_rows(idle.stdout, "Last builds")}
    assert last[running[:12]][4:7] == ["change", "Test Author", "passed"]
    assert last[failing[:12]][4:7] == ["change", "Test Author", "failed"]
    assert re.fullmatch(r"\d+\.\ds", last[failing[:12]][7])
    assert last[failing[:12]][8:] == [
        "runner-a", "1", "0 passed, 1 failed, 0 errors, 0 skipped",
        "tests failed (exit code 1)",  # the reason
    ]  # fmt: skip

    shown = cli(superci, "show", failing)
    assert shown.returncode == 0, shown.stderr
    assert "status   failed: tests failed (exit code 1)" in shown.stdout
    assert "failing  (1)\n  test_broken.Failing.test_broken" in shown.stdout
    [tests] = [line for line in shown.stdout.splitlines() if line.startswith("tests ")]
    assert tests == "tests    0 passed, 1 failed, 0 errors, 0 skipped"

    unknown = cli(superci, "show", "f" * 40)
    assert unknown.returncode == 1
    assert f"no build of {'f' * 40} is known" in unknown.stderr


# --- no verdict without evidence -------------------------------------------------------

PYTEST_STYLE = """\
import pytest


@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")


def test_x():
    assert 1 + 1 == 2


def test_errors_once(broken):
    pass


def test_errors_twice(broken):
    pass
"""

SKIPPED_ONLY = """\
import unittest


class Later(unittest.TestCase):
    @unittest.skip("not yet")
    def test_later(self):
        pass
"""


def test_pytest_style_tests_without_config_run_with_pytest_and_every_line_counts_errors(
    repo: Repo, superci: Superci, tmp_path: Path
):
    sha = repo.commit({"tests/test_plain.py": PYTEST_STYLE})
    start(superci, repo.clone(tmp_path / "runner-a"))
    notify(superci, sha)

    result = superci.wait_for_result(sha)

    assert (result["status"], result["exit_code"]) == ("failed", 1), superci.output(sha)
    assert result["tests"] == {"run": 3, "passed": 1, "failed": 0, "errors": 2, "skipped": 0}
    log = superci.output(sha)
    assert (
        "superci: no command in .superci.toml: using pytest, as tests/test_plain.py has"
        " pytest-style tests (def test_x)\nsuperci: $ python -m pytest\n"
    ) in log
    assert (superci.results / sha / "junit.xml").exists()
    counts = "1 passed, 0 failed, 2 errors, 0 skipped"
    status = cli(superci, "status")
    [row] = table_rows(status.stdout, "Last builds")
    assert row[:7] == ["1", sha[:12], "-", "main", "change", "Test Author", "failed"]
    assert row[10] == counts
    shown = cli(superci, "show", sha)
    assert f"tests    {counts}\n" in shown.stdout
    assert "status   failed: tests failed (exit code 1)" in shown.stdout


def test_builds_without_evidence_that_a_test_ran_are_errors_unless_allowed(
    repo: Repo, superci: Superci, tmp_path: Path
):
    typo = repo.commit(
        {".superci.toml": 'comand = "python -m pytest"\n', "tests/test_a.py": PASSING_TEST}
    )
    (repo.path / "tests/test_a.py").unlink()
    (repo.path / ".superci.toml").unlink()
    empty = repo.commit({"tests/__init__.py": "", "tests/helpers.py": "X = 1\n"})
    allowed = repo.commit({".superci.toml": "allow_no_tests = true\n"})
    collected_none = repo.commit({".superci.toml": 'command = "python -m pytest -q tests"\n'})
    (repo.path / ".superci.toml").unlink()
    skipped = repo.commit({"tests/test_later.py": SKIPPED_ONLY})
    start(superci, repo.clone(tmp_path / "runner-a"))
    for sha in (typo, empty, allowed, collected_none, skipped):
        notify(superci, sha)

    results = {sha: superci.wait_for_result(sha) for sha in (typo, empty, allowed, collected_none,
                                                              skipped)}  # fmt: skip

    assert results[typo]["status"] == "error"
    assert "unknown key 'comand', did you mean 'command'?" in results[typo]["message"]
    assert results[empty]["status"] == "error"
    assert results[empty]["message"].startswith("no tests ran (exit code 0); set allow_no_tests")
    assert "superci: $ python -m unittest discover -s tests\n" in superci.output(empty)
    assert (results[allowed]["status"], results[allowed]["message"]) == (
        "passed",
        "no tests ran (exit code 0), which .superci.toml allows (allow_no_tests)",
    )
    assert (results[collected_none]["status"], results[collected_none]["exit_code"]) == ("error", 5)
    assert results[collected_none]["message"].startswith("no tests ran (exit code 5)")
    assert results[skipped]["status"] == "error"
    assert results[skipped]["message"].startswith("no tests ran (1 skipped, exit code 0)")
    shown = cli(superci, "show", empty)
    assert "status   error: no tests ran (exit code 0)" in shown.stdout


def test_a_command_that_hides_its_failures_behind_exit_code_0_still_fails(
    repo: Repo, superci: Superci, tmp_path: Path
):
    config = 'command = "python -m pytest -q tests || true"\n'
    files = {"tests/test_a.py": PASSING_TEST, "tests/test_b.py": FAILING_TEST}
    sha = repo.commit({".superci.toml": config, **files})
    start(superci, repo.clone(tmp_path / "runner-a"))
    notify(superci, sha)

    result = superci.wait_for_result(sha)

    assert (result["status"], result["exit_code"]) == ("failed", 0), result
    assert result["message"] == (
        "1 test failed or errored by the JUnit report, although the test command exited 0"
    )
    assert result["tests"]["failed"] == 1
