"""Build environments: a virtual environment per kind of build, made with uv, cached on
the runner's machine and reused without any install when nothing it depends on changed.

An environment is keyed by the interpreter (its path and full version), the ``install``
command, a digest of the files that declare dependencies and the path of the tree the
install ran in (an editable install names it: it is reused only by builds in that same
tree, the same runner's). The cache folder holds:

* ``envs/<key>-<token>/``: environments, each built in a folder of its own;
* ``current/<key>``: a symlink to the complete environment of a key, made last and
  swapped in with a rename, so it never names a half-built one; the link itself is the
  mark that the environment is complete, and its own time when it was last used. (A
  virtual environment cannot be built elsewhere and renamed into place: its scripts name
  their interpreter by absolute path.) A folder no symlink names is debris of a build
  that failed or was killed, and is removed once no runner holds its key;
* ``locks/<key>.lock``: ``flock`` locks, so runners sharing the machine cooperate: a
  builder holds its key exclusively, a build using an environment holds it shared (it
  is then never evicted from under it);
* ``uv-cache/``: uv's shared cache (``UV_CACHE_DIR``), for uv and ``uv pip`` installs.

With a build user (``--build-user``) the build user makes, fills and removes the folders
of its environments, through :class:`~superci.builduser.BuildUser` alone, whether the
runner is root or not: ``envs/`` is the runner's, mode 1733. The runner only reads its own
links and lstat's what they name: nothing the build user writes decides what the runner
trusts or removes. As a build's tests could change the environment the next commit would
reuse, the runner records, once it is made, a manifest of it (``manifests/<key>``, the
runner's: every entry's type, mode, size, times, inode, link target, found without
following links; a user cannot set a ctime back) and reuses the environment only while
it still matches; else it is made anew. Builds then run with PYTHONDONTWRITEBYTECODE and
the install compiles the environment's bytecode, so that using it changes nothing. There
is no shared uv cache (one build could plant a wheel another's install takes): uv's cache
is the build's own, in its home, removed with it.

The cache keeps at most ``size`` environments (``--env-cache-size``); the least recently
used beyond that are removed first. A count, not bytes: it is what a person can reason
about when choosing it, and it costs no walk over the environments' files.

``pip`` in an environment is the interpreter's own: the wheel its ``ensurepip`` bundles,
installed by uv (a quarter of a second), or ``python -m ensurepip`` itself where that
wheel is not to be found (Debian's Pythons keep it elsewhere; about two seconds). Both
work offline, whereas ``uv venv --seed`` fetches pip from an index (or uv's cache), which
a runner without network access may not have.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import pwd
import re
import secrets
import shlex
import shutil
import stat
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from superci.builduser import BuildUser
from superci.errors import ConfigError, SuperCIError, WorkspaceError
from superci.execute import Execution
from superci.safefile import read_inside

log = logging.getLogger(__name__)

#: The files that declare a project's dependencies, at the root of the repository.
DEPENDENCY_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "requirements*.txt")
#: Largest dependency file read for the key (bytes), and most files a pattern may match.
MAX_DEPENDENCY_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPENDENCY_FILES = 200
#: The name of an environment's folder in ``envs/``: its key's digest and a random tail.
ENV_FOLDER = re.compile(r"([0-9a-f]{24})-[A-Za-z0-9]+")
#: How often a runner looks again at a key another runner holds (seconds).
LOCK_POLL = 0.05


class InstallFailed(SuperCIError):
    """The environment could not be made: how its install step (or the wait for another
    runner's) ended."""

    def __init__(self, execution: Execution) -> None:
        super().__init__(f"install ended with {execution}")
        self.execution = execution


@dataclass(frozen=True)
class EnvKey:
    """What an environment is made from: equal keys make equal environments."""

    interpreter: str
    version: str
    install: str
    files: str  # sha256 of the dependency files' names and contents
    #: The tree the install ran in (with an install): an editable install names it.
    tree: str = ""

    @property
    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Environment:
    """An environment ready for a build; ``built``: this build made it."""

    path: Path
    built: bool


#: An environment's manifest: each entry's path (relative) and how it is, as lstat says.
Manifest = dict[str, list[object]]
#: Says one line in the build's log.
Say = Callable[[str], Awaitable[None]]


def manifest(folder: Path) -> Manifest:
    """What ``folder`` holds, entry by entry, without following a symlink: type and mode,
    size, mtime, ctime and inode, and a link's target. Any write, replacement, chmod or new
    entry changes it (ctime cannot be set back but by root). Blocks; raises OSError for an
    entry it cannot read."""
    entries: Manifest = {}

    def note(relative: str, info: os.stat_result, path: str) -> None:
        target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
        entries[relative] = [info.st_mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns,
                             info.st_ino, target]  # fmt: skip

    def walk(path: str, relative: str) -> None:
        with os.scandir(path) as listing:
            for entry in listing:
                info = entry.stat(follow_symlinks=False)
                name = f"{relative}/{entry.name}" if relative else entry.name
                note(name, info, entry.path)
                if stat.S_ISDIR(info.st_mode):
                    walk(entry.path, name)

    note(".", os.lstat(folder), str(folder))
    walk(str(folder), "")
    return entries


def manifest_change(recorded: Manifest | None, folder: Path) -> str | None:
    """How ``folder`` differs from its ``recorded`` manifest (the first entry that does),
    or None when it is as it was made."""
    if recorded is None:
        return "no manifest of it"
    try:
        now = manifest(folder)
    except OSError as e:
        return f"cannot read it: {e}"
    if now == recorded:
        return None
    for name in sorted(set(now) | set(recorded)):
        if name not in recorded:
            return f"{name} added"
        if name not in now:
            return f"{name} removed"
        if now[name] != recorded[name]:
            return f"{name} changed"
    return None  # pragma: no cover - equal manifests returned above


def installed_project(env: Path, tree: str) -> str | None:
    """The distribution (its dist-info) that the install put in ``env`` from ``tree`` or a
    folder in it, not editable (its direct_url.json says so, as pip and uv write it): the
    code of one commit, which the next must not test. None when there is none."""
    if not tree:
        return None
    for found in sorted(env.glob("lib/python*/site-packages/*.dist-info/direct_url.json")):
        try:
            data = read_inside(env, found.relative_to(env), 1024 * 1024, what="direct_url")
            origin = json.loads(data or b"null")
        except (SuperCIError, ValueError):
            continue
        if not isinstance(origin, dict):
            continue
        url = urllib.parse.urlsplit(str(origin.get("url", "")))
        path, info = urllib.parse.unquote(url.path), origin.get("dir_info")
        editable = isinstance(info, dict) and info.get("editable") is True
        inside = path == tree or path.startswith(tree.rstrip("/") + "/")
        if url.scheme == "file" and inside and not editable:
            return found.parent.name
    return None


def dependency_digest(tree: Path, patterns: Sequence[str] | None) -> str:
    """A digest of the files matching ``patterns`` (default: DEPENDENCY_FILES) under
    ``tree``: names and contents, so a renamed or changed file makes a new environment.
    Blocks; a file that leads out of the tree or is too large is a :class:`ConfigError`."""
    digest = hashlib.sha256()
    names: set[str] = set()
    for pattern in DEPENDENCY_FILES if patterns is None else patterns:
        names.update(str(p.relative_to(tree)) for p in tree.glob(pattern))
        if len(names) > MAX_DEPENDENCY_FILES:
            raise ConfigError(
                f"more than {MAX_DEPENDENCY_FILES} files match install_files {list(patterns or [])}"
            )
    for name in sorted(names):
        data = read_inside(tree, name, MAX_DEPENDENCY_FILE_BYTES, what="dependency file")
        if data is None:
            continue  # a folder matched by a glob: not a file that declares anything
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


#: Prints the pip wheel the interpreter's ensurepip bundles (nothing when it has none).
_BUNDLED_PIP = (
    "import ensurepip, pathlib; "
    "print(*sorted(pathlib.Path(ensurepip.__file__).parent.glob('_bundled/pip-*.whl'))[-1:])"
)


def install_script(
    uv: str, interpreter: str, folder: Path, install: str | None, compile_all: bool = False
) -> str:
    """The shell script that makes the environment in ``folder`` and runs ``install``
    (with the environment first on PATH): the install's exit code is the script's. With
    ``compile_all`` an install that succeeds is followed by compiling the environment's
    bytecode, as builds using it will not write any."""
    python, uv = shlex.quote(str(folder / "bin" / "python")), shlex.quote(uv)
    steps = [
        "set -e",
        f"{uv} venv --quiet --no-config --no-project --allow-existing "
        f"--python {shlex.quote(interpreter)} {shlex.quote(str(folder))}",
        f"wheel=$({python} -c {shlex.quote(_BUNDLED_PIP)} 2>/dev/null || true)",
        f'if [ -z "$wheel" ] || ! {uv} pip install --quiet --offline --no-config --python '
        f'{python} "$wheel" 2>/dev/null; then {python} -m ensurepip --default-pip >/dev/null; fi',
        f"ln -s {uv} {shlex.quote(str(folder / 'bin' / 'uv'))}",
        "set +e",
    ]
    if not compile_all:
        return "\n".join(steps + ([install] if install is not None else [])) + "\n"
    lib = shlex.quote(str(folder / "lib"))
    steps += ["(", install or "true", ")", "status=$?",
              f"[ $status -ne 0 ] || {python} -m compileall -q {lib} >/dev/null 2>&1 || true",
              "exit $status"]  # fmt: skip
    return "\n".join(steps) + "\n"


def activated(base: Mapping[str, str], env: Path, uv_cache: Path | None) -> dict[str, str]:
    """``base`` with the environment first on PATH and named by VIRTUAL_ENV (as its
    ``activate`` script does), uv told to use the shared cache and never to download. With
    no shared cache (a build user's), uv's cache is the build's own, in its home, uv copies
    from it (a hard link would change with the cache, removed after the build) and Python
    writes no bytecode: the environment stays as its manifest says."""
    path = base.get("PATH", os.defpath)
    variables = {
        **base,
        "PATH": f"{env / 'bin'}{os.pathsep}{path}" if path else str(env / "bin"),
        "VIRTUAL_ENV": str(env),
        "UV_PYTHON_DOWNLOADS": "never",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    variables.pop("PYTHONHOME", None)
    if uv_cache is not None:
        variables["UV_CACHE_DIR"] = str(uv_cache)
    else:
        variables["PYTHONDONTWRITEBYTECODE"] = "1"
        variables["UV_LINK_MODE"] = "copy"
        variables.pop("UV_CACHE_DIR", None)
        if "HOME" in base:
            variables["UV_CACHE_DIR"] = os.path.join(base["HOME"], ".cache", "uv")
    return variables


def default_root(user: BuildUser | None) -> Path:
    """Where environments are cached by default: the runner's user's cache folder; with
    --build-user, a folder of the runner's per build user, that the build user may enter
    (a runner that is not root needs it made for it: see :meth:`EnvCache.setup`)."""
    if user is not None:
        return Path("/var/cache/superci", f"environments-{user.name}")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache, "superci", "environments")


#: A build's wait: returns "cancelled" or "timeout" when the build must stop waiting.
Stopped = Callable[[], str | None]
#: Makes an environment in the folder given, as the install step; its Execution says how.
Build = Callable[[Path], Awaitable[Execution]]


class EnvCache:
    """The environments of this machine (of one build user, when builds run as one),
    shared by its runners."""

    def __init__(self, root: Path, size: int, owner: BuildUser | None = None) -> None:
        self.root = root
        self.size = size
        #: The build user whose environments these are: it makes and removes their folders.
        self.owner = owner
        self.envs = root / "envs"
        self.current = root / "current"
        self.locks = root / "locks"
        #: uv's shared cache; none with a build user (each build has its own).
        self.uv_cache = root / "uv-cache" if owner is None else None
        #: The runner's manifests of the build user's environments, one a key.
        self.manifests = root / "manifests"

    def setup(self) -> None:
        """Make the cache's folders (blocks). With a build user, each environment and uv's
        cache are folders the build user makes itself in a folder of the runner's it may
        write in but not list (1733); ``current/``, ``locks/`` and the folders above stay the
        runner's alone, so the build user can neither swap a link nor name what the runner
        removes. A cache that cannot be set up is a :class:`ConfigError` saying why."""
        try:
            self._setup()
        except (OSError, WorkspaceError, ConfigError) as e:
            raise ConfigError(f"cannot set up the environment cache {self.root}: {e}. "
                              f"{self._advice()}") from e  # fmt: skip

    def _setup(self) -> None:
        for folder in (self.root, self.current, self.locks):
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.uv_cache is not None:
            self.envs.mkdir(mode=0o755, exist_ok=True)
            self.uv_cache.mkdir(mode=0o755, exist_ok=True)
            return
        for folder in (self.current, self.locks, self.envs, self.manifests):
            folder.mkdir(mode=0o755, exist_ok=True)
            info = folder.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                raise ConfigError(f"{folder} is not a folder of the runner's own")
        self.envs.chmod(0o1733)

    def _advice(self) -> str:
        if self.owner is None:
            return "Choose another folder with --env-cache"
        runner = _user_name(os.geteuid())
        return (
            f"It must be a folder of the runner's user ({runner}) that build user "
            f"{self.owner.name} may enter; make it with: install -d -m 755 -o {runner} "
            f"{self.root} (or choose another with --env-cache)"
        )

    @contextlib.asynccontextmanager
    async def use(
        self, key: EnvKey, build: Build, stopped: Stopped, say: Say | None = None
    ) -> AsyncIterator[Environment]:
        """The environment of ``key``, held (shared) while the block runs: the complete one
        if there is one, else one that ``build`` makes now (holding the key exclusively, so
        a runner asking for it meanwhile waits and then reuses it). A build that fails
        leaves nothing and raises :class:`InstallFailed`; so does a wait ``stopped`` ends.
        A build user's environment that changed since it was made is removed and made
        anew, saying so with ``say``."""
        built = False
        while True:
            shared = await self._lock(key.digest, fcntl.LOCK_SH, stopped)
            try:
                ready = await asyncio.to_thread(self._ready, key.digest)
                if ready is not None:
                    yield Environment(ready, built)
                    return
            finally:
                os.close(shared)
            exclusive = await self._lock(key.digest, fcntl.LOCK_EX, stopped)
            try:
                changed = await asyncio.to_thread(self._changed, key.digest)
                if changed is not None:
                    log.warning("environment %s changed since it was made (%s): made anew",
                                key.digest, changed)  # fmt: skip
                    if say is not None:
                        await say(f"environment changed since it was made (by a build?): "
                                  f"{changed}; made anew")  # fmt: skip
                    await asyncio.to_thread(self._forget, key.digest)
                if await asyncio.to_thread(self._ready, key.digest) is None:
                    single = await self._build(key, build, say)
                    built = True
                    if single is not None:  # this build's alone: held until it ends
                        try:
                            yield Environment(single, built)
                        finally:
                            await asyncio.to_thread(self._remove_folder, single)
                        return
            finally:
                os.close(exclusive)
            await asyncio.to_thread(self.tidy, key.digest)

    async def _build(self, key: EnvKey, build: Build, say: Say | None) -> Path | None:
        """Make the key's environment and publish it; or, when the install put the
        project itself in it (its code, as of this commit), the folder, for this build
        alone."""
        folder = await asyncio.to_thread(self._new_folder, key.digest)
        try:
            execution = await build(folder)
            if execution.exit_code != 0 or execution.timed_out or execution.cancelled:
                raise InstallFailed(execution)
            project = await asyncio.to_thread(installed_project, folder, key.tree)
            if project is not None:
                if say is not None:
                    await say(f"install puts the project itself in the environment (not "
                              f"editable: {project}): made for this build only, not kept; "
                              "use pip install -e to reuse it")  # fmt: skip
                return folder
            await asyncio.to_thread(self._publish, key, folder)
            return None
        except BaseException:
            await asyncio.to_thread(self._remove_folder, folder)
            raise

    async def _lock(self, digest: str, mode: int, stopped: Stopped) -> int:
        """Take the key's lock, waiting while another runner holds it; a wait that
        ``stopped`` ends raises InstallFailed saying how."""
        started = time.monotonic()
        while True:
            fd = self._try_lock(digest, mode)  # never blocks; no await between lock and use
            if fd is not None:
                return fd
            why = stopped()
            if why is not None:
                waited = time.monotonic() - started
                raise InstallFailed(Execution(None, why == "timeout", why == "cancelled", waited))
            await asyncio.sleep(LOCK_POLL)

    def _try_lock(self, digest: str, mode: int) -> int | None:
        """The key's lock file, locked, or None when another holds it. The file may be
        removed (with its environment) by whoever holds it: a lock on a file no longer
        at that path locks nothing, so it is taken again."""
        path = self.locks / f"{digest}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _ready(self, digest: str) -> Path | None:
        """The complete environment of the key (its use noted on its link), or None; with
        a build user, only while it is as its manifest says it was made."""
        folder = self._named(digest)
        if folder is None or not self._is_environment(folder):
            return None
        if self.owner is not None and manifest_change(self._manifest(digest), folder):
            return None
        try:
            os.utime(self.current / digest, follow_symlinks=False)
        except OSError:
            return None
        return folder

    def _new_folder(self, digest: str) -> Path:
        self.setup()
        if self.owner is None:
            folder = self.envs / f"{digest}-{secrets.token_hex(4)}"
            folder.mkdir(mode=0o755)
            return folder
        try:
            return self.owner.make_folder(self.envs, digest)
        except WorkspaceError as e:
            raise ConfigError(f"{e}. {self._advice()}") from e

    def _publish(self, key: EnvKey, folder: Path) -> None:
        """Name the environment as the key's (atomically): its link says it is complete.
        A build user's gets its manifest first, of the runner's (one it cannot read leaves
        none: the environment is then never reused)."""
        if self.owner is not None:
            try:
                recorded = json.dumps(manifest(folder))
            except OSError as e:
                log.warning("cannot take the manifest of environment %s: %s", folder, e)
            else:
                self._write_manifest(key.digest, recorded)
        self._link(self.current / key.digest, folder)
        log.info("environment %s made in %s: Python %s (%s), install %r", key.digest, folder,
                 key.version, key.interpreter, key.install)  # fmt: skip

    def _write_manifest(self, digest: str, text: str) -> None:
        temporary = self.manifests / f".{digest}.{secrets.token_hex(4)}"
        temporary.write_text(text)
        os.replace(temporary, self.manifests / digest)

    def _manifest(self, digest: str) -> Manifest | None:
        try:
            recorded: Manifest = json.loads((self.manifests / digest).read_text())
        except (OSError, ValueError):
            return None
        return recorded

    def _changed(self, digest: str) -> str | None:
        """How the build user's complete environment of the key differs from its manifest,
        if it does (the caller holds the key exclusively)."""
        folder = self._named(digest)
        if self.owner is None or folder is None or not self._is_environment(folder):
            return None
        return manifest_change(self._manifest(digest), folder)

    def _forget(self, digest: str) -> None:
        """Remove the key's environment, its link and its manifest (the caller holds the
        key exclusively)."""
        folder = self._named(digest)
        (self.current / digest).unlink(missing_ok=True)
        (self.manifests / digest).unlink(missing_ok=True)
        if folder is not None:
            self._remove_folder(folder)

    def _link(self, link: Path, folder: Path) -> None:
        """Make ``link`` name ``folder`` (relatively), swapped in with a rename."""
        temporary = link.with_name(f".{link.name}.{secrets.token_hex(4)}")
        os.symlink(os.path.relpath(folder, link.parent), temporary)
        os.replace(temporary, link)

    def tidy(self, keep: str | None = None) -> None:
        """Remove the least recently used environments beyond the size (never ``keep``,
        nor one in use), and the debris of failed or killed builds. Blocks; a cache that
        cannot be tidied now is logged, and no reason to fail a build."""
        try:
            self._tidy(keep)
        except OSError as e:
            log.warning("cannot tidy the environment cache %s: %s", self.root, e)

    def _tidy(self, keep: str | None) -> None:
        entries = []
        for link in _listdir(self.current):
            if link.startswith("."):
                continue
            folder = self._named(link)
            try:  # the link's own time: the runner reads nothing in the environment
                used = (self.current / link).lstat().st_mtime
            except OSError:
                continue
            if folder is None or not self._is_environment(folder):
                used = 0.0  # broken: first to go
            entries.append((used, link))
        excess = len(entries) - self.size
        for _, digest in sorted(entries):
            if excess <= 0:
                break
            if digest != keep and self._remove_key(digest):
                excess -= 1
        for name in _listdir(self.envs):
            self._remove_debris(name)

    def _remove_key(self, digest: str) -> bool:
        """Remove the key's environment, if nobody holds it; whether it was removed."""
        fd = self._try_lock(digest, fcntl.LOCK_EX)
        if fd is None:
            return False
        try:
            self._forget(digest)
            (self.locks / f"{digest}.lock").unlink(missing_ok=True)
            log.info("environment %s removed from the cache (least recently used)", digest)
        finally:
            os.close(fd)
        return True

    def _remove_debris(self, name: str) -> None:
        """Remove ``envs/name`` if it is not its key's environment and nobody builds it.
        A name superci does not make is left alone."""
        made = ENV_FOLDER.fullmatch(name)
        if made is None:
            return
        digest = made.group(1)
        fd = self._try_lock(digest, fcntl.LOCK_EX)
        if fd is None:
            return  # being built (or used) right now
        try:
            named = self._named(digest)
            if named != self.envs / name:
                log.info("removing %s, left by a build that did not finish", self.envs / name)
                self._remove_folder(self.envs / name)
            if named is None:  # no environment of that key left: nor its lock
                (self.locks / f"{digest}.lock").unlink(missing_ok=True)
        finally:
            os.close(fd)

    def _named(self, digest: str) -> Path | None:
        """The folder in ``envs/`` the key's link names, if it has one."""
        return _named_in(self.current / digest, self.envs)

    def _is_environment(self, folder: Path) -> bool:
        """Whether ``folder`` (in ``envs/``, the runner's) is still a folder, and the build
        user's when there is one: lstat, so nothing the build user made is followed."""
        try:
            info = folder.lstat()
        except OSError:
            return False
        return stat.S_ISDIR(info.st_mode) and (self.owner is None or info.st_uid == self.owner.uid)

    def _remove_folder(self, folder: Path) -> None:
        """Remove an environment's folder: with a build user as that user (it owns what is
        in it), never as the runner."""
        if self.owner is not None:
            self.owner.remove_folder(folder)
        else:
            _remove(folder)


def _named_in(link: Path, parent: Path) -> Path | None:
    """The entry of ``parent`` that the runner's symlink ``link`` names, if any."""
    try:
        named = Path(os.path.normpath(link.parent / os.readlink(link)))
    except OSError:
        return None
    return named if named.parent == parent else None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _listdir(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _remove(folder: Path) -> None:
    def report(function: object, path: str, info: tuple[type, BaseException, object]) -> None:
        error = info[1]
        if not (isinstance(error, OSError) and error.errno == errno.ENOENT):
            log.warning("cannot remove %s of a build environment: %s", path, error)

    shutil.rmtree(folder, onerror=report)
