#!/usr/bin/env python3
"""Benchmarks of superci: the figures of issues 5 and 9, measured on this machine.

Run by hand (they are benchmarks, not tests)::

    python scripts/bench.py                       # every scenario, a few minutes
    python scripts/bench.py --quick               # every scenario, small, in about a minute
    python scripts/bench.py --only overhead,logs --json bench.json
    python scripts/bench.py --only throughput --profile prof/   # dispatcher under py-spy

Every scenario starts the real programs (``python -m superci dispatcher|runner|observer``
and the ``superci`` client commands) on 127.0.0.1 with port 0, in a temporary folder of
its own, bounds every wait in count and time, and stops every process it started (SIGTERM,
then SIGKILL) even when it fails or is interrupted. Synthetic runners (throughput, scale)
are asyncio clients in this process that speak :mod:`superci.protocol` through
:mod:`superci.client`, as a real runner does.

The result is one table: scenario, metric, value, target, met. Rows without a target are
there to explain the others (breakdowns, context). ``--json`` writes the same rows.
Exit status: 0 when every target is met, 1 when a target is missed, 2 when a scenario
broke (an exception, a wait that timed out) so its figures are missing; ``.ci/run``
accepts 0 and 1 (a missed target depends on the machine) but not 2.
Setting ``PYTHONPATH`` to a modified copy of superci benchmarks that copy instead (the
superci actually used is recorded in the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import superci
from superci import client, protocol
from superci.channel import Address, Channel, parse_address
from superci.jobs import folder_name

# The tests' own waits: the benchmark runs from a checkout, never installed, like the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import (  # noqa: E402
    have_chromium,
    make_wheel,
    rss_mib,
    slow_readers,
    start_chromium,
    wait_until,
)

PYTHON = sys.executable
#: How long any one wait may last before the scenario fails (seconds); reached only when broken.
WAIT = 60.0
#: Exit statuses: a target missed (the figures are there), a scenario broken (they are not).
EXIT_MISSED = 1
EXIT_BROKEN = 2
#: How often a wait polls: finer than the tests, as some waits end a measurement.
POLL = 0.002
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

# --- the tested repositories' contents ----------------------------------------------

PASSING_TEST = """\
import unittest


class Trivial(unittest.TestCase):
    def test_arithmetic(self):
        self.assertEqual(2 + 2, 4)
"""

#: Writes started-<attempt> (its working folder and process group) into the gate folder,
#: then waits (bounded) until the gate folder holds "open".
GATED_TEST = """\
import os
import pathlib
import time
import unittest

GATE = pathlib.Path({gate!r})


class Gated(unittest.TestCase):
    def test_waits_for_the_gate(self):
        marker = GATE / ("started-" + os.environ["SUPERCI_ATTEMPT"])
        marker.write_text(os.getcwd() + "\\n" + str(os.getpgrp()))
        deadline = time.monotonic() + 120
        while not (GATE / "open").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
"""

#: Prints one line, waits (bounded) for the gate file, then prints ``mib`` MiB fast.
CHATTY_BUILD = """\
import pathlib
import sys
import time

GATE = pathlib.Path({gate!r})
print("emit: waiting for the gate", flush=True)
deadline = time.monotonic() + 120
while not GATE.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
block = (b"x" * 1023 + b"\\n") * 1024
out = sys.stdout.buffer
for _ in range({mib}):
    out.write(block)
out.flush()
print("emit: done", flush=True)
"""

# --- measuring ----------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table; ``op`` compares value to target (no target: context only)."""

    scenario: str
    metric: str
    value: float | None
    unit: str
    target: float | None = None
    op: str = "<="
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.value is None or math.isnan(self.value):
            return False
        return {
            "<=": self.value <= self.target,
            "<": self.value < self.target,
            ">=": self.value >= self.target,
        }[self.op]

    def cells(self) -> list[str]:
        target = "—" if self.target is None else f"{_sign(self.op)} {_fmt(self.target, self.unit)}"
        met = {None: "—", True: "yes", False: "NO"}[self.met]
        return [self.scenario, self.metric, _fmt(self.value, self.unit), target, met]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def _sign(op: str) -> str:
    return {"<=": "≤", "<": "<", ">=": "≥"}[op]


def _fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if unit in ("", "count"):
        return f"{value:g}"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f} {unit}"


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return percentile(values, 50)


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (and of its reaped children), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def random_sha() -> str:
    return random.randbytes(20).hex()


def cli_command() -> list[str]:
    """The ``superci`` console script as a user runs it (``python -m superci`` without one)."""
    script = Path(PYTHON).parent / "superci"
    return [str(script)] if script.exists() else [PYTHON, "-m", "superci"]


# --- processes ----------------------------------------------------------------------

#: Every process any scenario started, so an interrupted run still stops them all.
LIVE: list[Proc] = []


class Proc:
    """A superci program as a subprocess, its output in a log file read incrementally."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_path: Path,
        cwd: Path,
        env: dict[str, str],
        profile: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._offset = 0
        self._text = ""
        command = [PYTHON, "-m", "superci", *args]
        if profile is not None:  # py-spy can only trace its own children here (no ptrace cap)
            command = ["py-spy", "record", "--format", "raw", "--rate", "200", "--idle",
                       "--output", str(profile), "--", *command]  # fmt: skip
        self.popen = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd, env=env,
        )  # fmt: skip
        self.profiled = profile is not None
        LIVE.append(self)
        self.pid = self._python_pid() if self.profiled else self.popen.pid

    def _python_pid(self) -> int:
        """The traced interpreter: py-spy's child."""

        def child() -> int | None:
            for task in Path(f"/proc/{self.popen.pid}/task").iterdir():
                kids = (task / "children").read_text().split()
                if kids:
                    return int(kids[0])
            return None

        return wait_until(child, 10, "py-spy to start the dispatcher", POLL)

    @property
    def log(self) -> str:
        """Everything logged so far (read from where the last call stopped)."""
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        self._text += data.decode("utf-8", errors="replace")
        return self._text

    def search(self, pattern: str) -> re.Match[str] | None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.log[-3000:]}")
        return re.search(pattern, self.log)

    def wait_for_log(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        return wait_until(
            lambda: self.search(pattern), timeout, f"{pattern!r} in the log of {self.name}", 0.005
        )

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            self.signal(signal.SIGCONT)  # a stopped process must run to see SIGTERM

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace``; idempotent."""
        self.terminate()
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(timeout=10)
        self._log.close()
        if self in LIVE:
            LIVE.remove(self)


def stop_all(processes: list[Proc]) -> None:
    """Stop processes together (newest first), so a slow one does not serialise the rest."""
    for process in reversed(processes):
        process.terminate()
    for process in reversed(processes):
        try:
            process.stop()
        except Exception as e:  # keep stopping the others
            print(f"bench: could not stop {process.name}: {e}", file=sys.stderr)


def kill_group(pgid: int) -> None:
    """End a build's process group left behind by a runner that was killed."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Repo:
    """A git repository with a trivial unittest suite, committed to by the benchmark."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path = path
        self.env = env
        self._count = 0
        path.mkdir(parents=True)
        self.git("init", "--quiet", "-b", "main")
        self.commit({"tests/test_trivial.py": PASSING_TEST}, "trivial suite")

    def git(self, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(
            ["git", "-C", str(cwd or self.path), *args],
            check=True, capture_output=True, text=True, timeout=30, env=self.env,
        )  # fmt: skip
        return done.stdout.strip()

    def commit(self, files: dict[str, str] | None = None, message: str = "change") -> str:
        self._count += 1
        files = files or {"bench.txt": f"{self._count}\n"}
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def clone(self, target: Path) -> Path:
        self.git("clone", "--quiet", str(self.path), str(target), cwd=target.parent)
        return target


class Stack:
    """One scenario's folder and processes; leaving the ``with`` stops them all."""

    def __init__(self, bench: Bench, name: str, base: Path | None = None) -> None:
        self.bench = bench
        self.name = name
        self.dir = (base or bench.root) / name
        self.dir.mkdir()
        self.results = self.dir / "test_results"
        self.state = self.dir / "superci.db"
        self.processes: list[Proc] = []
        self.address = ""

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        stop_all(self.processes)

    def start(self, name: str, *args: str, profile: Path | None = None) -> Proc:
        process = Proc(
            name, list(args), self.dir / f"{name}.log", self.dir, self.bench.env, profile
        )
        self.processes.append(process)
        return process

    def dispatcher(self, *extra: str) -> Proc:
        profile = None
        if self.bench.profile_dir is not None:
            profile = self.bench.profile_dir / f"{self.name}-dispatcher.txt"
        process = self.start(
            "dispatcher", "dispatcher", "--host", "127.0.0.1", "--port", "0",
            "--results", str(self.results), "--state", str(self.state), *extra,
            profile=profile,
        )  # fmt: skip
        self.address = process.wait_for_log(r"dispatcher listening on (\S+)").group(1)
        assert parse_address(self.address).host == "127.0.0.1"
        return process

    def runner(self, clone: Path, name: str, *extra: str, wait: bool = True) -> Proc:
        process = self.start(
            name, "runner", "--dispatcher-server", self.address, "--name", name, *extra, str(clone)
        )
        if wait:
            process.wait_for_log("registered with the dispatcher")
        return process

    def observer(self, clone: Path, *extra: str) -> Proc:
        return self.start(
            "observer", "observer", "--dispatcher-server", self.address, *extra, str(clone)
        )

    def notify(self, sha: str, cwd: Path | None = None) -> int:
        """``superci notify`` (in a clone, ``cwd``, it sends the commit's jobs); returns
        the build id."""
        done = subprocess.run(
            [*cli_command(), "notify", "--dispatcher-server", self.address, sha],
            capture_output=True, text=True, timeout=30, env=self.bench.env, cwd=cwd or self.dir,
        )  # fmt: skip
        match = re.search(r"build (\d+)", done.stdout)
        if done.returncode != 0 or match is None:
            raise RuntimeError(f"notify failed ({done.returncode}): {done.stdout}{done.stderr}")
        return int(match.group(1))

    def result_path(self, sha: str) -> Path:
        return self.results / sha / "result.json"

    def wait_for_result(self, sha: str, timeout: float = WAIT) -> dict[str, Any]:
        path = self.result_path(sha)
        wait_until(path.exists, timeout, f"the result of {sha[:12]}", POLL)
        return json.loads(path.read_text())

    def job_result(self, sha: str, job: str) -> dict[str, Any]:
        """One job's own ``result.json`` (``jobs/<job>/``)."""
        return json.loads((self.results / sha / "jobs" / folder_name(job) / "result.json")
                          .read_text())  # fmt: skip


def iso_seconds(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


# --- synthetic runners --------------------------------------------------------------


class SyntheticPool:
    """Runners inside this process: register, heartbeat, and pass every build at once."""

    def __init__(self, address: Address, heartbeat: float, record: bool = False) -> None:
        self.address = address
        self.heartbeat = heartbeat
        self.record = record  # keep (build id, arrival time) of every build
        self.size = 0
        self.registered = 0
        self.accepted = 0
        self.refused = 0
        self.target = 0  # acks after which `done` is set
        self.done = asyncio.Event()
        self.all_registered = asyncio.Event()
        self.arrivals: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
        self.acks: asyncio.Queue[int] = asyncio.Queue()
        self.errors: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, count: int, prefix: str, connecting: int = 50) -> None:
        """Connect ``count`` runners, at most ``connecting`` handshakes at a time."""
        gate = asyncio.Semaphore(connecting)
        self.size += count
        for i in range(count):
            self._tasks.append(asyncio.create_task(self._run(f"{prefix}-{i:04d}", gate)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, name: str, gate: asyncio.Semaphore) -> None:
        try:
            async with gate:
                channel = await client.connect(self.address, "runner")
                await channel.send(protocol.Register(name=name, host="bench", pid=os.getpid()))
                reply = await channel.receive(WAIT)
            if not isinstance(reply, protocol.Registered):
                raise RuntimeError(f"expected registered, got {reply.type}")
        except Exception as e:
            self._fail(name, e)
            return
        self.registered += 1
        if self.registered == self.size:
            self.all_registered.set()
        beat = asyncio.create_task(self._beat(channel))
        try:
            await self._serve(channel)
        except Exception as e:
            self._fail(name, e)
        finally:
            beat.cancel()
            channel.close_nowait()

    async def _serve(self, channel: Channel) -> None:
        while True:
            message = await channel.receive()
            if isinstance(message, protocol.Build):
                if self.record:
                    self.arrivals.put_nowait((message.build_id, time.perf_counter()))
                await channel.send(
                    protocol.Result(
                        build_id=message.build_id,
                        attempt=message.attempt,
                        status="passed",
                        exit_code=0,
                        duration=0.0,
                        output_bytes=0,
                        message="synthetic",
                    )  # fmt: skip
                )
            elif isinstance(message, protocol.ResultAck):
                if message.accepted:
                    self.accepted += 1
                else:
                    self.refused += 1
                if self.record:
                    self.acks.put_nowait(message.build_id)
                if self.target and self.accepted + self.refused >= self.target:
                    self.done.set()

    async def _beat(self, channel: Channel) -> None:
        await asyncio.sleep(random.uniform(0, self.heartbeat))  # spread them out
        while True:
            await channel.send(protocol.Heartbeat())
            await asyncio.sleep(self.heartbeat)

    def _fail(self, name: str, e: Exception) -> None:
        self.errors.append(f"{name}: {type(e).__name__}: {e}")
        self.done.set()
        self.all_registered.set()


# --- the benchmark ------------------------------------------------------------------


class Bench:
    """Settings, the temporary root and the environment shared by every scenario."""

    def __init__(self, root: Path, quick: bool, profile_dir: Path | None) -> None:
        self.root = root
        self.quick = quick
        self.profile_dir = profile_dir
        home = root / "home"
        tmp = root / "tmp"  # the runners' scratch folders and spools land here too
        home.mkdir()
        tmp.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERCI_")}
        env.update(
            HOME=str(home), TMPDIR=str(tmp), PYTHONUNBUFFERED="1",
            GIT_CONFIG_GLOBAL=str(home / "gitconfig"), GIT_CONFIG_NOSYSTEM="1",
            GIT_AUTHOR_NAME="Bench", GIT_AUTHOR_EMAIL="bench@example.com",
            GIT_COMMITTER_NAME="Bench", GIT_COMMITTER_EMAIL="bench@example.com",
            UV_OFFLINE="1", PIP_NO_INDEX="1",  # build environments' installs stay offline
        )  # fmt: skip
        self.env = env
        self._direct: list[float] | None = None

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def repo(self, name: str) -> Repo:
        return Repo(self.root / name, self.env)

    def direct_times(self) -> list[float]:
        """Seconds to run the default test command directly in a clone, as a runner would
        (``/bin/sh -c``, this interpreter first on PATH), after one warm-up run."""
        if self._direct is None:
            repo = self.repo("direct-upstream")
            clone = repo.clone(self.root / "direct-clone")
            env = dict(self.env)
            env["PATH"] = os.path.dirname(PYTHON) + os.pathsep + env.get("PATH", "")
            command = superci.defaults.TEST_COMMAND
            times = []
            for _ in range(1 + self.n(20, 5)):
                start = time.perf_counter()
                subprocess.run(
                    ["/bin/sh", "-c", command], cwd=clone, env=env, check=True,
                    capture_output=True, timeout=60,
                )  # fmt: skip
                times.append(time.perf_counter() - start)
            self._direct = times[1:]
        return self._direct

    def direct(self) -> float:
        return median(self.direct_times())


def startup_times(bench: Bench, command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, timeout=30, env=bench.env)
        times.append(time.perf_counter() - start)
    return times


# --- 1. overhead --------------------------------------------------------------------


def scenario_overhead(bench: Bench) -> list[Row]:
    """notify → result.json, minus running the same tests directly, one commit at a time."""
    s = "1 overhead"
    repo = bench.repo("overhead-upstream")
    direct = bench.direct()
    overheads, client_side, server_side, runner_extra, dispatch = [], [], [], [], []
    with Stack(bench, "overhead") as stack:
        stack.dispatcher()
        stack.runner(repo.clone(stack.dir / "runner-a"), "runner-a")
        commits = bench.n(20, 5)
        for i in range(2 + commits):  # two warm-up builds first
            sha = repo.commit()
            wall, start = time.time(), time.perf_counter()
            stack.notify(sha)
            path = stack.result_path(sha)
            wait_until(path.exists, WAIT, f"the result of {sha[:12]}", poll=0.001)
            elapsed = time.perf_counter() - start
            result = json.loads(path.read_text())
            if i < 2:
                continue
            assert result["status"] == "passed", result
            queued, started = iso_seconds(result["queued_at"]), iso_seconds(result["started_at"])
            overheads.append(elapsed - direct)
            client_side.append(queued - wall)
            server_side.append(elapsed - (queued - wall) - direct)
            runner_extra.append(result["duration"] - direct)
            dispatch.append(started - queued)
    ms = [1000 * x for x in overheads]
    return [
        Row(s, f"overhead median ({commits} commits)", median(ms), "ms", 100),
        Row(s, "overhead p95", percentile(ms, 95), "ms"),
        Row(s, "  tests run directly (median)", 1000 * direct, "ms"),
        Row(s, "  notify start → build stored", 1000 * median(client_side), "ms"),
        Row(s, "  stored → result.json, minus tests", 1000 * median(server_side), "ms"),
        Row(s, "  of which stored → sent to runner", 1000 * median(dispatch), "ms"),
        Row(s, "  runner's build time minus tests", 1000 * median(runner_extra), "ms"),
    ]


def scenario_startup(bench: Bench) -> list[Row]:
    """How long the client commands take to start, next to the bare interpreter."""
    s = "1 overhead"
    runs = bench.n(10, 3)
    pass_ = startup_times(bench, [PYTHON, "-c", "pass"], runs)
    no_site = startup_times(bench, [PYTHON, "-S", "-c", "pass"], runs)
    cli = startup_times(bench, [*cli_command(), "notify", "--help"], runs)
    imports = startup_times(bench, [PYTHON, "-c", "import superci.client"], runs)
    with Stack(bench, "startup") as stack:
        stack.dispatcher()
        sha = random_sha()
        stack.notify(sha)
        notify = []
        for _ in range(runs):  # an already known commit: the client's whole round trip
            start = time.perf_counter()
            stack.notify(sha)
            notify.append(time.perf_counter() - start)
    return [
        Row(s, "`superci notify` (known commit) wall", 1000 * median(notify), "ms"),
        Row(s, "  `superci notify --help` (start + CLI)", 1000 * median(cli), "ms"),
        Row(s, "  `python -c 'import superci.client'`", 1000 * median(imports), "ms"),
        Row(s, "  `python -c pass`", 1000 * median(pass_), "ms"),
        Row(s, "  `python -S -c pass` (no site)", 1000 * median(no_site), "ms"),
    ]


# --- 2. polling latency -------------------------------------------------------------


def scenario_polling(bench: Bench) -> list[Row]:
    """commit in the watched repository → result.json through an observer at --interval 1."""
    s = "2 polling"
    interval = 1.0
    repo = bench.repo("polling-upstream")
    direct = bench.direct()
    latencies, to_queue = [], []
    with Stack(bench, "polling") as stack:
        stack.dispatcher()
        stack.runner(repo.clone(stack.dir / "runner-a"), "runner-a")
        first = repo.git("rev-parse", "HEAD")
        stack.observer(repo.clone(stack.dir / "observed"), "--interval", str(interval))
        stack.wait_for_result(first)  # the observer's first look builds the tip
        for _ in range(bench.n(10, 3)):
            time.sleep(random.uniform(0, interval))  # land anywhere in the poll period
            sha = repo.commit()
            wall, start = time.time(), time.perf_counter()
            path = stack.result_path(sha)
            wait_until(path.exists, WAIT, f"the result of {sha[:12]}", poll=0.001)
            latencies.append(time.perf_counter() - start - direct)
            to_queue.append(iso_seconds(json.loads(path.read_text())["queued_at"]) - wall)
    target = 1000 * interval + 150
    ms = [1000 * x for x in latencies]
    return [
        Row(s, f"commit → result − tests, median ({len(ms)})", median(ms), "ms", target),
        Row(s, "commit → result − tests, p95", percentile(ms, 95), "ms", target),
        Row(s, "  commit → build stored (median)", 1000 * median(to_queue), "ms"),
        Row(s, "  commit → build stored (max)", 1000 * max(to_queue), "ms"),
    ]


# --- 3. dispatch throughput ---------------------------------------------------------


async def _submit_all(address: Address, shas: list[str]) -> None:
    """Many Submit frames on one connection, pipelined; every one must be queued."""
    async with client.connection(address) as channel:

        async def send() -> None:
            for sha in shas:
                await channel.send(protocol.Submit(sha=sha, branch="main"))

        sender = asyncio.create_task(send())
        try:
            for _ in shas:
                reply = await channel.receive(WAIT)
                if not isinstance(reply, protocol.Submitted) or not reply.queued:
                    raise RuntimeError(f"submit not queued: {reply}")
        finally:
            await sender


async def _throughput(
    address: Address, runners: int, shas: list[str], cap: float, pid: int
) -> dict[str, Any]:
    start = time.perf_counter()
    await _submit_all(address, shas)
    submit_time = time.perf_counter() - start
    pool = SyntheticPool(address, heartbeat=2.0)
    pool.target = len(shas)
    cpu0, bench0 = cpu_seconds(pid), time.process_time()
    start = time.perf_counter()
    pool.start(runners, "synth")
    capped = False
    try:
        await asyncio.wait_for(pool.done.wait(), cap)
    except TimeoutError:
        capped = True
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu0
    bench_cpu = time.process_time() - bench0
    await pool.stop()
    if pool.errors:
        raise RuntimeError(f"{len(pool.errors)} synthetic runner(s) failed: {pool.errors[0]}")
    return {
        "submit_rate": len(shas) / submit_time, "rate": pool.accepted / elapsed,
        "accepted": pool.accepted, "refused": pool.refused, "capped": capped,
        "cpu": cpu / elapsed, "bench_cpu": bench_cpu / elapsed,
    }  # fmt: skip


def _throughput_run(
    bench: Bench, name: str, n: int, builds: int, cap: float, base: Path | None = None
) -> tuple[dict[str, Any], int, int]:
    """One dispatcher, ``builds`` queued commits, ``n`` synthetic runners; returns the
    stats, the result.json files written and the builds the database has as passed."""
    with Stack(bench, name, base) as stack:
        dispatcher = stack.dispatcher()
        shas = [random_sha() for _ in range(builds)]
        address = parse_address(stack.address)
        stats = asyncio.run(_throughput(address, n, shas, cap, dispatcher.pid))
        written = sum(1 for _ in stack.results.glob("*/result.json"))
        with contextlib.closing(sqlite3.connect(stack.state)) as db:
            (passed,) = db.execute("SELECT count(*) FROM builds WHERE status = 'passed'").fetchone()
    return stats, written, passed


def disk_probe(folder: Path, count: int = 200) -> tuple[float, float]:
    """Median seconds of (create a small file + fsync it) and of (mkdir) in ``folder``:
    what every durable step of the dispatcher pays on this disk."""
    probe = folder / "disk-probe"
    probe.mkdir()
    syncs, mkdirs = [], []
    for i in range(count):
        start = time.perf_counter()
        (probe / f"d{i}").mkdir()
        mkdirs.append(time.perf_counter() - start)
        start = time.perf_counter()
        fd = os.open(probe / f"d{i}" / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"x" * 300)
            os.fsync(fd)
        finally:
            os.close(fd)
        syncs.append(time.perf_counter() - start)
    shutil.rmtree(probe)
    return median(syncs), median(mkdirs)


def scenario_throughput(bench: Bench) -> list[Row]:
    s = "3 throughput"
    builds = bench.n(5000, 200)
    cap = bench.n(150, 20)  # seconds per pool size; a slower run reports what it did
    rows = []
    for n in (1, 10, 100):
        stats, written, passed = _throughput_run(bench, f"throughput-{n}", n, builds, cap)
        note = f"capped at {cap}s" if stats["capped"] else ""
        if written != stats["accepted"] or passed != stats["accepted"] or stats["refused"]:
            note += f" MISMATCH: {stats['accepted']} acked, {written} files, {passed} in db"
        target = 500 if n == 100 else None
        rows += [
            Row(s, f"builds/s, N={n} ({builds} builds)", stats["rate"], "/s", target, ">=", note),
            Row(s, f"  results written / acked, N={n}", written, "count",
                note=f"{stats['accepted']} acked, {passed} passed in db"),
            Row(s, f"  dispatcher CPU, N={n}", 100 * stats["cpu"], "%"),
            Row(s, f"  bench process CPU, N={n}", 100 * stats["bench_cpu"], "%"),
        ]  # fmt: skip
        if n == 1:
            rows.append(Row(s, "  submits/s (one connection)", stats["submit_rate"], "/s"))
    fsync, mkdir = disk_probe(bench.root)
    rows += [
        Row(s, "  disk: create + fsync a small file", 1000 * fsync, "ms", note=str(bench.root)),
        Row(s, "  disk: mkdir", 1000 * mkdir, "ms"),
    ]
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):  # the same run with no disk under it
        base = Path(tempfile.mkdtemp(prefix="superci-bench-", dir=shm))
        try:
            stats, written, _ = _throughput_run(bench, "throughput-tmpfs", 100, builds, cap, base)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        rows += [
            Row(s, "  builds/s, N=100, results + db on tmpfs", stats["rate"], "/s",
                note=f"diagnostic: {written} results, fsync is free on tmpfs"),
            Row(s, "  dispatcher CPU, N=100 on tmpfs", 100 * stats["cpu"], "%"),
        ]  # fmt: skip
    return rows


# --- 4. scale -----------------------------------------------------------------------


async def _scale(address: Address, n: int, window: float, dispatches: int, pid: int) -> dict:
    pool = SyntheticPool(address, heartbeat=2.0, record=True)
    start = time.perf_counter()
    pool.start(n, "idle")
    await asyncio.wait_for(pool.all_registered.wait(), 2 * WAIT)
    connect_time = time.perf_counter() - start
    try:
        if pool.errors:
            raise RuntimeError(f"{len(pool.errors)} runner(s) failed: {pool.errors[0]}")
        await asyncio.sleep(2.5)  # one full heartbeat round after the connection burst
        cpu0, start, peak = cpu_seconds(pid), time.perf_counter(), rss_mib(pid)
        while time.perf_counter() - start < window:
            await asyncio.sleep(0.25)
            peak = max(peak, rss_mib(pid))
        cpu = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - start)
        latencies = []
        async with client.connection(address) as channel:
            for _ in range(dispatches):
                sent = time.perf_counter()
                await channel.send(protocol.Submit(sha=random_sha(), branch="main"))
                build_id, arrived = await asyncio.wait_for(pool.arrivals.get(), WAIT)
                latencies.append(arrived - sent)
                reply = await channel.receive(WAIT)
                assert isinstance(reply, protocol.Submitted) and reply.build_id == build_id
                while await asyncio.wait_for(pool.acks.get(), WAIT) != build_id:
                    pass  # back to idle before the next one
                await asyncio.sleep(0.05)
        if pool.errors or pool.registered != n:
            raise RuntimeError(f"{n - pool.registered} runner(s) lost: {pool.errors[:1]}")
        return {"cpu": cpu, "rss": peak, "latencies": latencies, "connect": connect_time}
    finally:
        await pool.stop()


def scenario_scale(bench: Bench) -> list[Row]:
    s = "4 scale"
    n = bench.n(1000, 200)
    window = bench.n(10, 3)
    with Stack(bench, "scale") as stack:
        dispatcher = stack.dispatcher()
        idle = rss_mib(dispatcher.pid)
        address = parse_address(stack.address)
        stats = asyncio.run(_scale(address, n, window, bench.n(20, 5), dispatcher.pid))
    ms = [1000 * x for x in stats["latencies"]]
    return [
        Row(s, f"dispatcher CPU, {n} idle runners ({window}s)", 100 * stats["cpu"], "%", 10, "<"),
        Row(s, f"dispatcher RSS, {n} runners", stats["rss"], "MiB", 200, "<"),
        Row(s, f"submit → build at a runner, median ({len(ms)})", median(ms), "ms", 50, "<"),
        Row(s, "submit → build at a runner, p95", percentile(ms, 95), "ms", 50, "<"),
        Row(s, "  dispatcher RSS with no runner", idle, "MiB"),
        Row(s, f"  {n} runners connected and registered in", stats["connect"], "s"),
    ]


# --- 5. failure detection -----------------------------------------------------------


def _gated_build(stack: Stack, repo: Repo, tag: str) -> tuple[str, int, Path]:
    gate = stack.dir / f"gate-{tag}"
    gate.mkdir()
    sha = repo.commit({"tests/test_trivial.py": GATED_TEST.format(gate=str(gate))}, tag)
    return sha, stack.notify(sha), gate


def _failure_trial(
    stack: Stack,
    repo: Repo,
    runners: dict[str, Proc],
    clones: dict[str, Path],
    sig: signal.Signals,
    tag: str,
    runner_args: tuple[str, ...],
    timeout: float,
) -> dict[str, float]:
    """Start a gated build, signal its runner, time the dispatcher's reaction and the
    second attempt's start; then clean up and restart the victim."""
    sha, build_id, gate = _gated_build(stack, repo, tag)
    cwd, pgid = wait_until(lambda: _read(gate / "started-1"), WAIT, "attempt 1", POLL).split("\n")
    victim = next(name for name, clone in clones.items() if clone.samefile(cwd))
    dispatcher = stack.processes[0]
    seen: dict[str, float] = {}
    patterns = {
        "requeued": rf"build {build_id} re-queued",
        "redispatched": rf"build {build_id} \(\w+\) attempt 2 → runner",
    }
    start = time.perf_counter()
    runners[victim].signal(sig)
    try:

        def progress() -> bool:
            now = time.perf_counter()
            for key, pattern in patterns.items():
                if key not in seen and dispatcher.search(pattern):
                    seen[key] = now - start
            if "started-2" not in seen and (gate / "started-2").exists():
                seen["started-2"] = now - start
            return len(seen) == 3

        wait_until(progress, timeout, f"build {build_id} to run again after {sig.name}", POLL)
    finally:
        (gate / "open").touch()
        kill_group(int(pgid))  # attempt 1's tests, orphaned by the signalled runner
        runners[victim].signal(signal.SIGKILL)
        runners[victim].stop()
        stack.processes.remove(runners[victim])
    result = stack.wait_for_result(sha)
    if result["attempt"] != 2 or result["runner"] == victim:
        raise RuntimeError(f"unexpected result after {sig.name}: {result}")
    runners[victim] = stack.runner(clones[victim], victim, *runner_args)
    return seen


def scenario_failure(bench: Bench) -> list[Row]:
    s = "5 failure"
    timeout = 2.0
    repo = bench.repo("failure-upstream")
    runner_args = ("--heartbeat-interval", "0.5")  # 4 beats per timeout: no false deaths
    kills, stops = [], []
    with Stack(bench, "failure") as stack:
        stack.dispatcher("--heartbeat-timeout", str(timeout))
        clones = {name: repo.clone(stack.dir / name) for name in ("runner-a", "runner-b")}
        runners = {name: stack.runner(clone, name, *runner_args) for name, clone in clones.items()}
        for i in range(bench.n(3, 1)):
            trial = _failure_trial(
                stack, repo, runners, clones, signal.SIGKILL, f"kill-{i}", runner_args, 10
            )
            kills.append(trial)
        for i in range(bench.n(2, 1)):
            trial = _failure_trial(
                stack, repo, runners, clones, signal.SIGSTOP, f"stop-{i}", runner_args,
                timeout + 10,
            )  # fmt: skip
            stops.append(trial)

    def worst(trials: list[dict[str, float]], key: str) -> float:
        return 1000 * max(t[key] for t in trials)

    return [
        Row(s, f"SIGKILL → re-dispatched, worst of {len(kills)}", worst(kills, "redispatched"),
            "ms", 500),
        Row(s, "SIGKILL → attempt 2's tests running", worst(kills, "started-2"), "ms", 500),
        Row(s, f"SIGSTOP → declared dead, worst of {len(stops)}", worst(stops, "requeued"),
            "ms", 1000 * (timeout + 1), note=f"--heartbeat-timeout {timeout:g}"),
        Row(s, "  SIGSTOP → attempt 2's tests running", worst(stops, "started-2"), "ms"),
    ]  # fmt: skip


# --- 6. log streaming ---------------------------------------------------------------


class StreamReader(threading.Thread):
    """Drains a pipe, noting when its first byte arrived and how many came."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.first: float | None = None
        self.total = 0

    def run(self) -> None:
        while data := os.read(self.fd, MIB):
            if self.first is None:
                self.first = time.perf_counter()
            self.total += len(data)


def scenario_logs(bench: Bench) -> list[Row]:
    s = "6 logs"
    mib = bench.n(100, 20)
    repo = bench.repo("logs-upstream")
    with Stack(bench, "logs") as stack:
        gate = stack.dir / "gate"
        sha = repo.commit(
            {"emit.py": CHATTY_BUILD.format(gate=str(gate), mib=mib),
             ".superci.toml": 'command = "python emit.py"\ntimeout = 600\n'},
        )  # fmt: skip
        dispatcher = stack.dispatcher()
        runner = stack.runner(repo.clone(stack.dir / "runner-a"), "runner-a")
        time.sleep(0.5)
        idle = rss_mib(dispatcher.pid)
        stack.notify(sha)
        log_path = stack.results / sha / "output.log"
        wait_until(
            lambda: log_path.exists() and b"waiting for the gate" in log_path.read_bytes(),
            WAIT, "the build to start", POLL,
        )  # fmt: skip
        start = time.perf_counter()
        logs = subprocess.Popen(
            [*cli_command(), "logs", "--follow", "--dispatcher-server", stack.address, sha],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=bench.env, cwd=stack.dir,
        )  # fmt: skip
        try:
            assert logs.stdout is not None
            reader = StreamReader(logs.stdout.fileno())
            reader.start()
            wait_until(lambda: reader.first is not None, 10, "the first byte of `logs -f`", POLL)
            assert reader.first is not None
            ttfb = reader.first - start
            gate.touch()
            opened = time.perf_counter()
            peak, runner_peak = idle, 0.0
            result_path = stack.result_path(sha)
            deadline = opened + 4 * WAIT
            while not result_path.exists():
                if time.perf_counter() > deadline:
                    raise TimeoutError("the chatty build did not finish")
                peak = max(peak, rss_mib(dispatcher.pid))
                runner_peak = max(runner_peak, rss_mib(runner.pid))
                time.sleep(0.02)
            streamed = time.perf_counter() - opened
            _, err = logs.communicate(timeout=WAIT)
            reader.join(10)
        finally:
            if logs.poll() is None:
                logs.kill()
                logs.wait(10)
        result = json.loads(result_path.read_text())
        kept = log_path.stat().st_size
    follow_note = f"exit {logs.returncode}; {err.decode(errors='replace').strip()[-120:]}"
    return [
        Row(s, "`logs --follow` time to first byte", 1000 * ttfb, "ms", 1000, "<"),
        Row(s, f"dispatcher RSS peak above idle ({mib} MiB build)", peak - idle, "MiB", 100, "<"),
        Row(s, "  dispatcher RSS idle", idle, "MiB"),
        Row(s, "  runner RSS peak", runner_peak, "MiB"),
        Row(s, "  output streamed runner → dispatcher", mib / streamed, "MiB/s",
            note=f"{result['status']}, {streamed:.1f}s"),
        Row(s, "  output.log kept (--max-log-bytes cap)", kept / MIB, "MiB"),
        Row(s, "  bytes `logs --follow` printed", reader.total / MIB, "MiB", note=follow_note),
    ]  # fmt: skip


# --- 7. idle cost -------------------------------------------------------------------


def scenario_idle(bench: Bench) -> list[Row]:
    s = "7 idle"
    window = bench.n(20, 5)
    repo = bench.repo("idle-upstream")
    with Stack(bench, "idle") as stack:
        dispatcher = stack.dispatcher()
        runner = stack.runner(repo.clone(stack.dir / "runner-a"), "runner-a")
        observer = stack.observer(repo.clone(stack.dir / "observed"))
        stack.wait_for_result(repo.git("rev-parse", "HEAD"))  # the first look builds the tip
        time.sleep(1.0)
        processes = {"dispatcher": dispatcher, "runner": runner, "observer": observer}
        before = {k: cpu_seconds(p.pid, children=True) for k, p in processes.items()}
        start = time.perf_counter()
        time.sleep(window)
        elapsed = time.perf_counter() - start
        used = {k: cpu_seconds(p.pid, children=True) - before[k] for k, p in processes.items()}
    total = 100 * sum(used.values()) / elapsed
    return [
        Row(s, f"CPU of all three, idle {window}s", total, "%", 1, "<",
            note="incl. reaped children (the observer's git)"),
        *(Row(s, f"  {name}", 100 * cpu / elapsed, "%") for name, cpu in used.items()),
    ]  # fmt: skip


# --- 8. strangers: a slowloris flood and slow log readers ----------------------------


async def _slowloris(address: Address, count: int, stop: asyncio.Event, counts: list[int]) -> None:
    """``count`` silent sockets, each reopened as soon as the dispatcher closes it."""

    async def hold() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(address.host, address.port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            counts[0] += 1
            try:
                while await reader.read(65536):
                    pass
            except OSError:
                pass
            finally:
                writer.close()

    tasks = [asyncio.create_task(hold()) for _ in range(count)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _timed_cli(bench: Bench, stack: Stack, *args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [*cli_command(), *args, "--dispatcher-server", stack.address],
        capture_output=True, text=True, timeout=60, env=bench.env, cwd=stack.dir,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed during the flood: {done.stderr.strip()}")
    return time.perf_counter() - start


def scenario_flood(bench: Bench) -> list[Row]:
    """notify, status and a runner registering while 1,000 silent sockets are held and
    reopened (the client commands' wall time includes starting Python)."""
    s = "8 flood"
    sockets = 1000
    repo = bench.repo("flood-upstream")
    notify, status, register = [], [], []
    with Stack(bench, "flood") as stack:
        stack.dispatcher()
        address = parse_address(stack.address)
        stop_loop: list[Callable[[], None]] = []
        counts = [0]

        def attack() -> None:
            async def main() -> None:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                stop_loop.append(lambda: loop.call_soon_threadsafe(stop.set))
                await _slowloris(address, sockets, stop, counts)

            asyncio.run(main())

        thread = threading.Thread(target=attack, daemon=True)
        thread.start()
        try:
            wait_until(lambda: counts[0] >= sockets, WAIT, "the flood to open its sockets", POLL)
            baseline = _timed_cli(bench, stack, "status")  # includes the flood already
            for i in range(bench.n(5, 2)):
                notify.append(_timed_cli(bench, stack, "notify", random_sha()))
                status.append(_timed_cli(bench, stack, "status"))
                start = time.perf_counter()
                clone = repo.clone(stack.dir / f"runner-{i}")
                stack.runner(clone, f"runner-{i}")
                register.append(time.perf_counter() - start)
            opened = counts[0]
        finally:
            for stop in stop_loop:
                stop()
            thread.join(30)
    start_cost = median(startup_times(bench, [*cli_command(), "notify", "--help"], 3))
    return [
        Row(s, f"notify during the flood, worst of {len(notify)}", max(notify), "s", 2),
        Row(s, "status during the flood, worst", max(status), "s", 2),
        Row(s, "runner start → registered during the flood, worst", max(register), "s", 2),
        Row(s, "  notify median", median(notify), "s"),
        Row(s, "  status median", median(status), "s"),
        Row(s, "  first status of the flood", baseline, "s"),
        Row(s, "  client start alone (`notify --help`)", start_cost, "s"),
        Row(s, "  silent sockets opened (incl. reopened)", opened, "count",
            note=f"{sockets} held at once"),
    ]  # fmt: skip


def scenario_readers(bench: Bench) -> list[Row]:
    """100 `logs` readers of a 20 MiB log, each taking one frame every half second."""
    s = "9 readers"
    readers, mib, seconds = 100, 20, bench.n(10, 3)
    with Stack(bench, "readers") as stack:
        dispatcher = stack.dispatcher()
        sha = random_sha()
        stack.notify(sha)  # queued, no runner: its log is written here, as a long build's
        folder = stack.results / sha
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "output.log").write_bytes((b"x" * 1023 + b"\n") * 1024 * mib)
        time.sleep(0.5)
        idle = rss_mib(dispatcher.pid)
        peak, got = asyncio.run(
            slow_readers(parse_address(stack.address), sha, readers, dispatcher.pid, seconds)
        )
    return [
        Row(s, f"dispatcher RSS above idle, {readers} slow readers of {mib} MiB", peak - idle,
            "MiB", 100, "<"),
        Row(s, "  dispatcher RSS idle", idle, "MiB"),
        Row(s, f"  bytes the readers took in {seconds}s", got / MIB, "MiB"),
    ]  # fmt: skip


# --- 10. build environments ---------------------------------------------------------

#: The cells of the envs scenario's matrix sleep for known, different times (seconds), so
#: the figure means the same on any machine: on 2 runners the wall time is the slower's.
MATRIX_SLEEPS = ("1.0", "1.5")
MATRIX_TOML = (
    "command = \"python -c 'import time; time.sleep({seconds})'\"\n"
    f"[matrix]\nseconds = {json.dumps(list(MATRIX_SLEEPS))}\n"
)


def _matrix_commit(stack: Stack, repo: Repo) -> dict[str, Any]:
    """A commit of a 2-cell matrix: its wall time (notify → its summary says finished),
    each cell's duration from its own result.json, and the runners that ran them."""
    sha = repo.commit({".superci.toml": MATRIX_TOML})
    start = time.perf_counter()
    stack.notify(sha, cwd=repo.path)
    document = stack.wait_for_result(sha, WAIT * 2)  # a commit of several jobs: once all ended
    wall = time.perf_counter() - start
    assert document["status"] == "passed", document
    cells = {job["job"]: stack.job_result(sha, job["job"]) for job in document["jobs"]}
    assert len(cells) == len(MATRIX_SLEEPS), document
    durations = {key: result["duration"] for key, result in cells.items()}
    return {"wall": wall, "slower": max(durations.values()), "cells": durations,
            "runners": {result["runner"] for result in cells.values()}}  # fmt: skip


def scenario_envs(bench: Bench) -> list[Row]:
    """A build whose environment is cached, next to the same build making a fresh one and
    to a build with no environment (the runner's own Python): what a cache hit costs; and
    a 2-cell matrix on 2 runners, whose wall time should be its slower cell's, not the sum."""
    s = "10 envs"
    wheels = bench.root / "envs-wheels"
    make_wheel(wheels, "tinydep", body="VALUE = 42\n")
    install = f"pip install --no-index --find-links {wheels} tinydep"
    with_env = f'install = "{install}"\ncommand = "python -m unittest discover -s tests"\n'
    repo = bench.repo("envs-upstream")
    times: dict[str, list[float]] = {"none": [], "fresh": [], "cached": [], "install": []}
    with Stack(bench, "envs") as stack:
        stack.dispatcher()
        stack.runner(repo.clone(stack.dir / "runner-a"), "runner-a",
                     "--env-cache", str(stack.dir / "env-cache"))  # fmt: skip

        def build(files: dict[str, str] | None) -> dict[str, Any]:
            sha = repo.commit(files)
            stack.notify(sha)
            result = stack.wait_for_result(sha, WAIT * 2)
            assert result["status"] == "passed", result
            return result

        build(None)  # warm-up
        for _ in range(bench.n(10, 3)):
            times["none"].append(build(None)["duration"])
        for i in range(bench.n(3, 1)):  # a new requirements.txt: a new environment each
            result = build({".superci.toml": with_env, "requirements.txt": f"# {i}\ntinydep\n"})
            times["fresh"].append(result["duration"])
            times["install"].append(result["install_seconds"])
            for _ in range(bench.n(10, 3)):
                result = build(None)
                assert result["install_seconds"] is None, "the environment is reused"
                times["cached"].append(result["duration"])
        stack.runner(repo.clone(stack.dir / "runner-b"), "runner-b")
        matrix = [_matrix_commit(stack, repo) for _ in range(bench.n(3, 1))]
    ms = {key: 1000 * median(values) for key, values in times.items()}
    cells = {key: median([m["cells"][key] for m in matrix]) for key in matrix[0]["cells"]}
    runners = sorted({name for m in matrix for name in m["runners"]})
    return [
        Row(s, "build, cached environment: added", ms["cached"] - ms["none"], "ms", 100),
        Row(s, "  build, cached environment (median)", ms["cached"], "ms"),
        Row(s, "  build, no environment (median)", ms["none"], "ms"),
        Row(s, "build, fresh environment (median)", ms["fresh"], "ms"),
        Row(s, "  of which the install step", ms["install"], "ms"),
        Row(s, "2-cell matrix on 2 runners: wall / slower cell",
            median([m["wall"] / m["slower"] for m in matrix]), "×", 1.2,
            note=f"cells sleep {' s and '.join(MATRIX_SLEEPS)} s; wall: notify → the commit's "
                 f"result.json (every job ended); median of {len(matrix)} commit(s); "
                 f"ran on {', '.join(runners)}"),
        Row(s, "  matrix wall time (median)", median([m["wall"] for m in matrix]), "s"),
        *(Row(s, f"  cell {key} (median)", seconds, "s") for key, seconds in cells.items()),
        Row(s, "  sum of the cells (median)", median([sum(m["cells"].values()) for m in matrix]),
            "s"),
    ]  # fmt: skip


# --- 12. one suite split over runners (issue 13) ------------------------------------


def split_suite(count: int, low: float, high: float, tag: str) -> dict[str, float]:
    """``count`` test files of one sleeping test each, from ``low`` to ``high`` seconds
    (spread evenly, in a shuffled but fixed order); ``tag`` makes their ids new."""
    steps = [low + (high - low) * k / max(count - 1, 1) for k in range(count)]
    order = [(k * 7) % count for k in range(count)] if count % 7 else list(range(count))
    return {f"split_{tag}/test_{i:02}.py::test_sleep": round(steps[order[i]], 2)
            for i in range(count)}  # fmt: skip


#: The suite's pytest settings: plugins this machine happens to have installed are kept
#: out (each test process would pay their start-up), in the serial build as in the split.
SPLIT_PYTEST_INI = (
    "[pytest]\ntestpaths = {folder}\n"
    "addopts = -p no:hypothesispytest -p no:timeout -p no:cacheprovider\n"
)


def split_files(suite: dict[str, float], parallel: int | None) -> dict[str, str]:
    folder = next(iter(suite)).partition("/")[0]  # each suite's own: earlier ones stay
    files = {"pytest.ini": SPLIT_PYTEST_INI.format(folder=folder),
             ".superci.toml": f"parallel = {parallel}\n" if parallel else ""}  # fmt: skip
    for test, seconds in suite.items():
        path = test.partition("::")[0]
        files[path] = f"import time\n\n\ndef test_sleep():\n    time.sleep({seconds})\n"
    return files


def _split_build(
    stack: Stack, repo: Repo, files: dict[str, str], expected: dict[str, float]
) -> dict[str, Any]:
    """One commit built: its wall time (notify → result.json), its result and split.json."""
    sha = repo.commit(files)
    start = time.perf_counter()
    stack.notify(sha, cwd=repo.path)
    result = stack.wait_for_result(sha, WAIT * 3)
    wall = time.perf_counter() - start
    assert result["status"] == "passed", result
    assert result["tests"]["run"] == len(expected), result
    path = stack.results / sha / "split.json"
    split = json.loads(path.read_text()) if path.exists() else None
    return {"wall": wall, "result": result, "split": split}


def _finish_spread(split: dict[str, Any]) -> float:
    """How long the first runner to finish sat idle while others still ran tests: the
    spread of the runners' last results."""
    last: dict[str, float] = {}
    for participant in split["participants"].values():
        if participant["last_result"] is not None:
            runner = participant["runner"]
            last[runner] = max(last.get(runner, 0.0), participant["last_result"])
    return max(last.values()) - min(last.values()) if len(last) > 1 else 0.0


def scenario_split(bench: Bench) -> list[Row]:
    """One job's suite (40 test files sleeping 0.2–2 s) on one runner, then split over 2
    and 4 runners (``parallel``), each the first time (no timings) and again (timings
    known): wall time against the floor of serial time / N."""
    s = "12 split"
    count, low, high = (12, 0.2, 0.6) if bench.quick else (40, 0.2, 2.0)
    repo = bench.repo("split-upstream")
    rows: list[Row] = []
    with Stack(bench, "split") as stack:
        stack.dispatcher()
        for name in ("r1", "r2", "r3", "r4"):
            stack.runner(repo.clone(stack.dir / name), name)
        one = split_suite(count, low, high, "one")
        serial = _split_build(stack, repo, split_files(one, None), one)
        sleeps = sum(one.values())
        rows += [
            Row(s, f"{count} files, serial on one runner: wall", serial["wall"], "s",
                note=f"{count} test files of one test sleeping {low:g}–{high:g} s, "
                     f"{sleeps:.1f} s in all; wall: notify → result.json"),
        ]  # fmt: skip
        for n in (2, 4):
            suite = split_suite(count, low, high, f"n{n}")  # ids never seen: no timings
            first = _split_build(stack, repo, split_files(suite, n), suite)
            files = split_files(suite, n) | {"README": f"again {n}\n"}
            known = _split_build(stack, repo, files, suite)
            floor = serial["wall"] / n
            assert len(known["result"]["split"]) == n, known["result"]
            rows += [
                Row(s, f"{n} runners, timings known: wall", known["wall"], "s",
                    1.15 * floor + 1.0,
                    note=f"target 1.15 × serial / {n} + 1 s; ran on "
                         f"{', '.join(sorted(known['result']['split']))}"),
                Row(s, f"{n} runners, first build: wall", first["wall"], "s", 1.3 * floor + 1.0,
                    note=f"target 1.3 × serial / {n} + 1 s (no timings: every test 1 s)"),
                Row(s, f"  {n} runners, timings known: first runner done → last", _finish_spread(
                    known["split"]), "s", 1.0,
                    note="how long the first runner to finish waited for the last; no runner "
                         "waits for a batch while tests remain (each is handed one at once)"),
                Row(s, f"  {n} runners, first build: first runner done → last",
                    _finish_spread(first["split"]), "s",
                    note="no timings: a 2 s test may be among the last handed out"),
            ]  # fmt: skip
    return rows


# --- 11. the web page ----------------------------------------------------------------

#: SSE watchers of the web page, in a process of their own (as browsers would be): every
#: stream counts its events; "watching" once all are connected; the total when stdin ends.
SSE_WATCHERS = r"""
import asyncio, sys, threading
import aiohttp

async def main(url, count):
    loop = asyncio.get_running_loop()
    stop, connected, events = asyncio.Event(), [0], [0]
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)),
                     daemon=True).start()

    async def watch(session):  # cheap to read, so the watchers leave the CPU to others
        async with session.get(url) as response:
            await response.content.readline()  # ": connected"
            connected[0] += 1
            if connected[0] == count:
                print("watching", flush=True)
            tail = b""
            async for chunk in response.content.iter_any():
                piece = tail + chunk
                events[0] += piece.count(b"\nid: ")
                tail = piece[-4:]  # too short to hold a whole "\\nid: "

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [asyncio.create_task(watch(session)) for _ in range(count)]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print("events", events[0], flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


class Watchers:
    """``count`` SSE streams of ``url`` held by another process until :meth:`stop`."""

    def __init__(self, url: str, count: int, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            [PYTHON, "-c", SSE_WATCHERS, url, str(count)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()  # bounded: the process ends if it cannot connect
        if line.strip() != "watching":
            self.popen.kill()
            raise RuntimeError(f"the SSE watchers did not connect: {line!r}")

    def stop(self) -> int:
        """End the streams; returns how many events they got in all."""
        out, _ = self.popen.communicate("", timeout=WAIT)
        match = re.search(r"events (\d+)", out)
        if match is None:
            raise RuntimeError(f"the SSE watchers ended without a count: {out!r}")
        return int(match.group(1))


def web_dispatcher(stack: Stack, *extra: str) -> tuple[Proc, str]:
    """A dispatcher with its web page on a free port, and the page's URL."""
    dispatcher = stack.dispatcher("--web", "127.0.0.1:0", *extra)
    return dispatcher, dispatcher.wait_for_log(r"web page at (http://\S+/)").group(1)


async def _paced(
    address: Address, rate: float, seconds: float, pid: int, name: str
) -> dict[str, Any]:
    """Builds submitted at ``rate`` a second for ``seconds``, passed by 10 synthetic
    runners; the dispatcher's CPU (share of one core) meanwhile."""
    pool = SyntheticPool(address, heartbeat=2.0)
    pool.start(10, name)  # names new to the dispatcher: each round has its own runners
    await asyncio.wait_for(pool.all_registered.wait(), WAIT)
    count = int(rate * seconds)
    pool.target = count
    cpu0, start = cpu_seconds(pid), time.perf_counter()
    async with client.connection(address) as channel:
        for n in range(count):
            await channel.send(protocol.Submit(sha=random_sha(), branch="main"))
            await channel.receive(WAIT)
            await asyncio.sleep(max(0.0, start + (n + 1) / rate - time.perf_counter()))
    await asyncio.wait_for(pool.done.wait(), WAIT)
    elapsed = time.perf_counter() - start
    cpu = (cpu_seconds(pid) - cpu0) / elapsed
    await pool.stop()
    if pool.errors:
        raise RuntimeError(f"{len(pool.errors)} synthetic runner(s) failed: {pool.errors[0]}")
    return {"cpu": cpu, "builds": pool.accepted}


def _watcher_cpu(bench: Bench, watchers: int) -> dict[str, Any]:
    """The dispatcher's CPU while builds flow at a steady 50 a second, with no watcher
    and with ``watchers`` SSE streams, alternately on one dispatcher (so the machine's
    other load weighs on both alike); medians of the rounds."""
    rate, seconds, rounds = 50.0, bench.n(10, 3), bench.n(3, 2)
    cpu: dict[int, list[float]] = {0: [], watchers: []}
    events = 0
    with Stack(bench, "web-watchers-cpu") as stack:
        dispatcher, url = web_dispatcher(stack)
        address = parse_address(stack.address)
        for n in range(rounds):
            paced = asyncio.run(_paced(address, rate, seconds, dispatcher.pid, f"alone{n}"))
            cpu[0].append(paced["cpu"])
            held = Watchers(url + "events", watchers, bench.env)
            try:
                paced = asyncio.run(_paced(address, rate, seconds, dispatcher.pid, f"watched{n}"))
            finally:
                events += held.stop()
            cpu[watchers].append(paced["cpu"])
    return {"none": median(cpu[0]), "watched": median(cpu[watchers]), "events": events}


def _watched_throughput(bench: Bench, watchers: int, tmpfs: bool) -> dict[str, Any]:
    """Builds/s as in *3 throughput* (10 runners) with no watcher and with ``watchers``
    SSE streams open, alternately (the load of a shared machine drifts); with ``tmpfs``
    the results and the database are on /dev/shm, where the dispatcher's CPU is the
    limit. Medians of the rounds, and the watchers' own CPU (share of a core)."""
    builds, cap, rounds = bench.n(3000, 300), bench.n(120, 20), bench.n(3, 2)
    base = Path(tempfile.mkdtemp(prefix="superci-bench-", dir="/dev/shm")) if tmpfs else None
    rates: dict[int, list[float]] = {0: [], watchers: []}
    client_cpu: list[float] = []
    try:
        for n in range(rounds):
            for count in (0, watchers):
                name = f"web-throughput-{'tmpfs-' if tmpfs else ''}{n}-{count}"
                with Stack(bench, name, base) as stack:
                    dispatcher, url = web_dispatcher(stack)
                    held = Watchers(url + "events", count, bench.env) if count else None
                    try:
                        shas = [random_sha() for _ in range(builds)]
                        address = parse_address(stack.address)
                        cpu0 = cpu_seconds(held.popen.pid) if held else 0.0
                        stats = asyncio.run(_throughput(address, 10, shas, cap, dispatcher.pid))
                        if held:
                            used = cpu_seconds(held.popen.pid) - cpu0
                            client_cpu.append(used * stats["rate"] / stats["accepted"])
                    finally:
                        if held:
                            held.stop()
                    rates[count].append(stats["rate"])
    finally:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
    return {"none": median(rates[0]), "watched": median(rates[watchers]),
            "client_cpu": median(client_cpu)}  # fmt: skip


#: Records when each build row of the builds page first shows each status (ms, the
#: page's clock, which is this machine's).
OBSERVE_ROWS = """
window.seen = {};
const look = () => {
  const now = performance.timeOrigin + performance.now();
  for (const row of document.querySelectorAll('#builds tr[id^="b-"]')) {
    const key = row.id.slice(2) + ' ' + row.querySelector('.c-status').textContent;
    if (!(key in window.seen)) window.seen[key] = now;
  }
};
new MutationObserver(look).observe(document.getElementById('builds'),
  {subtree: true, childList: true, characterData: true});
"""


async def _timed_builds(address: Address, url: str, count: int) -> dict[str, float]:
    """``count`` builds one after the other, passed by a synthetic runner; returns when
    the dispatcher published each status, ``"<build id> <status>" → ms`` (the events'
    own time, read from an event stream of the page)."""
    import aiohttp  # the dispatcher's web dependency

    published: dict[str, float] = {}
    statuses = {"queued": "queued", "started": "running"}
    pool = SyntheticPool(address, heartbeat=2.0, record=True)
    pool.start(1, "web")
    await asyncio.wait_for(pool.all_registered.wait(), WAIT)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
        session.get(url + "events") as response,
    ):
        await response.content.readline()  # ": connected"

        async def read() -> None:
            async for line in response.content:
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    status = statuses.get(event["event"], event.get("status"))
                    if "build_id" in event and status:
                        published[f"{event['build_id']} {status}"] = 1000 * event["time"]

        task = asyncio.create_task(read())
        try:
            async with client.connection(address) as channel:
                for _ in range(count):
                    await channel.send(protocol.Submit(sha=random_sha(), branch="main"))
                    await channel.receive(WAIT)
                    await asyncio.wait_for(pool.acks.get(), WAIT)
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)
        finally:
            task.cancel()
            await pool.stop()
    return published


def _dom_latencies(bench: Bench) -> list[float]:
    """Event published → the builds page shows it (ms), for queued, running, passed."""
    count = bench.n(50, 10)
    with Stack(bench, "web-latency") as stack:
        _, url = web_dispatcher(stack)
        browser = start_chromium(stack.dir / "chromium-profile")
        try:
            browser.get(url)
            browser.execute_script(OBSERVE_ROWS)
            published = asyncio.run(_timed_builds(parse_address(stack.address), url, count))
            seen = wait_until(
                lambda: (lambda s: s if all(k in s for k in published) else None)(
                    browser.execute_script("return window.seen")
                ),
                WAIT, "the page to show every status", POLL,
            )  # fmt: skip
        finally:
            browser.quit()
    if len(published) < 3 * count:
        raise RuntimeError(f"{len(published)} statuses published for {count} builds")
    return [seen[key] - at for key, at in published.items()]


def _big_log_page(bench: Bench) -> dict[str, float]:
    """A commit page whose log is 16 MiB of 64-byte lines: navigation → interactive
    (the page's script has run: DOMContentLoaded), median of a few loads."""
    line = b"x" * 63 + b"\n"
    with Stack(bench, "web-log") as stack:
        _, url = web_dispatcher(stack, "--max-log-bytes", str(64 * MIB))
        sha = random_sha()
        stack.notify(sha)  # queued, no runner: its log is written here
        folder = stack.results / sha
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "output.log").write_bytes(line * (16 * MIB // len(line)))
        browser = start_chromium(stack.dir / "chromium-profile")
        times, lines = [], 0
        try:
            for _ in range(bench.n(5, 2)):
                browser.get(f"{url}commit/{sha}")
                times.append(browser.execute_script(
                    "return performance.getEntriesByType('navigation')[0]"
                    ".domContentLoadedEventEnd"
                ))  # fmt: skip
                lines = browser.execute_script("return document.querySelectorAll('#log .l').length")
        finally:
            browser.quit()
    return {"interactive": median(times), "lines": lines}


def scenario_web(bench: Bench) -> list[Row]:
    """The web page: event → browser latency, the cost of 50 SSE watchers to the
    dispatcher (CPU at a steady flow, and throughput), and a 16 MiB log page."""
    s = "11 web"
    if not have_chromium():
        raise RuntimeError("the web scenario needs chromium and chromedriver (apt-get install "
                           "chromium chromium-driver)")  # fmt: skip
    latencies = _dom_latencies(bench)
    cpu = _watcher_cpu(bench, 50)
    flow = _watched_throughput(bench, 50, tmpfs=False)
    shm = Path("/dev/shm")
    fast = None
    if shm.is_dir() and os.access(shm, os.W_OK):
        fast = _watched_throughput(bench, 50, tmpfs=True)
    page = _big_log_page(bench)
    rows = [
        Row(s, f"event → browser DOM, p95 ({len(latencies)})", percentile(latencies, 95), "ms",
            500),
        Row(s, "  event → browser DOM, median", median(latencies), "ms"),
        Row(s, "dispatcher CPU, 50 SSE watchers − none", 100 * (cpu["watched"] - cpu["none"]),
            "%", 5, note=f"50 builds/s; {cpu['events']} events to the watchers"),
        Row(s, "  dispatcher CPU, no watchers", 100 * cpu["none"], "%"),
        Row(s, "dispatch with 50 watchers / without", 100 * flow["watched"] / flow["none"], "%",
            90, ">=", note="10 synthetic runners"),
        Row(s, "  builds/s, no watchers", flow["none"], "/s"),
        Row(s, "  builds/s, 50 watchers", flow["watched"], "/s"),
        Row(s, "  the 50 watchers' own CPU (another process)", 100 * flow["client_cpu"], "%"),
    ]  # fmt: skip
    if fast is not None:
        rows += [
            Row(s, "  the same on tmpfs: with / without", 100 * fast["watched"] / fast["none"],
                "%", note="diagnostic: results and db on /dev/shm, the dispatcher's CPU bounds"),
            Row(s, "  builds/s on tmpfs, no watchers", fast["none"], "/s"),
            Row(s, "  builds/s on tmpfs, 50 watchers", fast["watched"], "/s"),
        ]  # fmt: skip
    rows.append(Row(s, "16 MiB log page: navigation → interactive", page["interactive"], "ms",
                    1500, note=f"{page['lines']} log lines in the page"))  # fmt: skip
    return rows


# --- running ------------------------------------------------------------------------

SCENARIOS: dict[str, list[Callable[[Bench], list[Row]]]] = {
    "overhead": [scenario_overhead, scenario_startup],
    "polling": [scenario_polling],
    "throughput": [scenario_throughput],
    "scale": [scenario_scale],
    "failure": [scenario_failure],
    "logs": [scenario_logs],
    "idle": [scenario_idle],
    "flood": [scenario_flood],
    "readers": [scenario_readers],
    "envs": [scenario_envs],
    "web": [scenario_web],
    "split": [scenario_split],
}


def render(rows: list[Row]) -> str:
    header = ["scenario", "metric", "value", "target", "met"]
    table = [header, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    for i, line in enumerate(table):
        cells = [
            c.ljust(w) if j < 2 else c.rjust(w)
            for j, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {r.scenario} / {r.metric.strip()}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
        "platform": platform.platform(), "superci": superci.__version__,
        "superci_path": str(Path(superci.__file__).parent),
    }  # fmt: skip


def raise_fd_limit() -> None:
    """1,000 synthetic runners need 1,000 sockets here and in the dispatcher (inherited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@contextlib.contextmanager
def stopped_on_signal() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every ``finally`` stops its processes."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        stop_all(list(LIVE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: about a minute")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    parser.add_argument(
        "--only", metavar="A,B", help=f"comma-separated scenarios of: {', '.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="run each dispatcher under `py-spy record` (raw collapsed stacks into DIR)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.profile is not None:
        if shutil.which("py-spy") is None:
            parser.error("--profile needs py-spy on PATH")
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    raise_fd_limit()

    root = Path(tempfile.mkdtemp(prefix="superci-bench-"))
    bench = Bench(root, args.quick, args.profile)
    rows: list[Row] = []
    broken: list[str] = []
    load_before = os.getloadavg()
    began = time.perf_counter()
    try:
        with stopped_on_signal():
            for name in names:
                for scenario in SCENARIOS[name]:
                    t = time.perf_counter()
                    print(f"bench: {scenario.__name__} …", file=sys.stderr, flush=True)
                    try:
                        rows += scenario(bench)
                    except Exception as e:
                        traceback.print_exc()
                        broken.append(scenario.__name__)
                        rows.append(Row(name, f"{scenario.__name__} failed", None, "", 0,
                                        note=f"{type(e).__name__}: {e}"[:300]))  # fmt: skip
                    took = time.perf_counter() - t
                    print(f"bench: {scenario.__name__} took {took:.1f}s", file=sys.stderr)
    finally:
        if args.keep:
            print(f"bench: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    took = time.perf_counter() - began
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python", "scripts/bench.py", *given])
    load = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    print(render(rows))
    print(f"\n{command}  ({took:.0f}s, {os.cpu_count()} CPUs, Python {platform.python_version()})")
    print(f"load average (1, 5, 15 min) before: {load[:3]}, after: {load[3:]}")
    if args.json is not None:
        document = {
            "command": command, "quick": args.quick, "seconds": round(took, 1),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(), "loadavg_before": load[:3], "loadavg_after": load[3:],
            "rows": [row.as_dict() for row in rows],
        }  # fmt: skip
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if broken:
        print(f"bench: broken (no figures): {', '.join(broken)}", file=sys.stderr)
        return EXIT_BROKEN
    return 0 if all(row.met is not False for row in rows) else EXIT_MISSED


if __name__ == "__main__":
    sys.exit(main())
