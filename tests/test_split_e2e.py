"""One job's suite split over real runners by the real CLI (``parallel`` in .superci.toml):
the runners share the tests, faults cost only what they must, and one result comes out."""

from __future__ import annotations

import json
import os
import signal
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


def sleeper(name: str, seconds: float) -> str:
    return f"def {name}():\n    time.sleep({seconds})\n\n\n"


def suite(durations: dict[str, float], parallel: str, extra: dict[str, str] | None = None):
    """A pytest project whose tests sleep the given seconds, split ``parallel`` ways."""
    files: dict[str, str] = {
        ".superci.toml": f"parallel = {parallel}\n",
        "pytest.ini": "[pytest]\n",
    }
    for test, seconds in durations.items():
        path, _, name = test.partition("::")
        files[path] = files.get(path, "import os\nimport time\n\n\n") + sleeper(name, seconds)
    return files | (extra or {})


def twenty_four() -> dict[str, float]:
    """24 tests of 0.1 to 0.79 s, each a different duration, in six files."""
    return {
        f"tests/test_part{i % 6}.py::test_{i:02}": round(0.1 + 0.03 * i, 2) for i in range(24)
    }


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
