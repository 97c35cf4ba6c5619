"""Crash chaos through the real command-line programs: a stream of commits is built while
the dispatcher and the runners are SIGKILLed and restarted, and at the end every commit
has exactly one recorded result, the one its content dictates, from its current attempt.

The schedule (which commits fail, how long each test takes, what is killed when) comes
from one seeded ``random.Random``; the seed is printed, and ``SUPERCI_CHAOS_SEED=<seed>``
replays the same schedule (the interleaving with the processes is still up to the OS).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import Process, Repo, Superci
from support import process_alive, wait_until

pytestmark = pytest.mark.e2e

COMMITS = 24
RUNNERS = ("runner-a", "runner-b", "runner-c")
#: Kills of each kind. "runner": a busy runner, restarted at once under its name.
#: "dispatcher": restarted at once on the same port and state. "both": the dispatcher and
#: a busy runner, which comes back only after the restarted dispatcher gave up on it (its
#: lease, restored from the database, expires after the heartbeat timeout). "freeze": a
#: busy runner is stopped (SIGSTOP) until the dispatcher declares it dead, then resumed,
#: so a runner the dispatcher gave up on comes back with a stale lease.
KILLS = {"dispatcher": 3, "runner": 5, "both": 2, "freeze": 1}
#: Upper bound for the whole stream to be built once the chaos is over (seconds).
SETTLE = 120.0
#: Upper bound for one chaos step to find a build running (seconds).
STEP_WAIT = 30.0

#: The test of one commit: it notes where and under which attempt it started, takes a
#: little time (so kills land mid-build) and passes or fails as the commit says. It ends
#: on its own within a second, so a runner SIGKILLed mid-build leaves no process for long.
COMMIT_TEST = """\
import os
import pathlib
import time
import unittest

MARKS = pathlib.Path({marks!r})


class Chaos(unittest.TestCase):
    def test_commit_{index}(self):
        sha, attempt = os.environ["SUPERCI_COMMIT"], os.environ["SUPERCI_ATTEMPT"]
        (MARKS / ("started-" + sha + "-" + attempt)).write_text(os.getcwd())
        print("commit {index} attempt", attempt, "started", flush=True)
        time.sleep({sleep})
        self.assertTrue({passes}, "commit {index} is meant to fail")
"""

HEADER = re.compile(r"superci: building ([0-9a-f]{40}) \(\S+\) attempt (\d+) on (\S+)")


def chaos_seed() -> int:
    seed = int(os.environ.get("SUPERCI_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed: {seed}")
    return seed


class Chaos:
    """The processes under test and the marks their builds leave."""

    def __init__(self, superci: Superci, repo: Repo, tmp_path: Path) -> None:
        self.superci = superci
        self.repo = repo
        self.marks = tmp_path / "marks"
        self.marks.mkdir()
        self.clones = {name: repo.clone(tmp_path / name) for name in RUNNERS}
        self.runners: dict[str, Process] = {}
        self.dispatcher: Process | None = None
        self.port = 0
        self.starts = 0  # dispatcher processes started so far
        self.seen: set[str] = set()  # start marks already used to time a kill

    def start_dispatcher(self) -> None:
        self.dispatcher = self.superci.dispatcher(
            self.port, "--heartbeat-timeout", "2", "--max-attempts", "10"
        )
        self.starts += 1
        # The log file is shared by every dispatcher process of the test: count the lines.
        wait_until(
            lambda: self.dispatcher_log().count("dispatcher listening on") >= self.starts,
            what=f"dispatcher #{self.starts} to listen",
        )
        self.port = int(self.superci.address.rsplit(":", 1)[1])

    def dispatcher_log(self) -> str:
        return (self.superci.root / "dispatcher.log").read_text(errors="replace")

    def start_runner(self, name: str) -> None:
        self.runners[name] = self.superci.runner(self.clones[name], name, "--kill-grace", "1")

    def commit(self, index: int, passes: bool, sleep: float) -> str:
        test = COMMIT_TEST.format(marks=str(self.marks), index=index, sleep=sleep, passes=passes)
        return self.repo.commit({"tests/test_chaos_commit.py": test}, f"chaos commit {index}")

    def fresh_start(self) -> Path:
        """The mark of a build that started since the last kill: a build is running now."""

        def new_mark() -> Path | None:
            for mark in self.marks.iterdir():
                if mark.name not in self.seen:
                    self.seen.update(m.name for m in self.marks.iterdir())
                    return mark
            return None

        return wait_until(new_mark, STEP_WAIT, "a build to start")

    def busy_runner(self, mark: Path) -> str:
        where = Path(mark.read_text() or wait_until(mark.read_text, 5, f"{mark.name} written"))
        return next(name for name, clone in self.clones.items() if clone.samefile(where))

    def kill(self, what: str) -> None:
        mark = self.fresh_start()
        name = self.busy_runner(mark)
        if what == "runner":
            self.runners[name].kill()
            self.start_runner(name)
            return
        if what == "freeze":
            self.runners[name].popen.send_signal(signal.SIGSTOP)
            try:
                wait_until(lambda: not self.leased_to(name), what=f"{name} to be declared dead")
            finally:
                self.runners[name].popen.send_signal(signal.SIGCONT)
            return
        assert self.dispatcher is not None
        self.dispatcher.kill()
        if what == "both":
            self.runners[name].kill()
        self.start_dispatcher()
        if what == "both":
            wait_until(
                lambda: not self.leased_to(name),
                what=f"the restarted dispatcher to give up on {name}",
            )
            self.start_runner(name)

    def leased_to(self, name: str) -> list[int]:
        """Builds the database says ``name`` is running."""
        with sqlite3.connect(self.superci.state) as db:
            rows = db.execute(
                "SELECT id FROM builds WHERE status = 'running' AND runner = ?", (name,)
            ).fetchall()
        return [build_id for (build_id,) in rows]


def stray_processes(root: Path) -> list[int]:
    """Processes (not zombies) whose working folder or command line is under ``root``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or not ours to look at
        if not process_alive(int(entry.name)):
            continue
        if cwd.startswith(str(root)) or str(root) in cmdline:
            found.append(int(entry.name))
    return found


def kill_strays(root: Path) -> None:
    """Orphaned build processes end on their own within a second; kill what is left."""
    try:
        wait_until(lambda: not stray_processes(root), 10, "orphaned build processes to end")
    except AssertionError:
        print(f"killing leftover processes: {stray_processes(root)}")
        for pid in stray_processes(root):
            try:  # a build's own group (it has a session of its own); else the process alone
                group = os.getpgid(pid)
                if group == pid:
                    os.killpg(group, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def finished_rows(state: Path, count: int) -> list[tuple[int, str, str, int, str | None]] | None:
    """Every build row, once there are ``count`` and none is queued or running any more."""
    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT id, sha, status, attempt, runner FROM builds").fetchall()
    if len(rows) < count or any(status in ("queued", "running") for _, _, status, _, _ in rows):
        return None
    return rows


def test_every_commit_is_recorded_once_with_its_own_status_through_dispatcher_and_runner_kills(
    repo: Repo, superci: Superci, tmp_path: Path
):
    rng = random.Random(chaos_seed())
    verdicts = [rng.random() < 0.6 for _ in range(COMMITS)]
    sleeps = [round(rng.uniform(0.1, 0.3), 2) for _ in range(COMMITS)]
    kills = [kind for kind, times in KILLS.items() for _ in range(times)]
    rng.shuffle(kills)
    # Commits arrive in small bursts; after each burst but the last, one kill.
    cuts = sorted(rng.sample(range(2, COMMITS - 2), len(kills)))
    bursts = [range(a, b) for a, b in zip([0, *cuts], [*cuts, COMMITS], strict=True)]

    chaos = Chaos(superci, repo, tmp_path)
    shas: dict[str, int] = {}  # sha -> commit index
    started = time.monotonic()
    try:
        shas[chaos.commit(0, verdicts[0], sleeps[0])] = 0
        chaos.start_dispatcher()
        for name in RUNNERS:
            chaos.start_runner(name)
        observer = superci.observer(repo.clone(tmp_path / "observed"))
        observer.wait_for_log(f"delivered {next(iter(shas))}")  # the first tip is delivered
        for burst, kill in zip(bursts, [*kills, None], strict=True):
            for index in burst:
                if index:
                    shas[chaos.commit(index, verdicts[index], sleeps[index])] = index
            if kill is not None:
                chaos.kill(kill)

        rows = wait_until(
            lambda: finished_rows(superci.state, COMMITS), SETTLE, "every build to finish"
        )
        print(f"chaos took {time.monotonic() - started:.1f}s")
    finally:
        superci.stop_all()
        kill_strays(tmp_path)

    assert len(shas) == COMMITS
    assert sorted(sha for _, sha, *_ in rows) == sorted(shas), "exactly one build row per commit"
    for build_id, sha, status, attempt, runner in rows:
        index = shas[sha]
        expected = "passed" if verdicts[index] else "failed"
        where = f"commit {index} ({sha[:12]}, build {build_id})"
        assert status == expected, f"{where}: {status} in the database"

        folder = superci.results / sha
        assert sorted(p.name for p in folder.iterdir() if "result" in p.name) == ["result.json"]
        result = json.loads((folder / "result.json").read_text())
        assert result["status"] == expected, f"{where}: {result['message']}"
        assert (result["build_id"], result["attempt"], result["runner"]) == (
            build_id,
            attempt,
            runner,
        ), f"{where}: result.json is not the current attempt's"
        assert result["runners"][-1] == runner and len(result["runners"]) == attempt
        assert result["exit_code"] == (0 if verdicts[index] else 1)
        assert result["tests"]["run"] == 1, f"{where}: {result['tests']}"

        headers = HEADER.findall(superci.output(sha))
        assert headers == [(sha, str(attempt), runner)], f"{where}: log headers {headers}"

    dispatcher_log = chaos.dispatcher_log()
    # The kills landed mid-build: builds were re-queued, and re-adopted after a restart.
    print(f"re-queued: {dispatcher_log.count(' re-queued: ')}, "
          f"re-adopted: {dispatcher_log.count(' re-adopted build ')}")  # fmt: skip
    assert " re-queued: " in dispatcher_log and " re-adopted build " in dispatcher_log
    for sha in shas:  # written after the database row; a kill may fall between the two
        assert len(re.findall(rf"build \d+ of {sha[:12]}: ", dispatcher_log)) <= 1
    assert chaos.starts == 1 + KILLS["dispatcher"] + KILLS["both"]
    assert dispatcher_log.count("dispatcher listening on") == chaos.starts
