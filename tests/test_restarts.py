"""Restarts that cost nothing: a runner or a whole ``superci up`` stopped on purpose gives
its build back without using an attempt, through the real programs."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PASSING_TEST, Repo, Superci
from support import E2E_WAIT, file_text, process_alive, wait_until

pytestmark = pytest.mark.e2e


def build_row(state: Path, sha: str) -> tuple[str, int, int]:
    """(status, attempt, lost) of the newest build of ``sha``."""
    with sqlite3.connect(state) as db:
        return db.execute(
            "SELECT status, attempt, lost FROM builds WHERE sha = ? ORDER BY id DESC", (sha,)
        ).fetchone()


def test_runner_stopped_mid_build_gives_it_back_without_using_an_attempt(
    repo: Repo, superci: Superci, tmp_path: Path
):
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    superci.dispatcher("0", "--max-attempts", "1")
    first = superci.runner(repo.clone(tmp_path / "first"), "first")
    first.wait_for_log("registered with the dispatcher")
    assert "queued" in superci.notify(sha).stdout
    wait_until(lambda: (gate / "started-1").exists(), what="attempt 1 to start")

    assert first.stop() == 0  # SIGTERM, as a service manager stops it
    assert "left the dispatcher" in first.log
    dispatcher = superci.processes[0]
    dispatcher.wait_for_log("runner first is leaving: runner stopped")
    assert build_row(superci.state, sha) == ("queued", 1, 0)

    second = superci.runner(repo.clone(tmp_path / "second"), "second")
    wait_until(lambda: (gate / "started-2").exists(), what="attempt 2 to start")
    (gate / "open").touch()
    result = superci.wait_for_result(sha)
    assert (result["status"], result["attempt"]) == ("passed", 2)  # not "runner lost"
    wait_until(lambda: build_row(superci.state, sha)[0] != "running", what="the database")
    assert build_row(superci.state, sha) == ("passed", 2, 0)
    assert result["runners"] == ["first", "second"]
    assert not (gate / "finished-1").exists()  # the first runner's tests were stopped
    second.stop()


def _up(repo: Repo, tmp_path: Path, out: Path) -> subprocess.Popen[bytes]:
    """``superci up`` in a session of its own, so the test can Ctrl-C its whole group."""
    with open(out, "ab") as stdout:
        return subprocess.Popen(
            [sys.executable, "-m", "superci", "up", "--port", "0", "--runners", "1",
             "--interval", "0.2", "--work", str(tmp_path / "work"),
             "--results", str(tmp_path / "results"), str(repo.path)],
            stdout=stdout, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        )  # fmt: skip


def _ctrl_c(up: subprocess.Popen[bytes]) -> None:
    """What a terminal does on Ctrl-C: SIGINT to every process of the foreground group."""
    os.killpg(up.pid, signal.SIGINT)
    assert up.wait(timeout=E2E_WAIT) == 0


def test_ctrl_c_of_up_mid_build_three_times_then_up_again_passes(repo: Repo, tmp_path: Path):
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    out = tmp_path / "up.out"
    for attempt in (1, 2, 3):
        up = _up(repo, tmp_path, out)
        try:
            wait_until(
                lambda a=attempt: (gate / f"started-{a}").exists(), what=f"attempt {attempt}"
            )
            _ctrl_c(up)
        finally:
            if up.poll() is None:
                up.kill()
        assert build_row(tmp_path / "work" / "superci.db", sha)[0] == "queued"

    up = _up(repo, tmp_path, out)
    try:
        wait_until(lambda: (gate / "started-4").exists(), what="attempt 4")
        (gate / "open").touch()
        wait_until(lambda: f"PASSED    {sha[:12]}" in out.read_text(), what="the pass")
        _ctrl_c(up)
    finally:
        if up.poll() is None:
            up.kill()
    assert build_row(tmp_path / "work" / "superci.db", sha) == ("passed", 4, 0)
    assert "runner lost" not in out.read_text()


def test_dispatcher_stopped_on_purpose_mid_build_costs_no_attempt(
    repo: Repo, superci: Superci, tmp_path: Path
):
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    dispatcher = superci.dispatcher()
    port = superci.address.rpartition(":")[2]
    runner = superci.runner(repo.clone(tmp_path / "clone"), "runner")
    runner.wait_for_log("registered with the dispatcher")
    assert "queued" in superci.notify(sha).stdout
    wait_until(lambda: (gate / "started-1").exists(), what="attempt 1 to start")

    assert dispatcher.stop() == 0  # SIGTERM
    superci.dispatcher(int(port))
    runner.wait_for_log("build 1 adopted")
    (gate / "open").touch()
    result = superci.wait_for_result(sha)
    assert (result["status"], result["attempt"]) == ("passed", 1)
    # result.json is written just before the database marks the build finished
    wait_until(lambda: build_row(superci.state, sha)[0] != "running", what="the database")
    assert build_row(superci.state, sha) == ("passed", 1, 0)


def test_a_runner_whose_clone_cannot_be_repaired_leaves_and_its_build_is_queued_again(
    repo: Repo, superci: Superci, tmp_path: Path
):
    sha = repo.commit({"tests/test_math.py": PASSING_TEST}, "passing")
    clone = repo.clone(tmp_path / "broken")
    superci.dispatcher("0", "--max-attempts", "1")
    broken = superci.runner(clone, "broken")
    broken.wait_for_log("registered with the dispatcher")
    shutil.rmtree(clone / ".git")  # and its remote is gone too: nothing to repair from
    moved = repo.path.rename(tmp_path / "moved")

    assert "queued" in superci.notify(sha).stdout
    assert broken.popen.wait(timeout=E2E_WAIT) == 1  # it leaves the pool, saying why
    assert "Error: the runner's clone" in broken.log and "cannot be repaired" in broken.log
    superci.processes[0].wait_for_log("runner broken is leaving")
    assert build_row(superci.state, sha) == ("queued", 1, 0)  # given back, not an error

    moved.rename(repo.path)
    superci.runner(repo.clone(tmp_path / "healthy"), "healthy")
    result = superci.wait_for_result(sha)
    assert (result["status"], result["attempt"]) == ("passed", 2)


STUBBORN_TEST = """\
import os
import pathlib
import signal
import time
import unittest

GATE = pathlib.Path({gate!r})


class Stubborn(unittest.TestCase):
    def test_takes_its_time_to_stop(self):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
        attempt = os.environ["SUPERCI_ATTEMPT"]
        (GATE / ("pid-" + attempt)).write_text(str(os.getpid()))
        while not (GATE / "open").exists():
            time.sleep(0.02)
"""


def test_a_stopped_runner_ends_its_build_before_another_runner_starts_it(
    repo: Repo, superci: Superci, tmp_path: Path
):
    """The dispatcher hands the build on as soon as the runner says it leaves, so the
    runner says so only once the build's processes are gone: never two at once."""
    gate = tmp_path / "gate"
    gate.mkdir()
    sha = repo.commit({"tests/test_stubborn.py": STUBBORN_TEST.format(gate=str(gate))})
    superci.dispatcher()
    first = superci.runner(repo.clone(tmp_path / "first"), "first", "--kill-grace", "1")
    first.wait_for_log("registered with the dispatcher")
    assert "queued" in superci.notify(sha).stdout
    first_pid = int(wait_until(lambda: file_text(gate / "pid-1"), what="attempt 1 to start"))
    second = superci.runner(repo.clone(tmp_path / "second"), "second")
    second.wait_for_log("registered with the dispatcher")

    first.popen.send_signal(signal.SIGTERM)
    wait_until(lambda: (gate / "pid-2").exists(), what="attempt 2 to start on the other")
    assert not process_alive(first_pid)  # attempt 1 was gone before attempt 2 began
    assert first.popen.wait(timeout=E2E_WAIT) == 0
    (gate / "open").touch()
    result = superci.wait_for_result(sha)
    assert (result["status"], result["attempt"], result["runner"]) == ("passed", 2, "second")
