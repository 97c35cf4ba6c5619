"""Faults leave one consistent state, through the real programs: a results disk that
fills up, a dispatcher paused past the heartbeat timeout, a database locked by another
process, a build far beyond the log cap, and a dispatcher killed while it cuts a log."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Repo, Superci, git
from support import wait_until

pytestmark = pytest.mark.e2e

CAP = 64 * 1024
LINE = "line %08d of a build far beyond the log cap\n"

#: A test that writes ``lines`` numbered lines, says so, and waits for ``GATE/open``.
BIG_TEST = """\
import pathlib
import sys
import time
import unittest

GATE = pathlib.Path({gate!r})


class Big(unittest.TestCase):
    def test_big(self):
        for i in range({lines}):
            sys.stdout.write({line!r} % i)
        sys.stdout.flush()
        (GATE / "written").write_text("")
        deadline = time.monotonic() + 60
        while not (GATE / "open").exists():
            self.assertLess(time.monotonic(), deadline, "the gate never opened")
            time.sleep(0.02)
"""


def big_commit(repo: Repo, gate: Path, lines: int) -> str:
    gate.mkdir(exist_ok=True)
    test = BIG_TEST.format(gate=str(gate), lines=lines, line=LINE)
    return repo.commit({"tests/test_big.py": test}, "a lot of output")


def expected_output(lines: int) -> bytes:
    return "".join(LINE % i for i in range(lines)).encode()


def db_row(superci: Superci, build_id: int) -> tuple:
    with sqlite3.connect(superci.state) as db:
        return db.execute(
            "SELECT status, attempt, lost FROM builds WHERE id = ?", (build_id,)
        ).fetchone()


def finished_row(superci: Superci, build_id: int) -> tuple:
    """The build's row once the database marks it finished (just after result.json)."""

    def finished() -> tuple | None:
        row = db_row(superci, build_id)
        return row if row[0] not in ("queued", "running") else None

    return wait_until(finished, what=f"build {build_id} to be marked finished")


def notified_build_id(superci: Superci, sha: str) -> int:
    done = superci.notify(sha)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(superci.state) as db:
        return db.execute("SELECT max(id) FROM builds WHERE sha = ?", (sha,)).fetchone()[0]


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def assert_exact_head_and_tail(log: bytes, lines: int) -> None:
    """The log is head + one marker + tail, and every byte the build wrote is in it once
    or counted in the marker: nothing duplicated, nothing lost uncounted."""
    body = expected_output(lines)
    found = list(re.finditer(rb"\n\[superci: (\d+) bytes of output dropped here[^\n]*\]\n", log))
    assert len(found) == 1, f"{len(found)} markers in the log"
    head, tail = log[: found[0].start()], log[found[0].end() :]
    prefix = head[: head.index(LINE.encode() % 0)]  # superci's own lines before the tests
    last = LINE.encode() % (lines - 1)
    suffix = tail[tail.rindex(last) + len(last) :]  # the test summary after them
    assert body.startswith(head[len(prefix) :]), "the head is not the start of the output"
    assert body.endswith(tail[: len(tail) - len(suffix)]), "the tail is not its end"
    assert len(head) + len(tail) + int(found[0].group(1)) == len(prefix) + len(body) + len(suffix)


def test_a_results_disk_that_fills_and_is_grown_mid_build_burns_no_attempt(
    superci: Superci, repo: Repo, tmp_path: Path
):
    results = tmp_path / "small-results"
    results.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(results)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.decode().strip()}")
    try:
        superci.results = results
        gate = tmp_path / "gate"
        sha = big_commit(repo, gate, 20000)  # ~900 KB of output: more than the disk holds
        dispatcher = superci.dispatcher(0, "--max-log-bytes", str(CAP))
        superci.runner(repo.clone(tmp_path / "clone"), "r1")
        dispatcher.wait_for_log("runner r1 registered")
        filler = results / "filler"
        with open(filler, "wb", buffering=0) as f, pytest.raises(OSError):  # fill it up
            while True:
                f.write(b"x" * 4096)
        build_id = notified_build_id(superci, sha)

        wait_until(lambda: (gate / "written").exists(), what="the output written")
        (gate / "open").write_text("")
        dispatcher.wait_for_log("No space left")
        time.sleep(1.0)  # the disk stays full a while: retries must not burn attempts
        assert db_row(superci, build_id)[2] == 0
        grown = subprocess.run(["mount", "-o", "remount,size=8m", str(results)])
        assert grown.returncode == 0

        result = superci.wait_for_result(sha)
        assert result["status"] == "passed" and result["attempt"] == 1
        assert finished_row(superci, build_id) == ("passed", 1, 0)
        assert dispatcher.log.count(f"build {build_id} of {sha[:12]}: passed") == 1
        assert_exact_head_and_tail(superci.output(sha).encode(), 20000)
    finally:
        superci.stop_all()
        subprocess.run(["umount", "-l", str(results)], check=False)


def test_a_dispatcher_paused_past_the_heartbeat_timeout_declares_no_runner_dead(
    superci: Superci, repo: Repo, tmp_path: Path
):
    sha = repo.commit({"tests/test_ok.py": "import unittest\n\n\nclass T(unittest.TestCase):\n"
                       "    def test_ok(self):\n        pass\n"})  # fmt: skip
    dispatcher = superci.dispatcher(0, "--heartbeat-timeout", "1")
    superci.runner(repo.clone(tmp_path / "clone"), "r1")
    dispatcher.wait_for_log("runner r1 registered")

    os.kill(dispatcher.popen.pid, signal.SIGSTOP)  # a VM pause: the attack is its length
    time.sleep(2.5)
    os.kill(dispatcher.popen.pid, signal.SIGCONT)

    dispatcher.wait_for_log(r"the dispatcher was paused for \d")
    result = superci.notify(sha)
    assert result.returncode == 0, result.stderr
    assert superci.wait_for_result(sha)["attempt"] == 1
    assert "declared dead" not in dispatcher.log and "no heartbeat" not in dispatcher.log


LOCKER = """\
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def test_a_database_locked_for_a_while_stalls_no_heartbeat_and_no_log(
    superci: Superci, repo: Repo, tmp_path: Path
):
    lock_seconds = float(os.environ.get("SUPERCI_TEST_LOCK_SECONDS", "4"))
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    later = repo.commit({"README": "later\n"}, "submitted while the database is locked")
    git(repo.path, "checkout", "--quiet", sha)  # the gated commit stays the one built first
    dispatcher = superci.dispatcher(0, "--heartbeat-timeout", "1")
    superci.runner(repo.clone(tmp_path / "clone"), "r1")
    build_id = notified_build_id(superci, sha)
    wait_until(lambda: list(gate.glob("started-*")), what="the gated build started")
    follow = subprocess.Popen(
        [sys.executable, "-m", "superci", "logs", "--follow", "--dispatcher-server",
         superci.address, sha],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(superci.state), str(lock_seconds)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        submitted = subprocess.Popen(
            [sys.executable, "-m", "superci", "notify", "--dispatcher-server", superci.address,
             later], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        (gate / "open").write_text("")  # the build ends while the database is locked
        out, _ = follow.communicate(timeout=lock_seconds + 30)
        assert b"after the gate" in out
        assert submitted.wait(timeout=30) == 0, submitted.stderr.read()  # type: ignore[union-attr]
    finally:
        locker.wait(timeout=lock_seconds + 10)
        follow.kill()

    assert superci.wait_for_result(sha)["status"] == "passed"
    assert finished_row(superci, build_id) == ("passed", 1, 0)
    superci.wait_for_result(later)
    assert "declared dead" not in dispatcher.log and "no heartbeat" not in dispatcher.log


def test_a_build_far_beyond_the_log_cap_keeps_dispatcher_writes_and_runner_spool_bounded(
    superci: Superci, repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    lines = 200_000  # ~9 MB of output, 140 times the cap
    gate = tmp_path / "gate"
    sha = big_commit(repo, gate, lines)
    dispatcher = superci.dispatcher(0, "--max-log-bytes", str(CAP))
    spools = tmp_path / "runner-tmp"
    spools.mkdir()
    monkeypatch.setenv("TMPDIR", str(spools))
    superci.runner(repo.clone(tmp_path / "clone"), "r1", "--max-spool-bytes", str(CAP))
    dispatcher.wait_for_log("runner r1 registered")
    written_before = _written(dispatcher.popen.pid)

    notified_build_id(superci, sha)
    wait_until(lambda: (gate / "written").exists(), what="the output written")
    spool_dirs = list(spools.glob("superci-spool-*"))
    assert spool_dirs and size_of(spools) <= CAP
    (gate / "open").write_text("")
    superci.wait_for_result(sha)

    output = expected_output(lines)
    written = _written(dispatcher.popen.pid) - written_before
    assert written < 1.5 * len(output), f"the dispatcher wrote {written} bytes for {len(output)}"
    assert size_of(superci.results / sha) <= CAP
    assert_exact_head_and_tail(superci.output(sha).encode(), lines)


def test_a_dispatcher_killed_while_it_cuts_a_log_gets_exactly_the_missing_output_resent(
    superci: Superci, repo: Repo, tmp_path: Path
):
    lines = 100_000
    gate = tmp_path / "gate"
    sha = big_commit(repo, gate, lines)
    dispatcher = superci.dispatcher(0, "--max-log-bytes", str(CAP))
    port = int(superci.address.rsplit(":", 1)[1])
    superci.runner(repo.clone(tmp_path / "clone"), "r1")
    notified_build_id(superci, sha)
    folder = superci.results / sha
    # Killed once the tail has been cut a few times, while output still streams in.
    wait_until(lambda: len(list(folder.glob(".output.log.tail.*"))) >= 3, what="cuts")
    dispatcher.kill()
    restarted = superci.dispatcher(port, "--max-log-bytes", str(CAP))
    restarted.wait_for_log("re-adopted build")
    wait_until(lambda: (gate / "written").exists(), what="the output written")
    (gate / "open").write_text("")

    result = superci.wait_for_result(sha)
    assert result["status"] == "passed" and result["attempt"] == 1
    assert_exact_head_and_tail(superci.output(sha).encode(), lines)


def _written(pid: int) -> int:
    """Bytes the process passed to write calls so far (/proc/<pid>/io ``wchar``)."""
    io = Path(f"/proc/{pid}/io").read_text()
    return int(re.search(r"^wchar: (\d+)$", io, re.M).group(1))  # type: ignore[union-attr]
