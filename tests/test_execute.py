"""Running the test command: exit codes, live output, time limits, and no survivors."""

import asyncio
import os
import shlex
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from support import process_gone, wait_until

from superci import defaults
from superci.containment import BuildCgroup, BuildContainment
from superci.errors import SuperCIError
from superci.execute import Execution, build_environment, run_command

PYTHON = shlex.quote(sys.executable)
#: Upper bound for any single run in these tests; none should come near it.
RUN_LIMIT = 10.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, RUN_LIMIT))


class Output:
    """An on_output that records chunks and can react once a marker has been printed."""

    def __init__(self, marker: bytes = b"", on_marker=None):
        self.chunks: list[bytes] = []
        self.marker = marker
        self.on_marker = on_marker
        self.seen_marker = False

    async def __call__(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        if self.marker and not self.seen_marker and self.marker in self.data:
            self.seen_marker = True
            if self.on_marker is not None:
                self.on_marker()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def script(tmp_path: Path, name: str, source: str) -> str:
    """Write a Python script and return the shell command that runs it."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return f"{PYTHON} {shlex.quote(str(path))}"


def start(
    command, cwd, output, timeout=5.0, kill_grace=0.5, cancel=None, env=None,
    drain_timeout=defaults.OUTPUT_DRAIN_TIMEOUT,
):  # fmt: skip
    env = build_environment(os.environ, {}) if env is None else env
    return run_command(
        command, cwd, env, timeout, kill_grace, output, cancel, drain_timeout=drain_timeout
    )


#: How soon a killed process must be gone (its zombie aside): the kernel gives no event.
GONE_WITHIN = 3.0


def wait_for_file(path: Path, timeout: float = 5.0) -> str:
    wait_until(lambda: path.exists() and path.read_text().strip() != "", timeout, str(path))
    return path.read_text().strip()


@pytest.fixture
def stubborn_tree(tmp_path):
    """A command whose grandchild survives SIGTERM; prints "ready" once all is in place.

    Yields the command and a function returning the grandchild's pid. The grandchild is
    SIGKILLed at teardown in case a test failed before superci did it.
    """
    pid_file = tmp_path / "grandchild.pid"
    term_file = tmp_path / "grandchild.term"
    grandchild = script(
        tmp_path,
        "grandchild.py",
        f"""
        import os, pathlib, signal, time
        def note_and_ignore(signum, frame):
            pathlib.Path({str(term_file)!r}).write_text("SIGTERM")
        signal.signal(signal.SIGTERM, note_and_ignore)
        pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))
        for _ in range(600):
            time.sleep(0.1)
        """,
    )
    command = script(
        tmp_path,
        "main.py",
        f"""
        import pathlib, subprocess, sys, time
        subprocess.Popen({grandchild!r}, shell=True)
        deadline = time.monotonic() + 5
        while not pathlib.Path({str(pid_file)!r}).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        print("ready", flush=True)
        time.sleep(60)
        """,
    )
    pids: list[int] = []

    def grandchild_pid() -> int:
        pids.append(int(wait_for_file(pid_file)))
        return pids[-1]

    yield command, grandchild_pid, term_file
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_exit_code_zero_is_reported(tmp_path):
    result = run(start(f"{PYTHON} -c 'pass'", tmp_path, Output()))
    assert result.exit_code == 0
    assert not result.timed_out
    assert not result.cancelled
    assert result.duration > 0


def test_non_zero_exit_code_is_reported(tmp_path):
    result = run(start(f"{PYTHON} -c 'raise SystemExit(3)'", tmp_path, Output()))
    assert result == Execution(
        exit_code=3, timed_out=False, cancelled=False, duration=result.duration
    )


def test_command_runs_in_cwd_with_stdin_from_dev_null(tmp_path):
    output = Output()
    code = "import os, sys; print(os.getcwd()); print(repr(sys.stdin.read()))"
    result = run(start(f"{PYTHON} -c {shlex.quote(code)}", tmp_path, output))
    assert result.exit_code == 0
    assert output.data.decode().splitlines() == [str(tmp_path), "''"]


def test_command_runs_in_a_session_of_its_own(tmp_path):
    output = Output()
    code = "import os; print(os.getsid(0), os.getpgid(0))"
    run(start(f"{PYTHON} -c {shlex.quote(code)}", tmp_path, output))
    sid, pgid = map(int, output.data.split())
    assert sid == pgid
    assert sid != os.getsid(0)


def test_output_is_complete_in_order_merged_and_chunked(tmp_path):
    lines = 20_000  # about 400 KB: many pipe reads, several chunks
    command = script(
        tmp_path,
        "chatty.py",
        f"""
        import sys
        for i in range({lines}):
            stream = sys.stdout if i % 2 else sys.stderr
            stream.write(f"line {{i:06d}} " + "x" * 8 + "\\n")
            stream.flush()
        """,
    )
    output = Output()
    result = run(start(command, tmp_path, output))
    assert result.exit_code == 0
    expected = "".join(f"line {i:06d} xxxxxxxx\n" for i in range(lines)).encode()
    assert output.data == expected
    assert all(0 < len(chunk) <= defaults.OUTPUT_CHUNK_BYTES for chunk in output.chunks)


def test_output_reaches_on_output_while_the_command_still_runs(tmp_path):
    go = tmp_path / "go"
    command = script(
        tmp_path,
        "waits.py",
        f"""
        import pathlib, sys, time
        print("waiting for go", flush=True)
        deadline = time.monotonic() + 5
        while not pathlib.Path({str(go)!r}).exists():
            if time.monotonic() > deadline:
                sys.exit("never saw the go file: output was not streamed live")
            time.sleep(0.01)
        print("went")
        """,
    )
    output = Output(b"waiting for go\n", on_marker=go.touch)
    result = run(start(command, tmp_path, output))
    assert output.data.decode() == "waiting for go\nwent\n"
    assert result.exit_code == 0


def test_timeout_kills_the_whole_tree_even_a_grandchild_ignoring_sigterm(tmp_path, stubborn_tree):
    command, grandchild_pid, term_file = stubborn_tree
    output = Output()
    result = run(start(command, tmp_path, output, timeout=1.0, kill_grace=0.5))

    assert b"ready" in output.data, "setup took longer than the timeout"
    assert result.timed_out
    assert not result.cancelled
    assert result.exit_code is None
    assert result.duration >= 1.0 + 0.5 - 0.05  # the grace was given before SIGKILL
    assert term_file.read_text() == "SIGTERM"  # the whole group got SIGTERM first
    pid = grandchild_pid()
    wait_until(lambda: process_gone(pid), GONE_WITHIN, f"grandchild {pid} to end with the timeout")


def test_cancel_event_kills_the_whole_tree(tmp_path, stubborn_tree):
    command, grandchild_pid, term_file = stubborn_tree

    async def main() -> Execution:
        cancel = asyncio.Event()
        return await start(command, tmp_path, Output(b"ready", cancel.set), cancel=cancel)

    result = run(main())

    assert result.cancelled
    assert not result.timed_out
    assert result.exit_code is None
    assert term_file.read_text() == "SIGTERM"
    pid = grandchild_pid()
    wait_until(lambda: process_gone(pid), GONE_WITHIN, f"grandchild {pid} to end with the cancel")


def test_a_group_that_obeys_sigterm_is_not_made_to_wait_the_grace(tmp_path):
    command = script(
        tmp_path, "sleeps.py", "import time\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )

    async def main() -> Execution:
        cancel = asyncio.Event()
        return await start(
            command, tmp_path, Output(b"ready", cancel.set), kill_grace=5.0, cancel=cancel
        )

    result = run(main())
    assert result.cancelled
    assert result.duration < 3.0


def test_cancel_set_before_start_ends_the_run_at_once(tmp_path):
    async def main() -> Execution:
        cancel = asyncio.Event()
        cancel.set()
        return await start(
            f"{PYTHON} -c 'import time; time.sleep(60)'", tmp_path, Output(), cancel=cancel
        )

    result = run(main())
    assert result.cancelled
    assert result.exit_code is None


def test_leftover_background_process_is_killed_and_does_not_hang_the_run(tmp_path):
    pid_file = tmp_path / "background.pid"
    command = script(
        tmp_path,
        "leaves_one_behind.py",
        f"""
        import pathlib, subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))
        print("main done", flush=True)
        """,
    )
    output = Output()
    try:
        result = run(start(command, tmp_path, output, timeout=5.0))
        assert result.exit_code == 0
        assert output.data == b"main done\n"
        # The background process held the pipe open; it had to be killed, not waited for.
        assert result.duration < defaults.OUTPUT_DRAIN_TIMEOUT
        pid = int(wait_for_file(pid_file))
        wait_until(lambda: process_gone(pid), GONE_WITHIN, f"background process {pid} to end")
    finally:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_process_out_of_reach_holding_the_output_cannot_hang_the_run(
    tmp_path, monkeypatch, caplog
):
    """Should an escaped process survive the kill (one superci cannot see, stood in for here
    by turning the kill off), the pipe it holds is given up on, not waited for."""
    monkeypatch.setattr(BuildContainment, "kill_all", lambda self: None)
    monkeypatch.setattr(BuildCgroup, "create", classmethod(lambda cls, name: None))
    pid_file = tmp_path / "escaped.pid"
    command = script(
        tmp_path,
        "escapes.py",
        f"""
        import pathlib, subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True)
        pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))
        """,
    )
    try:
        result = run(start(command, tmp_path, Output(), timeout=5.0, drain_timeout=0.3))
        assert result.exit_code == 0
        assert result.duration < 3.0
        assert "out of reach" in caplog.text
    finally:
        os.kill(int(wait_for_file(pid_file)), signal.SIGKILL)


def test_on_output_failure_stops_the_build_and_is_raised(tmp_path, stubborn_tree):
    command, grandchild_pid, _ = stubborn_tree

    async def broken(chunk: bytes) -> None:
        if b"ready" in chunk:
            raise ConnectionError("dispatcher went away")

    with pytest.raises(ConnectionError, match="dispatcher went away"):
        run(start(command, tmp_path, broken))
    pid = grandchild_pid()
    wait_until(lambda: process_gone(pid), GONE_WITHIN, f"grandchild {pid} to end")


def test_cancelling_the_task_kills_the_tree(tmp_path, stubborn_tree):
    command, grandchild_pid, _ = stubborn_tree

    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(start(command, tmp_path, Output(b"ready", ready.set)))
        await ready.wait()
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        run(main())
    pid = grandchild_pid()
    wait_until(lambda: process_gone(pid), GONE_WITHIN, f"grandchild {pid} to end")


def test_missing_working_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(SuperCIError, match=f"cannot start the test command in {missing}"):
        run(start(f"{PYTHON} -c 'pass'", missing, Output()))


def test_environment_from_build_environment_is_visible_to_the_command(tmp_path):
    env = build_environment(os.environ, {"SUPERCI_TEST_VALUE": "from extra"})
    output = Output()
    command = (
        "echo \"$SUPERCI_TEST_VALUE|$CI|$SUPERCI\"; python -c 'import sys; print(sys.executable)'"
    )
    result = run(start(command, tmp_path, output, env=env))
    assert result.exit_code == 0
    values, interpreter = output.data.decode().splitlines()
    assert values == "from extra|true|1"
    assert os.path.dirname(interpreter) == os.path.dirname(sys.executable)


def test_build_environment_sets_ci_markers_and_puts_our_interpreter_first():
    base = {"PATH": "/usr/bin:/bin", "HOME": "/home/ci", "CI": "false"}
    env = build_environment(base, {"HOME": "/tmp/home", "EXTRA": "1"})
    assert env["HOME"] == "/tmp/home"
    assert env["EXTRA"] == "1"
    assert env["CI"] == "true"
    assert env["SUPERCI"] == "1"
    bindir = os.path.dirname(sys.executable)
    assert env["PATH"] == f"{bindir}{os.pathsep}/usr/bin:/bin"
    assert base["PATH"] == "/usr/bin:/bin"  # the caller's mapping is not changed


def test_build_environment_without_path_still_finds_our_interpreter():
    env = build_environment({}, {})
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
