"""End to end through the real command-line programs: real git, real TCP, real processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAILING_TEST, PASSING_TEST, Repo, Superci, git
from support import file_text, free_port, wait_until

pytestmark = pytest.mark.e2e


def builds_of(superci: Superci, sha: str) -> list[tuple[str, int]]:
    """(status, attempt) of every build of ``sha``, once none is running any more
    (result.json is written just before the database marks the build finished)."""

    def settled() -> list[tuple[str, int]] | None:
        with sqlite3.connect(superci.state) as db:
            rows = db.execute("SELECT status, attempt FROM builds WHERE sha = ?", (sha,)).fetchall()
        return None if any(status == "running" for status, _ in rows) else rows

    return wait_until(settled, 10, f"the build of {sha[:12]} to be marked finished")


def test_passing_and_failing_commits_are_built_by_two_runners_and_an_observer(
    repo: Repo, superci: Superci, tmp_path: Path
):
    passing = repo.commit({"tests/test_math.py": PASSING_TEST}, "passing")
    clones = [repo.clone(tmp_path / name) for name in ("runner-a", "runner-b", "observed")]
    superci.dispatcher()
    superci.runner(clones[0], "runner-a")
    superci.runner(clones[1], "runner-b")
    observer = superci.observer(clones[2])

    assert superci.wait_for_result(passing)["status"] == "passed"
    failing = repo.commit({"tests/test_broken.py": FAILING_TEST}, "failing")
    failed = superci.wait_for_result(failing)

    passed = superci.result(passing)
    assert passed is not None
    assert passed["exit_code"] == 0 and passed["attempt"] == 1
    assert passed["runner"] in ("runner-a", "runner-b")
    assert passed["tests"]["run"] == 1 and passed["tests"]["passed"] == 1
    assert "passing test ran" in superci.output(passing)
    assert failed["status"] == "failed" and failed["exit_code"] == 1
    assert failed["tests"]["failed"] == 1
    assert failed["failures"] == ["test_broken.Failing.test_broken"]
    failing_log = superci.output(failing)
    assert "failing test ran" in failing_log and "AssertionError: 4 != 5" in failing_log
    observer.wait_for_log(f"delivered {failing}")
    assert builds_of(superci, passing) == [("passed", 1)]
    assert builds_of(superci, failing) == [("failed", 1)]


def test_runner_killed_mid_build_is_redispatched_to_the_other_runner_and_recorded_once(
    repo: Repo, superci: Superci, tmp_path: Path
):
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    clones = {name: repo.clone(tmp_path / name) for name in ("runner-a", "runner-b")}
    superci.dispatcher()
    runners = {name: superci.runner(clone, name) for name, clone in clones.items()}
    for runner in runners.values():
        runner.wait_for_log("registered with the dispatcher")
    assert "queued" in superci.notify(sha).stdout

    first_dir = Path(wait_until(lambda: file_text(gate / "started-1"), what="attempt 1 to start"))
    victim = next(name for name, clone in clones.items() if clone.samefile(first_dir))
    survivor = next(name for name in clones if name != victim)
    runners[victim].kill()

    second_dir = Path(wait_until(lambda: file_text(gate / "started-2"), what="attempt 2 to start"))
    assert second_dir.samefile(clones[survivor])
    (gate / "open").touch()
    result = superci.wait_for_result(sha)

    assert result["status"] == "passed"
    assert result["attempt"] == 2
    assert result["runner"] == survivor
    assert result["runners"] == [victim, survivor]
    assert builds_of(superci, sha) == [("passed", 2)]
    assert superci.output(sha).count("after the gate") == 1  # only the current attempt's log


def test_dispatcher_killed_with_queued_builds_builds_them_all_after_a_restart(
    repo: Repo, superci: Superci, tmp_path: Path
):
    shas = [repo.commit({"tests/test_math.py": PASSING_TEST + f"# {i}\n"}) for i in range(3)]
    clone = repo.clone(tmp_path / "runner-a")
    dispatcher = superci.dispatcher()
    for sha in shas:
        assert superci.notify(sha).returncode == 0
    dispatcher.kill()

    port = superci.address.rsplit(":", 1)[1]
    superci.dispatcher(int(port)).wait_for_log("resuming 3 unfinished build")
    superci.runner(clone, "runner-a")

    for sha in shas:
        assert superci.wait_for_result(sha)["status"] == "passed"
        assert builds_of(superci, sha) == [("passed", 1)]


def test_dispatcher_killed_mid_build_re_adopts_the_running_build_after_a_restart(
    repo: Repo, superci: Superci, tmp_path: Path
):
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    dispatcher = superci.dispatcher()
    runner = superci.runner(repo.clone(tmp_path / "runner-a"), "runner-a")
    superci.notify(sha)
    wait_until(lambda: (gate / "started-1").exists(), what="the build to start")
    dispatcher.kill()

    port = superci.address.rsplit(":", 1)[1]
    superci.dispatcher(int(port))
    runner.wait_for_log("build 1 adopted")
    (gate / "open").touch()
    result = superci.wait_for_result(sha)

    assert (result["status"], result["attempt"], result["runner"]) == ("passed", 1, "runner-a")
    log = superci.output(sha)
    assert log.index("before the gate") < log.index("after the gate")
    assert log.count("before the gate") == 1 and log.count("after the gate") == 1


def test_observer_started_while_the_dispatcher_is_down_delivers_every_commit_once_it_is_up(
    repo: Repo, superci: Superci, tmp_path: Path
):
    first = repo.commit({"tests/test_math.py": PASSING_TEST}, "first")
    observed = repo.clone(tmp_path / "observed")
    clone = repo.clone(tmp_path / "runner-a")
    port = free_port()
    superci.address = f"127.0.0.1:{port}"
    observer = superci.observer(observed)
    observer.wait_for_log("cannot reach the dispatcher")
    meanwhile = [repo.commit({"tests/test_math.py": PASSING_TEST + f"# {i}\n"}) for i in range(2)]
    observer.wait_for_log(r"poll failed[^\n]*\n(.*\n)*.*poll failed")  # it kept trying

    superci.dispatcher(port)
    superci.runner(clone, "runner-a")

    for sha in [first, *meanwhile]:
        assert superci.wait_for_result(sha)["status"] == "passed"
        assert builds_of(superci, sha) == [("passed", 1)]


def test_notify_reports_an_unreachable_dispatcher_and_a_bad_commit_id(superci: Superci):
    superci.address = f"127.0.0.1:{free_port()}"
    unreachable = superci.notify("a" * 40)
    assert unreachable.returncode == 1
    assert "cannot reach the dispatcher at 127.0.0.1:" in unreachable.stderr

    superci.dispatcher()
    bad = superci.notify("../../etc/passwd")
    assert bad.returncode == 1
    assert "full 40-character hex SHA" in bad.stderr
    assert not (superci.results / "../../etc/passwd").exists()

    sha = "b" * 40
    assert "queued" in superci.notify(sha).stdout
    assert "already known" in superci.notify(sha).stdout
    assert builds_of(superci, sha) == [("queued", 0)]


def test_up_builds_new_commits_prints_outcomes_and_stops_cleanly_on_ctrl_c(
    repo: Repo, tmp_path: Path
):
    repo.commit({"tests/test_math.py": PASSING_TEST}, "passing")
    before = git(repo.path, "status", "--porcelain", "--ignored")
    out = tmp_path / "up.out"
    state = tmp_path / "state"
    with open(out, "w") as stdout:
        up = subprocess.Popen(
            [sys.executable, "-m", "superci", "up", "--port", "0", "--interval", "0.2", "."],
            stdout=stdout, stderr=subprocess.DEVNULL, cwd=repo.path, start_new_session=True,
            env={**os.environ, "XDG_STATE_HOME": str(state)},
        )  # fmt: skip
    try:
        wait_until(lambda: "PASSED" in out.read_text(), what="the first outcome")
        failing = repo.commit({"tests/test_broken.py": FAILING_TEST}, "failing")
        wait_until(lambda: f"FAILED    {failing[:12]}" in out.read_text(), what="the failure")
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0
    finally:
        if up.poll() is None:
            up.kill()
    children = subprocess.run(
        ["pgrep", "-s", str(up.pid)], capture_output=True, text=True, timeout=10
    ).stdout.split()
    assert children == []  # runners and observer stopped with it
    # Everything up made is in its work folder outside the repository, which is as it was.
    (work,) = (state / "superci" / "up").iterdir()
    assert work.name.startswith("upstream-")
    assert f"logs in {work / 'logs'}" in out.read_text()
    assert (work / "test_results" / failing / "result.json").exists()
    logs = sorted(p.name for p in (work / "logs").iterdir())
    assert logs == ["observer.log", "runner-1.log", "runner-2.log", "up.log"]
    assert "registered with the dispatcher" in (work / "logs" / "runner-1.log").read_text()
    assert git(repo.path, "status", "--porcelain", "--ignored") == before


def test_token_protected_dispatcher_builds_for_runners_with_the_token_only(
    repo: Repo, superci: Superci, tmp_path: Path
):
    sha = repo.commit({"tests/test_math.py": PASSING_TEST}, "passing")
    good, bad = tmp_path / "token", tmp_path / "wrong-token"
    good.write_text("a-shared-token-of-32-characters!\n")
    bad.write_text("not-the-token-the-dispatcher-has\n")
    superci.dispatcher(0, "--token-file", str(good))
    intruder = superci.runner(
        repo.clone(tmp_path / "intruder"), "intruder", "--token-file", str(bad)
    )
    intruder.wait_for_log("does not know our token")

    no_token = superci.notify(sha)
    assert no_token.returncode == 1 and "requires a token" in no_token.stderr
    assert superci.notify(sha, "--token-file", str(good)).returncode == 0
    superci.runner(repo.clone(tmp_path / "runner-a"), "runner-a", "--token-file", str(good))

    result = superci.wait_for_result(sha)
    assert (result["status"], result["runner"]) == ("passed", "runner-a")
    dispatcher_log = superci.processes[0].log
    assert "authentication failed" in dispatcher_log


def test_result_that_cannot_be_written_is_not_marked_finished_and_is_recorded_later(
    repo: Repo, superci: Superci, tmp_path: Path
):
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    dispatcher = superci.dispatcher()
    runner = superci.runner(repo.clone(tmp_path / "runner-a"), "runner-a")
    superci.notify(sha)
    wait_until(lambda: (gate / "started-1").exists(), what="the build to start")
    folder = superci.results / sha
    folder.rename(tmp_path / "moved-away")
    folder.write_text("not a folder: the disk is in trouble")  # result.json cannot be written

    (gate / "open").touch()
    dispatcher.wait_for_log("result not recorded, the runner will retry")
    runner.wait_for_log("could not record build 1 yet")
    with sqlite3.connect(superci.state) as db:
        assert db.execute("SELECT status FROM builds").fetchall() == [("running",)]

    folder.unlink()
    (tmp_path / "moved-away").rename(folder)
    result = superci.wait_for_result(sha)
    assert (result["status"], result["attempt"]) == ("passed", 1)
    assert builds_of(superci, sha) == [("passed", 1)]
    assert "after the gate" in superci.output(sha)
