"""Running a build's test command: its own process group, a time limit, live output.

The command runs in a new session, so the whole tree it starts can be signalled at once:
on timeout or cancel the group gets SIGTERM, then SIGKILL after a grace period. Whatever
is left at the end, in the group or escaped from it, is killed (superci.containment), so
nothing of a build outlives it. The time limit and cancel also bound the delivery of the
last output, however slowly on_output takes it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superci import defaults
from superci.builduser import BuildUser
from superci.containment import BuildContainment, all_processes
from superci.errors import SuperCIError

log = logging.getLogger(__name__)

#: Output read from the pipe but not yet handed to on_output; above this the pipe is
#: paused, so a chatty test waits for a slow consumer instead of filling memory.
BUFFER_LIMIT = 4 * defaults.OUTPUT_CHUNK_BYTES
#: Polling interval bounds (seconds) while waiting for a signalled group to disappear.
POLL_MIN, POLL_MAX = 0.005, 0.1


@dataclass(frozen=True)
class Execution:
    """How one run of the test command ended."""

    #: The command's exit code (negative: killed by that signal, as subprocess reports
    #: it); None when superci killed it on timeout or cancel.
    exit_code: int | None
    timed_out: bool
    cancelled: bool
    #: Seconds, monotonic, from start until the output was drained.
    duration: float


def build_environment(
    base: Mapping[str, str], extra: Mapping[str, str], runner_python: bool = True
) -> dict[str, str]:
    """The build's environment: ``python`` in a test command means the runner's interpreter,
    as a user who started the runner inside a virtualenv expects; with ``runner_python``
    false (a build with an environment of its own) the runner's is not put on PATH."""
    env = {**base, **extra, "CI": "true", "SUPERCI": "1"}
    if sys.executable and runner_python:
        bindir = os.path.dirname(os.path.abspath(sys.executable))
        path = env.get("PATH", os.defpath)
        env["PATH"] = bindir + os.pathsep + path if path else bindir
    return env


async def run_command(
    command: str,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    kill_grace: float,
    on_output: Callable[[bytes], Awaitable[None]],
    cancel: asyncio.Event | None = None,
    containment: BuildContainment | None = None,
    drain_timeout: float = defaults.OUTPUT_DRAIN_TIMEOUT,
    *,
    user: BuildUser | None = None,
) -> Execution:
    """Run ``/bin/sh -c command`` in ``cwd``, streaming its merged output to ``on_output``;
    as ``user`` when one is given (see :meth:`BuildUser.command`): then the time limit and
    cancel signal every process of that user too, which a runner that is not root does
    through the user itself.

    An exception raised by ``on_output`` stops the build (its group is terminated) and is
    re-raised here, since output nobody can receive is a build nobody can judge.
    ``containment`` (a new one if None) is closed here, once all of the build is dead.
    ``drain_timeout`` bounds the wait for the output pipe once the build's group is gone.
    """
    contain = containment if containment is not None else BuildContainment()
    try:
        return await _run_contained(
            command, cwd, env, timeout, kill_grace, on_output, cancel, contain, drain_timeout,
            user,
        )  # fmt: skip
    finally:
        await asyncio.to_thread(contain.close)


async def _run_contained(
    command: str,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    kill_grace: float,
    on_output: Callable[[bytes], Awaitable[None]],
    cancel: asyncio.Event | None,
    contain: BuildContainment,
    drain_timeout: float,
    user: BuildUser | None,
) -> Execution:
    loop = asyncio.get_running_loop()
    argv = ["/bin/sh", "-c", command]
    options: dict[str, Any] = {"env": contain.environment(dict(env))}
    if user is not None:  # as root, dropped in the child before the preexec and the exec
        argv, options = user.command(argv, options["env"])
    started = time.monotonic()
    deadline = started + timeout
    try:
        transport, pipe = await loop.subprocess_exec(
            _OutputPipe,
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=os.fspath(cwd),
            start_new_session=True,
            preexec_fn=contain.preexec(),
            **options,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise SuperCIError(f"cannot start the test command in {cwd}: {e}") from e
    pgid = transport.get_pid()  # a new session's leader: its pid is the group id
    contain.started(pgid)

    # A runner that is not root may not signal its build user's processes: it goes
    # through the user (signal_build), and containment's kill_all ends them.
    reachable = user is None or user.sudo is None

    async def signal_build(sig: signal.Signals) -> None:
        """The group, and with a build user every process of it (escaped ones too)."""
        if reachable:
            _signal_group(pgid, sig)
        if user is not None:
            await asyncio.to_thread(user.signal_all, sig)

    pump = asyncio.create_task(_pump(pipe, on_output))
    finished = False
    try:
        ending = await _wait_for_end(pipe.exited, pump, cancel, timeout)
        if ending == "exited":
            if reachable:  # else containment's kill_all ends them, just below
                _signal_group(pgid, signal.SIGKILL)  # leftovers: background jobs, daemons
        else:
            log.info("terminating build process group %d (%s)", pgid, ending)
            await _terminate_group(pgid, pipe.exited, kill_grace, signal_build)
        await asyncio.to_thread(contain.kill_all)  # what escaped the group: setsid, daemons
        ending = await _drain(pipe, pump, pgid, cancel, ending, deadline, drain_timeout)
        finished = True
    finally:
        if not finished:  # the caller cancelled us, or something failed unexpectedly
            if reachable:
                _signal_group(pgid, signal.SIGKILL)
            contain.kill_all()
            pump.cancel()
        transport.close()
    if not pump.cancelled():
        pump.result()  # re-raises what on_output raised, if it did
    killed = ending != "exited"
    return Execution(
        exit_code=None if killed else transport.get_returncode(),
        timed_out=ending == "timeout",
        cancelled=ending == "cancelled",
        duration=time.monotonic() - started,
    )


class _OutputPipe(asyncio.SubprocessProtocol):
    """Buffers the command's output and notes its exit, without waiting on the pipe.

    ``process_exited`` fires as soon as the main process is reaped, even while a leftover
    grandchild still holds the pipe open; ``Process.wait()`` would wait for that pipe.
    """

    def __init__(self) -> None:
        self.exited = asyncio.Event()
        self.eof = asyncio.Event()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._readable = asyncio.Event()
        self._transport: asyncio.SubprocessTransport | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self._readable.set()
        if self._buffered > BUFFER_LIMIT and not self._paused:
            self._pipe_transport().pause_reading()
            self._paused = True

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.close_output()

    def process_exited(self) -> None:
        self.exited.set()

    @property
    def paused(self) -> bool:
        """Whether reading waits for on_output to catch up."""
        return self._paused

    def close_output(self) -> None:
        """Stop reading: end-of-file, or give up on a pipe an escaped process holds."""
        self.eof.set()
        self._readable.set()

    async def read(self) -> bytes:
        """Up to OUTPUT_CHUNK_BYTES of output as soon as any is there; b"" at the end."""
        while not self._chunks:
            if self.eof.is_set():
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        if len(chunk) > defaults.OUTPUT_CHUNK_BYTES:
            self._chunks.appendleft(chunk[defaults.OUTPUT_CHUNK_BYTES :])
            chunk = chunk[: defaults.OUTPUT_CHUNK_BYTES]
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= BUFFER_LIMIT // 2:
            self._paused = False
            self._pipe_transport().resume_reading()
        return chunk

    def _pipe_transport(self) -> asyncio.ReadTransport:
        assert self._transport is not None
        pipe = self._transport.get_pipe_transport(1)
        assert isinstance(pipe, asyncio.ReadTransport)
        return pipe


async def _pump(pipe: _OutputPipe, on_output: Callable[[bytes], Awaitable[None]]) -> None:
    while chunk := await pipe.read():
        await on_output(chunk)


async def _wait_for_end(
    exited: asyncio.Event, pump: asyncio.Task[None], cancel: asyncio.Event | None, timeout: float
) -> str:
    """Why the run ends: "exited", "timeout", "cancelled" or "output-failed"."""
    waits: dict[str, asyncio.Task[bool]] = {"exited": asyncio.create_task(exited.wait())}
    if cancel is not None:
        waits["cancelled"] = asyncio.create_task(cancel.wait())
    pending: set[asyncio.Future[Any]] = {*waits.values(), pump}
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            done, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for ending, task in waits.items():  # "exited" first: a finished run stays finished
                if task in done:
                    return ending
            if pump in done and pump.exception() is not None:
                return "output-failed"
            # else: the command closed its output but still runs; keep waiting for it.
    finally:
        for task in waits.values():
            task.cancel()


async def _terminate_group(
    pgid: int, exited: asyncio.Event, grace: float,
    send: Callable[[signal.Signals], Awaitable[None]],
) -> None:  # fmt: skip
    """SIGTERM lets tests clean up; SIGKILL after the grace makes sure the group ends."""
    await send(signal.SIGTERM)
    if not await _group_gone(pgid, exited, grace):
        log.warning("build process group %d outlived %.1fs after SIGTERM, killing", pgid, grace)
        await send(signal.SIGKILL)


async def _group_gone(pgid: int, exited: asyncio.Event, grace: float) -> bool:
    """Wait until the main process is reaped and no process of the group is left."""
    deadline = time.monotonic() + grace
    delay = POLL_MIN
    while True:
        if exited.is_set() and not _group_exists(pgid):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if not exited.is_set():
            try:  # the main process usually goes first: await it rather than poll
                async with asyncio.timeout(min(delay, remaining)):
                    await exited.wait()
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, POLL_MAX)


async def _drain(
    pipe: _OutputPipe,
    pump: asyncio.Task[None],
    pgid: int,
    cancel: asyncio.Event | None,
    ending: str,
    deadline: float,
    drain_timeout: float,
) -> str:
    """Deliver the rest of the output, within the build's bounds; returns how the run ends.

    A run that exited has until its time limit (and at least ``drain_timeout``) to hand
    over its output, and cancel still stops it: past either, it ended by "timeout" or
    "cancelled". A run already stopped gets ``drain_timeout``. A pipe still open and idle
    that long after the group ended is held by a process out of our reach: given up on.
    """
    now = time.monotonic()
    until = now + drain_timeout
    if ending == "exited":
        until = max(deadline, until)
    stop: dict[str, asyncio.Task[bool]] = {"eof": asyncio.create_task(pipe.eof.wait())}
    if cancel is not None and ending == "exited":
        stop["cancelled"] = asyncio.create_task(cancel.wait())
    try:
        while not pump.done():
            step = min(until - time.monotonic(), drain_timeout)
            if step <= 0:
                return _cut_short(pump, pgid, "timeout" if ending == "exited" else ending)
            done, _ = await asyncio.wait(
                {*stop.values(), pump}, timeout=step, return_when=asyncio.FIRST_COMPLETED
            )
            if stop["eof"] in done:
                break
            if "cancelled" in stop and stop["cancelled"] in done:
                return _cut_short(pump, pgid, "cancelled")
            if not done and not pipe.paused and time.monotonic() < until:
                log.warning(
                    "output of build process group %d still open %.1fs after the group ended: "
                    "a process out of reach holds it; not reading it any more",
                    pgid,
                    drain_timeout,
                )
                break
        pipe.close_output()
        # The rest of what was read is handed over within the same bound.
        remaining = until - time.monotonic()
        if not pump.done() and (remaining <= 0 or not await _finishes(pump, remaining, stop)):
            if "cancelled" in stop and stop["cancelled"].done():
                return _cut_short(pump, pgid, "cancelled")
            return _cut_short(pump, pgid, "timeout" if ending == "exited" else ending)
    finally:
        for task in stop.values():
            task.cancel()
        pipe.close_output()
        await _reaped(pipe, pgid, drain_timeout)
        if not pump.done():
            pump.cancel()
        await asyncio.wait({pump})  # a failure is re-raised by the caller via pump.result()
    return ending


async def _finishes(
    pump: asyncio.Task[None], within: float, stop: dict[str, asyncio.Task[bool]]
) -> bool:
    """Whether the pump delivers the rest within ``within`` seconds, before a cancel."""
    waits = {pump} | ({stop["cancelled"]} if "cancelled" in stop else set())
    await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    return pump.done()


def _cut_short(pump: asyncio.Task[None], pgid: int, ending: str) -> str:
    log.warning(
        "build process group %d: its output was not delivered in time; it ends as %s",
        pgid,
        ending,
    )
    pump.cancel()
    return ending


async def _reaped(pipe: _OutputPipe, pgid: int, within: float) -> None:
    if not pipe.exited.is_set():
        try:
            async with asyncio.timeout(within):
                await pipe.exited.wait()
        except TimeoutError:
            log.error("build process %d did not exit after SIGKILL", pgid)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the whole group is already gone
    except PermissionError as e:  # a member changed its uid (setuid helper)
        log.warning("cannot send %s to build process group %d: %s", sig.name, pgid, e)


def _group_exists(pgid: int) -> bool:
    """Whether a process of the group still runs; zombies waiting to be reaped do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _has_live_member(pgid)


def _has_live_member(pgid: int) -> bool:
    """Look past zombies on Linux: an orphan is reaped by init, which in a container may
    take seconds or never happen, and a zombie holds no pipe, file or CPU."""
    if not os.path.isdir("/proc"):
        return True  # no procfs: trust kill(0), at worst the grace is waited out
    return any(p.pgid == pgid and p.alive for p in all_processes())
