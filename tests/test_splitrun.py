"""A suite split over real test processes: pytest with superci's plugin and unittest with
superci's loader, pulling batches from a real batch source on a unix socket, over a real
:class:`~superci.split.Split` held in this process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import async_test
from support import eventually

import superci
from superci.split import Batch, Done, Split, TestOutcome, TestResult, Wait
from superci.splitclient import COLLECT_ENV, PARTICIPANT_ENV, SOCKET_ENV
from superci.splitsource import BatchSource, LocalSplit

ROOT = Path(superci.__file__).resolve().parent.parent
#: Bound for a whole split of a few seconds of tests, reached only when broken.
SPLIT_WAIT = 30.0
PYTEST = [
    sys.executable,
    "-m",
    "pytest",
    "-q",
    "-p",
    "superci.splitpytest",
    "-p",
    "no:cacheprovider",
]
UNITTEST = [sys.executable, "-m", "superci.splitunittest"]


def sleeper(name: str, seconds: float) -> str:
    return f"def {name}():\n    time.sleep({seconds})\n\n\n"


def pytest_project(root: Path, files: dict[str, str]) -> Path:
    """A repository of pytest tests (its own rootdir, so ids are relative to it)."""
    (root / "pytest.ini").write_text("[pytest]\n")
    for name, body in files.items():
        path = root / "tests" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("import os\nimport time\n\n\n" + body)
    return root


def twenty_four(root: Path) -> tuple[Path, dict[str, float]]:
    """24 sleep tests of 0.1 to 0.56 s in four files, and their durations by id."""
    durations: dict[str, float] = {}
    files: dict[str, str] = {}
    for i in range(24):
        name, seconds = f"test_{i:02}", round(0.1 + 0.02 * i, 2)
        file = f"test_part{i % 4}.py"
        files[file] = files.get(file, "") + sleeper(name, seconds)
        durations[f"tests/{file}::{name}"] = seconds
    project = pytest_project(root, files)
    (project / "tests" / "conftest.py").write_text(SESSION_FIXTURE)
    return project, durations


#: A session fixture that notes each set-up and tear-down with the participant's name.
SESSION_FIXTURE = f"""\
import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def expensive():
    with open("fixture.log", "a") as log:
        log.write("setup " + os.environ["{PARTICIPANT_ENV}"] + "\\n")
    yield
    with open("fixture.log", "a") as log:
        log.write("teardown " + os.environ["{PARTICIPANT_ENV}"] + "\\n")
"""


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (SOCKET_ENV, COLLECT_ENV)}
    env["PYTHONPATH"] = str(ROOT)
    return env | extra


def collect(project: Path, command: list[str]) -> dict[str, object]:
    """What a test process collects, written by superci's collection mode."""
    out = project / "collected.json"
    done = subprocess.run(
        [*command], cwd=project, env=environment(**{COLLECT_ENV: str(out)}),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.exists(), done.stdout + done.stderr
    document: dict[str, object] = json.loads(out.read_text())
    return document


class Recording(LocalSplit):
    """The in-process split, also keeping every result it accepted, in order."""

    def __init__(self, split: Split) -> None:
        super().__init__(split)
        self.accepted: list[TestResult] = []
        self.batches: Counter[str] = Counter()  # batches handed to each participant

    async def next_batch(self, participant: str, wait: bool) -> Batch | Wait | Done:
        answer = await super().next_batch(participant, wait)
        self.batches[participant] += isinstance(answer, Batch)
        return answer

    async def report(self, participant: str, batch_id: int, result: TestResult) -> None:
        await super().report(participant, batch_id, result)
        self.accepted.append(result)


class Participants:
    """Test processes taking part, each under a name of its own; with ``relaunch``, one
    that dies while the split goes on is started again (as a runner will), up to a bound."""

    def __init__(self, project: Path, command: list[str], socket: Path, backend: Recording):
        self.project, self.command, self.socket, self.backend = project, command, socket, backend
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.logs: dict[str, bytes] = {}

    async def start(self, name: str) -> asyncio.subprocess.Process:
        env = environment(**{SOCKET_ENV: str(self.socket), PARTICIPANT_ENV: name})
        process = await asyncio.create_subprocess_exec(
            *self.command, cwd=self.project, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        self.processes[name] = process
        return process

    async def run(self, name: str, relaunch: int = 0) -> None:
        for launch in range(relaunch + 1):
            who = f"{name}.{launch}"
            process = await self.start(who)
            out, _ = await process.communicate()
            self.logs[who] = out
            if self.backend.split.done or self.backend.split.ended:
                return
            await eventually(lambda w=who: w not in self.backend.split.participants)

    def output(self) -> str:
        return "\n".join(
            f"--- {who}\n{out.decode(errors='replace')}" for who, out in self.logs.items()
        )

    async def stop(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private folder for the socket (a unix socket path has at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sci-split-") as folder:
        yield Path(folder)


async def split_over(
    project: Path, command: list[str], split: Split, socket_dir: Path, names: list[str],
    relaunch: int = 0,
) -> tuple[Recording, Participants]:  # fmt: skip
    """Run ``split`` with one test process per name until every test has its result."""
    backend = Recording(split)
    async with BatchSource(socket_dir / "split.sock", backend) as source:
        team = Participants(project, command, source.path, backend)
        try:
            async with asyncio.timeout(SPLIT_WAIT):
                await asyncio.gather(*(team.run(name, relaunch) for name in names))
        except TimeoutError:
            raise AssertionError(f"the split did not finish:\n{team.output()}") from None
        finally:
            await team.stop()
    assert split.done, team.output()
    return backend, team


def assert_each_reported_once(
    backend: Recording, collected: list[str], unreported: tuple[str, ...] = ()
) -> None:
    """Every collected test has one result; each reported one was reported once."""
    counts = Counter(r.test for r in backend.accepted)
    assert all(n == 1 for n in counts.values()), counts
    assert set(counts) == set(collected) - set(unreported)
    assert set(backend.split.results) == set(collected)


# --- collection ---------------------------------------------------------------------------


def test_pytest_collection_mode_writes_the_ids_and_runs_nothing(tmp_path):
    project = pytest_project(tmp_path, {"test_a.py": "def test_x():\n    os._exit(5)\n"})
    (project / "tests" / "test_broken.py").write_text("import nowhere_to_be_found\n")
    document = collect(project, PYTEST)
    assert document["tests"] == ["tests/test_a.py::test_x"]
    errors = document["errors"]
    assert isinstance(errors, list) and errors[0]["node"] == "tests/test_broken.py"
    assert "nowhere_to_be_found" in errors[0]["message"]


def test_unittest_list_mode_writes_the_ids_as_discovery_finds_them(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_u.py").write_text(
        "import unittest\n\nclass T(unittest.TestCase):\n"
        "    def test_b(self): pass\n    def test_a(self): pass\n"
    )
    document = collect(tmp_path, UNITTEST)
    assert document["tests"] == ["test_u.T.test_a", "test_u.T.test_b"]


# --- pytest participants ------------------------------------------------------------------


@async_test(limit=60)
async def test_four_pytest_processes_share_24_tests_and_finish_together(tmp_path, socket_dir):
    project, durations = twenty_four(tmp_path)
    collected = collect(project, PYTEST)["tests"]
    assert isinstance(collected, list) and sorted(collected) == sorted(durations)
    split = Split(collected, durations, width=4)
    backend, team = await split_over(project, PYTEST, split, socket_dir, ["p1", "p2", "p3", "p4"])
    assert_each_reported_once(backend, collected)
    summary = split.summary()
    assert summary.summary.counts == {
        "run": 24,
        "passed": 24,
        "failed": 0,
        "errors": 0,
        "skipped": 0,
    }
    assert sorted(summary.ran) == ["p1.0", "p2.0", "p3.0", "p4.0"]
    assert sum(len(tests) for tests in summary.ran.values()) == 24
    busy = summary.busy.values()
    assert max(busy) - min(busy) < 1.5, summary.busy
    ends = summary.last_result.values()
    assert max(ends) - min(ends) < 1.5, summary.last_result
    for out in team.logs.values():
        assert b"passed" in out, team.output()
    assert all(n >= 2 for n in backend.batches.values()), backend.batches
    fixture = Counter((project / "fixture.log").read_text().splitlines())
    assert fixture == {f"{what} p{n}.0": 1 for what in ("setup", "teardown") for n in range(1, 5)}


@async_test(limit=60)
async def test_a_pytest_process_killed_mid_batch_costs_only_its_batch(tmp_path, socket_dir):
    project, durations = twenty_four(tmp_path)
    collected = collect(project, PYTEST)["tests"]
    assert isinstance(collected, list)
    split = Split(collected, durations, width=3)
    backend = Recording(split)
    async with BatchSource(socket_dir / "split.sock", backend) as source:
        team = Participants(project, PYTEST, source.path, backend)
        try:
            runs = [asyncio.ensure_future(team.run(name)) for name in ("p1", "p2", "p3")]

            def mid_batch() -> bool:
                reported = any(r.participant == "p1.0" for r in backend.accepted)
                return reported and any(
                    t not in split.results for b in split.held("p1.0") for t in b.tests
                )

            await eventually(mid_batch, timeout=SPLIT_WAIT, what="p1 to be mid-batch")
            held = [t for b in split.held("p1.0") for t in b.tests if t not in split.results]
            team.processes["p1.0"].send_signal(signal.SIGKILL)
            async with asyncio.timeout(SPLIT_WAIT):
                await asyncio.gather(*runs)
        finally:
            await team.stop()
    assert_each_reported_once(backend, collected)
    assert all(split.results[t].outcome == TestOutcome.PASSED for t in collected)
    kept = {r.test for r in backend.accepted if r.participant == "p1.0"}
    assert kept and {t for t in collected if split.results[t].participant == "p1.0"} == kept
    lost = [t for t in held if t not in kept]  # what it held and had not reported when killed
    assert lost and all(split.results[t].participant in ("p2.0", "p3.0") for t in lost)


@async_test(limit=60)
async def test_a_test_that_kills_its_pytest_process_fails_alone(tmp_path, socket_dir):
    files = {
        "test_crash.py": "def test_crash():\n    os._exit(3)\n\n\n" + sleeper("test_after", 0.05),
        "test_fine.py": "".join(sleeper(f"test_{i}", 0.05) for i in range(6)),
    }
    project = pytest_project(tmp_path, files)
    collected = collect(project, PYTEST)["tests"]
    assert isinstance(collected, list) and len(collected) == 8
    split = Split(collected, {"tests/test_crash.py::test_crash": 1.0}, width=2)
    backend, team = await split_over(project, PYTEST, split, socket_dir, ["p1", "p2"], 3)
    assert_each_reported_once(backend, collected, unreported=("tests/test_crash.py::test_crash",))
    crash = split.results["tests/test_crash.py::test_crash"]
    assert crash.outcome == TestOutcome.ERROR
    assert crash.message.startswith(
        "tests/test_crash.py::test_crash: the test process died while running it, 2 times"
    )
    assert split.summary().summary.counts == {
        "run": 8,
        "passed": 7,
        "failed": 0,
        "errors": 1,
        "skipped": 0,
    }


@async_test(limit=60)
async def test_tests_a_pytest_process_cannot_report_are_errors_naming_them(tmp_path, socket_dir):
    files = {"test_a.py": sleeper("test_ok", 0.01) + sleeper("test_silent", 0.01)}
    project = pytest_project(tmp_path, files)
    (project / "tests" / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.hookimpl(tryfirst=True)\n"
        "def pytest_runtest_protocol(item, nextitem):\n"
        "    if item.name == 'test_silent':\n        return True  # runs and reports nothing\n"
    )
    collected = collect(project, PYTEST)["tests"]
    assert isinstance(collected, list)
    gone = "tests/test_a.py::test_removed_since_collection"
    split = Split([*collected, gone], {}, width=1, divisor=0.5)
    backend, team = await split_over(project, PYTEST, split, socket_dir, ["p1"])
    assert split.results["tests/test_a.py::test_ok"].outcome == TestOutcome.PASSED
    silent = split.results["tests/test_a.py::test_silent"]
    assert (silent.outcome, silent.message) == (
        TestOutcome.ERROR, "tests/test_a.py::test_silent: collected but never reported by p1.0"
    )  # fmt: skip
    assert split.results[gone] == TestResult(
        gone, TestOutcome.ERROR, 0.0,
        f"{gone}: asked for, but this test process did not collect it", "p1.0",
    )  # fmt: skip


# --- unittest participants ----------------------------------------------------------------

UNITTEST_SUITE = """\
import os
import time
import unittest


class Shared(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ready = True
        with open("class.log", "a") as log:
            log.write(os.environ["SUPERCI_SPLIT_PARTICIPANT"] + "\\n")

{sleepers}

class Outcomes(unittest.TestCase):
    def test_fails(self):
        self.assertEqual(1, 2)

    def test_errors(self):
        raise RuntimeError("boom")

    @unittest.skip("not today")
    def test_skipped(self):
        pass

    @unittest.expectedFailure
    def test_expected_to_fail(self):
        self.assertEqual(1, 2)

    def test_subtest_fails(self):
        for i in range(2):
            with self.subTest(i=i):
                self.assertEqual(i, 0)


class BrokenSetUp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        raise RuntimeError("no database")

    def test_needs_the_database(self):
        pass
"""


def unittest_project(root: Path, extra: str = "") -> Path:
    sleepers = "".join(
        f"    def test_sleep_{i:02}(self):\n        time.sleep(0.2)\n        assert self.ready\n\n"
        for i in range(12)
    )
    (root / "tests").mkdir()
    (root / "tests" / "test_u.py").write_text(UNITTEST_SUITE.format(sleepers=sleepers) + extra)
    return root


@async_test(limit=60)
async def test_two_unittest_processes_share_a_suite_with_its_fixtures(tmp_path, socket_dir):
    project = unittest_project(tmp_path)
    collected = collect(project, UNITTEST)["tests"]
    assert isinstance(collected, list) and len(collected) == 18
    split = Split(collected, {}, width=2)
    backend, team = await split_over(project, UNITTEST, split, socket_dir, ["u1", "u2"])
    assert_each_reported_once(backend, collected)
    results = split.results
    outcome = {t.rsplit(".", 1)[1]: r.outcome for t, r in results.items()}
    assert outcome["test_fails"] == outcome["test_subtest_fails"] == TestOutcome.FAILED
    assert outcome["test_errors"] == outcome["test_needs_the_database"] == TestOutcome.ERROR
    assert outcome["test_skipped"] == outcome["test_expected_to_fail"] == TestOutcome.SKIPPED
    assert "RuntimeError: boom" in results["test_u.Outcomes.test_errors"].message
    needs = results["test_u.BrokenSetUp.test_needs_the_database"].message
    assert needs.startswith("test_u.BrokenSetUp.test_needs_the_database: not run: ")
    assert "RuntimeError: no database" in needs
    summary = split.summary()
    assert summary.summary.counts == {
        "run": 18,
        "passed": 12,
        "failed": 2,
        "errors": 2,
        "skipped": 2,
    }
    assert sorted(summary.ran) == ["u1.0", "u2.0"], team.output()
    assert b"Ran " in team.logs["u1.0"] and b"Ran " in team.logs["u2.0"]
    assert min(backend.batches.values()) >= 2, backend.batches
    assert sorted((project / "class.log").read_text().split()) == ["u1.0", "u2.0"]


@async_test(limit=60)
async def test_a_test_that_kills_its_unittest_process_fails_alone(tmp_path, socket_dir):
    crash = "\n\nclass Crash(unittest.TestCase):\n    def test_exit(self):\n        os._exit(4)\n"
    project = unittest_project(tmp_path, crash)
    collected = collect(project, UNITTEST)["tests"]
    assert isinstance(collected, list) and "test_u.Crash.test_exit" in collected
    split = Split(collected, {"test_u.Crash.test_exit": 5.0}, width=2)
    backend, team = await split_over(project, UNITTEST, split, socket_dir, ["u1", "u2"], 3)
    assert_each_reported_once(backend, collected, unreported=("test_u.Crash.test_exit",))
    crashed = split.results["test_u.Crash.test_exit"]
    assert (
        crashed.outcome == TestOutcome.ERROR and "died while running it, 2 times" in crashed.message
    )
    assert split.summary().summary.counts["passed"] == 12


def test_the_unittest_loader_without_a_source_says_what_to_set(tmp_path):
    project = unittest_project(tmp_path)
    done = subprocess.run(
        UNITTEST, cwd=project, env=environment(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert f"set {SOCKET_ENV} to the batch source's socket, or give --list FILE" in done.stderr


@async_test(limit=60)
async def test_a_pytest_process_stopped_by_x_hands_back_what_it_held(tmp_path, socket_dir):
    files = {
        "test_a.py": "def test_fails():\n    assert 1 == 2\n\n\n"
        + "".join(sleeper(f"test_{i}", 0.05) for i in range(9))
    }
    project = pytest_project(tmp_path, files)
    collected = collect(project, PYTEST)["tests"]
    assert isinstance(collected, list) and len(collected) == 10
    split = Split(collected, {"tests/test_a.py::test_fails": 5.0}, width=2)
    backend, team = await split_over(project, [*PYTEST, "-x"], split, socket_dir, ["p1", "p2"])
    assert_each_reported_once(backend, collected)
    failed = split.results["tests/test_a.py::test_fails"]
    assert failed.outcome == TestOutcome.FAILED and "assert 1 == 2" in failed.message
    summary = split.summary()
    assert summary.ran[failed.participant] == ["tests/test_a.py::test_fails"]
    assert summary.summary.counts["passed"] == 9
    assert team.processes[failed.participant].returncode == 1
    assert b"stopping after 1 failures" in team.logs[failed.participant]
