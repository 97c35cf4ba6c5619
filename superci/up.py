"""``superci up``: a whole superci on one machine, for a first try or a one-person team.

The dispatcher runs in this process (so each outcome can be printed as it is recorded);
the runners and the observer are the real programs, started as child processes with
their own clones under the work folder, and stopped with the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from superci import defaults
from superci.auth import Credentials, load_token
from superci.channel import Address
from superci.dispatcher import run_dispatcher
from superci.errors import SuperCIError
from superci.report import counts_text
from superci.workspace import Workspace

log = logging.getLogger(__name__)

#: Seconds a child gets to stop after SIGTERM before it is killed.
STOP_GRACE = defaults.KILL_GRACE + 5


def format_outcome(result: dict[str, Any]) -> str:
    """One line per finished build, for people watching the terminal."""
    tests = counts_text(result.get("tests"))
    counts = f" [{tests}]" if tests else ""
    duration = result.get("duration")
    took = f" in {duration:.1f}s" if isinstance(duration, int | float) else ""
    return (
        f"{result['status'].upper():9} {result['sha'][:12]} ({result['branch']})"
        f"{took}{counts} on {result.get('runner') or '-'}: {result.get('message', '')}"
    )


class Stack:
    """Dispatcher + runners + observer for the repository at ``path``."""

    def __init__(
        self,
        path: Path,
        *,
        runners: int = 2,
        host: str = defaults.HOST,
        port: int = defaults.PORT,
        results: Path = Path(defaults.RESULTS_DIR),
        work: Path = Path(".superci"),
        interval: float = defaults.POLL_INTERVAL,
        branches: Sequence[str] = (),
        verbose: bool = False,
    ) -> None:
        self.source = Workspace(path).path.resolve()
        self.runners, self.host, self.port = runners, host, port
        self.results, self.work = results, work
        self.interval, self.branches, self.verbose = interval, tuple(branches), verbose
        self._children: list[asyncio.subprocess.Process] = []

    def _clone(self, name: str) -> Path:
        """A clone of the repository under the work folder, made once and reused."""
        target = self.work / name
        if not (target / ".git").exists():
            Workspace.clone(str(self.source), target)
        return target

    async def run(self, echo: Callable[[str], None]) -> None:
        """Run until cancelled, printing each build's outcome; children stop with it."""
        clones = await asyncio.to_thread(
            lambda: (
                [self._clone(f"runner-{i}") for i in range(1, self.runners + 1)]
                + [self._clone("observer")]
            )
        )
        ready: asyncio.Future[Address] = asyncio.get_running_loop().create_future()
        dispatcher = asyncio.create_task(
            run_dispatcher(
                self.host,
                self.port,
                self.results,
                self.results.resolve().parent / defaults.STATE_FILE,
                credentials=Credentials(token=load_token()),  # SUPERCI_TOKEN, as the children
                on_result=lambda result: echo(format_outcome(result)),
                ready=ready.set_result,
            )
        )
        try:
            await asyncio.wait([ready, dispatcher], timeout=30, return_when=FIRST_COMPLETED)
            if dispatcher.done():
                await dispatcher  # it could not start: its error says why
            if not ready.done():
                raise SuperCIError("the dispatcher did not start within 30 s")
            address = ready.result()
            echo(f"superci: dispatcher on {address}, results in {self.results.resolve()}")
            for i, clone in enumerate(clones[:-1], start=1):
                await self._start("runner", str(address), "--name", f"runner-{i}", str(clone))
            branch_args = [arg for b in self.branches for arg in ("--branch", b)]
            await self._start(
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

    async def _start(self, command: str, address: str, *args: str) -> None:
        argv = [sys.executable, "-m", "superci", command, "--dispatcher-server", address, *args]
        if self.verbose:
            argv.insert(4, "--verbose")
        self._children.append(await asyncio.create_subprocess_exec(*argv))

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
