"""The runner's side of a split: collect the suite's ids, then take part in the split with
one test process, started again when it dies while the split goes on.

Independent of where the split is held: the runner hands :func:`take_part` a
:class:`~superci.splitsource.SplitBackend` (a :class:`~superci.splitsource.LocalSplit`
in this process, or one that forwards to the dispatcher) and a ``run`` callable that
starts one shell command and waits for it (the executor's contained ``run_command``,
with its time limit, cancel and output). A test process that dies mid-batch is a loss
(the batch source sees its connection end without a goodbye, and the backend hands its
batch back); one that never joined, or left on purpose, is not started again.

The test process runs in the tested repository's interpreter, which has none of
superci's dependencies, and may not have superci at all: :func:`plugin_folder` writes a
``superci`` package holding only the standard-library modules it needs, and
:func:`split_environment` *appends* it to ``PYTHONPATH``, so a repository with a
``superci`` package of its own (superci itself) keeps its own.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from superci import defaults
from superci.errors import ConfigError, UnsafeFile
from superci.execute import Execution
from superci.safefile import read_inside, read_off_loop
from superci.split import Batch, Done, TestResult, Wait
from superci.splitaccess import SocketAccess
from superci.splitclient import COLLECT_ENV, PARTICIPANT_ENV, SOCKET_ENV
from superci.splitsource import BatchSource, SplitBackend
from superci.testtool import TestTool

log = logging.getLogger(__name__)

#: The modules a test process imports (standard library and pytest only).
PLUGIN_MODULES = ("splitclient.py", "splitpytest.py", "splitunittest.py")
#: The command of each tool's participant (and collector): through ``python``, so the
#: build's interpreter runs it.
COMMANDS = {
    "pytest": "python -m pytest -p superci.splitpytest",
    "unittest": "python -m superci.splitunittest",
}
#: Test processes one participant starts at most: each death while it held a batch
#: costs that batch an attempt, so the split ends those tests as errors long before.
MAX_LAUNCHES = 8
#: The largest ids file a collection may write (bytes): some 100,000 ids of 600 bytes.
MAX_IDS_BYTES = 64 * 1024 * 1024

#: Runs one shell command with extra environment and says how it ended.
RunCommand = Callable[[str, Mapping[str, str]], Awaitable[Execution]]


@dataclass(frozen=True)
class Collected:
    """The suite's test ids in collection order, and what failed to collect."""

    tests: tuple[str, ...]
    errors: tuple[str, ...]


@dataclass(frozen=True)
class TookPart:
    """How one participant's test processes ended: each launch's name and execution, and
    why it stopped when the split did not end with it (empty when it did)."""

    launches: tuple[tuple[str, Execution], ...]
    problem: str = ""


def command_for(tool: TestTool) -> str:
    """The participant's (and collector's) command for ``tool``; :class:`ConfigError` for a
    tool superci cannot split."""
    command = COMMANDS.get(tool.name)
    if command is None:
        raise ConfigError(f"superci cannot split a suite run by {tool.name}")
    return command


def plugin_folder(scratch: Path) -> Path:
    """A folder holding a ``superci`` package of the test process's modules only, that
    anyone who may enter ``scratch`` may read (a build user: copies of superci's public
    code, whatever the runner's umask), and none but the runner may change."""
    folder = Path(scratch) / "split-plugin"
    package = folder / "superci"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""superci\'s split plugin (copied by the runner)."""\n')
    here = Path(__file__).resolve().parent
    for module in PLUGIN_MODULES:
        shutil.copyfile(here / module, package / module)
    for path in (folder, package):
        path.chmod(0o755)
    for copied in package.glob("*.py"):
        copied.chmod(0o644)
    return folder


def split_environment(
    environment: Mapping[str, str], plugins: Path, **extra: str
) -> dict[str, str]:
    """``environment`` with the plugin folder last on ``PYTHONPATH``, and ``extra``."""
    paths = [p for p in environment.get("PYTHONPATH", "").split(":") if p]
    return {**environment, "PYTHONPATH": ":".join([*paths, str(plugins)]), **extra}


async def collect(
    tool: TestTool, run: RunCommand, environment: Mapping[str, str], plugins: Path,
    into: Path,
) -> Collected:  # fmt: skip
    """The suite's ids as the test tool collects them (its collection mode writes them to
    ``into``, in a folder the test process may write in); :class:`ConfigError` saying why
    when it wrote none, or a file that is not safe to read (see :mod:`superci.safefile`)."""
    with contextlib.suppress(OSError):  # a build user's file it may not remove: it rewrites it
        into.unlink(missing_ok=True)
    env = split_environment(environment, plugins, **{COLLECT_ENV: str(into)})
    execution = await run(command_for(tool), env)
    if execution.cancelled or execution.timed_out:
        raise ConfigError("the suite's collection was stopped before it ended")
    read = functools.partial(read_inside, into.parent, into.name, MAX_IDS_BYTES,
                             what="the collected test ids")  # fmt: skip
    try:
        data = await read_off_loop(read, timeout=defaults.FILE_READ_TIMEOUT,
                                   what=f"the collected test ids {into}")  # fmt: skip
    except UnsafeFile as e:
        raise ConfigError(f"{tool.name} collected no usable test ids: {e}") from None
    try:
        if data is None:
            raise FileNotFoundError(f"it wrote no {into}")
        document = json.loads(data)
        tests = tuple(str(t) for t in document["tests"])
        errors = tuple(f"{e['node']}: {e['message']}" for e in document.get("errors", []))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{tool.name} collected no test ids (exit code {execution.exit_code}; "
            f"its output is above): {type(e).__name__}: {e}"
        ) from None
    return Collected(tests, errors)


class ParticipantSource(Protocol):
    """Where a participant's test process connects: a batch source, or a tunnel to one;
    ``left`` says, per participant that joined, whether it was lost (no goodbye)."""

    path: Path
    left: dict[str, bool]

    async def settle(self, participant: str | None = None) -> None: ...


class _Watching:
    """The backend, noting how each participant left (lost or not)."""

    def __init__(self, backend: SplitBackend) -> None:
        self.backend = backend
        self.left: dict[str, bool] = {}

    async def join(self, participant: str) -> bool:
        return await self.backend.join(participant)

    async def next_batch(self, participant: str, wait: bool) -> Batch | Wait | Done:
        return await self.backend.next_batch(participant, wait)

    async def started(self, participant: str, batch_id: int, test: str) -> None:
        await self.backend.started(participant, batch_id, test)

    async def report(self, participant: str, batch_id: int, result: TestResult) -> None:
        await self.backend.report(participant, batch_id, result)

    async def finish_batch(self, participant: str, batch_id: int) -> None:
        await self.backend.finish_batch(participant, batch_id)

    async def leave(self, participant: str, lost: bool, reason: str) -> None:
        self.left[participant] = lost
        await self.backend.leave(participant, lost, reason)


class WatchedSource:
    """A :class:`BatchSource` at ``path`` over ``backend``, noting how participants left;
    ``access``: whose connections it takes (the runner's, and its build user's)."""

    def __init__(
        self, path: Path, backend: SplitBackend, access: SocketAccess | None = None
    ) -> None:
        self.path = Path(path)
        self._watching = _Watching(backend)
        self.left = self._watching.left
        self.source = BatchSource(self.path, self._watching, access)

    async def __aenter__(self) -> WatchedSource:
        await self.source.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.source.close()

    async def settle(self, participant: str | None = None) -> None:
        await self.source.settle(participant)


async def take_part(
    tool: TestTool, run: RunCommand, environment: Mapping[str, str], plugins: Path,
    source: ParticipantSource, name: str,
) -> TookPart:  # fmt: skip
    """Run test processes as participant ``name`` (``name.1``, ``name.2``, … one per
    launch) against ``source`` until one leaves on purpose (the split is done for it),
    never joined, or was stopped (time limit, cancel)."""
    launches: list[tuple[str, Execution]] = []
    for launch in range(1, MAX_LAUNCHES + 1):
        who = f"{name}.{launch}"
        env = split_environment(
            environment, plugins, **{SOCKET_ENV: str(source.path), PARTICIPANT_ENV: who}
        )
        execution = await run(command_for(tool), env)
        log.info("split participant %s: its test process ended (exit code %s)", who,
                 execution.exit_code)  # fmt: skip
        launches.append((who, execution))
        if execution.cancelled or execution.timed_out:
            return TookPart(tuple(launches), "its test process was stopped")
        await source.settle(who)
        if who not in source.left:
            return TookPart(
                tuple(launches),
                f"its test process ended (exit code {execution.exit_code}) without "
                "taking part in the split",
            )
        if not source.left[who]:
            return TookPart(tuple(launches))
        log.info("split participant %s died (exit code %s): starting another",
                 who, execution.exit_code)  # fmt: skip
    return TookPart(tuple(launches), f"its test process died {MAX_LAUNCHES} times")


def runner_of(participant: str) -> str:
    """The runner a participant's test process ran on (``r1.2`` ran on ``r1``)."""
    return participant.rpartition(".")[0] or participant
