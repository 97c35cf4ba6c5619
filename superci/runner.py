"""The runner process's session: connect out to the dispatcher, register, heartbeat,
hold the lease of one build at a time and hand that build to the executor
(:mod:`superci.executor`), which runs it.

A runner never gives up: when the dispatcher is unreachable or goes away it retries
with backoff and registers again, claiming the lease of a build it is still running (or
whose result the dispatcher has not acknowledged). A build's output is kept in a local
spool, so after a reconnect it resends exactly the bytes the dispatcher lacks. The spool
is capped like the dispatcher's log (head and tail, see :mod:`superci.buildlog`) but
larger; bytes it dropped that a dispatcher still asks for are sent as ``skipped``, so
that dispatcher counts them as dropped instead of waiting for them for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superci import client, containment, defaults, identity, labels, protocol
from superci.backoff import Backoff
from superci.buildlog import BuildLog
from superci.channel import Address, Channel
from superci.errors import (
    AuthenticationError,
    ConfigError,
    ConnectionClosed,
    DispatcherUnavailable,
    ProtocolError,
    RemoteError,
    RunnerRefused,
    WorkspaceBroken,
)
from superci.executor import BuildExecutor, Unsuited
from superci.settings import RunnerSettings, with_given
from superci.splittunnel import SplitLink
from superci.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class ActiveBuild:
    """A build this runner holds a lease for: running, or finished and not yet acknowledged."""

    build: protocol.Build
    spool_bytes: int = defaults.MAX_SPOOL_BYTES
    sent: int = 0  # bytes of output the dispatcher has (or is being sent on this connection)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    result: protocol.Result | None = None
    split_report: bytes = b""  # a split build's split.json, sent with its result
    link: SplitLink | None = None  # its split messages (see superci.splittunnel)
    report: bytes = b""  # the JUnit XML report, sent with the result
    started: protocol.Started | None = None  # said again to a restarted dispatcher
    ends_line: bool = True  # whether the output so far ends with a newline (or is empty)

    def __post_init__(self) -> None:
        self._spool_dir = Path(tempfile.mkdtemp(prefix="superci-spool-"))  # private: 0700
        self.spool = BuildLog(self._spool_dir / "output", self.spool_bytes, fresh=True)

    @property
    def size(self) -> int:
        """Bytes of output produced so far (kept or not)."""
        return self.spool.raw

    def matches(self, build_id: int, attempt: int) -> bool:
        return (self.build.build_id, self.build.attempt) == (build_id, attempt)

    async def write(self, data: bytes) -> None:
        """Append output to the spool (head and tail kept, the middle dropped past its cap)."""
        self.spool.append(self.spool.raw, data)
        if data:
            self.ends_line = data.endswith(b"\n")

    def read(self, offset: int, size: int) -> tuple[int, bytes]:
        """Up to ``size`` bytes from ``offset``, or from the first kept byte after it."""
        return self.spool.read_raw(offset, size)

    def tail(self, size: int) -> str:
        start, data = max(0, self.size - size), bytearray()
        while start < self.size and len(data) < size:
            start, piece = self.read(start, size - len(data))
            data += piece
            start += len(piece)
        return bytes(data).decode("utf-8", errors="replace")

    def close(self) -> None:
        self.spool.close()
        shutil.rmtree(self._spool_dir, ignore_errors=True)


def default_runner_name(workspace: Workspace) -> str:
    """Stable across restarts (host + clone path), so a restarted runner replaces its ghost."""
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    suffix = hashlib.sha256(str(workspace.path.resolve()).encode()).hexdigest()[:6]
    return f"{host.strip('.-_')[:40] or 'runner'}-{suffix}"


def default_identity_file(workspace: Workspace) -> Path:
    """Inside the clone's git dir, beside its ownership mark: it lives as long as the
    clone (so ``superci up`` runners keep theirs), and no checkout or clean touches it."""
    return workspace.path / ".git" / identity.IDENTITY_FILE


class RunnerProcess:
    """The runner process: at most one build at a time, in its own clone (the pool's record
    of it in the dispatcher is :class:`superci.scheduler.PoolRunner`). It is the session;
    its :attr:`executor` runs each build."""

    def __init__(
        self,
        address: Address,
        workspace: Workspace,
        name: str,
        *,
        settings: RunnerSettings | None = None,
        identity_file: Path | None = None,
        heartbeat_interval: float | None = None,
        build_timeout: float | None = None,
        kill_grace: float | None = None,
        max_spool_bytes: int | None = None,
        max_timeout: float | None = None,
        given_labels: dict[str, str] | None = None,
        exclusive: bool = False,
    ) -> None:
        """The tunables come from ``settings``; the older keywords, when given, override
        their field of it. ``given_labels`` (``--label``) join the facts the runner
        detects; ``exclusive``: it takes only builds that need one of them."""
        self.settings = settings = with_given(
            settings or RunnerSettings(),
            heartbeat_interval=heartbeat_interval,
            build_timeout=build_timeout,
            kill_grace=kill_grace,
            max_spool_bytes=max_spool_bytes,
            max_timeout=max_timeout,
        )
        self.address = address
        self.workspace = workspace
        self.name = protocol.check_name(name)
        self.identity = identity.IdentityFile(identity_file or default_identity_file(workspace))
        self._secret = self.identity.load()  # None until the dispatcher issues one
        self._instance = identity.new_instance()
        given = labels.check_labels(given_labels or {})
        if exclusive and not given:
            raise ConfigError("an exclusive runner needs a label of its own (--label)")
        if settings.build_timeout > settings.max_timeout:
            raise ConfigError(
                f"the runner's timeout of {settings.build_timeout:g} seconds (--timeout) is "
                f"above its limit of {settings.max_timeout:g} seconds (--max-timeout)"
            )
        self._channel: Channel | None = None
        self._current: ActiveBuild | None = None
        self.executor = BuildExecutor(
            workspace, settings, self.name, self.build_record, self._keep_identity
        )
        # The Pythons its builds may use (with a build user: those it may run) are its
        # python label; the executor checks each commit's needs against the same offer.
        pythons = self.executor.installs.offered().versions()
        self.offer = labels.Offer(given, labels.detect_facts(pythons), exclusive)
        self.executor.offer = self.offer
        self._workspace_lock = asyncio.Lock()  # one build at a time in the clone, dying ones too
        self._backoff = Backoff()
        self._main: asyncio.Task[None] | None = None  # run_forever's task
        self._broken: WorkspaceBroken | None = None  # set when the clone is beyond repair
        self._resend: asyncio.Task[None] | None = None  # a result sent again after a delay

    # --- the connection loop --------------------------------------------------------

    async def run_forever(self) -> None:
        """Stay registered until cancelled; a running build is stopped on the way out.

        Cancelled (SIGTERM, SIGINT), the runner first tells the dispatcher it is leaving,
        so its build is queued again without counting an attempt. A clone it can neither
        use nor repair makes it leave the same way and raise :class:`WorkspaceBroken`.
        """
        self._main = asyncio.current_task()
        guard = await asyncio.to_thread(self._contain_builds)
        try:
            while True:
                try:
                    await self._session()
                except (DispatcherUnavailable, ConnectionClosed) as e:
                    log.warning("%s", e)
                except RunnerRefused as e:
                    if e.code == "name-taken":
                        raise  # it will never be let in under this name: say so and stop
                    log.error("%s", e)
                except (ProtocolError, RemoteError, AuthenticationError) as e:
                    log.error("dispatcher at %s refused us: %s", self.address, e)
                except (TimeoutError, OSError) as e:
                    log.warning("connection to %s failed: %s", self.address, e or type(e).__name__)
                except Exception:  # a runner never exits on its own: log it and retry
                    log.exception("internal error in the connection to %s", self.address)
                delay = self._backoff.next_delay()
                log.info("reconnecting to %s in %.1fs", self.address, delay)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if self._broken is not None:
                raise self._broken from None
            raise
        finally:
            self.executor.close()
            if self._resend is not None:
                self._resend.cancel()
                await asyncio.wait([self._resend])
            await self._stop_current("runner stopping")
            await asyncio.to_thread(guard.stop)

    @property
    def build_record(self) -> Path:
        """Where the running build is recorded, beside the clone's ownership mark."""
        return self.workspace.path / ".git" / "superci-build"

    def _contain_builds(self) -> containment.Guard:
        """Before the first build: adopt the orphans of builds, end what a previous life
        of this runner left running, and start the guard that outlives a SIGKILL."""
        containment.become_subreaper()
        containment.kill_recorded(self.build_record)
        return containment.Guard(self.build_record)

    async def _session(self) -> None:
        channel = await client.connect(self.address, protocol.Role.RUNNER)
        try:
            await self._register(channel)
            self._channel = channel
            heartbeats = asyncio.create_task(self._send_heartbeats(channel))
            try:
                while True:
                    self._on_message(await channel.receive())
            except asyncio.CancelledError:
                # Its build is stopped first (heartbeats going on meanwhile): the dispatcher
                # hands the build to another runner as soon as it hears we leave, and the
                # same build must never run twice at once.
                await self._stop_current("runner stopping")
                heartbeats.cancel()
                await self._say_leaving(channel)
                raise
            finally:
                self._channel = None
                heartbeats.cancel()
        finally:
            await channel.close()

    async def _say_leaving(self, channel: Channel) -> None:
        """Tell the dispatcher we leave on purpose and wait (briefly) until it has taken
        note, which it shows by closing the connection."""
        if self._broken is not None:
            reason = f"cannot build any more: {self._broken}"
        else:
            reason = "runner stopped"
        try:
            await channel.send(protocol.Leaving(reason=reason[: protocol.MAX_TEXT]))
            async with asyncio.timeout(self.settings.leave_timeout):
                while True:
                    await channel.receive()
        except (ConnectionClosed, RemoteError, ProtocolError, TimeoutError, OSError) as e:
            log.info("left the dispatcher at %s (%s)", self.address, e or type(e).__name__)

    async def _register(self, channel: Channel) -> None:
        current = self._current
        await channel.send(
            protocol.Register(
                name=self.name,
                host=socket.gethostname()[: protocol.MAX_STRING],
                pid=os.getpid(),
                build_id=current.build.build_id if current else None,
                attempt=current.build.attempt if current else None,
                identity=self._secret,
                instance=self._instance,
                isolated=self.executor.build_user is not None,
                labels=dict(self.offer.given),
                facts={key: list(values) for key, values in self.offer.facts.items()},
                exclusive=self.offer.exclusive,
            )
        )
        try:
            reply = await channel.receive(self.settings.register_timeout)
        except RemoteError as e:
            if e.code in ("name-taken", "identity-in-use"):
                raise RunnerRefused(f"{e} (this runner's identity: {self.identity.path})",
                                    e.code) from e  # fmt: skip
            raise
        if not isinstance(reply, protocol.Registered):
            raise ProtocolError(f"expected registered, got {reply.type}")
        if reply.identity is not None:  # the name is new: keep its secret before anything
            self._secret = reply.identity
            await asyncio.to_thread(self._keep_identity)
        self._backoff.reset()
        log.info("registered with the dispatcher at %s as %s", self.address, self.name)
        if current is not None and reply.output_offset is None:
            self._abandon_current("the dispatcher gave this build to another runner")
        elif current is not None and reply.output_offset is not None:
            log.info(
                "build %d adopted; resending output from byte %d",
                current.build.build_id,
                reply.output_offset,
            )
            current.sent = reply.output_offset
            self._channel = channel
            if current.started is not None and current.result is None:
                await channel.send(current.started)  # its deadline, for the new process
            if current.link is not None and current.result is None:
                await current.link.reconnected()  # a split's seats, asked for again
            await self._send_output(current)
            await self._send_result(current)

    async def _send_heartbeats(self, channel: Channel) -> None:
        try:
            while True:
                await asyncio.sleep(self.settings.heartbeat_interval)
                await channel.send(protocol.Heartbeat())
        except ConnectionClosed:
            channel.close_nowait()

    def _on_message(self, message: protocol.Message) -> None:
        protocol.check_allowed(protocol.Role.DISPATCHER, message)
        handlers: dict[type[protocol.Message], Callable[[Any], None]] = {
            protocol.Build: self._start,
            protocol.Cancel: self._on_cancel,
            protocol.ResultAck: self._on_ack,
        }
        handler = handlers.get(type(message))
        if handler is not None:
            handler(message)
            return
        current = self._current  # the rest are a split build's (see superci.splittunnel)
        build_id, attempt = getattr(message, "build_id", 0), getattr(message, "attempt", 0)
        if current is not None and current.link is not None and current.matches(build_id, attempt):
            current.link.receive(message)

    def _start(self, build: protocol.Build) -> None:
        if self._current is not None:
            log.error(
                "dispatcher sent build %d while busy with %d; ignoring it",
                build.build_id,
                self._current.build.build_id,
            )
            return
        active = self._current = ActiveBuild(build, self.settings.max_spool_bytes)
        active.task = asyncio.create_task(self._run_and_report(active))

    def _on_cancel(self, message: protocol.Cancel) -> None:
        """Stop the build (SIGTERM, grace, SIGKILL); its result then says it was stopped."""
        current = self._current
        if current is None or not current.matches(message.build_id, message.attempt):
            return
        if current.build.seat:  # a seat sends no result: it is dropped as it stops
            log.warning("leaving seat %d of build %d: %s", current.build.seat,
                        message.build_id, message.reason)  # fmt: skip
            self._abandon_current(message.reason)
        elif current.result is None:
            log.warning("stopping build %d: %s", message.build_id, message.reason)
            current.cancel.set()

    def _on_ack(self, ack: protocol.ResultAck) -> None:
        current = self._current
        if current is None or not current.matches(ack.build_id, ack.attempt):
            return
        if ack.accepted:
            log.info("result of build %d recorded", ack.build_id)
        elif ack.retry:
            log.warning(
                "dispatcher could not record build %d yet (%s); retrying", ack.build_id, ack.reason
            )
            self._resend_result(current, self._backoff.next_delay())
            return
        else:
            log.warning("result of build %d refused: %s", ack.build_id, ack.reason)
        self._forget(current)

    def _resend_result(self, active: ActiveBuild, delay: float) -> None:
        """Send the result again after ``delay``, in a task kept so that stopping ends it."""
        if self._resend is not None:
            self._resend.cancel()
        self._resend = asyncio.create_task(self._send_result_after(active, delay))

    async def _send_result_after(self, active: ActiveBuild, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._send_result(active)

    async def _stop_current(self, reason: str) -> None:
        """Drop the current lease and wait (bounded by the kill grace) until its build's
        processes are gone."""
        dying = self._abandon_current(reason)
        if dying is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(self.settings.kill_grace + 5):
                    await asyncio.shield(dying)

    def _abandon_current(self, reason: str) -> asyncio.Task[None] | None:
        """Drop the current lease and stop its build; its process group is killed before
        the workspace lock lets the next build in. Returns the dying build's task."""
        current = self._current
        if current is None:
            return None
        log.warning("abandoning build %d: %s", current.build.build_id, reason)
        self._forget(current)
        current.cancel.set()
        return current.task

    def _forget(self, active: ActiveBuild) -> None:
        if self._current is active:
            self._current = None
        if active.task is None or active.task.done():
            active.close()
        else:
            active.task.add_done_callback(lambda _: active.close())

    # --- running one build (the executor's job; the lease's bookkeeping here) ---------

    async def _run_and_report(self, active: ActiveBuild) -> None:
        async with self._workspace_lock:
            try:
                result = await self.run_one(active)
            except WorkspaceBroken as e:
                self._leave_broken(e)
                return
            except Unsuited as e:
                await self._hand_back(active, e)
                return
        if self._current is not active:
            return  # abandoned while it ran
        if active.build.seat:  # a seat's end frees this runner; the build's runner reports
            await self._send_output(active)
            self._forget(active)
            await self._send_quietly(protocol.SplitSeatEnd(
                build_id=active.build.build_id, attempt=active.build.attempt,
                seat=active.build.seat, message=result.message,
            ))  # fmt: skip
            return
        active.result = result
        await self._send_output(active)
        await self._send_result(active)

    async def _hand_back(self, active: ActiveBuild, unsuited: Unsuited) -> None:
        """The commit needs labels this runner lacks: send what it printed, then hand the
        build back with its needs (the dispatcher queues it again, uncounted). The lease
        is dropped first: the dispatcher may answer with the next build at once."""
        log.warning("build %d handed back: %s", active.build.build_id, unsuited)
        if self._current is not active:
            return  # abandoned meanwhile: its lease is gone anyway
        await self._send_output(active)
        self._forget(active)
        if active.build.seat:  # a seat is not handed back: it ends, the build goes on
            await self._send_quietly(protocol.SplitSeatEnd(
                build_id=active.build.build_id, attempt=active.build.attempt,
                seat=active.build.seat, message=str(unsuited)[: protocol.MAX_TEXT],
            ))  # fmt: skip
            return
        await self._send_quietly(protocol.Unsuited(
            build_id=active.build.build_id, attempt=active.build.attempt,
            needs=unsuited.needs, reason=str(unsuited)[: protocol.MAX_TEXT],
        ))  # fmt: skip

    def _leave_broken(self, error: WorkspaceBroken) -> None:
        """The clone can neither be used nor repaired: leave the pool (the build goes back
        to the queue uncounted) and end the runner with the error."""
        log.error("%s", error)
        self._broken = error
        if self._main is not None:
            self._main.cancel()

    async def _send_result(self, active: ActiveBuild) -> None:
        """Send the report, then the result (both again after a reconnect if need be)."""
        channel = self._channel
        if channel is None or active.result is None or self._current is not active:
            return  # sent again after the next registration
        with contextlib.suppress(ConnectionClosed):
            reports = {"junit.xml": active.report, "split.json": active.split_report}
            for name, report in reports.items():
                for offset, data in protocol.split_data(report):
                    await channel.send(
                        protocol.Artifact(
                            build_id=active.build.build_id,
                            attempt=active.build.attempt,
                            name=name,
                            offset=offset,
                            data=data,
                        )  # fmt: skip
                    )
            await channel.send(active.result)

    async def _send_quietly(self, message: protocol.Message) -> None:
        """Send if connected; what matters is re-sent after a reconnect anyway."""
        if self._channel is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._channel.send(message)

    async def _emit(self, active: ActiveBuild, data: bytes) -> None:
        await active.write(data)
        await self._send_output(active)

    async def _send_output(self, active: ActiveBuild) -> None:
        """Send what the dispatcher lacks; ``sent`` moves before each await, so two
        concurrent calls never send the same bytes."""
        while self._channel is not None and active.sent < active.size:
            channel, wanted = self._channel, active.sent
            offset, data = active.read(wanted, protocol.DATA_CHUNK)
            active.sent = offset + len(data)
            message: protocol.Message = protocol.Output(
                build_id=active.build.build_id,
                attempt=active.build.attempt,
                offset=offset,
                data=protocol.pack_data(data),
                skipped=offset > wanted,  # our spool no longer has wanted..offset
            )
            if active.build.seat:  # for its section of the build's log, on the build's runner
                message = protocol.SplitOutput(
                    build_id=active.build.build_id, attempt=active.build.attempt,
                    seat=active.build.seat, data=protocol.pack_data(data),
                )  # fmt: skip
            try:
                await channel.send(message)
            except ConnectionClosed:
                return

    async def run_one(self, active: ActiveBuild) -> protocol.Result:
        """Run the build of ``active`` with the executor: its output goes to the spool and
        on to the dispatcher, its start is said to the dispatcher."""

        async def emit(data: bytes) -> None:
            await self._emit(active, data)

        async def on_started(started: protocol.Started) -> None:
            if active.build.seat:  # the build's own runner says when the tests started
                return
            active.started = started  # said again to a restarted dispatcher
            await self._send_quietly(started)

        active.link = SplitLink(active.build, self._send_quietly)
        return await self.executor.run(active.build, active, emit, active.cancel, on_started,
                                       active.link)  # fmt: skip

    def _keep_identity(self) -> None:
        """Write the identity file if it is missing (a new name, or an earlier build
        removed the clone's .git) or changed; a failure is logged (the runner still
        holds the secret) and tried again before the next build."""
        if self._secret is None:
            return
        try:
            self.identity.keep(self._secret)
        except ConfigError as e:
            log.error("%s", e)
