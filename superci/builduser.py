"""Builds run as a user of their own (``test_runner --build-user NAME``, Linux).

A commit's tests run as a dedicated, unprivileged user: they cannot read the runner's
token and identity, write into its clone, signal it, or leave a process it does not end.
The runner (root) exports each commit from its private clone into a folder of the build
user's own, under a parent only the runner may list (0711), and hands the build a clean
environment with none of the runner's variables.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from superci.errors import ConfigError

log = logging.getLogger(__name__)

#: Longest wait (seconds) for the build user's killed processes to be gone.
KILL_TIMEOUT = 5.0
#: Variables of the runner's environment a build may see: where programs are, the locale.
KEPT_VARIABLES = ("PATH", "LANG", "LANGUAGE")
_POLL = 0.01


@dataclass(frozen=True)
class BuildUser:
    """The user a runner's builds run as."""

    name: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def lookup(cls, name: str) -> BuildUser:
        """The user ``name``, if it may run builds: a dedicated user, neither root nor the
        runner's own, on Linux, with the runner able to become it (root)."""
        if not sys.platform.startswith("linux"):
            raise ConfigError("--build-user works on Linux only")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(
                f"no user named {name!r} for --build-user: create a dedicated user for builds "
                f"(useradd --create-home {name})"
            ) from None
        if entry.pw_uid == 0:
            raise ConfigError(
                f"refusing build user {name!r}: it is root; a build user must be a dedicated, "
                "unprivileged user"
            )
        if entry.pw_uid == os.geteuid():
            raise ConfigError(
                f"refusing build user {name!r}: it is the runner's own user, so builds could "
                "read its token and identity; a build user must be dedicated"
            )
        if os.geteuid() != 0:
            raise ConfigError(
                f"--build-user {name} needs the runner to run as root, to run builds as "
                f"{name} and end their processes"
            )
        return cls(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))

    def processes(self) -> list[int]:
        """Pids of the processes that run as this user."""
        return processes_of(self.uid)

    def check_dedicated(self, ignore: Iterable[int] = ()) -> None:
        """Refuse a user with processes the runner did not start: they could read and
        change what a build of this runner does."""
        stray = sorted(set(self.processes()) - set(ignore))
        if stray:
            raise ConfigError(
                f"refusing build user {self.name!r}: it owns processes the runner did not "
                f"start (pids {', '.join(map(str, stray[:10]))}); a build user must be "
                "dedicated to this runner's builds"
            )

    def kill_all(self) -> int:
        """SIGKILL every process of this user until none is left (bounded); how many."""
        killed: set[int] = set()
        deadline = time.monotonic() + KILL_TIMEOUT
        while pids := self.processes():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed |= set(pids)
            if time.monotonic() > deadline:
                log.error("processes %s of build user %s survive SIGKILL", pids, self.name)
                break
            time.sleep(_POLL)
        if killed:
            log.info("killed %d leftover process(es) of build user %s", len(killed), self.name)
        return len(killed)

    def environment(self, base: Mapping[str, str], home: Path, tmp: Path) -> dict[str, str]:
        """The build's own environment: what ``base`` (the runner's) says of programs and
        locale, and nothing else of it (no token, no token file)."""
        kept = {k: v for k, v in base.items() if k in KEPT_VARIABLES or k.startswith("LC_")}
        return {
            **kept,
            "HOME": str(home),
            "USER": self.name,
            "LOGNAME": self.name,
            "TMPDIR": str(tmp),
        }


@dataclass(frozen=True)
class BuildFolders:
    """One build's folders, owned by the build user: its tree, home, tmp and report."""

    root: Path
    tree: Path
    home: Path
    tmp: Path
    report: Path


def processes_of(uid: int) -> list[int]:
    """Pids of the live processes whose owner (real uid, as /proc shows it) is ``uid``."""
    found = []
    for entry in _proc_entries():
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uids = fields.get("Uid", "").split()
        state = fields.get("State", "").split()[:1]
        if str(uid) in uids and state not in (["Z"], ["X"]):
            found.append(int(entry))
    return found


def _proc_entries() -> list[str]:
    try:
        return [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def make_private(path: Path) -> None:
    """The runner's clone: nobody else may enter it (its .git holds the identity)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.info("making %s private (mode %o → 700) for builds run as another user", path, mode)
        path.chmod(0o700)


def export_tree(source: Path, user: BuildUser, parent: Path, build_id: int) -> BuildFolders:
    """Copy the checked-out tree of ``source`` (without any ``.git``) into a fresh folder
    of ``user`` under ``parent`` (made 0711: the user reaches its own folder only)."""
    parent.chmod(0o711)
    root = parent / f"build-{build_id}"
    remove_folder(root)
    root.mkdir(mode=0o700)
    folders = BuildFolders(root, root / "tree", root / "home", root / "tmp", root / "report")
    shutil.copytree(source, folders.tree, symlinks=True, ignore=_git_dirs)
    for folder in (folders.home, folders.tmp, folders.report):
        folder.mkdir(mode=0o700)
    _chown_tree(root, user)
    return folders


def remove_folder(root: Path) -> None:
    """Remove a build's folder (the build user's processes are gone by then)."""
    if root.is_symlink() or root.is_file():
        root.unlink()
    elif root.exists():
        shutil.rmtree(root)


def _git_dirs(folder: str, names: list[str]) -> set[str]:
    return {".git"} & set(names)


def _chown_tree(root: Path, user: BuildUser) -> None:
    os.lchown(root, user.uid, user.gid)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), user.uid, user.gid)
