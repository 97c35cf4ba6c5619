"""A commit's jobs, as its ``.superci.toml`` defines them: the one top-level job, or named
``[jobs.NAME]`` tables, each expanded over its matrix and ordered by ``after``.

Pure (no I/O): the dispatcher expands a commit's jobs to schedule them, and the runner
expands the same file from its own checkout to find the job it was handed, so what runs
is still decided by the repository, never by the dispatcher (see :mod:`superci.config`).
"""

from __future__ import annotations

import graphlib
import itertools
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superci import defaults
from superci.config import BuildConfig, config_data, parse_settings, read_config_text, unknown_key
from superci.errors import ConfigError
from superci.status import BuildStatus

#: The name of the job a file without ``[jobs]`` defines with its top-level keys.
DEFAULT_JOB = defaults.DEFAULT_JOB
#: Keys that shape the jobs rather than say how one of them builds.
SHAPE_KEYS = ("jobs", "matrix", "after")
#: The matrix key that removes cells rather than naming an axis.
EXCLUDE = "exclude"
#: An axis given as a list at the job's top level (``python = ["3.11", "3.12"]``).
LIST_AXES = ("python",)
#: Job settings in which ``{axis}`` is replaced by the cell's value.
SUBSTITUTED = ("command", "install")

_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_AXIS_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_AXIS_VALUE = re.compile(r"[A-Za-z0-9_.+=:/@~-]{1,64}\Z")


@dataclass(frozen=True)
class JobSpec:
    """One job of a commit: a named job at one cell of its matrix."""

    name: str
    #: The job's matrix cell as (axis, value) pairs in the order the file gives the axes.
    cell: tuple[tuple[str, str], ...]
    config: BuildConfig
    #: Names of the jobs that must all pass before this one runs.
    after: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The job's name in every listing and message: ``tests (python=3.12)``."""
        if not self.cell:
            return self.name
        return f"{self.name} ({', '.join(f'{axis}={value}' for axis, value in self.cell)})"

    @property
    def environment(self) -> dict[str, str]:
        """The cell's axes as the build sees them: ``SUPERCI_MATRIX_PYTHON=3.12``."""
        return {f"SUPERCI_MATRIX_{axis.upper()}": value for axis, value in self.cell}

    @property
    def needs(self) -> dict[str, str]:
        """The runner labels the job needs: its ``needs``, and the ``python`` it asks for
        (as ``3.12``, the version runners announce), so a job waits for a runner that has
        its Python rather than failing on one that lacks it."""
        needs = dict(self.config.needs)
        if self.config.python is not None:
            needs.setdefault("python", ".".join(self.config.python.split(".")[:2]))
        return needs


def parse_jobs(text: str | None, where: str | Path = defaults.CONFIG_FILE) -> list[JobSpec]:
    """The jobs of a .superci.toml's ``text``; None (no file) is one default job."""
    if text is None:
        return [JobSpec(DEFAULT_JOB, (), BuildConfig())]
    return expand_jobs(config_data(text, where), str(where))


def load_jobs(workdir: Path) -> list[JobSpec]:
    """The jobs of ``workdir/.superci.toml`` (see :func:`superci.config.read_config_text`)."""
    return parse_jobs(read_config_text(workdir), Path(workdir) / defaults.CONFIG_FILE)


def job_name(key: str) -> str:
    """The name of the job whose key is ``key`` (``tests`` of ``tests (python=3.12)``);
    a name has no space, so the cell starts at the first."""
    return key.split(" ", 1)[0]


def folder_name(key: str) -> str:
    """The folder of a job's files: ``tests,python=3.12`` for ``tests (python=3.12)``.
    One key, one folder: names, axes and values hold no space, comma or parenthesis, and
    anything a file name must not hold (a ``/`` in a value) is %-escaped."""
    name, _, cell = key.partition(" (")
    plain = ",".join([name, *cell.removesuffix(")").split(", ")]) if cell else name
    return urllib.parse.quote(plain, safe=",=._+:@~-")


def expand_jobs(data: Mapping[str, Any], where: str) -> list[JobSpec]:
    """Every job the parsed file defines, in file order; a file without ``[jobs]`` is one
    job named DEFAULT_JOB. With ``[jobs]``, the top-level settings are every job's defaults.

    Raises :class:`ConfigError` naming the problem (``where`` names the file)."""
    top = dict(data)
    named = top.pop("jobs", None)
    if named is None:
        if "after" in top:
            raise ConfigError(f"{where}: 'after' belongs in a [jobs.NAME] table")
        return _capped(_expand_one(DEFAULT_JOB, top, where), where)
    if not isinstance(named, dict) or not named:
        raise ConfigError(f"{where}: 'jobs' must be tables such as [jobs.tests], got {named!r}")
    for key in ("matrix", "after"):
        if key in top:
            raise ConfigError(f"{where}: with [jobs], put '{key}' inside each [jobs.NAME] table")
    specs: list[JobSpec] = []
    for name, table in named.items():
        _check_job_name(name, table, where)
        specs.extend(_expand_one(name, {**top, **table}, where))
        _capped(specs, where)
    _check_order(specs, where)
    return specs


def _capped(specs: list[JobSpec], where: str) -> list[JobSpec]:
    if len(specs) > defaults.MAX_JOBS:
        raise ConfigError(
            f"{where}: the jobs expand to {len(specs)} jobs; a commit may have at most "
            f"{defaults.MAX_JOBS} (shrink a matrix or add 'exclude' entries)"
        )
    return specs


def _check_job_name(name: str, table: Any, where: str) -> None:
    if not _JOB_NAME.match(name):
        raise ConfigError(
            f"{where}: job name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [jobs.{name}] must be a table, got {table!r}")
    if name == DEFAULT_JOB:
        raise ConfigError(
            f"{where}: [jobs.{DEFAULT_JOB}]: {DEFAULT_JOB!r} is the name of the one job of a "
            "file without [jobs]; give this job another name"
        )


def _expand_one(name: str, table: dict[str, Any], where: str) -> list[JobSpec]:
    """One job's table, expanded over its matrix."""
    label = where if name == DEFAULT_JOB else f"{where} [jobs.{name}]"
    settings = dict(table)
    after = _after(settings.pop("after", []), label)
    axes, excludes = _matrix(settings, label)
    cells = _cells(axes, excludes, label)
    specs = [
        JobSpec(name, cell, parse_settings(label, _for_cell(settings, cell), SHAPE_KEYS), after)
        for cell in cells
    ]
    if len(specs[0].key) > defaults.MAX_JOB_KEY:
        raise ConfigError(
            f"{label}: a job's name and matrix cell make a key of {len(specs[0].key)} "
            f"characters, such as {specs[0].key[:60]!r}...; at most {defaults.MAX_JOB_KEY}"
        )
    return specs


def _after(value: Any, label: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ConfigError(f"{label}: 'after' must be a list of job names, got {value!r}")
    return tuple(dict.fromkeys(value))


def _matrix(
    settings: dict[str, Any], label: str
) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """The job's axes (``[matrix]`` plus list-valued LIST_AXES) and its exclude entries;
    takes them out of ``settings``."""
    table = settings.pop("matrix", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{label}: 'matrix' must be a table of axes, got {table!r}")
    table = dict(table)
    excludes = table.pop(EXCLUDE, [])
    axes = {axis: _axis_values(axis, values, label) for axis, values in table.items()}
    for axis in LIST_AXES:
        if isinstance(settings.get(axis), list):
            if axis in axes:
                raise ConfigError(f"{label}: {axis!r} is given both as a list and in [matrix]")
            axes[axis] = _axis_values(axis, settings.pop(axis), label)
    if axes.keys() & settings.keys():
        both = sorted(axes.keys() & settings.keys())
        raise ConfigError(f"{label}: {', '.join(both)} is both a setting and a matrix axis")
    return axes, _excludes(excludes, axes, label)


def _axis_values(axis: Any, values: Any, label: str) -> list[str]:
    if not isinstance(axis, str) or not _AXIS_NAME.match(axis):
        raise ConfigError(
            f"{label}: matrix axis {axis!r} must be 1-32 lower-case letters, digits or '_', "
            "starting with a letter"
        )
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{label}: matrix axis {axis!r} must be a non-empty list of strings")
    for value in values:
        if isinstance(value, float | int) and not isinstance(value, bool):
            raise ConfigError(
                f"{label}: matrix axis {axis!r}: write {value!r} as a string "
                f'("{value}"), since TOML reads 3.10 as the number 3.1'
            )
        if not isinstance(value, str) or not _AXIS_VALUE.match(value):
            raise ConfigError(
                f"{label}: matrix axis {axis!r}: value {value!r} must be 1-64 letters, digits "
                "or one of . _ + = : / @ ~ -"
            )
    if len(set(values)) != len(values):
        raise ConfigError(f"{label}: matrix axis {axis!r} repeats a value: {values!r}")
    return list(values)


def _excludes(value: Any, axes: Mapping[str, list[str]], label: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise ConfigError(f"{label}: matrix 'exclude' must be a list of tables, got {value!r}")
    if len(value) > defaults.MAX_MATRIX_EXCLUDES:
        raise ConfigError(
            f"{label}: matrix 'exclude' has {len(value)} entries; at most "
            f"{defaults.MAX_MATRIX_EXCLUDES}"
        )
    for entry in value:
        for axis, chosen in entry.items():
            if axis not in axes:
                raise ConfigError(f"{label}: matrix 'exclude': {unknown_key(axis, axes)} axis")
            if chosen not in axes[axis]:
                raise ConfigError(
                    f"{label}: matrix 'exclude': {axis} = {chosen!r} is not one of {axes[axis]!r}"
                )
    return list(value)


def _cells(
    axes: Mapping[str, list[str]], excludes: list[dict[str, str]], label: str
) -> list[tuple[tuple[str, str], ...]]:
    """Every combination of the axes' values that no exclude entry removes; the count is
    checked before any is made, so a hostile matrix cannot make millions of cells."""
    size = math.prod(len(values) for values in axes.values())
    if size > defaults.MAX_MATRIX_CELLS:
        raise ConfigError(
            f"{label}: the matrix has {size} cells; at most {defaults.MAX_MATRIX_CELLS} "
            f"before 'exclude', and at most {defaults.MAX_JOBS} jobs per commit after it"
        )
    cells = [tuple(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    for entry in excludes:
        kept = [cell for cell in cells if not _matches(cell, entry)]
        if len(kept) == len(cells):
            raise ConfigError(f"{label}: matrix 'exclude' entry {entry!r} matches no job")
        cells = kept
    if not cells:
        raise ConfigError(f"{label}: matrix 'exclude' removes every job")
    return cells


def _matches(cell: tuple[tuple[str, str], ...], entry: Mapping[str, str]) -> bool:
    values = dict(cell)
    return all(values[axis] == chosen for axis, chosen in entry.items())


def _for_cell(settings: Mapping[str, Any], cell: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The job's settings at one cell: the python axis becomes its ``python``, and
    ``{axis}`` in the command and install is replaced (other braces are the shell's)."""
    values = dict(cell)
    result = dict(settings)
    for axis in LIST_AXES:
        if axis in values:
            result[axis] = values[axis]
    if values:
        pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
        for key in SUBSTITUTED:
            if isinstance(result.get(key), str):
                result[key] = pattern.sub(lambda found: values[found.group(1)], result[key])
    return result


def _check_order(specs: list[JobSpec], where: str) -> None:
    """Every ``after`` names another job of the file, and they form no cycle."""
    names = list(dict.fromkeys(spec.name for spec in specs))
    graph: dict[str, set[str]] = {name: set() for name in names}
    for spec in specs:
        for name in spec.after:
            if name not in graph:
                raise ConfigError(
                    f"{where} [jobs.{spec.name}]: 'after' names {unknown_key(name, names)} job"
                )
            graph[spec.name].add(name)
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        cycle = " → ".join(e.args[1])
        raise ConfigError(f"{where}: 'after' makes a cycle: {cycle}") from e


@dataclass(frozen=True)
class Readiness:
    """Whether a queued job may start: ready, waiting for jobs it runs after, or skipped
    because one of them did not pass."""

    ready: bool
    waiting_for: tuple[str, ...] = ()
    skipped_because: str | None = None


def readiness(
    spec: JobSpec, specs: Iterable[JobSpec], statuses: Mapping[str, BuildStatus]
) -> Readiness:
    """Decide for ``spec`` from the statuses (by job key) of the commit's other jobs."""
    return readiness_after(spec.after, [other.key for other in specs], statuses)


def readiness_after(
    after: Iterable[str], keys: Iterable[str], statuses: Mapping[str, BuildStatus]
) -> Readiness:
    """:func:`readiness` of a job that runs ``after`` these job names, among the commit's
    jobs ``keys``: what the scheduler decides with, knowing only keys and statuses."""
    names = set(after)
    before = [key for key in keys if job_name(key) in names]
    for key in before:
        status = statuses.get(key, BuildStatus.QUEUED)
        if status.finished and status is not BuildStatus.PASSED:
            return Readiness(False, skipped_because=f"{key} did not pass ({status})")
    waiting = tuple(key for key in before if statuses.get(key) is not BuildStatus.PASSED)
    return Readiness(not waiting, waiting_for=waiting)


#: From best to worst: a commit takes the worst status of its finished jobs.
SEVERITY = (
    BuildStatus.PASSED,
    BuildStatus.SKIPPED,
    BuildStatus.CANCELLED,
    BuildStatus.ERROR,
    BuildStatus.TIMEOUT,
    BuildStatus.FAILED,
)


def commit_status(statuses: Iterable[BuildStatus]) -> BuildStatus:
    """One status for a commit's jobs: running until every job has finished, then passed
    only if every job passed, else the worst (failed tests rank worst, since they are the
    news a team acts on first)."""
    found = list(statuses)
    if not found:
        return BuildStatus.QUEUED
    if not all(status.finished for status in found):
        started = any(status is not BuildStatus.QUEUED for status in found)
        return BuildStatus.RUNNING if started else BuildStatus.QUEUED
    return max(found, key=SEVERITY.index)
