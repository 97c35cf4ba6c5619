"""A build's install step: the environment its ``install`` and ``python`` ask for, made
(or found in the cache) before its tests run, with its own section of the build's log.

The install runs as the tests do: contained, as the build user if there is one, within
the build's time limit, and stopped by a cancel. What the cache does with environments
(keys, locks, eviction) is :mod:`superci.environments`'; which Pythons there are is
:mod:`superci.interpreters`'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from superci import containment, defaults
from superci.builduser import BuildUser
from superci.config import BuildConfig
from superci.environments import (
    EnvCache,
    EnvKey,
    activated,
    default_root,
    dependency_digest,
    install_script,
)
from superci.errors import ConfigError
from superci.execute import Execution, run_command
from superci.interpreters import Interpreter, Interpreters, find_interpreters
from superci.safefile import read_off_loop
from superci.settings import RunnerSettings

log = logging.getLogger(__name__)

Say = Callable[[str], Awaitable[None]]
Emit = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class Prepared:
    """A build's environment, ready: its variables, and the install's seconds (None when
    it was reused)."""

    environment: dict[str, str]
    install_seconds: float | None


@dataclass(frozen=True)
class Run:
    """What one build's install step works with."""

    tree: Path  # where the install command runs (the build's tree)
    checkout: Path  # the runner's clone, where the dependency files are read
    environment: dict[str, str]  # the build's variables
    deadline: float  # monotonic: the build's time limit
    cancel: asyncio.Event
    say: Say
    emit: Emit


class InstallStep:
    """Makes or reuses build environments for one runner; finds the machine's Pythons
    the first time a build asks for one, unless the runner gave those it announced."""

    def __init__(
        self,
        settings: RunnerSettings,
        user: BuildUser | None,
        record: Path,
        interpreters: Interpreters | None = None,
    ) -> None:
        self.settings = settings
        self.user = user
        self.record = record
        root = settings.env_cache or default_root(user)
        self.cache = EnvCache(root, settings.env_cache_size, user)
        self._interpreters = interpreters
        #: With a build user: the Pythons it may run, and those it may not (found once).
        self._usable: tuple[Interpreters, list[Interpreter]] | None = None
        #: Whether builds may use the runner's own Python: the build user may run it.
        self._own_runs = user is None or self._check_own(user)
        #: uv, which makes the environments (as the build user, with one).
        self.uv = uv_binary()
        self._uv_runs = user is None or self._check_uv(user, self.uv)
        self._set_up = False

    async def interpreters(self) -> Interpreters:
        """The Pythons of this machine, found once."""
        if self._interpreters is None:
            self._interpreters = await asyncio.to_thread(find_interpreters)
        return self._interpreters

    @contextlib.asynccontextmanager
    async def prepared(self, config: BuildConfig, run: Run) -> AsyncIterator[Prepared]:
        """The environment ``config`` asks for, held while the block runs. Raises
        :class:`ConfigError` for a Python this runner lacks, and
        :class:`~superci.environments.InstallFailed` when the install did not succeed."""
        if not self._uv_runs:
            assert self.user is not None
            raise ConfigError(f"build user {self.user.name} cannot run uv at {self.uv} (a "
                              f"folder on the way is closed to it). {_UV_ADVICE}")  # fmt: skip
        interpreter, version = await self._interpreter(config.python, run.say)
        files = ""
        if config.install is not None:
            files = await read_off_loop(
                dependency_digest, run.checkout, config.install_files,
                timeout=self.settings.file_read_timeout, what="the dependency files",
            )  # fmt: skip
        tree = "" if config.install is None else str(run.tree)
        key = EnvKey(interpreter, version, config.install or "", files, tree)
        if not self._set_up:
            await asyncio.to_thread(self._set_up_cache)
        started = time.monotonic()

        async def build(folder: Path) -> Execution:
            return await self._install(config.install, interpreter, version, folder, run)

        def stopped() -> str | None:
            if run.cancel.is_set():
                return "cancelled"
            return "timeout" if time.monotonic() >= run.deadline else None

        async with self.cache.use(key, build, stopped, run.say) as env:
            if not env.built:
                await run.say(f"environment reused: Python {version} in {env.path}")
            seconds = time.monotonic() - started if env.built else None
            yield Prepared(activated(run.environment, env.path, self.cache.uv_cache), seconds)

    def _set_up_cache(self) -> None:
        self.cache.setup()
        self.cache.tidy()  # what a runner killed mid-install left
        self._set_up = True

    @staticmethod
    def _check_uv(user: BuildUser, uv: str) -> bool:
        """Whether ``user`` may run uv; a warning, at the runner's start, when it may not
        (blocks): no environment could be made for its builds."""
        if uv in user.runnable([uv]):
            return True
        log.warning("build user %s cannot run uv at %s (a folder on the way is closed to it): "
                    "no build environment can be made for its builds. %s", user.name, uv,
                    _UV_ADVICE)  # fmt: skip
        return False

    @staticmethod
    def _check_own(user: BuildUser) -> bool:
        """Whether ``user`` may run the runner's own Python; a warning, at the runner's
        start, when it may not (blocks)."""
        if sys.executable in user.runnable([sys.executable]):
            return True
        log.warning(
            "build user %s cannot run this runner's Python %s (a folder on the way is closed "
            "to it): a build with install but no python in %s, or running python with no "
            "environment of its own, cannot run. Install a Python %s may run (e.g. the "
            "system's python3, not under /root) and set python = \"3.x\" in %s, or run the "
            "runner with it", user.name, sys.executable, defaults.CONFIG_FILE, user.name,
            defaults.CONFIG_FILE,
        )  # fmt: skip
        return False

    async def usable(self) -> tuple[Interpreters, list[Interpreter]]:
        """The Pythons builds may use, and those left out: with a build user, those it may
        run (``test -x`` as it) and those it may not, each left out named in the log."""
        found = await self.interpreters()
        if self.user is None:
            return found, []
        if self._usable is None:
            self._usable = await asyncio.to_thread(self._sort_usable, found)
        return self._usable

    def offered(self) -> Interpreters:
        """The Pythons the runner announces: those its builds may use (blocks, the first
        time, to find them and to ask the build user), so no build is routed to it for a
        Python it cannot use."""
        if self._interpreters is None:
            self._interpreters = find_interpreters()
        if self.user is None:
            return self._interpreters
        if self._usable is None:
            self._usable = self._sort_usable(self._interpreters)
        return self._usable[0]

    def _sort_usable(self, found: Interpreters) -> tuple[Interpreters, list[Interpreter]]:
        """Those of ``found`` the build user may run, and those it may not (blocks)."""
        assert self.user is not None
        user, every = self.user, found.all()
        runs = user.runnable([str(i.path) for i in every])
        closed = [i for i in every if str(i.path) not in runs]
        for interpreter in closed:
            log.warning("builds will not use %s (Python %s): build user %s cannot run it",
                        interpreter.path, interpreter.version, user.name)  # fmt: skip
        return found.only(lambda i: str(i.path) in runs), closed

    async def _interpreter(self, wanted: str | None, say: Say) -> tuple[str, str]:
        """The interpreter's path and full version: the runner's own without ``python``;
        with a build user, one it may run."""
        if wanted is None:
            if not self._own_runs:
                assert self.user is not None
                usable, _ = await self.usable()
                raise ConfigError(
                    f"build user {self.user.name} cannot run this runner's Python "
                    f"{sys.executable} (a folder on the way is closed to it), which a build "
                    f'with no python in {defaults.CONFIG_FILE} uses: set python = "3.x" there '
                    f"to a Python {self.user.name} can run (it can run {usable.describe()}), "
                    "or install one where it may run it (not under /root)"
                )
            return sys.executable, platform.python_version()
        usable, closed = await self.usable()
        found = usable.find(wanted)
        skipped = [i for i in closed if wanted in (i.version, i.minor)]
        if found is None and skipped and self.user is not None:
            raise ConfigError(
                f"python = {wanted!r} in {defaults.CONFIG_FILE}: build user {self.user.name} "
                f"cannot run this runner's Python {wanted} "
                f"({', '.join(str(i.path) for i in skipped)}: a folder on the way is closed "
                f"to it; it can run {usable.describe()}): install Python {wanted} where "
                f"{self.user.name} may run it (not under /root)"
            )
        if found is None:
            raise ConfigError(
                f"python = {wanted!r} in {defaults.CONFIG_FILE}: this runner has no Python "
                f"{wanted} (it has {usable.describe()}); nothing is downloaded at "
                "build time"
            )
        passed_over = (await self.interpreters()).find(wanted)
        if self.user is not None and passed_over is not None and passed_over in closed:
            await say(f"skipped {passed_over.path} (Python {passed_over.version}): build user "
                      f"{self.user.name} cannot run it; {found.path} instead")  # fmt: skip
        return os.fspath(found.path), found.version

    async def _install(
        self, install: str | None, interpreter: str, version: str, folder: Path, run: Run
    ) -> Execution:
        """Make the environment in ``folder`` and run ``install`` in it: the install
        section of the build's log."""
        await run.say(f"--- install: a new environment, Python {version} ({interpreter}) ---")
        await run.say(f"$ uv venv --python {interpreter} {folder}, with pip (ensurepip's)")
        if install is not None:
            await run.say(f"$ {install}")
        script = install_script(self.uv, interpreter, folder, install, self.user is not None)
        environment = activated(run.environment, folder, self.cache.uv_cache)
        contained = await asyncio.to_thread(containment.BuildContainment, self.record, self.user)
        with contained:
            execution = await run_command(
                script, run.tree, environment, max(0.0, run.deadline - time.monotonic()),
                self.settings.kill_grace, run.emit, run.cancel, contained,
                self.settings.output_drain_timeout, user=self.user,
            )  # fmt: skip
        if execution.exit_code == 0 and not (execution.timed_out or execution.cancelled):
            await run.say(f"--- install: done in {execution.duration:.1f}s ---")
        else:
            await run.say(f"--- install: {describe_failure(execution)} ---")
        return execution


def describe_failure(execution: Execution) -> str:
    """How an install that did not succeed ended, for the log and the result."""
    if execution.cancelled:
        return "cancelled; no environment kept"
    if execution.timed_out:
        return "stopped by the build's time limit; no environment kept"
    return f"failed (exit code {execution.exit_code}); no environment kept"


#: What to do when the build user cannot run uv.
_UV_ADVICE = ("Install superci (with uv) where the build user may run it, e.g. in a virtual "
              "environment outside /root.")  # fmt: skip


def uv_binary() -> str:
    """The uv that superci depends on (its wheel ships the binary)."""
    from uv import find_uv_bin

    return os.fspath(find_uv_bin())
