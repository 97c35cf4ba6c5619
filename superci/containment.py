"""Keeping what a build starts within the runner's reach, and ending all of it.

A process group is not enough: a test can ``setsid`` or double-fork a daemon out of it.
So every build is contained in layers, the strongest first:

* a cgroup v2 of its own, when the runner may create one: the kernel keeps every
  descendant in it, however it forks, and ``cgroup.kill`` ends them all at once;
* a mark in the environment of every build process, found through ``/proc`` after a
  process left the group and lost its parent (Jenkins' process tree killer does the same);
* the runner as child subreaper: orphans of the build become the runner's children rather
  than init's, so they stay its descendants and are reaped by it;
* ``PR_SET_PDEATHSIG`` in the build's session leader, a record of the build beside the
  runner's clone, and a guard process that outlives the runner: a runner killed with
  SIGKILL takes its build with it, and a restarted one ends what its previous life left;
* with a build user (:mod:`superci.builduser`), every process of that dedicated user, as
  it (``kill -1``) when the runner may not signal them itself (it is not root).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from superci.builduser import BuildUser
from superci.errors import ConfigError

log = logging.getLogger(__name__)

#: The environment variable holding a build's mark.
MARK_VARIABLE = "SUPERCI_BUILD_MARK"
#: Longest wait (seconds) for killed processes to be gone before the build ends anyway.
KILL_TIMEOUT = 5.0
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
_POLL = 0.005


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_prctl = _libc_prctl()


def become_subreaper() -> bool:
    """Make orphans of our descendants our children instead of init's (Linux only)."""
    if _prctl is None or _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.info("cannot become a child subreaper; escaped build processes go to init")
        return False
    return True


def is_subreaper() -> bool:
    """Whether orphans come to us: only then may a zombie child be one we did not start."""
    if _prctl is None:
        return False
    flag = ctypes.c_int(0)
    return _prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0 and flag.value != 0


# --- processes, read from /proc --------------------------------------------------------


@dataclass(frozen=True)
class Process:
    """What /proc/PID/stat says of one process."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    start: int  # clock ticks after boot: with the pid, names one process for good

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def read_process(pid: int) -> Process | None:
    """The process, or None once it is gone (or where there is no procfs)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ... starttime(22nd)": comm may hold ") ".
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return Process(pid, int(fields[1]), int(fields[2]), int(fields[3]),
                       fields[0].decode(), int(fields[19]))  # fmt: skip
    except (IndexError, ValueError):
        return None


def all_processes() -> list[Process]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    found = (read_process(int(name)) for name in names if name.isdigit())
    return [p for p in found if p is not None]


def has_mark(pid: int, mark: str) -> bool:
    """Whether the process's environment holds the build's mark."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return False
    return f"{MARK_VARIABLE}={mark}".encode() in environ.split(b"\0")


def with_descendants(processes: Iterable[Process], roots: set[int]) -> set[int]:
    """``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    for p in processes:
        children.setdefault(p.ppid, []).append(p.pid)
    found, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _own_lineage() -> set[int]:
    """This process and its ancestors: never a build's, whatever pid reuse suggests."""
    lineage, pid = set(), os.getpid()
    while pid > 0 and pid not in lineage:
        lineage.add(pid)
        p = read_process(pid)
        pid = p.ppid if p is not None else 0
    return lineage


# --- a cgroup v2 per build -------------------------------------------------------------


def _own_cgroup_dir() -> Path | None:
    """Where this process's cgroup v2 is mounted, if it is."""
    try:
        own = next(line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines()
                   if line.startswith("0::"))  # fmt: skip
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except (OSError, StopIteration):
        return None
    for line in mounts:
        fields, _, tail = line.partition(" - ")
        parts = fields.split()
        if tail.split()[:1] == ["cgroup2"] and len(parts) > 4:
            root, mountpoint = parts[3], parts[4]
            if own == root or own.startswith(root.rstrip("/") + "/"):
                return Path(mountpoint, own[len(root) :].lstrip("/"))
    return None


class BuildCgroup:
    """A cgroup of one build, beside the runner's own."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, name: str) -> BuildCgroup | None:
        """None where there is no writable cgroup v2 with ``cgroup.kill`` (Linux 5.14+)."""
        parent = _own_cgroup_dir()
        if parent is None:
            return None
        path = parent / name
        try:
            path.mkdir()
        except OSError as e:
            log.debug("cannot create cgroup %s: %s", path, e)
            return None
        cgroup = cls(path)
        usable = (path / "cgroup.kill").exists() and all(
            os.access(p / "cgroup.procs", os.W_OK) for p in (parent, path)
        )
        if not usable:
            cgroup.remove()
            return None
        return cgroup

    def pids(self) -> set[int]:
        try:
            return {int(pid) for pid in (self.path / "cgroup.procs").read_text().split()}
        except (OSError, ValueError):
            return set()

    def kill(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / "cgroup.kill").write_text("1")

    def remove(self) -> None:
        """Remove it once empty (a killed process leaves it when it is reaped)."""
        deadline = time.monotonic() + KILL_TIMEOUT
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    log.warning("cannot remove cgroup %s: %s", self.path, e)
                    return
            time.sleep(_POLL)


# --- one build -------------------------------------------------------------------------


@dataclass
class Record:
    """What a build's containment needs to find the build again, saved beside the clone."""

    mark: str
    cgroup: str | None = None
    leader: int | None = None
    leader_start: int | None = None
    #: The build user, whose every process is the build's (it is dedicated).
    user: str | None = None

    def members(self, processes: list[Process], lineage: set[int]) -> set[int]:
        """Pids of the build's processes that run still (and zombies among them)."""
        roots = {p.pid for p in processes if has_mark(p.pid, self.mark)}
        if self.cgroup is not None:
            roots |= BuildCgroup(Path(self.cgroup)).pids()
        if self.leader is not None:
            roots |= {p.pid for p in processes if self._in_session(p)}
        return with_descendants(processes, roots) - lineage

    def _in_session(self, p: Process) -> bool:
        """In the leader's group or session, and started after it: not a recycled pid."""
        assert self.leader_start is not None
        return self.leader in (p.pgid, p.sid) and p.start >= self.leader_start


class BuildContainment:
    """Containment of one build: made before its leader starts, closed when all is dead."""

    def __init__(self, record_path: Path | None = None, user: BuildUser | None = None) -> None:
        self.record = Record(mark=secrets.token_hex(16), user=None if user is None else user.name)
        self.record_path = record_path
        self.user = user
        self.cgroup = BuildCgroup.create(f"superci-build-{os.getpid()}-{self.record.mark[:8]}")
        if self.cgroup is not None:
            self.record.cgroup = str(self.cgroup.path)
        write_record(record_path, self.record)  # from now on a restart finds the cgroup

    @property
    def description(self) -> str:
        """Which containment applies, for the build log."""
        if self.cgroup is not None:
            return f"cgroup v2 {self.cgroup.path} (cgroup.kill ends the build)"
        return "process group, build mark and subreaper (no writable cgroup v2 here)"

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, MARK_VARIABLE: self.record.mark}

    def preexec(self) -> Callable[[], None]:
        """Runs in the forked leader before exec: die with the runner, join the cgroup.

        Only a prctl and a write to a descriptor opened beforehand, since a forked child
        of a threaded process must not take locks.
        """
        procs = None
        if self.cgroup is not None:
            try:
                procs = os.open(self.cgroup.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
            except OSError as e:
                log.warning("cannot join cgroup %s: %s", self.cgroup.path, e)
        parent, prctl = os.getpid(), _prctl

        def in_child() -> None:
            if prctl is not None:
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != parent:  # the runner died before the prctl
                    os.kill(os.getpid(), signal.SIGKILL)
            if procs is not None:
                with contextlib.suppress(OSError):
                    os.write(procs, b"0")
                os.close(procs)

        return in_child

    def started(self, leader: int) -> None:
        """The leader runs: note it, check it joined the cgroup, and record the build."""
        process = read_process(leader)
        self.record.leader = leader
        self.record.leader_start = process.start if process is not None else 0
        if self.cgroup is not None and leader not in self.cgroup.pids() and process is not None:
            log.warning("build leader %d did not join %s; the mark contains it", leader,
                        self.cgroup.path)  # fmt: skip
        write_record(self.record_path, self.record)

    def live_members(self) -> set[int]:
        """Pids of the build's processes still running (not zombies)."""
        processes = all_processes()
        live = {p.pid for p in processes if p.alive}
        return self.record.members(processes, _own_lineage()) & live

    def signal_all(self, sig: signal.Signals) -> set[int]:
        """Send ``sig`` to every live process of the build; returns their pids."""
        members = self.live_members()
        for pid in members:
            _send(pid, sig)
        return members

    def kill_all(self, reap: bool = True) -> None:
        """SIGKILL every process of the build until none is left, then (``reap``) reap the
        orphans that became ours. Bounded: a process we may not kill is logged, not waited
        for."""
        if self.cgroup is not None:
            self.cgroup.kill()
        if self.user is not None:  # all of it, also what the runner may not signal itself
            self.user.kill_all()
        killed: set[int] = set()
        deadline = time.monotonic() + KILL_TIMEOUT
        while members := self.signal_all(signal.SIGKILL):  # again: some forked meanwhile
            killed |= members
            if time.monotonic() > deadline:
                log.error("build processes %s survive SIGKILL", sorted(members))
                break
            time.sleep(_POLL)
        if killed - {self.record.leader}:
            log.info("killed %d leftover process(es) of the build", len(killed))
        if reap and is_subreaper():
            self._reap()

    def _reap(self) -> None:
        """Wait for zombies the subreaper inherited from the build: ours, in a session of
        their own (so not the runner's git commands), started with the build."""
        me, own = os.getpid(), read_process(os.getpid())
        for p in all_processes():
            if (p.ppid == me and not p.alive and p.pid != self.record.leader
                    and own is not None and p.sid != own.sid
                    and p.start >= (self.record.leader_start or 0)):  # fmt: skip
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p.pid, os.WNOHANG)

    def __enter__(self) -> BuildContainment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """After :meth:`kill_all`: remove the cgroup and the record (again: no harm)."""
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.record_path is not None:
            self.record_path.unlink(missing_ok=True)


def _send(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as e:  # it changed its uid (a setuid helper)
        log.warning("cannot send %s to build process %d: %s", sig.name, pid, e)


# --- what a previous life left ---------------------------------------------------------


def write_record(path: Path | None, record: Record) -> None:
    if path is None:
        return
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(json.dumps(record.__dict__))
        os.replace(temporary, path)
    except OSError as e:
        log.warning("cannot record the build in %s: %s", path, e)


def kill_recorded(path: Path) -> int:
    """End whatever the build recorded at ``path`` left running; returns how many."""
    try:
        record = Record(**json.loads(path.read_text()))
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, TypeError) as e:
        log.warning("ignoring unreadable build record %s: %s", path, e)
        path.unlink(missing_ok=True)
        return 0
    containment = BuildContainment.__new__(BuildContainment)
    containment.record, containment.record_path = record, path
    containment.user = None
    if record.user is not None:
        try:
            containment.user = BuildUser.of(record.user)
        except ConfigError as e:
            log.warning("cannot end the processes of build user %s: %s", record.user, e)
    containment.cgroup = BuildCgroup(Path(record.cgroup)) if record.cgroup else None
    leader = read_process(record.leader) if record.leader is not None else None
    if leader is None or leader.start != record.leader_start:
        record.leader = None  # gone, or its pid now names another process: not ours
    leftovers = containment.live_members()
    containment.kill_all(reap=False)  # not our children: those of a process now gone
    containment.close()
    if leftovers:
        log.warning("killed %d process(es) a previous run of this runner left: %s",
                    len(leftovers), sorted(leftovers))  # fmt: skip
    return len(leftovers)


class Guard:
    """A small process that outlives a SIGKILLed runner and ends its build.

    It waits for the end of a pipe only the runner holds; when that ends (whatever way the
    runner ended) it kills what the build record names.
    """

    def __init__(self, record_path: Path) -> None:
        code = "import sys; from superci.containment import guard; guard(sys.argv[1])"
        self._process = subprocess.Popen(
            [sys.executable, "-c", code, os.fspath(record_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """The runner ends normally: let the guard look once more, then go."""
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(KILL_TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def guard(record_path: str) -> None:
    """The guard process's body (see :class:`Guard`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the runner, which tells us
    while sys.stdin.buffer.read(4096):
        pass
    kill_recorded(Path(record_path))
