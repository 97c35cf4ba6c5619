"""The runner's executor: one build from checkout to result, in the runner's clone.

The runner process is a session and an executor. The session (:mod:`superci.runner`)
speaks the protocol: identity, heartbeats, leases, resending output and results. The
executor prepares the workspace and the environment, reads the commit's configuration
safely, chooses the test tool, runs the command contained and says how the build ended.
It knows nothing of the connection: its output goes to a sink the session gives it, and
the session keeps (and resends) whatever the dispatcher has not acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from superci import containment, defaults, labels, protocol, splitbuild, testtool
from superci.builduser import BuildFolders, BuildUser, make_private
from superci.config import BuildConfig
from superci.environments import InstallFailed
from superci.errors import ConfigError, SuperCIError, UnsafeFile, WorkspaceBroken, WorkspaceError
from superci.execute import Execution, build_environment, run_command
from superci.gitname import Description
from superci.installstep import InstallStep, Run
from superci.jobs import DEFAULT_JOB, JobSpec, load_jobs
from superci.junit import parse_junit_bytes, pytest_junit_option
from superci.safefile import read_inside, read_off_loop
from superci.settings import RunnerSettings
from superci.splitaccess import SocketAccess
from superci.splitbuild import SplitOutcome
from superci.splittunnel import SplitLink
from superci.status import BuildStatus
from superci.summary import Summary, parse_summary
from superci.verdict import decide
from superci.workspace import Workspace

log = logging.getLogger(__name__)

#: A split build's collected test ids, in the build user's report folder.
IDS_FILE = "split-ids.json"
#: How much of the end of a build's output is read for its test summary.
SUMMARY_TAIL_BYTES = 1024 * 1024

#: Where a build's output goes: the session keeps it and sends it on.
Emit = Callable[[bytes], Awaitable[None]]


class Unsuited(SuperCIError):
    """The commit's .superci.toml needs labels this runner does not offer (or, on an
    exclusive runner, none of its own): it must not build it. The session hands the
    build back with the needs (see :class:`superci.protocol.Unsuited`)."""

    def __init__(self, needs: dict[str, str], message: str) -> None:
        super().__init__(message)
        self.needs = needs


class BuildOutput(Protocol):
    """What the executor reads of a build's output as the session keeps it; the
    executor puts the build's JUnit report there too, to be sent with the result."""

    report: bytes
    #: A split build's ``split.json`` (who ran what), sent with the result; b"" otherwise.
    split_report: bytes

    @property
    def size(self) -> int:
        """Bytes of output produced so far (kept or not)."""

    @property
    def ends_line(self) -> bool:
        """Whether the output so far ends with a newline (or is empty)."""

    def tail(self, size: int) -> str:
        """The last ``size`` bytes of output that were kept, as text."""


class BuildExecutor:
    """Runs one build at a time in the runner's clone and describes how it ended."""

    def __init__(
        self,
        workspace: Workspace,
        settings: RunnerSettings,
        runner_name: str,
        build_record: Path,
        after_checkout: Callable[[], None],
    ) -> None:
        """``build_record``: where the running build's processes are recorded (see
        :mod:`superci.containment`); ``after_checkout`` runs in a thread after each
        checkout (the runner keeps its identity file there, which a build may remove)."""
        self.workspace = workspace
        #: The runner's labels, which a commit's ``needs`` must match (the runner sets it
        #: once it knows which Pythons its builds may use: :meth:`InstallStep.offered`).
        self.offer = labels.Offer()
        self.settings = settings
        self.runner_name = runner_name
        self.build_record = build_record
        self._after_checkout = after_checkout
        self._scratch = Path(tempfile.mkdtemp(prefix="superci-runner-"))  # private: 0700
        #: The user builds run as (--build-user), in a tree exported for each build.
        self.build_user = (
            None if settings.build_user is None else BuildUser.lookup(settings.build_user)
        )
        #: The running build's folders, handed to the build user (removed after it), at
        #: the same path for each build: environments of editable installs stay valid.
        self._folders: BuildFolders | None = None
        self._folders_name = f"build-{secrets.token_hex(8)}"
        if self.build_user is not None:
            make_private(workspace.path)
        #: Build environments (install, python in .superci.toml).
        self.installs = InstallStep(settings, self.build_user, build_record)

    def close(self) -> None:
        """Remove the scratch folder (reports asked of pytest, build users' trees)."""
        shutil.rmtree(self._scratch, ignore_errors=True)

    async def run(
        self,
        build: protocol.Build,
        output: BuildOutput,
        emit: Emit,
        cancel: asyncio.Event,
        on_started: Callable[[protocol.Started], Awaitable[None]],
        link: SplitLink | None = None,
    ) -> protocol.Result:
        """Check out the commit, run its tests, and describe how it ended; whatever goes
        wrong inside the runner, the build ends with a result. A clone beyond repair
        raises :class:`WorkspaceBroken` (not the commit's fault: the build goes back), a
        commit that needs labels this runner lacks :class:`Unsuited`. ``link``: the
        session's end of a split build's messages (see :mod:`superci.splitbuild`)."""
        started = time.monotonic()
        try:
            return await self._run(build, output, emit, cancel, on_started, link)
        except (WorkspaceBroken, Unsuited):
            raise
        except Exception as e:
            log.exception("build %d failed inside the runner", build.build_id)
            message = f"the runner failed: {type(e).__name__}: {e}"
            return _result(build, output, BuildStatus.ERROR, None, started, message)
        finally:
            if self.build_user is not None:  # none of its processes outlives the build
                await asyncio.to_thread(self.build_user.kill_all)
                if self._folders is not None:
                    await asyncio.to_thread(self.build_user.remove, self._folders)
                    self._folders = None

    def _hand_over(self, build: protocol.Build) -> BuildFolders | None:
        """With a build user: refuse one that is not dedicated, then export the commit
        into a tree of its own (blocks)."""
        if self.build_user is None:
            return None
        self.build_user.check_dedicated()
        try:
            self._folders = self.build_user.hand_over(
                self.workspace.path, self._scratch, self._folders_name
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise WorkspaceError(
                f"cannot hand the checkout to build user {self.build_user.name}: {e}"
            ) from e
        return self._folders

    async def _run(
        self,
        build: protocol.Build,
        output: BuildOutput,
        emit: Emit,
        cancel: asyncio.Event,
        on_started: Callable[[protocol.Started], Awaitable[None]],
        link: SplitLink | None,
    ) -> protocol.Result:
        started = time.monotonic()
        split: SplitOutcome | None = None  # how a split build ended on this runner

        async def say(text: str) -> None:
            """superci's own line, on a line of its own even after output cut mid-line."""
            await emit(("" if output.ends_line else "\n").encode() + f"superci: {text}\n".encode())

        described: Description | None = None  # once checked out

        def ended(
            status: BuildStatus,
            message: str,
            exit_code: int | None = None,
            summary: Summary | None = None,
            *,
            checkout: bool = False,
        ) -> protocol.Result:
            result = _result(build, output, status, exit_code, started, message, summary,
                             checkout=checkout, install_seconds=install_seconds)  # fmt: skip
            if split is not None:
                result = replace(result, split=split.ran)
            if described is None:
                return result
            return replace(result, subject=described.subject, author=described.author)

        install_seconds: float | None = None

        job = "" if build.job == DEFAULT_JOB else f"job {build.job} of "
        where = f"{job}{build.sha} ({build.branch}) attempt {build.attempt} on {self.runner_name}"
        await say(f"building {where}")
        try:
            await asyncio.to_thread(self.workspace.prepare, build.sha)
            described = await asyncio.to_thread(self.workspace.describe, build.sha)
            await asyncio.to_thread(self._after_checkout)
            folders = await asyncio.to_thread(self._hand_over, build)
        except WorkspaceBroken:
            raise  # not the commit's fault: the runner leaves, the build is queued again
        except (WorkspaceError, ConfigError) as e:  # counted: see Result.checkout_failed
            await say(str(e))
            return ended(BuildStatus.ERROR, str(e), checkout=True)
        tree = self.workspace.path if folders is None else folders.tree
        try:
            specs = await read_off_loop(
                load_jobs, self.workspace.path,
                timeout=self.settings.file_read_timeout, what=defaults.CONFIG_FILE,
            )  # fmt: skip
            spec = _job_of(build, specs)
            config = spec.config
            await self._check_needs(spec.needs, say)
            splitting = self._splitting(build, config, link)
            report = self._report_path(config.junit, folders)
            environment = self._environment(build, spec, report.path, folders, splitting)
            command = config.command
            if command is None and not config.wants_environment:  # else: with its environment
                command = await self._chosen_command(environment, tree, say)
        except (WorkspaceError, ConfigError) as e:
            await say(str(e))
            return ended(BuildStatus.ERROR, str(e))
        if self.build_user is not None:
            await say(f"running as build user {self.build_user.name} in {tree}")
        if cancel.is_set():  # cancelled while the workspace was prepared
            await say("cancelled before the tests started")
            return ended(BuildStatus.CANCELLED, "cancelled")
        timeout = config.timeout or self.settings.build_timeout
        if timeout > self.settings.max_timeout:
            message = (
                f"timeout = {timeout:g} in {defaults.CONFIG_FILE} is above this runner's "
                f"limit of {self.settings.max_timeout:g} seconds (--max-timeout)"
            )
            await say(message)
            return ended(BuildStatus.ERROR, message)
        await on_started(protocol.Started(
            build_id=build.build_id, attempt=build.attempt,
            timeout=timeout, kill_grace=self.settings.kill_grace,
        ))  # fmt: skip
        deadline = time.monotonic() + timeout  # the install step counts towards it

        async def suite(command: str, env: dict[str, str]) -> Execution:
            """The tests: the command, or this runner's part of a split build."""
            nonlocal split
            if not splitting:
                return await self._run_tests(command, tree, env, deadline, emit, cancel, say)
            assert link is not None

            async def run(command: str, extra: Mapping[str, str]) -> Execution:
                return await self._run_tests(command, tree, dict(extra), deadline, emit,
                                             cancel, say)  # fmt: skip

            tool = await read_off_loop(
                testtool.choose, self.workspace.path, timeout=self.settings.file_read_timeout,
                what="the files that choose the test tool",
            )  # fmt: skip
            # With a build user its test processes reach the split's sockets, and write
            # the collected ids in the build's own folders.
            access = SocketAccess(None if self.build_user is None else self.build_user.uid)
            if build.seat:
                split = await splitbuild.seat(link, tool, run, env, self.runner_name,
                                              self._scratch, access)  # fmt: skip
            else:
                assert config.parallel is not None
                split = await splitbuild.host(
                    link, tool, run, env, config.parallel, self.runner_name, self._scratch,
                    say, emit, access, None if folders is None else folders.report / IDS_FILE,
                )  # fmt: skip
            return split.execution

        if not config.wants_environment:
            assert command is not None
            try:
                execution = await suite(command, environment)
            except (WorkspaceError, ConfigError) as e:
                await say(str(e))
                return ended(BuildStatus.ERROR, str(e))
        else:
            run = Run(tree, self.workspace.path, environment, deadline, cancel, say, emit)
            try:
                async with self.installs.prepared(config, run) as ready:
                    install_seconds = ready.install_seconds
                    command = command or await self._chosen_command(
                        ready.environment, tree, say, in_environment=True
                    )
                    execution = await suite(command, ready.environment)
            except InstallFailed as e:
                status, message = _install_outcome(e.execution, timeout)
                await say(message)
                return ended(status, message, e.execution.exit_code)
            except (WorkspaceError, ConfigError) as e:
                await say(str(e))
                return ended(BuildStatus.ERROR, str(e))
        if build.seat and split is not None:  # the build's own runner judges the tests
            await say(f"seat {build.seat}: {split.message}")
            return ended(BuildStatus.PASSED if split.took_part else BuildStatus.ERROR,
                         split.message)  # fmt: skip
        try:
            if split is not None and split.report is not None:  # the split's own, merged
                output.report, output.split_report = split.report, split.document
            else:
                output.report = await read_off_loop(
                    report.read, timeout=self.settings.file_read_timeout,
                    what=f"JUnit report {report.path}",
                )  # fmt: skip
        except UnsafeFile as e:
            await say(str(e))
            if not (execution.timed_out or execution.cancelled):  # those say more
                return ended(BuildStatus.ERROR, str(e), execution.exit_code)
        summary = _summary(output)
        status, message = _outcome(execution, summary, config, timeout)
        if split is not None and split.message:
            message = f"{message}; {split.message}"
        await say(message)
        return ended(status, message, execution.exit_code, summary)

    def _splitting(
        self, build: protocol.Build, config: BuildConfig, link: SplitLink | None
    ) -> bool:
        """Whether this build is split (see :mod:`superci.splitbuild`); :class:`ConfigError`
        when it cannot be here."""
        if build.seat == 0 and config.parallel is None:
            return False
        if build.seat and config.parallel is None:
            raise ConfigError(f"a seat of a split build, but {defaults.CONFIG_FILE} of "
                              f"{build.sha[:12]} has no 'parallel'")  # fmt: skip
        if link is None:
            raise ConfigError("this runner was given no way to split the build")
        return True

    async def _check_needs(
        self, needs: dict[str, str], say: Callable[[str], Awaitable[None]]
    ) -> None:
        """Refuse (:class:`Unsuited`) a commit whose own .superci.toml needs labels this
        runner does not offer: the dispatcher did not know them (the commit was submitted
        without its configuration, or with another one)."""
        if self.offer.takes(needs):
            return
        missing = self.offer.missing(needs)
        if missing:
            why = f"{defaults.CONFIG_FILE} needs {labels.text(missing)}, which this runner lacks"
        else:
            why = (f"this runner is exclusive and its {defaults.CONFIG_FILE} needs none of its "
                   f"labels ({labels.text(self.offer.given)})")  # fmt: skip
        await say(f"not building here: {why}; handing the build back")
        raise Unsuited(needs, why)

    async def _run_tests(
        self, command: str, tree: Path, environment: dict[str, str], deadline: float,
        emit: Emit, cancel: asyncio.Event, say: Callable[[str], Awaitable[None]],
    ) -> Execution:  # fmt: skip
        """Run the test command contained, until ``deadline`` (monotonic) at the latest."""
        contained = await asyncio.to_thread(
            containment.BuildContainment, self.build_record, self.build_user
        )
        with contained:  # closed here too, should anything fail before run_command does it
            await say(f"$ {command}")
            await say(f"contained by {contained.description}")
            return await run_command(
                command, tree, environment, max(0.0, deadline - time.monotonic()),
                self.settings.kill_grace, emit, cancel, contained,
                self.settings.output_drain_timeout, user=self.build_user,
            )  # fmt: skip

    async def _chosen_command(
        self, environment: dict[str, str], tree: Path, say: Callable[[str], Awaitable[None]],
        in_environment: bool = False,
    ) -> str:  # fmt: skip
        """The command of the tool the repository uses (it has no ``command`` of its own),
        after making sure the build's ``python`` has that tool."""
        tool = await read_off_loop(
            testtool.choose, self.workspace.path,
            timeout=self.settings.file_read_timeout, what="the files that choose the test tool",
        )  # fmt: skip
        await say(f"no command in {defaults.CONFIG_FILE}: using {tool.name}, as {tool.reason}")
        if in_environment:  # its own, looked up by nobody: the folder may be the build user's
            python: str | None = os.path.join(environment["VIRTUAL_ENV"], "bin", "python")
        else:
            python = shutil.which("python", path=environment.get("PATH"))
        problem = await asyncio.to_thread(
            testtool.missing_module, python, tool.module, tree, environment, self.build_user
        )
        if problem is not None and in_environment:  # the build's own, made by install
            raise ConfigError(f"{problem}: add it to install in {defaults.CONFIG_FILE}, or "
                              "set command there")  # fmt: skip
        if problem is not None:
            raise ConfigError(
                f"{problem}: install it for the runner's Python (python -m pip install "
                f"{tool.module}), or set command in {defaults.CONFIG_FILE}"
            )
        return tool.command

    def _report_path(self, junit: str | None, folders: BuildFolders | None) -> Report:
        """Where this build's JUnit report will be: the repository's own, or one we ask
        pytest for, outside the checkout (so ``clean -xdff`` and the tests leave it be);
        with a build user, in its build's folders, where it may write."""
        limit = self.settings.max_report_bytes
        if folders is not None:
            if junit is None:
                return Report(folders.report, "junit.xml", limit)
            return Report(folders.tree, junit, limit)
        if junit is None:
            path = self._scratch / "junit.xml"
            if path.is_dir() and not path.is_symlink():  # left by an earlier build
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            return Report(self._scratch, "junit.xml", self.settings.max_report_bytes)
        return Report(self.workspace.path, junit, self.settings.max_report_bytes)

    def _environment(
        self, build: protocol.Build, spec: JobSpec, report: Path,
        folders: BuildFolders | None, splitting: bool = False,
    ) -> dict[str, str]:  # fmt: skip
        config = spec.config
        extra = {
            "SUPERCI_COMMIT": build.sha,
            "SUPERCI_BRANCH": build.branch,
            "SUPERCI_BUILD_ID": str(build.build_id),
            "SUPERCI_ATTEMPT": str(build.attempt),
            "SUPERCI_JOB": build.job,
            **spec.environment,
        }
        if config.junit is None and not splitting:  # a split's report is made of its results
            extra["PYTEST_ADDOPTS"] = pytest_junit_option(
                report, os.environ.get("PYTEST_ADDOPTS", "")
            )
        if self.build_user is not None and folders is not None:  # nothing of the runner's
            base = self.build_user.environment(os.environ, folders.home, folders.tmp)
            return build_environment(base, extra, not config.wants_environment)
        return build_environment(os.environ, extra, not config.wants_environment)


@dataclass(frozen=True)
class Report:
    """A build's JUnit report: a path inside a folder it must not lead out of."""

    folder: Path
    name: str
    max_bytes: int = defaults.MAX_REPORT_BYTES

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def read(self) -> bytes:
        """The report's bytes (b"" when the run wrote none); blocks, see safefile."""
        data = read_inside(self.folder, self.name, self.max_bytes, what="JUnit report")
        return data or b""


def _job_of(build: protocol.Build, specs: list[JobSpec]) -> JobSpec:
    """The job the build names, as the checkout's own .superci.toml defines it: the
    repository decides what runs, the dispatcher only which of its jobs."""
    for spec in specs:
        if spec.key == build.job:
            return spec
    defined = ", ".join(spec.key for spec in specs)
    raise ConfigError(
        f"the build asks for job {build.job!r}, which {defaults.CONFIG_FILE} of "
        f"{build.sha[:12]} does not define (it defines: {defined})"
    )


def _result(
    build: protocol.Build,
    output: BuildOutput,
    status: BuildStatus,
    exit_code: int | None,
    started: float,
    message: str,
    summary: Summary | None = None,
    *,
    checkout: bool = False,
    install_seconds: float | None = None,
) -> protocol.Result:
    """The build's result; ``checkout``: it ended because its checkout failed."""
    summary = _summary(output) if summary is None else summary
    return protocol.Result(
        build_id=build.build_id,
        attempt=build.attempt,
        status=status,
        exit_code=exit_code,
        duration=time.monotonic() - started,
        output_bytes=output.size,
        message=message[: protocol.MAX_TEXT],
        counts=summary.counts,
        failures=[name[: protocol.MAX_STRING] for name in summary.failures[: protocol.MAX_LIST]],
        checkout_failed=checkout,
        install_seconds=install_seconds,
    )


def _summary(output: BuildOutput) -> Summary:
    """The test counts: the JUnit report's if there is one, else those of the output."""
    return parse_junit_bytes(output.report) or parse_summary(output.tail(SUMMARY_TAIL_BYTES))


def _install_outcome(execution: Execution, timeout: float) -> tuple[BuildStatus, str]:
    """How a build whose install step did not succeed ends (its tests never ran)."""
    if execution.cancelled:
        return BuildStatus.CANCELLED, "cancelled during the install step"
    if execution.timed_out:
        return BuildStatus.TIMEOUT, f"timed out during the install step (limit {timeout:g}s)"
    return BuildStatus.ERROR, (
        f"install failed (exit code {execution.exit_code}): its output is in the install "
        "section of the build's log"
    )


def _outcome(
    execution: Execution, summary: Summary, config: BuildConfig, timeout: float
) -> tuple[BuildStatus, str]:
    return decide(execution, summary, timeout=timeout, allow_no_tests=config.allow_no_tests)
