"""Runner labels end to end, through the real command-line programs: builds go to the
runners whose labels their commit needs, a build nobody can take waits with its reason
in `superci status`, and a runner that lacks what the commit needs hands it back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PASSING_TEST, Repo, Superci

pytestmark = pytest.mark.e2e

NEEDS_GPU = 'needs = {gpu = "true"}\n'


def cli(superci: Superci, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "superci", command, "--dispatcher-server", superci.address, *args],
        capture_output=True, text=True, timeout=30, cwd=superci.root,
    )  # fmt: skip


def notified(superci: Superci, sha: str, cwd: Path | None = None) -> str:
    done = superci.notify(sha, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def queue_row(text: str) -> str:
    """The first row of the queue section of `superci status`."""
    block = next(b for b in text.split("\n\n") if b.startswith("Queue"))
    return block.splitlines()[2]


def test_builds_go_to_the_runner_whose_labels_their_commit_needs_and_a_lacking_one_hands_back(
    repo: Repo, superci: Superci, tmp_path: Path
):
    gpu_commit = repo.commit({"tests/test_math.py": PASSING_TEST, ".superci.toml": NEEDS_GPU})
    superci.dispatcher()
    runners = {
        "plain": superci.runner(repo.clone(tmp_path / "plain"), "plain"),
        "gpu": superci.runner(repo.clone(tmp_path / "gpu"), "gpu", "--label", "gpu",
                              "--exclusive"),
    }  # fmt: skip
    for runner in runners.values():
        runner.wait_for_log("registered with the dispatcher")

    assert "queued" in notified(superci, gpu_commit, cwd=repo.path)  # in a clone: config sent
    result = superci.wait_for_result(gpu_commit)
    assert (result["status"], result["runner"], result["attempt"]) == ("passed", "gpu", 1)

    (repo.path / ".superci.toml").unlink()
    plain_commit = repo.commit({}, "no needs")
    notified(superci, plain_commit, cwd=repo.path)
    result = superci.wait_for_result(plain_commit)  # the exclusive runner does not take it
    assert (result["status"], result["runner"]) == ("passed", "plain")

    blind_commit = repo.commit({".superci.toml": NEEDS_GPU}, "needs a gpu again")
    notified(superci, blind_commit)  # outside a clone: the dispatcher cannot know its needs
    result = superci.wait_for_result(blind_commit)
    assert (result["status"], result["runner"]) == ("passed", "gpu")
    assert result["runners"] == ["plain", "gpu"] and result["attempt"] == 2
    said = ".superci.toml needs gpu=true, which this runner lacks"
    assert f"handed back: {said}" in runners["plain"].log

    status = json.loads(cli(superci, "status", "--json").stdout)
    labels = {r["name"]: (r["labels"], r["exclusive"]) for r in status["runners"]}
    assert labels["gpu"][0]["gpu"] == "true" and labels["gpu"][1] is True
    assert "gpu" not in labels["plain"][0] and labels["plain"][1] is False
    assert "python" in labels["plain"][0] and "os" in labels["plain"][0]


def test_a_build_needing_a_label_nobody_has_waits_with_the_reason_then_runs_when_one_joins(
    repo: Repo, superci: Superci, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    sha = repo.commit({"tests/test_math.py": PASSING_TEST, ".superci.toml": NEEDS_GPU})
    superci.dispatcher()
    superci.runner(repo.clone(tmp_path / "plain"), "plain").wait_for_log("registered with")

    notified(superci, sha, cwd=repo.path)
    text = cli(superci, "status").stdout
    assert queue_row(text).split()[5:] == [
        "gpu=true",
        *"no connected runner has gpu=true; next in line".split(),
    ]
    [queued] = json.loads(cli(superci, "status", "--json").stdout)["queue"]
    assert (queued["sha"], queued["needs"]) == (sha, {"gpu": "true"})
    assert queued["waiting"] == "no connected runner has gpu=true; next in line"
    shown = cli(superci, "show", sha[:12]).stdout
    assert "needs    gpu=true" in shown and "waiting  no connected runner has gpu=true" in shown

    monkeypatch.setenv("SUPERCI_LABELS", "gpu")  # the variable stands for --label
    superci.runner(repo.clone(tmp_path / "gpu"), "gpu")
    result = superci.wait_for_result(sha)
    assert (result["status"], result["runner"], result["attempt"]) == ("passed", "gpu", 1)


def test_a_configuration_the_dispatcher_cannot_parse_ends_the_build_at_once(
    repo: Repo, superci: Superci
):
    sha = repo.commit({".superci.toml": "needs = {python = 3.10}\n"})
    superci.dispatcher()  # no runner at all: none is needed to say what is wrong
    said = notified(superci, sha, cwd=repo.path)
    assert "ended at once as an error" in said
    result = superci.wait_for_result(sha)
    assert result["status"] == "error" and result["runner"] is None
    assert 'write the value as a string in quotes (such as "3.10")' in result["message"]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--label", "bad!key=x"), "label key 'bad!key' must be"),
        (("--label", "gpu", "--label", "gpu=false"), "label gpu is given twice"),
        (("--exclusive",), "an exclusive runner takes only builds that need one of its own"),
    ],
)
def test_a_runner_with_bad_labels_refuses_to_start_and_says_why(tmp_path: Path, args, problem):
    done = subprocess.run(
        [sys.executable, "-m", "superci", "runner", "--dispatcher-server", "127.0.0.1:9",
         *args, str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and problem in done.stderr, done.stderr


def test_the_observer_sends_each_commits_configuration_so_no_runner_gets_it_in_vain(
    repo: Repo, superci: Superci, tmp_path: Path
):
    sha = repo.commit({"tests/test_math.py": PASSING_TEST, ".superci.toml": NEEDS_GPU})
    superci.dispatcher()
    plain = superci.runner(repo.clone(tmp_path / "plain"), "plain")
    gpu = superci.runner(repo.clone(tmp_path / "gpu"), "gpu", "--label", "gpu", "--exclusive")
    for runner in (plain, gpu):
        runner.wait_for_log("registered with the dispatcher")
    superci.observer(repo.clone(tmp_path / "observed"))

    result = superci.wait_for_result(sha)
    assert (result["status"], result["runners"], result["attempt"]) == ("passed", ["gpu"], 1)
