"""One job's suite split over real runners by the real CLI (``parallel`` in .superci.toml):
the runners share the tests, faults cost only what they must, and one result comes out."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import Repo, Superci
from support import wait_until

#: Bound for a split of a few seconds of tests, reached only when broken.
SPLIT_WAIT = 60.0


def sleeper(name: str, seconds: float, marks: Path | None = None) -> str:
    """A test that sleeps; with ``marks``, it first notes there who started it."""
    note = (
        f"    with open({str(marks)!r}, 'a') as f:\n"
        f"        f.write(os.environ['SUPERCI_SPLIT_PARTICIPANT'] + ' {name}\\n')\n"
        if marks else ""
    )  # fmt: skip
    return f"def {name}():\n{note}    time.sleep({seconds})\n\n\n"


def suite(
    durations: dict[str, float], parallel: str, extra: dict[str, str] | None = None,
    marks: Path | None = None,
) -> dict[str, str]:  # fmt: skip
    """A pytest project whose tests sleep the given seconds, split ``parallel`` ways."""
    files: dict[str, str] = {
        ".superci.toml": f"parallel = {parallel}\n",
        "pytest.ini": "[pytest]\n",
    }
    for test, seconds in durations.items():
        path, _, name = test.partition("::")
        head = files.get(path, "import os\nimport time\n\n\n")
        files[path] = head + sleeper(name, seconds, marks)
    return files | (extra or {})


def started_by(marks: Path) -> list[str]:
    """The participants that started a test so far, in order."""
    if not marks.exists():
        return []
    return [line.split()[0] for line in marks.read_text().splitlines() if line.strip()]


def host_of(superci: Superci, sha: str) -> str | None:
    """The build's own runner, as the first line of its log names it."""
    path = superci.results / sha / "output.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    match = re.search(r"attempt \d+ on (\S+)", text)
    return match.group(1) if match else None


def twenty_four() -> dict[str, float]:
    """24 tests of 0.1 to 0.79 s, each a different duration, in six files."""
    return {f"tests/test_part{i % 6}.py::test_{i:02}": round(0.1 + 0.03 * i, 2) for i in range(24)}


def start(superci: Superci, repo: Repo, tmp_path: Path, names: list[str]) -> dict[str, Any]:
    superci.dispatcher()
    runners = {}
    for name in names:
        runners[name] = superci.runner(repo.clone(tmp_path / name), name)
    for process in runners.values():
        process.wait_for_log("registered")
    return runners


def junit_cases(superci: Superci, sha: str) -> Counter[str]:
    root = ElementTree.parse(superci.results / sha / "junit.xml").getroot()
    return Counter(f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase"))


def split_document(superci: Superci, sha: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((superci.results / sha / "split.json").read_text())
    return document


def cli(superci: Superci, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "superci", args[0], "--dispatcher-server", superci.address,
         *args[1:]],
        capture_output=True, text=True, timeout=30, cwd=superci.root,
    )  # fmt: skip


@pytest.mark.e2e
def test_four_runners_share_24_tests_and_finish_within_a_second_and_a_half(
    repo: Repo, superci: Superci, tmp_path: Path
):
    durations = twenty_four()
    sha = repo.commit(suite(durations, "4"))
    start(superci, repo, tmp_path, ["r1", "r2", "r3", "r4"])
    assert superci.notify(sha, cwd=repo.path).returncode == 0

    result = superci.wait_for_result(sha, SPLIT_WAIT)
    assert result["status"] == "passed", superci.output(sha)
    assert result["tests"]["run"] == 24 and result["tests"]["passed"] == 24
    assert set(result["split"]) == {"r1", "r2", "r3", "r4"}, result["split"]
    assert sum(result["split"].values()) == 24
    cases = junit_cases(superci, sha)
    assert len(cases) == 24 and set(cases.values()) == {1}
    document = split_document(superci, sha)
    busy = Counter[str]()
    for participant in document["participants"].values():
        busy[participant["runner"]] += participant["busy"]
    assert max(busy.values()) - min(busy.values()) <= 1.5, busy
    ran = [t for runner in document["runners"].values() for t in runner["ran"]]
    assert sorted(ran) == sorted(durations)
    log = superci.output(sha)
    for seat in (1, 2, 3):
        assert f"--- seat {seat}: runner r" in log and f"--- end of seat {seat}: done" in log
    shown = cli(superci, "show", sha)
    assert "split    over 4 runners" in shown.stdout, shown.stdout + shown.stderr
    with contextlib.closing(sqlite3.connect(superci.state)) as db:  # timings for the next
        kept = dict(db.execute("SELECT test, seconds FROM test_durations"))
    assert kept.keys() == durations.keys()
    assert all(abs(kept[t] - durations[t]) < 0.5 for t in durations), kept


@pytest.mark.e2e
def test_a_runner_killed_mid_split_costs_only_its_batch_and_each_test_is_reported_once(
    repo: Repo, superci: Superci, tmp_path: Path
):
    marks = tmp_path / "started.log"
    durations = twenty_four()
    sha = repo.commit(suite(durations, "3", marks=marks))
    runners = start(superci, repo, tmp_path, ["r1", "r2", "r3"])
    assert superci.notify(sha, cwd=repo.path).returncode == 0

    host = wait_until(lambda: host_of(superci, sha), SPLIT_WAIT, "the build's runner")
    victim = wait_until(
        lambda: next((p.rpartition(".")[0] for p in started_by(marks)
                      if not p.startswith(f"{host}.")), None),
        SPLIT_WAIT, "a test started on a seat",
    )  # fmt: skip
    runners[victim].kill()

    result = superci.wait_for_result(sha, SPLIT_WAIT)
    log = superci.output(sha)
    assert result["status"] == "passed", log
    assert result["tests"] == {"run": 24, "passed": 24, "failed": 0, "errors": 0, "skipped": 0}
    cases = junit_cases(superci, sha)
    assert len(cases) == 24 and set(cases.values()) == {1}
    assert re.search(r"--- end of seat \d+: lost: runner lost", log), log
    ran = [t for runner in split_document(superci, sha)["runners"].values() for t in runner["ran"]]
    assert sorted(ran) == sorted(durations)  # what the victim reported before it died is kept


@pytest.mark.e2e
def test_cancel_mid_split_stops_every_runner_taking_part(
    repo: Repo, superci: Superci, tmp_path: Path
):
    marks = tmp_path / "started.log"
    durations = {f"tests/test_slow.py::test_{i}": 30.0 for i in range(6)}
    sha = repo.commit(suite(durations, "3", marks=marks))
    runners = start(superci, repo, tmp_path, ["r1", "r2", "r3"])
    assert superci.notify(sha, cwd=repo.path).returncode == 0
    wait_until(lambda: len({p.rpartition(".")[0] for p in started_by(marks)}) == 3,
               SPLIT_WAIT, "a test started on every runner")  # fmt: skip

    cancelled = cli(superci, "cancel", sha)
    assert cancelled.returncode == 0, cancelled.stderr
    result = superci.wait_for_result(sha, SPLIT_WAIT)
    assert result["status"] == "cancelled", superci.output(sha)
    host = host_of(superci, sha)
    for name, process in runners.items():
        if name != host:
            process.wait_for_log("leaving seat")
    assert len(started_by(marks)) == 3  # nothing more was started
    log = superci.output(sha)
    assert log.count("stopped with the build, which was cancelled ---") == 2, log


CRASH_AND_SILENCE = {
    "tests/test_odd.py": (
        "import os\n\n\ndef test_kills_its_process():\n    os.kill(os.getpid(), 9)\n\n\n"
        "def test_silent():\n    pass\n"
    ),
    "tests/conftest.py": (
        "import pytest\n\n\n@pytest.hookimpl(tryfirst=True)\n"
        "def pytest_runtest_protocol(item, nextitem):\n"
        "    if item.name == 'test_silent':\n        return True  # runs and reports nothing\n"
    ),
}


@pytest.mark.e2e
def test_a_crashing_test_and_one_never_reported_are_errors_naming_them_and_nothing_else_fails(
    repo: Repo, superci: Superci, tmp_path: Path
):
    durations = {f"tests/test_ok.py::test_{i}": 0.05 for i in range(8)}
    sha = repo.commit(suite(durations, "2", extra=CRASH_AND_SILENCE))
    start(superci, repo, tmp_path, ["r1", "r2"])
    assert superci.notify(sha, cwd=repo.path).returncode == 0

    result = superci.wait_for_result(sha, SPLIT_WAIT)
    assert result["status"] == "failed", superci.output(sha)
    assert result["tests"] == {"run": 10, "passed": 8, "failed": 0, "errors": 2, "skipped": 0}
    report = (superci.results / sha / "junit.xml").read_text()
    assert (
        "tests/test_odd.py::test_kills_its_process: the test process died while running it"
        in report
    )
    assert re.search(r"tests/test_odd.py::test_silent: collected but never reported by r\d\.\d",
                     report)  # fmt: skip


@pytest.mark.e2e
def test_parallel_auto_takes_a_runner_that_joins_during_the_build(
    repo: Repo, superci: Superci, tmp_path: Path
):
    marks = tmp_path / "started.log"
    durations = {f"tests/test_auto.py::test_{i:02}": 0.5 for i in range(16)}
    sha = repo.commit(suite(durations, '"auto"', marks=marks))
    start(superci, repo, tmp_path, ["r1"])
    assert superci.notify(sha, cwd=repo.path).returncode == 0
    wait_until(lambda: started_by(marks), SPLIT_WAIT, "the first test")
    superci.runner(repo.clone(tmp_path / "r2"), "r2")  # joins while r1 runs the tests

    result = superci.wait_for_result(sha, SPLIT_WAIT)
    assert result["status"] == "passed", superci.output(sha)
    assert result["tests"]["passed"] == 16
    assert set(result["split"]) == {"r1", "r2"} and result["split"]["r2"] > 0, result["split"]


UNITTEST_SUITE = """\
import time
import unittest


class Slow{n}(unittest.TestCase):
{tests}
"""


@pytest.mark.e2e
def test_a_unittest_suite_is_split_too(repo: Repo, superci: Superci, tmp_path: Path):
    files = {".superci.toml": "parallel = 2\n"}
    for n in range(3):
        tests = "".join(f"    def test_{i}(self):\n        time.sleep(0.2)\n\n" for i in range(4))
        files[f"tests/test_u{n}.py"] = UNITTEST_SUITE.format(n=n, tests=tests)
    sha = repo.commit(files)
    start(superci, repo, tmp_path, ["r1", "r2"])
    assert superci.notify(sha, cwd=repo.path).returncode == 0

    result = superci.wait_for_result(sha, SPLIT_WAIT)
    log = superci.output(sha)
    assert result["status"] == "passed", log
    assert "using unittest" in log
    assert result["tests"]["passed"] == 12 and set(result["split"]) == {"r1", "r2"}
    assert len(junit_cases(superci, sha)) == 12


@pytest.mark.e2e
def test_the_time_limit_stops_every_runner_taking_part(
    repo: Repo, superci: Superci, tmp_path: Path
):
    durations = {f"tests/test_slow.py::test_{i}": 30.0 for i in range(4)}
    sha = repo.commit(suite(durations, "2", extra={".superci.toml": "parallel = 2\ntimeout = 3\n"}))
    runners = start(superci, repo, tmp_path, ["r1", "r2"])
    assert superci.notify(sha, cwd=repo.path).returncode == 0

    result = superci.wait_for_result(sha, SPLIT_WAIT)
    assert result["status"] == "timeout", superci.output(sha)
    assert result["tests"]["errors"] == 4  # each named: not run, the build timed out
    assert "not run: the build timed out" in (superci.results / sha / "junit.xml").read_text()
    seat = next(name for name in runners if name != host_of(superci, sha))
    runners[seat].wait_for_log("leaving seat|seat 1 done")


def kept_results(superci: Superci) -> set[str]:
    """The tests whose results the dispatcher keeps for the running split build."""
    with contextlib.closing(sqlite3.connect(superci.state, timeout=10)) as db:
        return {test for (test,) in db.execute("SELECT test FROM split_results")}


@pytest.mark.e2e
def test_the_build_runner_killed_mid_split_costs_only_what_it_held_and_kept_results_stay(
    repo: Repo, superci: Superci, tmp_path: Path
):
    marks = tmp_path / "started.log"
    durations = twenty_four()
    failing = {"tests/test_first.py": "def test_fails():\n    assert 1 == 2, 'the kept failure'\n"}
    sha = repo.commit(suite(durations, "3", failing, marks=marks))  # collected (and run) first
    runners = start(superci, repo, tmp_path, ["r1", "r2", "r3"])
    assert superci.notify(sha, cwd=repo.path).returncode == 0

    host = wait_until(lambda: host_of(superci, sha), SPLIT_WAIT, "the build's runner")
    wait_until(lambda: len(kept_results(superci)) >= 6, SPLIT_WAIT, "six results kept")
    runners[host].kill()
    kept = kept_results(superci)  # those kept before it died: never run again
    assert "tests/test_first.py::test_fails" in kept  # the first reported

    result = superci.wait_for_result(sha, SPLIT_WAIT)
    log = superci.output(sha)
    assert result["status"] == "failed", log
    assert result["attempt"] == 2 and result["runner"] != host
    assert result["tests"] == {"run": 25, "passed": 24, "failed": 1, "errors": 0, "skipped": 0}
    cases = junit_cases(superci, sha)
    assert len(cases) == 25 and set(cases.values()) == {1}
    assert re.search(r"kept: tests/test_first.py::test_fails failed on r\d:\n[^-]*the kept failure",
                     log), log  # fmt: skip
    starts = Counter(line.split()[1] for line in marks.read_text().splitlines())
    assert all(starts[t.partition("::")[2]] == 1 for t in kept if t in durations), (kept, starts)
    document = split_document(superci, sha)
    assert document["kept"] >= len(kept)
    assert re.search(r"kept \d+ results from an earlier attempt of this build", log), log
    ran = sorted(t for r in document["runners"].values() for t in r["ran"])
    assert ran == sorted([*durations, "tests/test_first.py::test_fails"])
    wait_until(lambda: kept_results(superci) == set(), SPLIT_WAIT,
               "the kept results to go with the build's end")  # fmt: skip


@pytest.mark.e2e
def test_a_split_goes_on_over_every_runner_after_the_dispatcher_restarts(
    repo: Repo, superci: Superci, tmp_path: Path
):
    marks = tmp_path / "started.log"
    durations = {f"tests/test_part{i % 4}.py::test_{i:02}": 0.5 for i in range(20)}
    sha = repo.commit(suite(durations, "2", marks=marks))
    runners = start(superci, repo, tmp_path, ["r1", "r2"])
    dispatcher = superci.processes[0]
    assert superci.notify(sha, cwd=repo.path).returncode == 0
    wait_until(lambda: len({p.rpartition(".")[0] for p in started_by(marks)}) == 2,
               SPLIT_WAIT, "a test started on both runners")  # fmt: skip
    host = host_of(superci, sha)
    assert host is not None
    (seat,) = set(runners) - {host}

    dispatcher.kill()
    before = len(started_by(marks))
    port = int(superci.address.rsplit(":", 1)[1])
    superci.dispatcher(port)
    runners[host].wait_for_log("adopted")

    result = superci.wait_for_result(sha, SPLIT_WAIT)
    log = superci.output(sha)
    assert result["status"] == "passed", log
    assert result["attempt"] == 1 and result["runner"] == host
    assert result["tests"]["passed"] == 20 and result["tests"]["run"] == 20
    assert len(junit_cases(superci, sha)) == 20
    after = [p.rpartition(".")[0] for p in started_by(marks)[before:]]
    assert seat in after, f"{seat} took no part after the restart: {after}"
    seats = [int(n) for n in re.findall(rf"--- seat (\d+): runner {seat} ---", log)]
    assert max(seats) >= 2, log  # a seat again, numbered after the one it had
