"""A commit cannot wedge a runner, run it out of memory, steer its git, or make it fail
build after build: each attack through the real dispatcher and runner processes.

After each attack the same runner builds an ordinary commit: it was never wedged, and the
dispatcher never declared it dead (its heartbeats went on).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import FAILING_TEST, PASSING_TEST, Repo, Superci, git

from superci import defaults

pytestmark = pytest.mark.e2e

RUNNER_OPTIONS = ("--timeout", "60", "--kill-grace", "1")


def start(superci: Superci, repo: Repo, tmp_path: Path):
    """A dispatcher that gives up on a runner silent for 3 s, and one runner."""
    dispatcher = superci.dispatcher(0, "--heartbeat-timeout", "3")
    runner = superci.runner(repo.clone(tmp_path / "runner-a"), "runner-a", *RUNNER_OPTIONS)
    return dispatcher, runner


def build(superci: Superci, sha: str) -> dict:
    done = superci.notify(sha, "--branch", "main")
    assert done.returncode == 0, done.stderr
    return superci.wait_for_result(sha)


def config(**settings: object) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())


def script(body: str) -> str:
    return textwrap.dedent(body)


def assert_runner_goes_on(superci: Superci, repo: Repo, dispatcher) -> None:
    """An ordinary commit after the attack passes on the same runner, which was never
    declared dead nor reconnected."""
    (repo.path / defaults.CONFIG_FILE).unlink(missing_ok=True)
    good = repo.commit({"tests/test_ok.py": PASSING_TEST, "tests/__init__.py": ""}, "good")
    result = build(superci, good)
    assert result["status"] == "passed", superci.output(good)
    assert result["runner"] == "runner-a"
    assert "declared dead" not in dispatcher.log


# --- files of the checkout ------------------------------------------------------------

MAKE_FIFO = """\
import os, shlex, sys
path = sys.argv[1] if len(sys.argv) > 1 else None
if path is None:  # the report the runner asks pytest for, outside the checkout
    for word in shlex.split(os.environ["PYTEST_ADDOPTS"]):
        if word.startswith("--junitxml="):
            path = word.split("=", 1)[1]
os.mkfifo(path)
print("made a FIFO at", path)
"""


def test_a_fifo_where_the_runner_asks_pytest_for_its_report_is_an_error_naming_it(
    repo: Repo, superci: Superci, tmp_path: Path
):
    dispatcher, _ = start(superci, repo, tmp_path)
    command = f"{sys.executable} make_fifo.py"  # at the path PYTEST_ADDOPTS gives pytest
    sha = repo.commit({"make_fifo.py": MAKE_FIFO, defaults.CONFIG_FILE: config(command=command)})
    result = build(superci, sha)
    assert result["status"] == "error", superci.output(sha)
    assert "JUnit report" in result["message"] and "junit.xml is a FIFO" in result["message"]
    assert_runner_goes_on(superci, repo, dispatcher)


def test_a_fifo_at_the_repositorys_junit_path_is_an_error_naming_it(
    repo: Repo, superci: Superci, tmp_path: Path
):
    dispatcher, _ = start(superci, repo, tmp_path)
    command = f"{sys.executable} make_fifo.py report.xml"
    settings = config(command=command, junit="report.xml")
    sha = repo.commit({"make_fifo.py": MAKE_FIFO, defaults.CONFIG_FILE: settings})
    result = build(superci, sha)
    assert result["status"] == "error", superci.output(sha)
    assert "report.xml is a FIFO, not a regular file" in result["message"]
    assert_runner_goes_on(superci, repo, dispatcher)


def commit_symlink(repo: Repo, name: str, target: str) -> str:
    link = repo.path / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    git(repo.path, "add", "--all")
    git(repo.path, "commit", "--quiet", "-m", f"{name} -> {target}")
    link.unlink()
    git(repo.path, "rm", "--quiet", "--cached", name)
    return git(repo.path, "rev-parse", "HEAD")


def test_a_superci_toml_linked_to_dev_zero_is_an_error_naming_it(
    repo: Repo, superci: Superci, tmp_path: Path
):
    dispatcher, _ = start(superci, repo, tmp_path)
    sha = commit_symlink(repo, defaults.CONFIG_FILE, "/dev/zero")
    git(repo.path, "commit", "--quiet", "-m", "drop the link")
    result = build(superci, sha)
    assert result["status"] == "error", superci.output(sha)
    assert f"{defaults.CONFIG_FILE} leads outside" in result["message"]
    assert "/dev/zero" in result["message"]
    assert_runner_goes_on(superci, repo, dispatcher)


def test_a_junit_report_linked_out_of_the_checkout_is_an_error_and_never_read(
    repo: Repo, superci: Superci, tmp_path: Path
):
    secret = tmp_path / "runner-secret.xml"
    secret.write_text('<testsuite tests="7" failures="0"/>')
    dispatcher, _ = start(superci, repo, tmp_path)
    repo.commit({defaults.CONFIG_FILE: config(command="true", junit="report.xml")})
    sha = commit_symlink(repo, "report.xml", str(secret))
    git(repo.path, "commit", "--quiet", "-m", "drop the link")
    result = build(superci, sha)
    assert result["status"] == "error", superci.output(sha)
    assert "report.xml leads outside" in result["message"]
    assert not (superci.results / sha / "junit.xml").exists()
    assert_runner_goes_on(superci, repo, dispatcher)


def test_an_oversized_superci_toml_is_an_error_naming_it_and_its_size(
    repo: Repo, superci: Superci, tmp_path: Path
):
    dispatcher, _ = start(superci, repo, tmp_path)
    huge = "# padding\n" * (defaults.MAX_CONFIG_BYTES // 10 + 1)
    sha = repo.commit({defaults.CONFIG_FILE: huge})
    result = build(superci, sha)
    assert result["status"] == "error", superci.output(sha)
    assert f"{defaults.CONFIG_FILE} is {len(huge)} bytes, more than the" in result["message"]
    assert_runner_goes_on(superci, repo, dispatcher)


# --- the runner's git -------------------------------------------------------------------

TAMPER = """\
import os, pathlib, stat, subprocess, sys

evidence = pathlib.Path(sys.argv[1])
passing = {passing!r}


def program(name, body):
    path = pathlib.Path(".git", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\\n" + body + "\\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path.resolve())


# Each leaves evidence if it ever runs; the hook and the monitor also make every test pass.
cheat = "for f in tests/test_*.py; do cat > \\"$f\\" <<'EOF'\\n" + passing + "EOF\\ndone"
program("hooks/post-checkout", "touch {evidence}/hook; " + cheat)
monitor = program("monitor.sh", "touch {evidence}/fsmonitor; " + cheat)
smudge = program("smudge.sh", "touch {evidence}/smudge; cat")
subprocess.run(["git", "config", "core.fsmonitor", monitor], check=True)
subprocess.run(["git", "config", "filter.evil.smudge", smudge], check=True)
pathlib.Path(".git/info").mkdir(exist_ok=True)
pathlib.Path(".git/info/attributes").write_text("* filter=evil\\n")
print("tampered with", os.getcwd())
"""


def test_hooks_and_config_a_build_writes_into_the_clone_run_nothing_in_the_next_build(
    repo: Repo, superci: Superci, tmp_path: Path
):
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    dispatcher, _ = start(superci, repo, tmp_path)
    tamper = TAMPER.format(passing=PASSING_TEST, evidence=evidence)
    command = f"{sys.executable} tamper.py {evidence}"
    settings = config(command=command, allow_no_tests=True)
    files = {"tamper.py": tamper, "tests/__init__.py": "", "tests/test_ok.py": PASSING_TEST}
    hostile = repo.commit({**files, defaults.CONFIG_FILE: settings})
    result = build(superci, hostile)
    assert "tampered with" in superci.output(hostile), result

    (repo.path / defaults.CONFIG_FILE).unlink()
    (repo.path / "tests/test_ok.py").unlink()
    failing = repo.commit({"tests/test_broken.py": FAILING_TEST})
    result = build(superci, failing)
    assert result["status"] == "failed", superci.output(failing)
    assert result["failures"] == ["test_broken.Failing.test_broken"]
    assert sorted(p.name for p in evidence.iterdir()) == []
    assert "declared dead" not in dispatcher.log


# --- a runner whose checkouts keep failing ------------------------------------------------


def test_a_runner_whose_checkouts_keep_failing_is_benched_and_status_says_why(
    repo: Repo, superci: Superci, tmp_path: Path
):
    repo.commit({"README": "start\n"}, "start")
    superci.dispatcher(0)
    superci.runner(repo.clone(tmp_path / "runner-a"), "runner-a", *RUNNER_OPTIONS)
    shas = [repo.commit({"tests/test_ok.py": PASSING_TEST, "n": str(i)}) for i in range(4)]
    repo.path.rename(tmp_path / "gone")  # the runner's remote is unreachable from now on

    for sha in shas[: defaults.BENCH_AFTER]:
        result = build(superci, sha)
        assert result["status"] == "error" and "not found" in result["message"], result
    assert superci.notify(shas[-1], "--branch", "main").returncode == 0

    status = subprocess.run(
        [sys.executable, "-m", "superci", "status", "--dispatcher-server", superci.address],
        capture_output=True, text=True, timeout=30, cwd=superci.root,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "runner-a is benched: checkouts of 3 different commits failed in a row" in status.stdout
    assert f"commit {shas[2]} not found" in status.stdout
    document = json.loads(
        subprocess.run(
            [sys.executable, "-m", "superci", "status", "--json",
             "--dispatcher-server", superci.address],
            capture_output=True, text=True, timeout=30, cwd=superci.root,
        ).stdout
    )  # fmt: skip
    [runner] = document["runners"]
    assert runner["state"] == "benched"
    assert [q["sha"] for q in document["queue"]] == [shas[-1]]
