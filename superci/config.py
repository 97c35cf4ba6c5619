"""The tested repository's own build settings, read from its ``.superci.toml``.

What a build runs is decided by the repository itself, never by the dispatcher, so a
compromised or confused dispatcher cannot make runners execute arbitrary commands.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from superci import defaults, labels
from superci.errors import ConfigError
from superci.safefile import read_inside

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    """How to build one commit, as the repository asks for it."""

    #: The test command; None means "pick the tool the repository uses" (superci.testtool).
    command: str | None = None
    #: Seconds; None means "use the runner's --timeout".
    timeout: float | None = None
    #: Repository-relative path of a JUnit XML report the command writes.
    junit: str | None = None
    #: Whether a build in which no test ran may pass (a repository without tests yet).
    allow_no_tests: bool = False
    #: The runner labels a build needs (see superci.labels); empty: any runner.
    needs: Mapping[str, str] = field(default_factory=dict)
    #: A shell command installing the project's dependencies into the build's environment
    #: (see superci.environments); None: no install step.
    install: str | None = None
    #: The Python version the build wants ("3.12" or "3.12.1"); None: the runner's own.
    python: str | None = None
    #: Repository-relative files (globs allowed) whose content keys the cached environment;
    #: None: the usual files that declare dependencies (environments.DEPENDENCY_FILES).
    install_files: tuple[str, ...] | None = None
    #: Runners the suite is split over at most (see superci.split): 2 to MAX_PARALLEL, or
    #: AUTO_PARALLEL (every free runner that matches, at most MAX_PARALLEL); None: one.
    parallel: int | None = None

    @property
    def wants_environment(self) -> bool:
        """Whether the build runs in an environment of its own rather than the runner's."""
        return self.install is not None or self.python is not None


def load_build_config(workdir: Path) -> BuildConfig:
    """Read ``workdir/.superci.toml`` as one job's settings; a repository without one gets
    the defaults. A file of several jobs is read with :func:`superci.jobs.load_jobs`.

    Only a regular file inside the checkout, of at most MAX_CONFIG_BYTES, is read (see
    :mod:`superci.safefile`); anything else is a :class:`ConfigError` naming it.
    """
    text = read_config_text(workdir)
    if text is None:
        return BuildConfig()
    return parse_build_config(text, Path(workdir) / defaults.CONFIG_FILE)


def read_config_text(workdir: Path) -> str | None:
    """The text of ``workdir/.superci.toml``, or None when the checkout has none."""
    path = Path(workdir) / defaults.CONFIG_FILE
    raw = read_inside(workdir, defaults.CONFIG_FILE, defaults.MAX_CONFIG_BYTES)
    if raw is None:
        log.debug("no %s in %s, using defaults", defaults.CONFIG_FILE, workdir)
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot be read: {e}") from e


def parse_build_config(text: str, path: Path | str = defaults.CONFIG_FILE) -> BuildConfig:
    """The settings in ``text``, the content of a .superci.toml of one job (``path`` names
    it in errors)."""
    return parse_settings(path, config_data(text, path))


def config_data(text: str, path: Path | str = defaults.CONFIG_FILE) -> dict[str, Any]:
    """``text`` parsed as TOML, not yet checked: what :func:`superci.jobs.expand_jobs`
    reads (the runner in its checkout, the dispatcher in a submission)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e


def parse_settings(
    where: str | Path, data: dict[str, Any], also_known: Iterable[str] = ()
) -> BuildConfig:
    """Validate one job's settings; an unknown key is refused, since a misspelt key
    silently ignored is a setting the user believes in and superci does not apply.
    ``also_known``: keys the caller handles itself, offered as suggestions too."""
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        known = [*KEYS, *also_known]
        raise ConfigError(f"{where}: " + "; ".join(unknown_key(key, known) for key in unknown)
                          + f" (known keys: {', '.join(known)})")  # fmt: skip
    config = BuildConfig(**{key: KEYS[key](where, value) for key, value in data.items()})
    if config.parallel is not None and config.command is not None:
        raise ConfigError(
            f"{where}: 'parallel' splits a suite superci runs itself (pytest or unittest, "
            "chosen as without 'command'): remove 'command', or remove 'parallel'"
        )
    return config


def unknown_key(key: str, known: Iterable[str]) -> str:
    """``unknown key 'comand', did you mean 'command'?``"""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"unknown key {key!r}" + (f", did you mean {close[0]!r}?" if close else "")


def _shell_command(key: str) -> Callable[[str | Path, Any], str]:
    def check(path: str | Path, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{path}: {key!r} must be a non-empty string, got {value!r}")
        if "\0" in value:
            raise ConfigError(f"{path}: {key!r} must not contain a NUL character")
        return value

    return check


_command = _shell_command("command")
_install = _shell_command("install")

#: A Python version as .superci.toml names it: "3.12" or "3.12.1".
PYTHON_VERSION = re.compile(r"[0-9]+\.[0-9]+(\.[0-9]+)?")


def _python(path: str | Path, value: Any) -> str:
    if isinstance(value, list):
        raise ConfigError(
            f"{path}: 'python' must be one version such as \"3.12\" here; a list of "
            "versions is a matrix, which only a whole .superci.toml defines (superci.jobs)"
        )
    if not isinstance(value, str) or not PYTHON_VERSION.fullmatch(value):
        raise ConfigError(
            f'{path}: \'python\' must be a version such as "3.12" or "3.12.1", got {value!r}'
        )
    return value


def _timeout(path: str | Path, value: Any) -> float:
    # bool is an int subclass; `timeout = true` is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: 'timeout' must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{path}: 'timeout' must be a positive number of seconds, got {value!r}")
    return float(value)


def _junit(path: str | Path, value: Any) -> str:
    """Keep the report path inside the workspace, so a build cannot make us read elsewhere."""
    return _relative_path(path, "junit", value)


def _relative_path(path: str | Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: {key!r} must be a non-empty relative path, got {value!r}")
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        raise ConfigError(
            f"{path}: {key!r} must be relative to the repository, got absolute path {value!r}"
        )
    if ".." in posix.parts or ".." in windows.parts:
        raise ConfigError(f"{path}: {key!r} must stay inside the repository, got {value!r}")
    if not posix.parts or not windows.parts:
        raise ConfigError(f"{path}: {key!r} must name a file in the repository, got {value!r}")
    if "\0" in value:
        raise ConfigError(f"{path}: {key!r} contains a NUL byte")
    return value


#: More files than this in install_files is a mistake, not a list of dependency files.
MAX_INSTALL_FILES = 100


def _install_files(path: str | Path, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_INSTALL_FILES:
        raise ConfigError(
            f"{path}: 'install_files' must be a list of at most {MAX_INSTALL_FILES} relative "
            f"paths, got {value!r}"
        )
    return tuple(_relative_path(path, "install_files", item) for item in value)


def _allow_no_tests(path: str | Path, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: 'allow_no_tests' must be true or false, got {value!r}")
    return value


def _needs(path: str | Path, value: Any) -> dict[str, str]:
    """``needs = {os = "linux", gpu = true}``: strings, or true/false; a number is refused,
    since ``python = 3.10`` would be read as 3.1."""
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: 'needs' must be a table such as {{os = \"linux\"}}, "
                          f"got {value!r:.60}")  # fmt: skip
    texts: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif not isinstance(item, str):
            raise ConfigError(f"{path}: 'needs' {key}: write the value as a string in quotes "
                              f"(such as \"3.10\"), got {item!r:.40}")  # fmt: skip
        texts[key] = item
    try:
        return labels.check_labels(texts, "'needs'")
    except ConfigError as e:
        raise ConfigError(f"{path}: 'needs': {e}") from None


#: The most runners one suite is split over; ``parallel = "auto"`` is stored as this
#: ceiling with AUTO_PARALLEL's meaning: every free runner that matches, up to it.
MAX_PARALLEL = 16
AUTO_PARALLEL = 0


def _parallel(path: str | Path, value: Any) -> int:
    """``parallel = 4`` (2 to MAX_PARALLEL) or ``parallel = "auto"`` (AUTO_PARALLEL)."""
    if value == "auto":
        return AUTO_PARALLEL
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_PARALLEL:
        raise ConfigError(
            f"{path}: 'parallel' must be a number of runners from 2 to {MAX_PARALLEL}, or "
            f'"auto" (every free runner that matches), got {value!r:.40}'
        )
    return value


def split_width(parallel: int) -> int:
    """The most participants of a split asked for with ``parallel``."""
    return MAX_PARALLEL if parallel == AUTO_PARALLEL else parallel


#: Every key .superci.toml may hold, each with the function that checks its value; a key
#: is a field of BuildConfig of the same name. A new setting is one line here.
KEYS: dict[str, Callable[[str | Path, Any], Any]] = {
    "command": _command,
    "timeout": _timeout,
    "junit": _junit,
    "allow_no_tests": _allow_no_tests,
    "needs": _needs,
    "install": _install,
    "python": _python,
    "install_files": _install_files,
    "parallel": _parallel,
}
