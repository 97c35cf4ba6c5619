"""A commit's jobs run by real runners: each matrix cell with its own values, the
repository deciding what each job runs, and a job the commit does not define refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Repo, Superci
from helpers import FAST_WATCHDOG, Harness, async_test
from support import wait_until
from test_runner import new_runner, running

from superci import client
from superci.interpreters import find_interpreters

#: Prints the cell it ran in, as the build saw it, and the Python that ran it.
SAY_CELL = (
    'python -c \'import os, sys; print("cell", os.environ["SUPERCI_JOB"], '
    'os.environ.get("SUPERCI_MATRIX_X"), "{x}", "python %d.%d" % sys.version_info[:2])\''
)


def cli(superci: Superci, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "superci", args[0], "--dispatcher-server", superci.address,
         *args[1:]],
        capture_output=True, text=True, timeout=30, cwd=superci.root,
    )  # fmt: skip


def job_file(superci: Superci, sha: str, job: str, name: str) -> Path:
    return superci.results / sha / "jobs" / job / name


def commit_json(superci: Superci, sha: str) -> dict | None:
    """The commit's result.json: written once every one of its jobs has ended."""
    path = superci.results / sha / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


@pytest.mark.e2e
def test_each_matrix_cell_runs_on_its_own_runner_with_its_own_values(
    repo: Repo, superci: Superci, tmp_path: Path
):
    toml = (
        f'allow_no_tests = true\ncommand = {json.dumps(SAY_CELL)}\n[matrix]\nx = ["one", "two"]\n'
    )
    sha = repo.commit({".superci.toml": toml})
    superci.dispatcher()
    for name in ("r1", "r2"):
        superci.runner(repo.clone(tmp_path / name), name).wait_for_log("registered")
    done = superci.notify(sha, cwd=repo.path)
    assert done.returncode == 0, done.stderr

    commit = wait_until(lambda: commit_json(superci, sha), 30, "the commit's jobs")
    assert commit["status"] == "passed"
    assert [job["job"] for job in commit["jobs"]] == ["default (x=one)", "default (x=two)"]
    assert {job["runner"] for job in commit["jobs"]} == {"r1", "r2"}  # side by side
    for value in ("one", "two"):
        log = job_file(superci, sha, f"default,x={value}", "output.log").read_text()
        assert f"cell default (x={value}) {value} {value} python" in log
        result = json.loads(job_file(superci, sha, f"default,x={value}", "result.json").read_text())
        assert (result["job"], result["status"]) == (f"default (x={value})", "passed")

    shown = cli(superci, "show", sha)
    assert shown.returncode == 0, shown.stderr
    assert "status   passed (2 jobs" in shown.stdout
    assert "default (x=one)" in shown.stdout and "default (x=two)" in shown.stdout
    logs = cli(superci, "logs", sha, "--job", "default (x=two)")
    assert "cell default (x=two) two two" in logs.stdout
    several = cli(superci, "logs", sha)
    assert several.returncode == 1 and "pick one with --job" in several.stderr
    status = cli(superci, "status")
    assert "default (x=one)" in status.stdout  # the JOB column


def _two_pythons() -> list[str]:
    own = ".".join(map(str, sys.version_info[:2]))
    others = [v for v in find_interpreters().versions()
              if v != own and tuple(map(int, v.split("."))) >= (3, 8)]  # fmt: skip
    if not others:
        pytest.skip(f"this machine has no Python other than the runner's {own}")
    return [own, others[-1]]


@pytest.mark.e2e
def test_a_python_list_runs_each_job_with_its_own_python(
    repo: Repo, superci: Superci, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")
    versions = _two_pythons()
    command = SAY_CELL.replace("SUPERCI_MATRIX_X", "SUPERCI_MATRIX_PYTHON").replace("{x}", "-")
    toml = (f"[jobs.tests]\nallow_no_tests = true\ncommand = {json.dumps(command)}\n"
            f"python = {json.dumps(versions)}\n")  # fmt: skip
    sha = repo.commit({".superci.toml": toml})
    superci.dispatcher()
    for name in ("r1", "r2"):
        superci.runner(repo.clone(tmp_path / name), name, "--env-cache",
                       str(tmp_path / f"envs-{name}")).wait_for_log("registered")  # fmt: skip
    assert superci.notify(sha, cwd=repo.path).returncode == 0

    commit = wait_until(lambda: commit_json(superci, sha), 60, "the commit's jobs")
    assert commit["status"] == "passed", commit
    for version in versions:
        log = job_file(superci, sha, f"tests,python={version}", "output.log").read_text()
        assert f"cell tests (python={version}) {version} - python {version}\n" in log


@async_test(limit=60)
async def test_a_runner_asked_for_a_job_its_checkout_does_not_define_reports_an_error(
    tmp_path, repo
):
    from superci.workspace import Workspace

    sha = repo.commit({".superci.toml": 'command = "true"\nallow_no_tests = true\n'})
    workspace = Workspace.clone(str(repo.path), tmp_path / "runner-clone")
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        assert h.address is not None
        async with running(new_runner(h, workspace)):
            # the submitter sent another file than the commit's: the commit's own decides
            await client.submit_async(h.address, sha, "main",
                                      config='[jobs.ghost]\ncommand = "rm -rf /"\n')  # fmt: skip
            result = await h.results.wait(sha)
    assert result["status"] == "error"
    assert result["job"] == "ghost"
    assert "asks for job 'ghost', which .superci.toml" in result["message"]
    assert "(it defines: default)" in result["message"]
