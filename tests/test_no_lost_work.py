"""No lost work, through the real programs: a runner never wipes a clone it did not make,
never reaches a repository around its clone, and ``superci up`` writes nothing into the
repository it tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PASSING_TEST, Repo, Superci, git
from support import E2E_WAIT, free_port, wait_until

pytestmark = pytest.mark.e2e

#: A .gitignore the developer's working copies below use.
GITIGNORE = ".env\nvenv/\n"


def status(path: Path) -> str:
    return git(path, "status", "--porcelain", "--ignored", "--untracked-files=all")


def with_my_work(path: Path) -> dict[str, bytes]:
    """Give a working copy an edit, an untracked file and ignored files; return them all."""
    (path / "tests" / "test_math.py").write_text(PASSING_TEST + "# my edit\n")
    (path / "notes.txt").write_text("my notes\n")
    (path / ".env").write_text("SECRET=mine\n")
    (path / "venv").mkdir()
    (path / "venv" / "python").write_text("my virtualenv\n")
    return files_of(path)


def files_of(path: Path, skip: str = "ci") -> dict[str, bytes]:
    """Every file outside .git (and outside ``skip``) with its content."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.relative_to(path).parts[0] not in (".git", skip)
    }


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "superci", *args],
        capture_output=True, text=True, timeout=E2E_WAIT, cwd=cwd, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def mark_of(clone: Path) -> dict[str, str] | None:
    try:
        return json.loads((clone / ".git" / "superci-owner").read_text())
    except FileNotFoundError:
        return None


# runner and observer clones


def test_runner_refuses_a_working_copy_with_work_in_it_and_changes_nothing(
    repo: Repo, tmp_path: Path
):
    repo.commit({".gitignore": GITIGNORE, "tests/test_math.py": PASSING_TEST})
    mine = repo.clone(tmp_path / "mine")
    before = with_my_work(mine), status(mine)

    refused = run_cli(
        "runner", "--dispatcher-server", f"127.0.0.1:{free_port()}", str(mine), cwd=tmp_path
    )

    assert refused.returncode == 1
    for expected in (
        f"refusing to use {mine} as a runner's clone",
        " M tests/test_math.py",
        "?? notes.txt",
        "!! .env",
        "!! venv/python",
        f"git clone {repo.path} {tmp_path / 'mine-runner'}",
    ):
        assert expected in refused.stderr
    assert (files_of(mine), status(mine)) == before
    assert mark_of(mine) is None


def test_a_runner_and_an_observer_refuse_each_others_clones(repo: Repo, tmp_path: Path):
    repo.commit({"tests/test_math.py": PASSING_TEST})
    address = f"127.0.0.1:{free_port()}"  # nobody listens: each refusal comes first
    observed, built = repo.clone(tmp_path / "observed"), repo.clone(tmp_path / "built")
    (observed / ".git" / "superci-owner").write_text('{"role": "observer"}')
    (built / ".git" / "superci-owner").write_text('{"role": "runner"}')

    runner = run_cli("runner", "--dispatcher-server", address, str(observed), cwd=tmp_path)
    observer = run_cli("observer", "--dispatcher-server", address, str(built), cwd=tmp_path)

    assert runner.returncode == 1
    assert f"{observed} is the observer's clone" in runner.stderr
    assert "a runner needs a clone of its own: git clone" in runner.stderr
    assert observer.returncode == 1
    assert f"{built} is the runner's clone" in observer.stderr
    assert "an observer needs a clone of its own: git clone" in observer.stderr


def test_a_build_that_removes_git_leaves_the_enclosing_repository_alone_and_the_next_passes(
    repo: Repo, superci: Superci, tmp_path: Path
):
    repo.commit({".gitignore": GITIGNORE + "ci/\n", "tests/test_math.py": PASSING_TEST})
    remover = repo.commit({".superci.toml": 'command = "rm -rf .git"\n'}, "removes .git")
    mine = repo.clone(tmp_path / "mine")  # a developer's working copy, with work in it
    (mine / "ci").mkdir()
    clone = repo.clone(mine / "ci" / "runner")  # and the runner's clone inside it
    before = with_my_work(mine), status(mine), git(mine, "rev-parse", "HEAD")
    superci.dispatcher()
    runner = superci.runner(clone, "runner-a")
    runner.wait_for_log("registered with the dispatcher")
    assert mark_of(clone)["role"] == "runner"

    superci.notify(remover)
    assert superci.wait_for_result(remover)["status"] == "passed"
    assert not (clone / ".git").exists()
    fixed = repo.commit({".superci.toml": 'command = "python -m unittest discover -s tests"\n'})
    superci.notify(fixed)

    assert superci.wait_for_result(fixed)["status"] == "passed"
    runner.wait_for_log("cloning .* again")
    assert git(clone, "rev-parse", "HEAD") == fixed
    assert mark_of(clone)["role"] == "runner"
    assert (files_of(mine), status(mine), git(mine, "rev-parse", "HEAD")) == before


# superci up


class Up:
    """``superci up`` as a user starts it, stdout and stderr kept in files."""

    def __init__(self, tmp_path: Path, *args: str, cwd: Path) -> None:
        self.out, self.err = tmp_path / "up.out", tmp_path / "up.err"
        env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "superci", "up", "--interval", "0.2", *args],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env,
                start_new_session=True,
            )  # fmt: skip

    def wait_for(self, text: str) -> None:
        def printed() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"up exited: {self.out.read_text()}{self.err.read_text()}")
            return text in self.out.read_text()

        wait_until(printed, what=f"{text!r} printed by superci up")

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            return self.popen.wait(timeout=30)
        finally:
            if self.popen.poll() is None:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)


def test_up_with_its_work_folder_inside_the_repository_hides_it_through_info_exclude(
    repo: Repo, tmp_path: Path
):
    sha = repo.commit({".gitignore": GITIGNORE, "tests/test_math.py": PASSING_TEST})
    before = with_my_work(repo.path), status(repo.path)
    exclude = repo.path / ".git" / "info" / "exclude"
    excluded_before = exclude.read_text()

    up = Up(tmp_path, "--port", "0", "--work", ".ci", ".", cwd=repo.path)
    try:
        up.wait_for(f"PASSED    {sha[:12]}")
    finally:
        assert up.stop() == 0

    assert exclude.read_text() == excluded_before + "/.ci/\n"
    assert (repo.path / ".ci" / "test_results" / sha / "result.json").exists()
    ignored_now = [line for line in status(repo.path).splitlines() if "!! .ci/" not in line]
    assert (files_of(repo.path, skip=".ci"), ignored_now) == (before[0], before[1].splitlines())


def test_up_reports_a_busy_port_before_making_any_clone(repo: Repo, tmp_path: Path):
    repo.commit({"tests/test_math.py": PASSING_TEST})
    work = tmp_path / "work"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = Up(tmp_path, "--port", str(port), "--work", str(work), str(repo.path), cwd=tmp_path)
        assert up.popen.wait(timeout=E2E_WAIT) == 1

    assert f"cannot listen on 127.0.0.1:{port}" in up.err.read_text()
    assert "--port 0 picks a free one" in up.err.read_text()
    assert not work.exists()


def test_up_builds_a_commit_of_a_bare_repository(repo: Repo, tmp_path: Path):
    sha = repo.commit({"tests/test_math.py": PASSING_TEST})
    bare = tmp_path / "project.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(repo.path), str(bare))
    before = sorted(str(p.relative_to(bare)) for p in bare.rglob("*"))

    up = Up(tmp_path, "--port", "0", str(bare), cwd=tmp_path)
    try:
        up.wait_for(f"PASSED    {sha[:12]} (main)")
    finally:
        assert up.stop() == 0
    assert sorted(str(p.relative_to(bare)) for p in bare.rglob("*")) == before
