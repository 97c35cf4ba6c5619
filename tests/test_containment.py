"""A build is contained: what it starts dies with it, also what left its process group,
also when the runner itself is killed; a build cannot outstay its limits on a slow link."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Repo, Superci
from support import build_processes, process_gone, wait_until
from test_execute import Output, run, wait_for_file

from superci import containment, defaults
from superci.containment import BuildCgroup, BuildContainment, Record, kill_recorded
from superci.execute import build_environment, run_command

PYTHON = shlex.quote(sys.executable)
CGROUP_USABLE = (probe := BuildCgroup.create(f"superci-probe-{os.getpid()}")) is not None
if probe is not None:
    probe.remove()

#: The two ways a build is contained: by its own cgroup (where the runner may make one)
#: and, without, by the mark in its processes' environment.
KINDS = [
    pytest.param("cgroup", marks=pytest.mark.skipif(not CGROUP_USABLE, reason="no cgroup v2")),
    "mark",
]


@pytest.fixture(params=KINDS)
def kind(request, monkeypatch) -> str:
    if request.param == "mark":
        monkeypatch.setattr(BuildCgroup, "create", classmethod(lambda cls, name: None))
    return request.param


@pytest.fixture
def pids_to_reap():
    """Pids a test started; SIGKILLed at teardown should superci have failed to."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(
    command: str, cwd: Path, output, timeout=5.0, cancel=None,
    drain_timeout: float = defaults.OUTPUT_DRAIN_TIMEOUT,
):  # fmt: skip
    env = build_environment(os.environ, {})
    return run_command(command, cwd, env, timeout, 0.5, output, cancel, drain_timeout=drain_timeout)


# --- escaped processes die with the build -----------------------------------------------


def test_an_escaped_setsid_writer_is_dead_at_the_end_of_the_build(tmp_path, kind, pids_to_reap):
    pid_file = tmp_path / "writer.pid"
    command = (
        f"setsid sh -c 'echo $$ > {pid_file}; while :; do echo x; sleep 0.01; done' & "
        f"until [ -s {pid_file} ]; do sleep 0.01; done; echo main done"
    )
    result = run(start(command, tmp_path, Output()))
    pid = int(wait_for_file(pid_file))
    pids_to_reap.append(pid)
    assert result.exit_code == 0
    assert process_gone(pid), f"the escaped writer {pid} outlived its build ({kind})"


def test_a_daemonizing_double_fork_is_dead_at_the_end_of_the_build(tmp_path, kind, pids_to_reap):
    pid_file = tmp_path / "daemon.pid"
    daemonize = (
        "import os, sys, time\n"
        "if os.fork(): sys.exit(0)\n"
        "os.setsid()\n"
        "if os.fork(): os._exit(0)\n"
        "devnull = os.open(os.devnull, os.O_RDWR)\n"
        "for fd in (0, 1, 2): os.dup2(devnull, fd)\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )
    (tmp_path / "daemon.py").write_text(daemonize)
    command = f"{PYTHON} daemon.py; until [ -s {pid_file} ]; do sleep 0.01; done"
    result = run(start(command, tmp_path, Output()))
    pid = int(wait_for_file(pid_file))
    pids_to_reap.append(pid)
    assert result.exit_code == 0
    assert process_gone(pid), f"the daemon {pid} outlived its build ({kind})"


# --- a runner killed, a runner restarted ---------------------------------------------------


def _sleeper(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A process in a session of its own, as an escaped build process would be."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env=env,
        start_new_session=True,
    )


def test_a_restarted_runner_kills_what_the_record_of_its_previous_build_names(tmp_path):
    """The record names a mark; a process carrying it is ended, one that does not is not,
    even when it holds the recorded leader's pid (a recycled pid: its start time differs)."""
    marked = _sleeper({**os.environ, containment.MARK_VARIABLE: "m" * 32})
    stranger = _sleeper(dict(os.environ))
    try:
        start_of_stranger = containment.read_process(stranger.pid).start
        record = tmp_path / "superci-build"
        record.write_text(json.dumps(
            {"mark": "m" * 32, "leader": stranger.pid, "leader_start": start_of_stranger - 1}
        ))  # fmt: skip
        wait_until(lambda: containment.has_mark(marked.pid, "m" * 32), 5, "the mark")
        assert kill_recorded(record) == 1
        assert marked.wait(5) == -signal.SIGKILL
        assert stranger.poll() is None, "a process that only reuses the leader's pid was killed"
        assert not record.exists()
    finally:
        for process in (marked, stranger):
            process.kill()
            process.wait()


@pytest.mark.e2e
def test_a_restarted_runner_kills_the_leftovers_of_its_previous_life(
    repo: Repo, superci: Superci, tmp_path: Path
):
    repo.commit({"README": "x"})
    clone = repo.clone(tmp_path / "clone")
    leftover = _sleeper({**os.environ, containment.MARK_VARIABLE: "a" * 32})
    try:
        wait_until(lambda: containment.has_mark(leftover.pid, "a" * 32), 5, "the mark")
        (clone / ".git" / "superci-build").write_text(json.dumps({"mark": "a" * 32}))
        superci.dispatcher()
        runner = superci.runner(clone, "runner-restarted")
        runner.wait_for_log("registered with the dispatcher")
        assert leftover.wait(5) == -signal.SIGKILL
        assert "a previous run of this runner left" in runner.log
    finally:
        leftover.kill()
        leftover.wait()


ESCAPING_BUILD = """\
import os, pathlib, subprocess, sys, time
pids = pathlib.Path(os.environ["PIDS"]) / os.environ["SUPERCI_BUILD_ID"]
pids.mkdir(parents=True)
writer = subprocess.Popen(
    ["sh", "-c", "while :; do echo x; sleep 0.01; done"], start_new_session=True
)
sleeper = subprocess.Popen(["sleep", "300"])
(pids / "escaped").write_text(str(writer.pid))
(pids / "child").write_text(str(sleeper.pid))
(pids / "main").write_text(str(os.getpid()))
if os.environ["SUPERCI_BUILD_ID"] == "1" and os.environ.get("HOLD"):
    time.sleep(300)
if os.environ["SUPERCI_BUILD_ID"] == "2":
    first = pathlib.Path(os.environ["PIDS"]) / "1"
    for name in ("escaped", "child", "main"):
        pid = int((first / name).read_text())
        stat = pathlib.Path(f"/proc/{pid}/stat")
        alive = stat.exists() and stat.read_text().rpartition(")")[2].split()[0] not in "ZX"
        print(f"{name} of build 1 {'ALIVE' if alive else 'gone'}", flush=True)
print("build done", flush=True)
"""


def _escaping_repo(repo: Repo) -> tuple[str, str]:
    files = {
        ".superci.toml": f"command = {json.dumps(f'{sys.executable} escape.py')}\n"
        "allow_no_tests = true\n",
        "escape.py": ESCAPING_BUILD,
    }
    return repo.commit(files, "escapes"), repo.commit({"second": "x"}, "second")


def _pids(folder: Path) -> dict[str, int]:
    return {name: int(wait_for_file(folder / name)) for name in ("escaped", "child", "main")}


@pytest.mark.e2e
def test_an_escaped_setsid_writer_dies_with_its_build_and_the_next_build_starts_clean(
    repo: Repo, superci: Superci, tmp_path: Path, monkeypatch, pids_to_reap
):
    monkeypatch.setenv("PIDS", str(tmp_path / "pids"))
    first, second = _escaping_repo(repo)
    superci.dispatcher()
    superci.runner(repo.clone(tmp_path / "clone"), "runner-contained")
    assert "queued" in superci.notify(first).stdout
    assert superci.wait_for_result(first)["status"] == "passed", superci.output(first)
    pids = _pids(tmp_path / "pids" / "1")
    pids_to_reap.extend(pids.values())
    assert [name for name, pid in pids.items() if not process_gone(pid)] == []
    assert "superci: contained by " in superci.output(first)

    assert "queued" in superci.notify(second).stdout
    assert superci.wait_for_result(second)["status"] == "passed", superci.output(second)
    output = superci.output(second)
    assert "ALIVE" not in output and output.count("of build 1 gone") == 3, output


@pytest.mark.e2e
def test_a_runner_killed_with_sigkill_mid_build_leaves_no_build_process_behind(
    repo: Repo, superci: Superci, tmp_path: Path, monkeypatch, pids_to_reap
):
    monkeypatch.setenv("PIDS", str(tmp_path / "pids"))
    monkeypatch.setenv("HOLD", "1")
    first, _ = _escaping_repo(repo)
    superci.dispatcher()
    runner = superci.runner(repo.clone(tmp_path / "clone"), "runner-killed")
    assert "queued" in superci.notify(first).stdout
    pids = _pids(tmp_path / "pids" / "1")
    pids_to_reap.extend(pids.values())
    runner.kill()
    for name, pid in pids.items():
        wait_until(lambda pid=pid: process_gone(pid), 5, f"the build's {name} process to die")


# --- the time limit and cancel hold on a slow link -------------------------------------------


class Stuck:
    """An on_output whose link stops delivering after the first chunk."""

    def __init__(self) -> None:
        self.chunks = 0

    async def __call__(self, chunk: bytes) -> None:
        self.chunks += 1
        if self.chunks > 1:
            await asyncio.Event().wait()


CHATTY = f"{PYTHON} -c \"import sys; sys.stdout.buffer.write(b'x' * 8_000_000)\""


def test_the_time_limit_holds_while_the_output_cannot_be_delivered(tmp_path):
    began = time.monotonic()
    result = run(start(CHATTY, tmp_path, Stuck(), timeout=1.0, drain_timeout=0.3))
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - began < 1.0 + 0.5 + 1.0  # limit, kill grace, slack


def test_cancel_holds_while_the_output_cannot_be_delivered(tmp_path):

    async def main():
        cancel = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, cancel.set)
        return await start(
            CHATTY, tmp_path, Stuck(), timeout=60.0, cancel=cancel, drain_timeout=0.3
        )

    began = time.monotonic()
    result = run(main())
    assert result.cancelled and result.exit_code is None
    assert time.monotonic() - began < 0.5 + 0.5 + 1.0  # cancel, kill grace, slack


@pytest.mark.e2e
def test_a_build_whose_dispatcher_stops_reading_still_ends_at_its_time_limit(
    repo: Repo, superci: Superci, tmp_path: Path
):
    """The dispatcher is SIGSTOPped: the runner's link takes nothing, and a build that
    prints much and exits still ends by its limit rather than when the link comes back."""
    chatty = f"{sys.executable} -c \"import sys; sys.stdout.buffer.write(b'x' * 20_000_000)\""
    sha = repo.commit({".superci.toml": f"command = {json.dumps(chatty)}\ntimeout = 2\n"})
    dispatcher = superci.dispatcher()
    runner = superci.runner(repo.clone(tmp_path / "clone"), "runner-throttled")
    runner.wait_for_log("registered with the dispatcher")
    assert "queued" in superci.notify(sha).stdout
    dispatcher.wait_for_log("→ runner runner-throttled")
    dispatcher.popen.send_signal(signal.SIGSTOP)
    try:
        # The limit, the drain's bound, slack: well before the dispatcher's link would be
        # given up on (SEND_TIMEOUT), which was the only end of it before.
        runner.wait_for_log("ends as timeout", 2 + defaults.OUTPUT_DRAIN_TIMEOUT + 3)
        assert 2 + defaults.OUTPUT_DRAIN_TIMEOUT + 3 < defaults.SEND_TIMEOUT
    finally:
        dispatcher.popen.send_signal(signal.SIGCONT)
    assert superci.wait_for_result(sha)["status"] == "timeout"


def test_an_escaped_writer_on_a_throttled_link_ends_with_its_build_at_the_time_limit(
    repo: Repo, superci: Superci, tmp_path: Path
):
    """The issue's own attack: ``setsid yes & sleep 1`` while the dispatcher takes nothing.
    The escaped writer floods the pipe and outlives the command; the build still ends at
    its limit, and the writer with it."""
    sha = repo.commit({".superci.toml": 'command = "setsid yes & sleep 1"\ntimeout = 3\n'})
    dispatcher = superci.dispatcher()
    runner = superci.runner(repo.clone(tmp_path / "clone"), "runner-escaped")
    runner.wait_for_log("registered with the dispatcher")
    assert "queued" in superci.notify(sha).stdout
    dispatcher.wait_for_log("→ runner runner-escaped")
    wait_until(lambda: build_processes(sha), what="the build's processes")
    dispatcher.popen.send_signal(signal.SIGSTOP)
    try:
        runner.wait_for_log("ends as timeout", 3 + defaults.OUTPUT_DRAIN_TIMEOUT + 3)
        wait_until(lambda: not build_processes(sha), 5, "the escaped writer to be gone")
    finally:
        dispatcher.popen.send_signal(signal.SIGCONT)
    assert superci.wait_for_result(sha)["status"] == "timeout"
    assert build_processes(sha) == []


# --- time limits a commit cannot raise ------------------------------------------------------


def test_the_record_of_a_build_says_how_to_find_it_again(tmp_path):
    record_path = tmp_path / "superci-build"
    contained = BuildContainment(record_path)
    try:
        contained.started(os.getpid())
        saved = Record(**json.loads(record_path.read_text()))
        assert saved.mark == contained.record.mark and saved.leader == os.getpid()
        assert saved.leader_start == containment.read_process(os.getpid()).start
    finally:
        contained.close()
    assert not record_path.exists()
