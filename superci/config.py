"""The tested repository's own build settings, read from its ``.superci.toml``.

What a build runs is decided by the repository itself, never by the dispatcher, so a
compromised or confused dispatcher cannot make runners execute arbitrary commands.
"""

from __future__ import annotations

import difflib
import logging
import math
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from superci import defaults
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


def load_build_config(workdir: Path) -> BuildConfig:
    """Read ``workdir/.superci.toml``; a repository without one gets the defaults.

    Only a regular file inside the checkout, of at most MAX_CONFIG_BYTES, is read (see
    :mod:`superci.safefile`); anything else is a :class:`ConfigError` naming it.
    """
    path = Path(workdir) / defaults.CONFIG_FILE
    raw = read_inside(workdir, defaults.CONFIG_FILE, defaults.MAX_CONFIG_BYTES)
    if raw is None:
        log.debug("no %s in %s, using defaults", defaults.CONFIG_FILE, workdir)
        return BuildConfig()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot be read: {e}") from e
    return parse_settings(path, data)


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
    return BuildConfig(**{key: KEYS[key](where, value) for key, value in data.items()})


def unknown_key(key: str, known: Iterable[str]) -> str:
    """``unknown key 'comand', did you mean 'command'?``"""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"unknown key {key!r}" + (f", did you mean {close[0]!r}?" if close else "")


def _command(path: str | Path, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: 'command' must be a non-empty string, got {value!r}")
    if "\0" in value:
        raise ConfigError(f"{path}: 'command' must not contain a NUL character")
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
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: 'junit' must be a non-empty relative path, got {value!r}")
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        raise ConfigError(
            f"{path}: 'junit' must be relative to the repository, got absolute path {value!r}"
        )
    if ".." in posix.parts or ".." in windows.parts:
        raise ConfigError(f"{path}: 'junit' must stay inside the repository, got {value!r}")
    if not posix.parts or not windows.parts:
        raise ConfigError(f"{path}: 'junit' must name a file in the repository, got {value!r}")
    if "\0" in value:
        raise ConfigError(f"{path}: 'junit' contains a NUL byte")
    return value


def _allow_no_tests(path: str | Path, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: 'allow_no_tests' must be true or false, got {value!r}")
    return value


#: Every key .superci.toml may hold, each with the function that checks its value; a key
#: is a field of BuildConfig of the same name. A new setting is one line here.
KEYS: dict[str, Callable[[str | Path, Any], Any]] = {
    "command": _command,
    "timeout": _timeout,
    "junit": _junit,
    "allow_no_tests": _allow_no_tests,
}
