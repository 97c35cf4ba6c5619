"""``superci up``: a whole superci on one machine, for a first try or a one-person team.

The dispatcher runs in this process (so each outcome is printed from its event bus);
the runners and the observer are the real programs, started as child processes with
their own clones under the work folder, and stopped with the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import socket
import subprocess
import sys
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import git

from superci import defaults
from superci.auth import Credentials, load_token
from superci.bus import EventBus, Subscription
from superci.channel import Address
from superci.defaults import DEFAULT_JOB
from superci.dispatcher import run_dispatcher
from superci.errors import ConfigError, SuperCIError, WorkspaceError
from superci.events import BuildFinished, Event
from superci.report import counts_text
from superci.sanitize import printable
from superci.store import Store
from superci.workspace import Workspace, clone_repository

log = logging.getLogger(__name__)

#: Where ``up`` serves the web page: this machine only, like everything else it runs.
WEB_HOST = "127.0.0.1"
#: Seconds a child gets to stop after SIGTERM before it is killed.
STOP_GRACE = defaults.KILL_GRACE + 5


def format_outcome(result: dict[str, Any]) -> str:
    """One line per finished build, for people watching the terminal."""
    tests = counts_text(result.get("tests"))
    counts = f" [{tests}]" if tests else ""
    duration = result.get("duration")
    took = f" in {duration:.1f}s" if isinstance(duration, int | float) else ""
    return printable(
        f"{result['status'].upper():9} {result['sha'][:12]} ({result['branch']})"
        f"{_job_of(result)}"
        f"{took}{counts} on {result.get('runner') or '-'}: {result.get('message', '')}"
    )


def _job_of(result: dict[str, Any]) -> str:
    """`` job tests (python=3.12)`` for one job of several; nothing for the one job."""
    job = result.get("job")
    return f" job {job}" if job and job != DEFAULT_JOB else ""


def _outcome(event: Event) -> bool:
    return isinstance(event, BuildFinished)


async def print_outcomes(
    bus: EventBus, outcomes: Subscription, echo: Callable[[str], None]
) -> None:
    """One line per finished build, from the bus, until it closes. Should the printer
    ever fall behind, it says so and takes the outcomes from then on."""
    while True:
        async for event in outcomes:
            if isinstance(event, BuildFinished):
                echo(format_outcome(event.to_dict()))
        if not outcomes.fell_behind:
            return
        echo("superci: some outcomes were not printed; `superci status` lists the last builds")
        outcomes = bus.subscribe(_outcome)


class Stack:
    """Dispatcher + runners + observer for the repository at ``path``.

    Everything it makes (clones, database, results, logs) goes under its work folder,
    outside the repository by default, so the user's repository never changes.
    Call :meth:`prepare` before :meth:`run`.
    """

    def __init__(
        self,
        path: Path,
        *,
        runners: int = 2,
        host: str = defaults.HOST,
        port: int = defaults.PORT,
        results: Path | None = None,
        work: Path | None = None,
        interval: float = defaults.POLL_INTERVAL,
        branches: Sequence[str] = (),
        verbose: bool = False,
        web_port: int | None = defaults.UP_WEB_PORT,
    ) -> None:
        """``web_port``: the web page goes on the first free port from it (None: no page)."""
        self._repo = _open_source(Path(path))
        self.source = Path(self._repo.working_tree_dir or self._repo.git_dir).resolve()
        self.runners, self.host, self.port = runners, host, port
        self.work = Path(work or default_work_folder(self.source)).absolute()
        self.results = Path(results or self.work / defaults.RESULTS_DIR).absolute()
        self.state = self.work / defaults.STATE_FILE
        self.logs = self.work / "logs"
        self.interval, self.branches, self.verbose = interval, tuple(branches), verbose
        self._children: list[asyncio.subprocess.Process] = []
        self.web_port = web_port
        self._web_socket: socket.socket | None = None

    def prepare(self) -> None:
        """Fail early on a busy port, take the web page's, then make the folders (hidden
        from git if inside)."""
        check_port_free(self.host, self.port)
        if self.web_port is not None:
            self._web_socket = first_free_port(WEB_HOST, self.web_port)
        self._exclude(self.work)
        if not self.results.resolve().is_relative_to(self.work.resolve()):
            self._exclude(self.results)
        for folder in (self.work, self.results, self.logs, self.work / "clones"):
            folder.mkdir(parents=True, exist_ok=True)

    def _exclude(self, folder: Path) -> None:
        """Keep a folder chosen inside the repository out of its ``git status``."""
        if self._repo.working_tree_dir is None:
            return  # a bare repository has no work tree to keep clean
        try:
            inside = folder.resolve().relative_to(self.source)
        except ValueError:
            return
        if inside == Path("."):
            raise ConfigError(
                f"{folder} is the repository itself; give superci a folder of its own "
                "(--work, --results)"
            )
        exclude_from_git(Path(self._repo.common_dir) / "info" / "exclude", inside)

    def _clone(self, name: str, *, runner: bool) -> Path:
        """A clone of the repository under the work folder, made once and reused."""
        target = self.work / "clones" / name
        if not (target / ".git").exists():
            if runner:
                Workspace.clone(str(self.source), target)  # marked as a runner's at once
                self._forget_runner(name)  # its identity went with its old clone
            else:
                clone_repository(str(self.source), target)  # the observer marks its own
        return target

    def _forget_runner(self, name: str) -> None:
        """Free a runner name whose clone is made anew (before the dispatcher starts)."""
        if self.state.exists():
            store = Store(self.state)
            try:
                store.forget_runner(name)
            finally:
                store.close()

    async def run(self, echo: Callable[[str], None]) -> None:
        """Run until cancelled, printing each build's outcome; children stop with it."""
        if self._web_socket is not None:  # first: the line people open
            echo(f"superci: web page at http://{WEB_HOST}:{self._web_socket.getsockname()[1]}/")
        echo(
            f"superci: working in {self.work}, logs in "
            + ("this terminal (-v)" if self.verbose else str(self.logs))
        )
        clones = await asyncio.to_thread(
            lambda: (
                [self._clone(f"runner-{i}", runner=True) for i in range(1, self.runners + 1)]
                + [self._clone("observer", runner=False)]
            )
        )
        ready: asyncio.Future[Address] = asyncio.get_running_loop().create_future()
        bus = EventBus()
        printer = asyncio.create_task(print_outcomes(bus, bus.subscribe(_outcome), echo))
        dispatcher = asyncio.create_task(
            run_dispatcher(
                self.host,
                self.port,
                self.results,
                self.state,
                credentials=Credentials(token=load_token()),  # SUPERCI_TOKEN, as the children
                bus=bus,
                ready=ready.set_result,
                web_socket=self._web_socket,
            )
        )
        try:
            starting: list[asyncio.Future[Any]] = [ready, dispatcher]
            await asyncio.wait(starting, timeout=30, return_when=FIRST_COMPLETED)
            if dispatcher.done():
                await dispatcher  # it could not start: its error says why
            if not ready.done():
                raise SuperCIError("the dispatcher did not start within 30 s")
            address = ready.result()
            echo(f"superci: dispatcher on {address}, results in {self.results}")
            for i, clone in enumerate(clones[:-1], start=1):
                name = f"runner-{i}"
                await self._start("runner", name, str(address), "--name", name, str(clone))
            branch_args = [arg for b in self.branches for arg in ("--branch", b)]
            await self._start(
                "observer",
                "observer",
                str(address),
                "--interval",
                str(self.interval),
                *branch_args,
                str(clones[-1]),
            )
            echo(f"superci: {self.runners} runner(s) and an observer of {self.source} started")
            # Not `await dispatcher`: cancelling us would cancel it at once, before the
            # runners had told it they leave (their builds would count as lost).
            await asyncio.wait({dispatcher})
            dispatcher.result()
        finally:
            await self._stop_children()
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher
            # The dispatcher closed the bus: the printer ends once it printed what is left.
            await asyncio.wait({printer}, timeout=STOP_GRACE)
            printer.cancel()
            if self._web_socket is not None:
                self._web_socket.close()  # closed already once the page was served

    async def _start(self, command: str, name: str, address: str, *args: str) -> None:
        """Start a child; its output goes to logs/<name>.log (the terminal with -v)."""
        argv = [sys.executable, "-m", "superci", command, "--dispatcher-server", address, *args]
        if self.verbose:
            argv.insert(4, "--verbose")
            self._children.append(await asyncio.create_subprocess_exec(*argv))
            return
        with open(self.logs / f"{name}.log", "ab") as log_file:
            self._children.append(
                await asyncio.create_subprocess_exec(
                    *argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
                )
            )

    async def _stop_children(self) -> None:
        for child in self._children:
            if child.returncode is None:
                child.terminate()
        for child in self._children:
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await child.wait()
            except TimeoutError:
                log.warning("pid %d did not stop; killing it", child.pid)
                child.kill()
                await child.wait()


def default_work_folder(source: Path) -> Path:
    """Where ``up`` keeps its files for ``source`` unless told: outside the repository,
    under $XDG_STATE_HOME (~/.local/state), one folder per repository path."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:8]
    return base / "superci" / "up" / f"{source.name or 'repo'}-{digest}"


def exclude_from_git(exclude_file: Path, folder: Path) -> None:
    """Add ``/folder/`` to a repository's info/exclude, once; the file is only appended to."""
    line = f"/{folder.as_posix()}/"
    try:
        text = exclude_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    if line in text.splitlines():
        return
    exclude_file.parent.mkdir(parents=True, exist_ok=True)
    with open(exclude_file, "a", encoding="utf-8") as out:
        out.write(("\n" if text and not text.endswith("\n") else "") + line + "\n")
    log.info("added %s to %s", line, exclude_file)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on, before anything is made for it."""
    if port == 0:
        return  # the system picks a free one
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        ):
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the dispatcher
                probe.bind(address)
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; another program (another "
            "superci up?) may use it: stop it or choose another port with --port "
            "(--port 0 picks a free one)"
        ) from e


def first_free_port(
    host: str, start: int, tries: int = defaults.UP_WEB_PORT_TRIES
) -> socket.socket:
    """A listening socket on the first port from ``start`` that nothing else holds (0:
    any), bound here so that nothing takes it before the page is served on it."""
    last = start if start == 0 else min(start + tries, 65536) - 1
    for port in range(start, last + 1):
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp's
            listening.bind((host, port))
            listening.listen()
        except OSError as e:
            listening.close()
            if e.errno != errno.EADDRINUSE:
                raise ConfigError(f"cannot serve the web page on {host}:{port}: {e}") from e
            continue
        return listening
    raise ConfigError(
        f"no free port for the web page on {host} from {start} to {last}; choose another "
        "start with --web-port (0 picks any free one), or --no-web"
    )


def _open_source(path: Path) -> git.Repo:
    """The repository to test: a clone with a work tree, or a bare repository."""
    try:
        return git.Repo(path)
    except git.NoSuchPathError as e:
        raise WorkspaceError(f"{path} does not exist; give the path of a git repository") from e
    except git.InvalidGitRepositoryError as e:
        raise WorkspaceError(
            f"{path} is not a git repository; give the top folder of the repository to test "
            "(or a bare repository)"
        ) from e
