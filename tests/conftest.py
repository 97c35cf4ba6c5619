"""Shared fixtures: an isolated git configuration and the real superci programs as
subprocesses, with every wait bounded."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme
from support import E2E_WAIT, wait_until


@pytest.fixture(autouse=True)
def isolated_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep the machine's own git configuration out of the tests, and give them an author."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var, value in {
        "GIT_AUTHOR_NAME": "Test Author",
        "GIT_AUTHOR_EMAIL": "author@example.com",
        "GIT_COMMITTER_NAME": "Test Author",
        "GIT_COMMITTER_EMAIL": "author@example.com",
    }.items():
        monkeypatch.setenv(var, value)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip()


PASSING_TEST = """\
import unittest


class Passing(unittest.TestCase):
    def test_arithmetic(self):
        print("passing test ran")
        self.assertEqual(2 + 2, 4)
"""

FAILING_TEST = """\
import unittest


class Failing(unittest.TestCase):
    def test_broken(self):
        print("failing test ran")
        self.assertEqual(2 + 2, 5)
"""

GATED_TEST = """\
import os
import pathlib
import time
import unittest

GATE = pathlib.Path({gate!r})


class Gated(unittest.TestCase):
    def test_waits_for_the_gate(self):
        attempt = os.environ["SUPERCI_ATTEMPT"]
        print("before the gate, attempt", attempt, flush=True)
        (GATE / ("started-" + attempt)).write_text(os.getcwd())
        deadline = time.monotonic() + 120
        while not (GATE / "open").exists():
            self.assertLess(time.monotonic(), deadline, "the gate never opened")
            time.sleep(0.02)
        print("after the gate", flush=True)
        (GATE / ("finished-" + attempt)).write_text(os.getcwd())
"""


def write_tls_files(folder: Path) -> dict[str, Path]:
    """A fresh CA and a certificate for 127.0.0.1 signed by it, as files: ``cert`` (the
    chain), ``key`` and ``ca``."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {name: folder / f"{name}.pem" for name in ("cert", "key", "ca")}
    cert.private_key_and_cert_chain_pem.write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return files


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    return write_tls_files(tmp_path)


class Repo:
    """An upstream repository of a project with unittest tests in tests/."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        git(path, "init", "--quiet", "-b", "main")

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        git(self.path, "add", "--all")
        git(self.path, "commit", "--quiet", "--allow-empty", "-m", message)
        return git(self.path, "rev-parse", "HEAD")

    def commit_gated(self, gate: Path, message: str = "gated") -> str:
        """A commit whose test says when it starts and waits for ``gate / "open"``."""
        gate.mkdir(exist_ok=True)
        return self.commit({"tests/test_gated.py": GATED_TEST.format(gate=str(gate))}, message)

    def clone(self, target: Path) -> Path:
        git(target.parent, "clone", "--quiet", str(self.path), str(target))
        return target


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "upstream")


class Process:
    """A superci program started as a subprocess, its output in a log file."""

    def __init__(
        self, args: list[str], log_path: Path, cwd: Path, prefix: Sequence[str] = ()
    ) -> None:
        """``prefix``: what runs the program (as another user, say); it must exec it, so
        that signals reach the program itself."""
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", "superci", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = E2E_WAIT) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.args[0]} exited ({self.popen.returncode}):\n{self.log}"
                )
            return re.search(pattern, self.log)

        return wait_until(found, timeout, f"{pattern!r} in the log of {self.args[0]}")

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()
        return self.popen.returncode


class Superci:
    """Starts dispatchers, runners and observers for one test and stops them after it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.results = root / "test_results"
        self.state = root / "superci.db"
        self.processes: list[Process] = []
        self.address = ""

    def start(self, *args: str, name: str) -> Process:
        process = Process(list(args), self.root / f"{name}.log", self.root)
        self.processes.append(process)
        return process

    def dispatcher(self, port: int = 0, *extra: str) -> Process:
        process = self.start(
            "dispatcher", "--port", str(port), "--results", str(self.results),
            "--state", str(self.state), "--verbose", *extra,
            name="dispatcher",
        )  # fmt: skip
        match = process.wait_for_log(r"dispatcher listening on (\S+)")
        self.address = match.group(1)
        return process

    def runner(self, clone: Path, name: str, *extra: str) -> Process:
        return self.start(
            "runner", "--dispatcher-server", self.address, "--name", name,
            "--heartbeat-interval", "0.2", str(clone), *extra,
            name=name,
        )  # fmt: skip

    def observer(self, clone: Path, *extra: str) -> Process:
        return self.start(
            "observer", "--dispatcher-server", self.address, "--interval", "0.2",
            str(clone), *extra,
            name="observer",
        )  # fmt: skip

    def notify(
        self, sha: str, *extra: str, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``superci notify``, run in ``cwd`` (a clone, to send the commit's config)."""
        return subprocess.run(
            [sys.executable, "-m", "superci", "notify", "--dispatcher-server", self.address,
             sha, *extra],
            capture_output=True, text=True, timeout=30, cwd=cwd or self.root,
        )  # fmt: skip

    def result(self, sha: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.results / sha / "result.json").read_text())
        except FileNotFoundError:
            return None

    def wait_for_result(self, sha: str, timeout: float = E2E_WAIT) -> dict[str, Any]:
        return wait_until(lambda: self.result(sha), timeout, f"the result of {sha[:12]}")

    def output(self, sha: str) -> str:
        return (self.results / sha / "output.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


#: Where a failed test leaves what shows why (a browser test: a screenshot of its page).
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
#: Each test's reports by phase ("setup", "call", "teardown"), for fixtures that act on
#: a failure when they finish.
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    """True once the test that asked for a fixture has failed (setup or call)."""
    reports = request.node.stash.get(REPORTS, {})
    return any(r.failed for r in reports.values())


@pytest.fixture
def superci(tmp_path: Path) -> Iterator[Superci]:
    stack = Superci(tmp_path)
    try:
        yield stack
    finally:
        stack.stop_all()
