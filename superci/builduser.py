"""Builds run as a user of their own (``test_runner --build-user NAME``, Linux).

A commit's tests run as a dedicated, unprivileged user: they cannot read the runner's
token and identity, write into its clone, signal it, or leave a process it does not end.
Everything the runner does as NAME goes through :meth:`BuildUser.command`: as root it
drops to NAME's uid and gid; as any other user it runs ``sudo -n -u NAME -- /usr/bin/env
-i VARS PROGRAM...``, which the one-line sudo rule of the README allows (:data:`SUDO_RULE`)
and nothing else needs. So a runner that is not root hands the tree over (a tar stream
NAME unpacks), signals and kills NAME's processes (``kill -1`` as NAME) and removes
NAME's folder through that rule, and never needs to be root.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superci.errors import ConfigError, WorkspaceError

log = logging.getLogger(__name__)

#: Longest wait (seconds) for the build user's killed processes to be gone.
KILL_TIMEOUT = 5.0
#: Longest wait (seconds) for one small command run as the build user (not the build).
COMMAND_TIMEOUT = 60.0
#: Variables of the runner's environment a build may see: where programs are, the locale.
KEPT_VARIABLES = ("PATH", "LANG", "LANGUAGE")
#: The one program a runner that is not root runs through sudo; it runs the rest.
ENV = "/usr/bin/env"
#: The sudo rule a runner that is not root needs (README.rst gives it; a test uses it).
SUDO_RULE = "{runner} ALL=({build_user}) NOPASSWD: " + ENV
#: ``PATH`` of the small commands superci runs as the build user (kill, tar, rm).
HELPER_PATH = "/usr/local/bin:/usr/bin:/bin"
#: The folder of the runner's scratch folder where the build user makes its builds'.
BUILDS = "builds"
_POLL = 0.01

#: Run as the build user with the tar of the tree on stdin: a folder of its own for the
#: build (mktemp: a fresh, unguessable name; or "$2", the runner's unguessable name for its
#: builds, made anew), the tree unpacked in it; prints the folder, or leaves nothing behind.
HAND_OVER = r"""
set -eu
umask 022
if [ -n "${2:-}" ]; then
    root="$1/$2"
    chmod -R u+rwx -- "$root" 2>/dev/null || true
    rm -rf -- "$root"
    mkdir "$root"
else
    root=$(mktemp -d "$1/build-XXXXXXXXXX")
fi
trap 'rm -rf -- "$root"' EXIT
chmod 711 "$root"
mkdir "$root/tree" "$root/report"
mkdir -m 700 "$root/home" "$root/tmp"
tar -x -f - -C "$root/tree"
trap - EXIT
printf '%s\n' "$root"
"""
#: Run as the build user: remove its build folder, whatever modes the build left.
REMOVE = 'chmod -R u+rwx -- "$1" 2>/dev/null; rm -rf -- "$1"'
#: Run as the build user: a fresh folder of its own in "$1", named "$2-" and a random tail
#: (mktemp), that others may enter and read; prints the folder.
MAKE_FOLDER = r"""
set -eu
folder=$(mktemp -d "$1/$2-XXXXXXXXXX")
chmod 755 "$folder"
printf '%s\n' "$folder"
"""
#: Run as the build user: the index (from 0) of each argument it may execute, a line each.
RUNNABLE = 'i=0; for path do if [ -x "$path" ]; then echo "$i"; fi; i=$((i+1)); done'


@dataclass(frozen=True)
class BuildUser:
    """The user a runner's builds run as, and the one way the runner acts as it."""

    name: str
    uid: int
    gid: int
    home: Path
    #: sudo, when the runner is not root and becomes NAME through :data:`SUDO_RULE`.
    sudo: str | None = None

    @classmethod
    def of(cls, name: str) -> BuildUser:
        """The user ``name``, reached as root can, or else through sudo (no checks: for
        ending what a build left, see :meth:`lookup` for a runner's start)."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(
                f"no user named {name!r} for --build-user: create a dedicated user for builds "
                f"(useradd --create-home {name})"
            ) from None
        sudo = None if os.geteuid() == 0 else (shutil.which("sudo") or "sudo")
        return cls(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), sudo)

    @classmethod
    def lookup(cls, name: str) -> BuildUser:
        """The user ``name``, if it may run builds: a dedicated user, neither root nor the
        runner's own, on Linux, that the runner may become (as root, or through sudo)."""
        if not sys.platform.startswith("linux"):
            raise ConfigError("--build-user works on Linux only")
        user = cls.of(name)
        if user.uid == 0:
            raise ConfigError(
                f"refusing build user {name!r}: it is root; a build user must be a dedicated, "
                "unprivileged user"
            )
        if user.uid == os.geteuid():
            raise ConfigError(
                f"refusing build user {name!r}: it is the runner's own user, so builds could "
                "read its token and identity; a build user must be dedicated"
            )
        user.check_reachable()
        return user

    def check_reachable(self) -> None:
        """A runner that is not root must be able to run commands as this user through
        sudo, without a password: ask (``id -u`` as it), or say which rule to add."""
        if self.sudo is None:
            return
        if proc_hides_processes():
            raise ConfigError(
                f"--build-user {self.name}: /proc is mounted with hidepid, so this runner, "
                f"not being root, cannot see the processes of {self.name} to end them; run "
                "it as root, or mount /proc without hidepid"
            )
        try:
            done = self.run(["id", "-u"], timeout=COMMAND_TIMEOUT)
            said = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            became = done.stdout.strip() == str(self.uid)
        except (OSError, subprocess.SubprocessError) as e:
            said, became = [str(e)], False
        if not became:
            try:
                runner = pwd.getpwuid(os.geteuid()).pw_name
            except KeyError:
                runner = f"#{os.geteuid()}"  # how sudoers names a user by its uid
            rule = SUDO_RULE.format(runner=runner, build_user=self.name)
            raise ConfigError(
                f"--build-user {self.name}: this runner runs as {runner}, not root, and "
                f"cannot run commands as {self.name} through sudo ({said[0]}). It needs "
                f"sudo and this rule (add it with visudo -f /etc/sudoers.d/superci):\n"
                f"    {rule}"
            )

    def command(
        self, argv: Sequence[str], env: Mapping[str, str]
    ) -> tuple[list[str], dict[str, Any]]:
        """How to start ``argv`` as this user with exactly the environment ``env``: the
        arguments and the keyword arguments for :class:`subprocess.Popen`."""
        if self.sudo is None:  # root: subprocess drops to the user in the child
            as_user = {"user": self.uid, "group": self.gid, "extra_groups": []}
            return list(argv), {"env": dict(env), **as_user}
        variables = [f"{key}={value}" for key, value in env.items()]
        sudo = [self.sudo, "-n", "-u", self.name, "--", ENV, "-i", *variables, *argv]
        return sudo, {"env": {"PATH": os.environ.get("PATH", os.defpath)}}

    def run(
        self, argv: Sequence[str], *, stdin: Any = subprocess.DEVNULL,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run a small command of superci's as this user (not the build's) and wait."""
        args, options = self.command(argv, {"PATH": HELPER_PATH, "LC_ALL": "C"})
        return subprocess.run(
            args, stdin=stdin, capture_output=True, text=True, timeout=timeout, cwd="/",
            start_new_session=True, **options,
        )  # fmt: skip

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

    def signal_all(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every process of this user: the build's, since it is dedicated.
        As root directly; otherwise as the user itself (``kill -1``), through sudo."""
        if self.sudo is None:
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            return
        try:  # kill -1: all the caller may signal, i.e. the user's; the caller excepted
            self.run(["/bin/sh", "-c", f"kill -{sig.name.removeprefix('SIG')} -1"])
        except (OSError, subprocess.SubprocessError) as e:
            log.error("cannot send %s to the processes of build user %s: %s",
                      sig.name, self.name, e)  # fmt: skip

    def kill_all(self) -> int:
        """SIGKILL every process of this user until none is left (bounded); how many."""
        killed: set[int] = set()
        deadline = time.monotonic() + KILL_TIMEOUT
        while pids := self.processes():
            self.signal_all(signal.SIGKILL)
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

    def hand_over(self, source: Path, scratch: Path, name: str = "") -> BuildFolders:
        """Give this user a copy of the checked-out tree of ``source`` (without any
        ``.git``) in a fresh folder of its own: the runner streams a tar of it, the user
        unpacks it (see :data:`HAND_OVER`). ``name`` (``build-`` and a random tail): the
        folder's, so that each build's tree has the same path (an editable install made
        in one stays valid for the next). Blocks."""
        builds = _builds_folder(scratch)
        with tempfile.TemporaryFile() as errors:
            args, options = self.command(
                ["/bin/sh", "-c", HAND_OVER, "sh", str(builds), name],
                {"PATH": HELPER_PATH, "LC_ALL": "C"},
            )
            unpack = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, cwd="/",
                start_new_session=True, **options,
            )  # fmt: skip
            assert unpack.stdin is not None and unpack.stdout is not None
            try:
                _write_tar(source, unpack.stdin)
            except BrokenPipeError:
                pass  # tar stopped reading: its exit code and message say why
            finally:
                unpack.stdin.close()
            try:
                printed = unpack.stdout.read().decode(errors="replace")
                code = unpack.wait(COMMAND_TIMEOUT)
            finally:
                if unpack.poll() is None:
                    unpack.kill()
                    unpack.wait()
            errors.seek(0)
            said = errors.read().decode(errors="replace").strip()
        if code != 0:
            raise WorkspaceError(
                f"cannot hand the checkout to build user {self.name}: the unpacking as "
                f"{self.name} failed (exit code {code}): {said[-500:] or 'no message'}"
            )
        return self._folders(builds, printed.strip())

    def _folders(self, builds: Path, printed: str) -> BuildFolders:
        """The folders the unpacking made, once sure they are the user's, in ``builds``."""
        root = self.owned_folder(builds, printed, "build")
        if root is None:
            raise WorkspaceError(
                f"cannot hand the checkout to build user {self.name}: it made {printed!r}, "
                f"not a folder of its own in {builds}"
            )
        return BuildFolders(root, root / "tree", root / "home", root / "tmp", root / "report")

    def owned_folder(self, parent: Path, printed: str, prefix: str) -> Path | None:
        """``printed`` (what a command of this user said it made), if it is a folder of
        this user's right in ``parent`` named ``prefix-`` and a random tail; else None. Read
        with lstat only: the runner follows nothing this user could have made."""
        folder = Path(printed)
        if not folder.is_absolute() or folder.parent != parent:
            return None
        if not re.fullmatch(rf"{re.escape(prefix)}-\w+", folder.name):
            return None
        try:
            info = folder.lstat()
        except OSError:
            return None
        return folder if stat.S_ISDIR(info.st_mode) and info.st_uid == self.uid else None

    def make_folder(self, parent: Path, prefix: str) -> Path:
        """A fresh folder of this user's in ``parent`` (a folder of the runner's this user
        may write in, mode 1733), named ``prefix-`` and a random tail: made by the user
        itself (see :data:`MAKE_FOLDER`), so the runner needs no chown. Blocks."""
        what = f"cannot make a folder as build user {self.name} in {parent}"
        try:
            done = self.run(["/bin/sh", "-c", MAKE_FOLDER, "sh", str(parent), prefix])
        except (OSError, subprocess.SubprocessError) as e:
            raise WorkspaceError(f"{what}: {e}") from e
        if done.returncode != 0:
            said = done.stderr.strip()[-500:] or f"exit code {done.returncode}"
            raise WorkspaceError(f"{what}: {said}")
        folder = self.owned_folder(parent, done.stdout.strip(), prefix)
        if folder is None:
            raise WorkspaceError(f"{what}: it made {done.stdout.strip()!r}, not one of its own")
        return folder

    def runnable(self, paths: Sequence[str]) -> set[str]:
        """Those of ``paths`` this user may execute: ``test -x`` as the user, so a folder
        on the way that is closed to it (``/root``) counts. Blocks."""
        if not paths:
            return set()
        try:
            done = self.run(["/bin/sh", "-c", RUNNABLE, "sh", *paths])
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("cannot ask build user %s which Pythons it may run: %s", self.name, e)
            return set()
        indexes = {int(line) for line in done.stdout.split() if line.isdigit()}
        return {path for i, path in enumerate(paths) if i in indexes}

    def remove(self, folders: BuildFolders) -> None:
        """Remove a build's folder as this user (its processes are gone by then)."""
        self.remove_folder(folders.root)

    def remove_folder(self, folder: Path) -> bool:
        """Remove a folder of this user's as this user, whatever modes are in it; whether
        it is gone. As the user, a symlink it planted there leads only where it may go."""
        try:
            done = self.run(["/bin/sh", "-c", REMOVE, "sh", str(folder)])
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("cannot remove %s as build user %s: %s", folder, self.name, e)
            return False
        if done.returncode != 0 or os.path.lexists(folder):
            log.warning("cannot remove %s as build user %s: %s", folder, self.name,
                        done.stderr.strip() or f"exit code {done.returncode}")  # fmt: skip
            return False
        return True


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


def proc_hides_processes(mountinfo: str | None = None) -> bool:
    """Whether /proc hides other users' processes (``hidepid=1``, ``2``, ``invisible``,
    ``noaccess``), as /proc/self/mountinfo (or ``mountinfo``) says."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return False
    for line in mountinfo.splitlines():
        fields, _, tail = line.partition(" - ")
        if fields.split()[4:5] == ["/proc"] and tail.split()[:1] == ["proc"]:
            options = dict(o.partition("=")[::2] for o in tail.split()[-1].split(","))
            return options.get("hidepid", "0") not in ("0", "off")
    return False


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


def _builds_folder(scratch: Path) -> Path:
    """The folder where the build user makes its builds' folders: the runner's scratch
    folder may be entered (0711), not listed; in ``builds`` anyone may make an entry but
    none may list or remove another's (1733), so only the runner learns a build's name."""
    scratch.chmod(0o711)
    builds = scratch / BUILDS
    builds.mkdir(exist_ok=True)
    builds.chmod(0o1733)
    return builds


def _write_tar(source: Path, stream: Any) -> None:
    """A tar of the tree at ``source``, every ``.git`` left out, to ``stream``."""

    def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if Path(info.name).name == ".git":
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(source)):
            tar.add(source / name, arcname=name, filter=anonymous)
