"""The Pythons installed on the runner's machine, found once when first needed.

A build asking for ``python = "3.12"`` gets an interpreter that is already there: nothing
is ever downloaded at build time. Three places are looked at, the first find of a version
winning: ``python3.X`` on ``PATH``, pyenv's ``versions/`` folder (its ``shims`` only run
whatever pyenv selects, so they are not interpreters and are skipped), and what
``uv python list --only-installed`` knows, with downloads turned off. Each candidate is
asked its own version: a file name can lie, the interpreter cannot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Longest wait (seconds) for one interpreter, or uv, to answer.
QUERY_TIMEOUT = 10.0
#: Names on PATH that are versioned Pythons.
VERSIONED_NAME = re.compile(r"python3\.[0-9]+")
#: What an interpreter prints for its version (kept valid for Python 2 too).
_ASK_VERSION = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")


@dataclass(frozen=True)
class Interpreter:
    """One Python of the machine: where it is and what version it says it is."""

    path: Path
    version: str  # "3.12.1"

    @property
    def minor(self) -> str:
        """The major.minor part: 3.12 of 3.12.1."""
        return ".".join(self.version.split(".")[:2])


class Interpreters:
    """The Pythons found, each version once (the first found), looked up by "3.12" or
    "3.12.1"."""

    def __init__(self, found: Iterable[Interpreter]) -> None:
        self._found = list(found)
        self._by_version: dict[str, Interpreter] = {}
        for interpreter in self._found:
            self._by_version.setdefault(interpreter.version, interpreter)
            self._by_version.setdefault(interpreter.minor, interpreter)

    def find(self, wanted: str) -> Interpreter | None:
        """The interpreter of version ``wanted`` ("3.12" or "3.12.1"), if there is one."""
        return self._by_version.get(wanted)

    def all(self) -> list[Interpreter]:
        """Every interpreter found, in the order found (a version may come more than once)."""
        return list(self._found)

    def only(self, keep: Callable[[Interpreter], bool]) -> Interpreters:
        """Those for which ``keep`` is true: a later one of a version stands in for a
        first one left out."""
        return Interpreters(i for i in self._found if keep(i))

    def versions(self) -> list[str]:
        """The major.minor versions found, oldest first: what the runner announces."""
        minors = {i.minor for i in self._by_version.values()}
        return sorted(minors, key=_version_key)

    def as_dict(self) -> dict[str, str]:
        """Every version ("3.12" and "3.12.1") → the interpreter's path."""
        return {version: str(i.path) for version, i in self._by_version.items()}

    def describe(self) -> str:
        """For messages: "3.11, 3.12" or "none"."""
        return ", ".join(self.versions()) or "none"


def find_interpreters(
    environ: Mapping[str, str] | None = None,
    uv: str | None = None,
    timeout: float = QUERY_TIMEOUT,
    include_own: bool = True,
) -> Interpreters:
    """Look for the Pythons of this machine (blocks; a few dozen ms per interpreter, the
    queries run side by side, each bounded by ``timeout``). ``environ`` gives ``PATH``,
    ``PYENV_ROOT`` and ``HOME``; ``uv`` is uv's binary (None: the one superci depends
    on); ``include_own``: count the interpreter superci runs on too."""
    environ = os.environ if environ is None else environ
    shims = _pyenv_root(environ) / "shims"
    own = [Path(sys.executable)] if include_own else []  # what a build without python runs
    candidates = _dedupe([*_on_path(environ.get("PATH", ""), shims), *_in_pyenv(environ), *own])
    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(lambda path: _ask_version(path, timeout), candidates))
    found = [Interpreter(path, v) for path, v in zip(candidates, versions, strict=True) if v]
    known = {p.resolve() for p in candidates}
    found += [i for i in _known_to_uv(uv, environ, timeout, shims) if i.path.resolve() not in known]
    interpreters = Interpreters(found)
    log.info("Pythons on this machine: %s", interpreters.describe())
    return interpreters


def _pyenv_root(environ: Mapping[str, str]) -> Path:
    root = environ.get("PYENV_ROOT")
    if root:
        return Path(root)
    return Path(environ.get("HOME") or os.path.expanduser("~"), ".pyenv")


def _on_path(path_variable: str, shims: Path) -> list[Path]:
    """``python3.X`` files on PATH, in PATH's order; pyenv's shims folder skipped."""
    found = []
    for folder in path_variable.split(os.pathsep):
        if not folder or _same_folder(Path(folder), shims):
            continue
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            candidate = Path(folder, name)
            if VERSIONED_NAME.fullmatch(name) and os.access(candidate, os.X_OK):
                found.append(candidate)
    return found


def _in_pyenv(environ: Mapping[str, str]) -> list[Path]:
    """The interpreters of pyenv's ``versions/*`` (newest first: a later 3.12.x wins)."""
    versions = _pyenv_root(environ) / "versions"
    try:
        folders = sorted(versions.iterdir(), key=lambda p: _version_key(p.name), reverse=True)
    except OSError:
        return []
    found = []
    for folder in folders:
        for name in ("python3", "python"):
            candidate = folder / "bin" / name
            if os.access(candidate, os.X_OK):
                found.append(candidate)
                break
    return found


def _known_to_uv(
    uv: str | None, environ: Mapping[str, str], timeout: float, shims: Path
) -> list[Interpreter]:
    """What uv finds installed (its own managed Pythons included); never downloads."""
    if uv is None:
        try:
            from uv import find_uv_bin
        except ImportError:
            return []
        uv = find_uv_bin()
    command = [uv, "python", "list", "--only-installed", "--no-python-downloads",
               "--output-format", "json", "--no-config"]  # fmt: skip
    folders = environ.get("PATH", "").split(os.pathsep)
    path = [f for f in folders if not _same_folder(Path(f), shims)]
    env = {**environ, "PATH": os.pathsep.join(path),  # uv would run the shims to ask them
           "UV_PYTHON_DOWNLOADS": "never", "UV_OFFLINE": "1"}  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, env=env, check=True)
        listed = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        log.info("uv could not list the installed Pythons: %s", e)
        return []
    found = []
    for entry in listed if isinstance(listed, list) else []:
        path, version = entry.get("path"), entry.get("version")
        if not isinstance(path, str) or not isinstance(version, str):
            continue
        if not _VERSION.fullmatch(version) or _same_folder(Path(path).parent, shims):
            continue
        found.append(Interpreter(Path(path), version))
    return found


def _ask_version(path: Path, timeout: float) -> str | None:
    """The version the interpreter at ``path`` says it is; None if it does not answer
    within ``timeout`` (it is killed then, with whatever it started)."""
    try:
        process = subprocess.Popen([os.fspath(path), "-c", _ASK_VERSION], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   start_new_session=True)  # fmt: skip
    except OSError as e:
        log.debug("%s does not run: %s", path, e)
        return None
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not say its version within %gs; skipped", path, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return None
    version = out.decode(errors="replace").strip()
    return version if process.returncode == 0 and _VERSION.fullmatch(version) else None


def _dedupe(paths: list[Path]) -> list[Path]:
    """One candidate per real file (python3.12 and python3 are often the same one)."""
    seen: set[Path] = set()
    kept = []
    for path in paths:
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            kept.append(path)
    return kept


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))
