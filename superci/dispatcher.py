"""The dispatcher process: an asyncio TCP server that feeds the scheduler and carries out
its decisions against the store, the results folder and the runners' connections.

All state changes happen synchronously between two ``await`` points of the single event
loop, so the scheduler, the database and the connections never disagree halfway through
an event. Messages to peers are queued without waiting (:meth:`Channel.post`), so one
slow peer cannot stall everyone else.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from superci import __version__, defaults, protocol
from superci.channel import Address, Channel
from superci.errors import (
    ConfigError,
    ConnectionClosed,
    ProtocolError,
    RemoteError,
    StaleResult,
    StorageError,
)
from superci.results import ResultsFolder
from superci.scheduler import (
    Action,
    CancelLease,
    CloseSession,
    GiveUp,
    Job,
    Lease,
    Requeue,
    Scheduler,
    StartBuild,
)
from superci.status import BuildStatus
from superci.store import BuildRecord, Store

log = logging.getLogger(__name__)

ResultHook = Callable[[dict[str, Any]], None]


class Dispatcher:
    """Accepts builds, keeps the runner pool, hands out work and records every result."""

    def __init__(
        self,
        store: Store,
        results: ResultsFolder,
        *,
        heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT,
        max_attempts: int = defaults.MAX_ATTEMPTS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_result: ResultHook | None = None,
    ) -> None:
        self.store = store
        self.results = results
        self.scheduler = Scheduler(heartbeat_timeout, max_attempts)
        self._clock = clock
        self._wall = wall_clock
        self._result_hook = on_result
        self._sessions: dict[int, Channel] = {}
        self._session_ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, host: str, port: int) -> Address:
        """Resume the stored queue, then listen; returns the bound address (port 0 → real)."""
        unfinished = [record.to_job() for record in self.store.unfinished()]
        if unfinished:
            log.info("resuming %d unfinished build(s) from %s", len(unfinished), self.store.path)
        self._carry_out(self.scheduler.restore(unfinished, self._clock()))
        try:
            self._server = await asyncio.start_server(self._serve, host, port)
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        self._watchdog = asyncio.create_task(self._watch_heartbeats())
        bound = self._server.sockets[0].getsockname()
        address = Address(bound[0], bound[1])
        log.info("dispatcher listening on %s", address)
        return address

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening and drop every connection; the database keeps the state."""
        self._closing = True  # runners we disconnect keep their leases for the next process
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._server is not None:
            self._server.close()
        for channel in list(self._sessions.values()):
            channel.close_nowait()
        if self._server is not None:
            await self._server.wait_closed()

    async def _watch_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(defaults.HEARTBEAT_CHECK_INTERVAL)
            self._carry_out(self.scheduler.check_heartbeats(self._clock()))

    # --- connections ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer)
        try:
            hello = protocol.check_hello(await channel.receive(defaults.HANDSHAKE_TIMEOUT))
            channel.post(protocol.Welcome(version=protocol.PROTOCOL_VERSION, server=__version__))
            if hello.role == "runner":
                await self._serve_runner(channel)
            else:
                await self._serve_client(channel)
        except ProtocolError as e:
            log.warning("refused %s: %s", channel.peer, e)
            await channel.refuse(e)
        except TimeoutError:
            log.info("closing %s: it stayed silent too long", channel.peer)
            await channel.refuse(ProtocolError("connection idle for too long", code="timeout"))
        except (ConnectionClosed, RemoteError) as e:
            log.debug("%s: %s", channel.peer, e)
        except Exception:
            log.exception("internal error while serving %s", channel.peer)
            await channel.refuse(
                protocol.Error(code="internal", message="internal error; see the dispatcher log")
            )
        finally:
            await channel.close()

    async def _serve_client(self, channel: Channel) -> None:
        while True:
            message = await channel.receive(defaults.CLIENT_IDLE_TIMEOUT)
            if isinstance(message, protocol.Submit):
                channel.post(self.submit(message.sha, message.branch, message.rebuild))
            else:
                raise ProtocolError(f"a client cannot send {message.type}", code="unexpected")

    async def _serve_runner(self, channel: Channel) -> None:
        register = await channel.receive(defaults.HANDSHAKE_TIMEOUT)
        if not isinstance(register, protocol.Register):
            raise ProtocolError("a runner must register first", code="handshake")
        name, session = register.name, next(self._session_ids)
        self._sessions[session] = channel
        try:
            self._register(channel, session, register)
            while True:
                message = await channel.receive()  # silence is the watchdog's job
                self.scheduler.heartbeat(name, session, self._clock())
                self._on_runner_message(channel, name, session, message)
        finally:
            del self._sessions[session]
            if not self._closing:
                self._carry_out(self.scheduler.disconnect(name, session))

    def _register(self, channel: Channel, session: int, message: protocol.Register) -> None:
        lease = None
        if message.build_id is not None and message.attempt is not None:
            lease = Lease(message.build_id, message.attempt)
        self.store.runner_seen(message.name, message.host, message.pid, self._wall())
        actions = self.scheduler.register(
            message.name, session, message.host, message.pid, lease, self._clock()
        )
        offset = None
        job = self.scheduler.jobs.get(lease.build_id) if lease is not None else None
        if job is not None and job.lease == lease and job.runner == message.name:
            offset = self.results.log_size(job.sha)
            log.info(
                "runner %s re-adopted build %d at output byte %d",
                message.name,
                job.build_id,
                offset,
            )
        log.info("runner %s registered from %s (pid %d)", message.name, channel.peer, message.pid)
        channel.post(protocol.Registered(output_offset=offset))
        self._carry_out(actions)

    def _on_runner_message(
        self, channel: Channel, name: str, session: int, message: protocol.Message
    ) -> None:
        if isinstance(message, protocol.Heartbeat):
            return
        if isinstance(message, protocol.Output):
            self._on_output(name, session, message)
        elif isinstance(message, protocol.Result):
            self._on_result(channel, name, session, message)
        else:
            raise ProtocolError(f"a runner cannot send {message.type}", code="unexpected")

    # --- requests -------------------------------------------------------------------

    def submit(self, sha: str, branch: str, rebuild: bool = False) -> protocol.Submitted:
        """Queue a commit unless it is known; acknowledged only once it is committed."""
        known = self.store.latest_for(sha)
        if known is not None and (not rebuild or not known.status.finished):
            return protocol.Submitted(build_id=known.id, sha=sha, queued=False, status=known.status)
        record = self.store.add_build(sha, branch, self._wall())
        log.info("queued build %d of %s (%s)", record.id, sha[:12], branch)
        self._carry_out(self.scheduler.add_build(record.id, sha, branch))
        return protocol.Submitted(build_id=record.id, sha=sha, queued=True, status=record.status)

    def _on_output(self, name: str, session: int, message: protocol.Output) -> None:
        try:  # malformed is malformed, stale or not; ValueError: non-ASCII text
            data = base64.b64decode(message.data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ProtocolError(f"output data is not base64: {e}") from None
        try:
            job = self.scheduler.check_lease(message.build_id, message.attempt, name, session)
        except StaleResult as e:
            log.debug("dropped output from %s: %s", name, e)
            return
        try:
            self.results.append_output(job.sha, message.offset, data)
        except StorageError as e:
            log.error("build %d: %s", job.build_id, e)

    def _on_result(
        self, channel: Channel, name: str, session: int, message: protocol.Result
    ) -> None:
        """Record a result if it is the current lease's, acknowledge it, then hand out the
        next build (after the ack, so the runner is free when the build arrives)."""
        ack = {"build_id": message.build_id, "attempt": message.attempt}
        status = BuildStatus(message.status)
        if not status.finished:
            raise ProtocolError(f"a result cannot have status {status}", code="bad-message")
        try:
            job = self.scheduler.check_lease(message.build_id, message.attempt, name, session)
        except StaleResult as e:
            log.warning("refused a result from %s: %s", name, e)
            channel.post(protocol.ResultAck(**ack, accepted=False, reason=str(e)))
            return
        try:
            self._record(job, status, message.message, message)
        except StorageError as e:
            log.error("build %d: result not recorded, the runner will retry: %s", job.build_id, e)
            channel.post(protocol.ResultAck(**ack, accepted=False, retry=True, reason=str(e)))
            return
        channel.post(protocol.ResultAck(**ack, accepted=True))
        self._carry_out(self.scheduler.finish(job.build_id))

    def _record(
        self, job: Job, status: BuildStatus, message: str, result: protocol.Result | None
    ) -> None:
        """Write result.json, then mark the build finished: in that order, so a crash
        between the two re-runs the build rather than losing its result."""
        record = self.store.get(job.build_id)
        assert record is not None, "every job has a stored build"
        finished_at = self._wall()
        document = result_document(record, status, message, result, finished_at)
        self.results.write_result(job.sha, document)
        self.store.finish(job.build_id, status, finished_at, message)
        log.info("build %d of %s: %s", job.build_id, job.sha[:12], status)
        if self._result_hook is not None:
            self._result_hook(document)

    # --- carrying out the scheduler's decisions -------------------------------------

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            try:
                self._carry_out_one(action)
            except StorageError as e:
                log.error("could not carry out %s: %s", type(action).__name__, e)

    def _carry_out_one(self, action: Action) -> None:
        match action:
            case StartBuild():
                self.store.mark_running(
                    action.build_id, action.attempt, action.runner, self._wall()
                )
                self.results.start_log(action.sha)
                log.info(
                    "build %d (%s) attempt %d → runner %s",
                    action.build_id, action.sha[:12], action.attempt, action.runner,
                )  # fmt: skip
                self._post(action.session, _build_message(action))
            case Requeue():
                why = f"attempt {action.attempt} lost with runner {action.lost_runner}: "
                log.warning("build %d re-queued: %s%s", action.build_id, why, action.reason)
                self.store.mark_queued(action.build_id, why + action.reason)
            case GiveUp():
                record = self.store.get(action.build_id)
                assert record is not None
                log.error("build %d: %s", action.build_id, action.reason)
                self._record(record.to_job(), BuildStatus.ERROR, action.reason, None)
            case CloseSession():
                channel = self._sessions.get(action.session)
                if channel is not None:
                    channel.post(protocol.Error(code="closed", message=action.reason))
                    channel.close_nowait()
            case CancelLease():
                cancel = protocol.Cancel(
                    build_id=action.build_id, attempt=action.attempt, reason=action.reason
                )
                self._post(action.session, cancel)

    def _post(self, session: int, message: protocol.Message) -> None:
        channel = self._sessions.get(session)
        if channel is not None:
            channel.post(message)


def _build_message(action: StartBuild) -> protocol.Build:
    return protocol.Build(
        build_id=action.build_id, attempt=action.attempt, sha=action.sha, branch=action.branch
    )


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def result_document(
    record: BuildRecord,
    status: BuildStatus,
    message: str,
    result: protocol.Result | None,
    finished_at: float,
) -> dict[str, Any]:
    """The content of ``result.json``: what happened, where, when, and the test counts."""
    return {
        "sha": record.sha,
        "branch": record.branch,
        "build_id": record.id,
        "status": str(status),
        "exit_code": result.exit_code if result else None,
        "duration": round(result.duration, 3) if result else None,
        "message": message,
        "runner": record.runner,
        "attempt": record.attempt,
        "runners": record.runners,
        "tests": dict(result.counts) if result else {},
        "failures": list(result.failures) if result else [],
        "queued_at": _iso(record.queued_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(finished_at),
    }


async def run_dispatcher(
    host: str,
    port: int,
    results_dir: Path,
    state_file: Path,
    *,
    heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT,
    max_attempts: int = defaults.MAX_ATTEMPTS,
    on_result: ResultHook | None = None,
    ready: Callable[[Address], None] | None = None,
) -> None:
    """Run a dispatcher until cancelled (the process entry point)."""
    store = Store(state_file)
    dispatcher = Dispatcher(
        store,
        ResultsFolder(results_dir),
        heartbeat_timeout=heartbeat_timeout,
        max_attempts=max_attempts,
        on_result=on_result,
    )
    try:
        address = await dispatcher.start(host, port)
        if ready is not None:
            ready(address)
        await dispatcher.serve_forever()
    finally:
        await dispatcher.close()
        store.close()
