"""A network partition between two "hosts": network namespaces joined by a veth pair.

The dispatcher and a "near" runner live in namespace A, a "far" runner in namespace B,
and the only way between them is the veth pair with a /30 that exists nowhere else. The
far runner's link is cut in the middle of a build: the dispatcher must declare it dead
after the heartbeat timeout and give the build to the near runner; when the link comes
back, the far runner's late result must not be recorded and the far runner must rejoin
the pool and take new work.

Nothing here touches the root namespace's interfaces or routes: both ends of the veth are
created inside the test's own namespaces, and deleting the namespaces (always, in the
fixture's teardown) deletes the veth with them. Skipped where namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSING_TEST, Process, Repo
from support import file_text, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

#: The only addresses in play: one /30 that exists on the test's own veth pair only.
DISPATCHER_IP = "10.231.7.1"
FAR_IP = "10.231.7.2"
PREFIX = 30
#: Short, since a runner is declared dead only after it; heartbeats come every 0.2 s.
HEARTBEAT_TIMEOUT = 2.0
#: Bound for any one wait of this test; the whole test takes far less.
WAIT = 30.0


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


@dataclass
class Network:
    """Namespace ``near`` (A, with the dispatcher) and ``far`` (B), one veth between them."""

    near: str
    far: str
    near_link: str = "sci-near"
    far_link: str = "sci-far"

    def cut(self) -> None:
        """Pull the far host's cable: nothing reaches either side, and neither is told."""
        ip("-n", self.far, "link", "set", self.far_link, "down")

    def restore(self) -> None:
        ip("-n", self.far, "link", "set", self.far_link, "up")


def _skip_unless_namespaces_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip(f"network namespaces need root; running as uid {os.geteuid()}")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` binary (iproute2) to make network namespaces with")


def _delete_namespace(name: str) -> None:
    """Kill what still runs in it (only ever processes this test started there), then
    delete it; its end of the veth goes with it."""
    pids = ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    ip("netns", "del", name)


@pytest.fixture
def network() -> Iterator[Network]:
    _skip_unless_namespaces_possible()
    tag = f"{os.getpid()}-{secrets.token_hex(2)}"
    net = Network(near=f"superci-near-{tag}", far=f"superci-far-{tag}")
    created: list[str] = []
    try:
        for name in (net.near, net.far):
            made = ip("netns", "add", name, check=False)
            if made.returncode != 0:
                pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
            created.append(name)
        # Both ends are born inside the test's namespaces: the root namespace never sees them.
        ip("-n", net.near, "link", "add", net.near_link, "type", "veth",
           "peer", "name", net.far_link, "netns", net.far)  # fmt: skip
        for ns, link, address in (
            (net.near, net.near_link, DISPATCHER_IP),
            (net.far, net.far_link, FAR_IP),
        ):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{address}/{PREFIX}", "dev", link)
            ip("-n", ns, "link", "set", link, "up")
            # Where the kernel has it (Linux 6.15+), cap TCP's retransmission backoff in
            # these namespaces, so a restored link is noticed within a second rather than
            # after a backoff of many seconds; the test holds without it, only slower.
            subprocess.run(
                ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_rto_max_ms=1000"],
                capture_output=True, timeout=10, check=False,
            )  # fmt: skip
        yield net
    finally:
        failures = []
        for name in reversed(created):  # each one, even if another cannot be deleted
            try:
                _delete_namespace(name)
            except subprocess.CalledProcessError as e:
                failures.append(f"{name}: {e.stderr.strip()}")
        assert not failures, f"network namespaces left behind: {failures}"


class HostProcess(Process):
    """A superci program started inside a network namespace (``ip netns exec`` execs it,
    so the pid is the program's own)."""

    def __init__(self, netns: str, args: list[str], log_path: Path, cwd: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "superci", *args],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log))


class Hosts:
    """The dispatcher and runners of one test, each in its namespace, all with the token."""

    def __init__(self, root: Path, network: Network) -> None:
        self.root = root
        self.network = network
        self.results = root / "test_results"
        self.state = root / "superci.db"
        self.token = root / "token"
        self.token.write_text(secrets.token_hex(16) + "\n")
        self.processes: list[HostProcess] = []
        self.address = ""

    def start(self, netns: str, *args: str, name: str) -> HostProcess:
        process = HostProcess(netns, list(args), self.root / f"{name}.log", self.root)
        self.processes.append(process)
        return process

    def dispatcher(self) -> HostProcess:
        process = self.start(
            self.network.near, "dispatcher", "--host", DISPATCHER_IP, "--port", "0",
            "--results", str(self.results), "--state", str(self.state),
            "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT), "--token-file", str(self.token),
            "--verbose",
            name="dispatcher",
        )  # fmt: skip
        self.address = process.wait_for_log(r"dispatcher listening on (\S+)", WAIT).group(1)
        return process

    def runner(self, netns: str, clone: Path, name: str) -> HostProcess:
        return self.start(
            netns, "runner", "--dispatcher-server", self.address, "--name", name,
            "--heartbeat-interval", "0.2", "--token-file", str(self.token), str(clone),
            name=name,
        )  # fmt: skip

    def client(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A short client command (notify, status) from the dispatcher's host."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.network.near, sys.executable, "-m", "superci", *args,
             "--dispatcher-server", self.address, "--token-file", str(self.token)],
            capture_output=True, text=True, timeout=WAIT, cwd=self.root,
        )  # fmt: skip
        assert done.returncode == 0, f"superci {args[0]} failed:\n{done.stdout}{done.stderr}"
        return done

    def notify(self, sha: str) -> None:
        assert "queued" in self.client("notify", sha).stdout

    def pool(self) -> dict[str, str]:
        """Runner name → state, as the dispatcher sees its pool."""
        document = json.loads(self.client("status", "--json").stdout)
        return {runner["name"]: runner["state"] for runner in document["runners"]}

    def result(self, sha: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.results / sha / "result.json").read_text())
        except FileNotFoundError:
            return None

    def builds(self, sha: str) -> list[tuple[str, int]]:
        """(status, attempt) of every build of ``sha`` in the dispatcher's database, once
        none is running (result.json is written just before the row is marked finished)."""

        def settled() -> list[tuple[str, int]] | None:
            with sqlite3.connect(self.state) as db:
                rows = db.execute(
                    "SELECT status, attempt FROM builds WHERE sha = ?", (sha,)
                ).fetchall()
            return None if any(status == "running" for status, _ in rows) else rows

        return wait_until(settled, WAIT, f"the build of {sha[:12]} to be marked finished")

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def hosts(tmp_path: Path, network: Network) -> Iterator[Hosts]:
    stack = Hosts(tmp_path, network)
    try:
        yield stack
    finally:
        stack.stop_all()  # before the namespaces go (this fixture ends first)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (a runner's running build, for instance), but for
    the runner's guard (superci.containment.Guard), which lives as long as the runner."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            guard = b"containment import guard" in (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if int(text[text.rfind(")") + 2 :].split()[1]) == pid and not guard:
            found.append(int(stat.parent.name))
    return found


def test_runner_cut_off_mid_build_loses_its_lease_and_rejoins_when_the_link_is_back(
    network: Network, hosts: Hosts, repo: Repo, tmp_path: Path
):
    began = time.monotonic()
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    far_clone = repo.clone(tmp_path / "far-clone")
    near_clone = repo.clone(tmp_path / "near-clone")
    dispatcher = hosts.dispatcher()
    far = hosts.runner(network.far, far_clone, "far")
    far.wait_for_log("registered with the dispatcher", WAIT)
    dispatcher.wait_for_log(rf"runner far registered from {re.escape(FAR_IP)}:", WAIT)

    # The far runner, across the veth, takes the build; only then does the near one come.
    hosts.notify(sha)
    started = wait_until(lambda: file_text(gate / "started-1"), WAIT, "attempt 1 to start")
    assert Path(started).samefile(far_clone)
    near = hosts.runner(network.near, near_clone, "near")
    near.wait_for_log("registered with the dispatcher", WAIT)

    # Cut the far host's link mid-build: after the heartbeat timeout the build goes to
    # the near runner as attempt 2.
    network.cut()
    cut_at = time.monotonic()
    started = wait_until(lambda: file_text(gate / "started-2"), WAIT, "attempt 2 to start")
    redispatched_after = time.monotonic() - cut_at
    assert Path(started).samefile(near_clone)
    assert redispatched_after >= HEARTBEAT_TIMEOUT
    dispatcher.wait_for_log(r"build 1 re-queued: attempt 1 lost with runner far: no heartbeat", 1)
    dispatcher.wait_for_log(r"build 1 \(\w+\) attempt 2 → runner near", 1)

    # Both builds pass the gate; only the near runner's result can get through.
    (gate / "open").touch()
    recorded = wait_until(lambda: hosts.result(sha), WAIT, f"the result of {sha[:12]}")
    assert (recorded["status"], recorded["attempt"], recorded["runner"]) == ("passed", 2, "near")
    assert recorded["runners"] == ["far", "near"]
    assert hosts.builds(sha) == [("passed", 2)]
    # The far runner's attempt 1 ran to its end behind the cut, and the runner now holds
    # its result, sent into a connection that leads nowhere.
    wait_until(lambda: (gate / "finished-1").exists(), WAIT, "attempt 1 to finish behind the cut")
    wait_until(lambda: not _children(far.popen.pid), WAIT, "the far build's processes to end")
    assert far.count("reconnecting to") == 0  # the cut was silent: it noticed nothing

    # The link comes back: the far runner finds its old connection dead, registers again
    # claiming the lease of attempt 1, and is told the build went to another runner.
    network.restore()
    restored_at = time.monotonic()
    far.wait_for_log(r"abandoning build 1: the dispatcher gave this build to another runner", WAIT)
    rejoined_after = time.monotonic() - restored_at
    wait_until(lambda: dispatcher.count(r"runner far registered from") == 2, WAIT, "far rejoins")
    assert wait_until(lambda: hosts.pool() == {"far": "idle", "near": "idle"}, WAIT, "the pool")
    # Its late result was refused: nothing about the recorded build changed.
    assert hosts.result(sha) == recorded
    assert hosts.builds(sha) == [("passed", 2)]
    output = (hosts.results / sha / "output.log").read_text()
    assert output.count("after the gate") == 1  # the near runner's, not appended to
    assert "attempt 2 on near" in output and "attempt 1 on far" not in output
    assert "re-adopted" not in dispatcher.log
    assert "terminating build process group" not in far.log  # it had finished, not killed
    assert far.count(r"result of build 1 recorded") == 0

    # With the near runner gone, new work can only go to the far runner: it takes it.
    near.stop()
    wait_until(lambda: hosts.pool() == {"far": "idle"}, WAIT, "the near runner to leave")
    after = repo.commit({"tests/test_gated.py": PASSING_TEST}, "after the partition")
    hosts.notify(after)
    result = wait_until(lambda: hosts.result(after), WAIT, f"the result of {after[:12]}")
    assert (result["status"], result["attempt"], result["runner"]) == ("passed", 1, "far")
    assert hosts.builds(after) == [("passed", 1)]
    far.wait_for_log(r"result of build 2 recorded", WAIT)

    total = time.monotonic() - began
    print(
        f"redispatched {redispatched_after:.1f}s after the cut; far runner back "
        f"{rejoined_after:.1f}s after the link; whole test {total:.1f}s"
    )
    assert total < 60
