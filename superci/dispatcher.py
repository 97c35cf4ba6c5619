"""The dispatcher process: an asyncio TCP server that feeds the scheduler and carries out
its decisions against the store, the results folder and the runners' connections.

All state changes happen synchronously between two ``await`` points of the single event
loop, so the scheduler, the database and the connections never disagree halfway through
an event. Messages to peers are queued without waiting (:meth:`Channel.post`), so one
slow peer cannot stall everyone else.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from superci import __version__, defaults, names, protocol
from superci.auth import NO_CREDENTIALS, Credentials
from superci.channel import Address, Channel
from superci.errors import (
    AmbiguousCommit,
    ConfigError,
    ConnectionClosed,
    ProtocolError,
    RemoteError,
    StaleResult,
    StorageError,
    UnknownBuild,
)
from superci.handshake import ServerHandshake
from superci.logstream import LogFollower
from superci.ratelimit import RateLimitedLog
from superci.report import build_summary, counts_text, result_document, status_document
from superci.results import ResultsFolder
from superci.scheduler import (
    Action,
    CancelLease,
    CloseSession,
    EndBuild,
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
        build_timeout: float = defaults.MAX_TIMEOUT,
        credentials: Credentials = NO_CREDENTIALS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_result: ResultHook | None = None,
    ) -> None:
        self.store = store
        self.results = results
        self.scheduler = Scheduler(heartbeat_timeout, max_attempts, build_timeout)
        self._clock = clock
        self._wall = wall_clock
        self._result_hook = on_result
        self._sessions: dict[int, Channel] = {}  # runner connections, by session
        self._connections: set[Channel] = set()  # every open connection
        self._handlers: set[asyncio.Task[None]] = set()
        self._session_ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False
        self._followers: dict[str, set[LogFollower]] = defaultdict(set)
        self._credentials = credentials
        self._unrecorded: dict[int, tuple[Channel, Job, BuildStatus, str, protocol.Result]] = {}
        self._outbox: list[tuple[int, protocol.Message]] | None = None  # held while committing
        self._unauthenticated = 0  # connections still in their handshake
        # What strangers cause (failed handshakes, floods) is logged at a bounded rate.
        self._stranger_log = RateLimitedLog(log)

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, host: str, port: int) -> Address:
        """Resume the stored queue, then listen; returns the bound address (port 0 → real)."""
        unfinished = [record.to_job() for record in self.store.unfinished()]
        if unfinished:
            log.info("resuming %d unfinished build(s) from %s", len(unfinished), self.store.path)
        self._carry_out(self.scheduler.restore(unfinished, self._clock()))
        try:
            self._server = await asyncio.start_server(
                self._serve, host, port, backlog=defaults.LISTEN_BACKLOG, ssl=self._credentials.ssl,
                ssl_handshake_timeout=defaults.HANDSHAKE_TIMEOUT if self._credentials.ssl else None,
            )  # fmt: skip
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        self._watchdog = asyncio.create_task(self._watch())
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
        for channel in list(self._connections):
            channel.close_nowait()
        handlers = [t for t in self._handlers if not t.done()]
        if handlers:  # let them end on their closed connection rather than be cancelled
            await asyncio.wait(handlers, timeout=defaults.SHUTDOWN_GRACE)
        if self._server is not None:
            await self._server.wait_closed()

    async def _watch(self) -> None:
        """Silent runners and overdue builds are found here, not by any one connection."""
        while True:
            await asyncio.sleep(defaults.HEARTBEAT_CHECK_INTERVAL)
            now = self._clock()
            try:
                self._carry_out(self.scheduler.check_heartbeats(now))
                self._carry_out(self.scheduler.check_deadlines(now))
            except Exception:  # the watchdog must outlive any one bad tick
                log.exception("internal error in the heartbeat and deadline checks")

    # --- connections ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = Channel(reader, writer)
        if self._closing or len(self._connections) >= defaults.MAX_CONNECTIONS:
            log.warning("refused %s: %d connections open", channel.peer, len(self._connections))
            busy = protocol.Error(code="busy", message="too many connections; retry later")
            await channel.refuse(busy)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(channel)
        self._handlers.add(task)
        try:
            await self._serve_connection(channel)
        finally:
            self._connections.discard(channel)
            self._handlers.discard(task)

    async def _serve_connection(self, channel: Channel) -> None:
        if self._unauthenticated >= defaults.MAX_UNAUTHENTICATED:
            self._stranger_log.log(
                logging.WARNING, "refused %s: too many connections in their handshake", channel.peer
            )
            busy = protocol.Error(code="busy", message="too many pending connections; retry later")
            await channel.refuse(busy)
            return
        self._unauthenticated += 1
        in_handshake = True
        try:
            hello = await self._handshake(channel)
            self._unauthenticated -= 1
            in_handshake = False
            if hello.role == "runner":
                await self._serve_runner(channel)
            else:
                await self._serve_client(channel)
        except ProtocolError as e:
            self._stranger_log.log(logging.WARNING, "refused %s: %s", channel.peer, e)
            await channel.refuse(e)
        except TimeoutError:
            self._stranger_log.log(
                logging.INFO, "closing %s: it stayed silent too long", channel.peer
            )
            await channel.refuse(ProtocolError("connection idle for too long", code="timeout"))
        except (ConnectionClosed, RemoteError) as e:
            log.debug("%s: %s", channel.peer, e)
        except StorageError as e:
            log.error("serving %s: %s", channel.peer, e)
            await channel.refuse(protocol.Error(code="storage", message=f"dispatcher: {e}"))
        except Exception:
            log.exception("internal error while serving %s", channel.peer)
            await channel.refuse(
                protocol.Error(code="internal", message="internal error; see the dispatcher log")
            )
        finally:
            if in_handshake:
                self._unauthenticated -= 1
            await channel.close()

    async def _handshake(self, channel: Channel) -> protocol.Hello:
        """Hello, welcome and, with a token, the challenge-response (see superci.handshake)."""
        handshake = ServerHandshake(self._credentials.token, __version__)
        while not handshake.done:
            try:
                message = await channel.receive(defaults.HANDSHAKE_TIMEOUT)
            except ConnectionClosed:
                if handshake.hello is not None and self._credentials.token is not None:
                    self._stranger_log.log(
                        logging.WARNING,
                        "%s left without authenticating (missing or wrong token?)",
                        channel.peer,
                    )
                raise
            for answer in handshake.receive(message):
                channel.post(answer)
        assert handshake.hello is not None
        return handshake.hello

    async def _serve_client(self, channel: Channel) -> None:
        while True:
            message = await channel.receive(defaults.CLIENT_IDLE_TIMEOUT)
            if isinstance(message, protocol.Submit):
                channel.post(self.submit(message.sha, message.branch, message.rebuild))
            elif isinstance(message, protocol.CancelRequest):
                channel.post(self.cancel(message.commit))
            elif isinstance(message, protocol.Query):
                channel.post(self.query(message))
            elif isinstance(message, protocol.LogRequest):
                await self._send_log(channel, message)
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
            if self._unrecorded:  # results this runner sent just before it went away
                self._record_results()
            if not self._closing:
                self._carry_out(self.scheduler.disconnect(name, session, self._clock()))

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
        if lease is not None and (job is None or job.lease != lease or job.runner != message.name):
            log.warning(
                "runner %s claimed build %d attempt %d, which is no longer its lease; "
                "its result will be refused",
                message.name, lease.build_id, lease.attempt,
            )  # fmt: skip
        elif job is not None:
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
        elif isinstance(message, protocol.Started):
            job = self._leased(message.build_id, message.attempt, name, session)
            if job is not None:
                timeout, grace = message.timeout, message.kill_grace
                self.scheduler.started(job, timeout, grace, self._clock())
        elif isinstance(message, protocol.Artifact):
            self._on_artifact(name, session, message)
        elif isinstance(message, protocol.Result):
            self._on_result(channel, name, session, message)
        elif isinstance(message, protocol.Leaving):
            self._on_leaving(name, session, message)
        else:
            raise ProtocolError(f"a runner cannot send {message.type}", code="unexpected")

    def _on_leaving(self, name: str, session: int, message: protocol.Leaving) -> None:
        """A runner leaves on purpose: results it sent first are recorded, then its build
        goes back to the queue without counting an attempt."""
        if self._unrecorded:
            self._record_results()
        log.info("runner %s is leaving: %s", name, message.reason)
        self._carry_out(self.scheduler.leave(name, session, message.reason, self._clock()))

    # --- requests -------------------------------------------------------------------

    def submit(self, sha: str, branch: str, rebuild: bool = False) -> protocol.Submitted:
        """Queue a commit unless it is known; acknowledged only once it is committed."""
        known = self.store.latest_for(sha)
        if known is not None and (not rebuild or not known.status.finished):
            return protocol.Submitted(build_id=known.id, sha=sha, queued=False, status=known.status)
        record = self.store.add_build(sha, branch, self._wall())
        log.info("queued build %d of %s (%s)", record.id, sha[:12], branch)
        self._carry_out(self.scheduler.add_build(record.id, sha, branch, self._clock()))
        return protocol.Submitted(build_id=record.id, sha=sha, queued=True, status=record.status)

    def cancel(self, commit: str) -> protocol.Reply:
        """Cancel the newest build of a commit: at once if queued, through its runner if
        running; a finished or unknown commit is said to be so."""
        record = self._resolve(commit)
        if isinstance(record, protocol.Reply):
            return record
        sha = record.sha
        if record.status.finished:  # "finished", not its status: it may be "cancelled"
            return protocol.Reply(
                status="finished",
                message=f"build {record.id} of {sha} already finished ({record.status}); "
                "nothing to cancel",
            )
        try:
            actions = self.scheduler.cancel(record.id, self._clock(), reason="cancelled by request")
        except UnknownBuild:  # it ended in this very turn of the loop
            return protocol.Reply(status="finished", message=f"build {record.id} just ended")
        self._carry_out(actions)
        if record.status is BuildStatus.QUEUED:
            return protocol.Reply(status="cancelled", message=f"build {record.id} cancelled")
        return protocol.Reply(
            status="cancelling",
            message=f"build {record.id} is being stopped on runner {record.runner}",
        )

    def query(self, message: protocol.Query) -> protocol.Reply:
        """``status``: the pool, the queue and the last builds; ``show``: one commit."""
        if message.what == "status":
            document = status_document(self.scheduler, self.store, self._clock(), message.limit)
            return protocol.Reply(status="ok", document=json.dumps(document))
        assert message.commit is not None, "checked by the protocol"
        record = self._resolve(message.commit, message.build_id)
        if isinstance(record, protocol.Reply):
            return record
        result = self.results.read_result(record.sha, message.build_id)
        if result is None or result.get("build_id") != record.id:
            result = build_summary(record)
        return protocol.Reply(status=record.status, document=json.dumps(result))

    def _resolve(self, commit: str, build_id: int | None = None) -> BuildRecord | protocol.Reply:
        """The build a client means, or the reply that says why there is none."""
        try:
            return names.resolve(self.store, commit, build_id)
        except UnknownBuild as e:
            return protocol.Reply(status="unknown", message=str(e))
        except AmbiguousCommit as e:
            return protocol.Reply(status="ambiguous", message=str(e))

    async def _send_log(self, channel: Channel, request: protocol.LogRequest) -> None:
        """Send a commit's log; when following, keep sending until the build ends, then
        say how it ended."""
        record = self._resolve(request.commit, request.build_id)
        if isinstance(record, protocol.Reply):
            channel.post(record)
            return
        sha = record.sha
        follower = None
        if request.follow and not record.status.finished:
            follower = LogFollower()
            self._followers[sha].add(follower)
        try:
            log_ = self.results.read_log(sha, request.offset, request.build_id)
            await _send_chunks(channel, log_)
            while follower is not None and (data := await follower.next()) is not None:
                await _send_chunks(channel, data)
        finally:
            if follower is not None and sha in self._followers:
                self._followers[sha].discard(follower)
        record = self.store.get(record.id) or record
        if follower is not None and follower.overflowed:
            message = "the log reader fell too far behind; run the command again"
            channel.post(protocol.Reply(status="error", message=message))
        else:
            channel.post(protocol.Reply(status=record.status, message=record.message))

    def _leased(self, build_id: int, attempt: int, name: str, session: int) -> Job | None:
        """The job if this session holds its lease; stale messages are dropped quietly."""
        try:
            return self.scheduler.check_lease(build_id, attempt, name, session)
        except StaleResult as e:
            log.debug("dropped a message from %s: %s", name, e)
            return None

    def _on_output(self, name: str, session: int, message: protocol.Output) -> None:
        data = protocol.unpack_data(message.data)  # malformed is malformed, stale or not
        job = self._leased(message.build_id, message.attempt, name, session)
        if job is None:
            return
        try:
            new = self.results.append_output(job.sha, message.offset, data)
        except StorageError as e:
            # Drop the connection: the runner registers again and resends from what the
            # log really holds, instead of every later chunk being refused as a gap.
            log.error("build %d: %s; reconnecting its runner", job.build_id, e)
            self._drop_session(session)
            return
        for follower in self._followers.get(job.sha, ()):
            follower.push(new)

    def _on_artifact(self, name: str, session: int, message: protocol.Artifact) -> None:
        data = protocol.unpack_data(message.data)
        job = self._leased(message.build_id, message.attempt, name, session)
        if job is None:
            return
        try:
            self.results.append_artifact(job.sha, message.name, message.offset, data)
        except StorageError as e:
            log.error("build %d: %s", job.build_id, e)

    def _on_result(
        self, channel: Channel, name: str, session: int, message: protocol.Result
    ) -> None:
        """Record a result if it is the current lease's, acknowledge it, then hand out the
        next build (after the ack, so the runner is free when the build arrives)."""
        status = BuildStatus(message.status)
        if not status.finished:
            raise ProtocolError(f"a result cannot have status {status}", code="bad-message")
        try:
            job = self.scheduler.check_lease(message.build_id, message.attempt, name, session)
        except StaleResult as e:
            log.warning("refused a result from %s: %s", name, e)
            channel.post(_ack(message, accepted=False, reason=str(e)))
            return
        text = message.message
        if job.stopping is not None and status in (BuildStatus.CANCELLED, BuildStatus.TIMEOUT):
            status, text = job.stopping, job.stop_reason  # stopped because we asked
        if job.build_id in self._unrecorded:
            return  # a resend of a result about to be recorded
        self._unrecorded[job.build_id] = (channel, job, status, text, message)
        if len(self._unrecorded) == 1:
            asyncio.get_running_loop().call_soon(self._record_results)

    def _record_results(self) -> None:
        """Record every result that arrived in one turn of the loop with one commit, then
        hand out the next builds with another: two fsyncs for many builds, not per build."""
        arrived, self._unrecorded = list(self._unrecorded.values()), {}
        pending = []
        for item in arrived:  # a lease may have ended since it arrived
            channel, job, _, _, message = item
            current = self.scheduler.jobs.get(job.build_id) is job
            if current and job.status is BuildStatus.RUNNING and job.attempt == message.attempt:
                pending.append(item)
            else:
                channel.post(_ack(message, accepted=False, reason="the build ended meanwhile"))
        documents = []
        try:
            with self.store.transaction():
                for _, job, status, text, message in pending:
                    documents.append(self._write_result(job, status, text, message))
        except StorageError as e:
            for channel, job, _, _, message in pending:
                log.error(
                    "build %d: result not recorded, the runner will retry: %s", job.build_id, e
                )
                channel.post(_ack(message, accepted=False, retry=True, reason=str(e)))
            return
        actions: list[Action] = []
        now = self._clock()
        for (channel, job, status, _, message), document in zip(pending, documents, strict=True):
            self._announce(job, status, document)
            channel.post(_ack(message, accepted=True))
            actions += self.scheduler.finish(job.build_id, now)
        self._outbox = []  # builds go out once their lease is committed
        try:
            with self.store.transaction():
                self._carry_out(actions)
        except StorageError as e:
            log.error("could not store the builds handed out: %s", e)
        finally:
            outbox, self._outbox = self._outbox, None
            for session, outgoing in outbox:
                self._post(session, outgoing)

    def _record(
        self, job: Job, status: BuildStatus, message: str, result: protocol.Result | None
    ) -> None:
        self._announce(job, status, self._write_result(job, status, message, result))

    def _write_result(
        self, job: Job, status: BuildStatus, message: str, result: protocol.Result | None
    ) -> dict[str, Any]:
        """Write result.json, then mark the build finished: in that order, so a crash
        between the two re-runs the build rather than losing its result."""
        record = self.store.get(job.build_id)
        assert record is not None, "every job has a stored build"
        finished_at = self._wall()
        document = result_document(record, status, message, result, finished_at)
        self.results.write_result(job.sha, document)
        self.store.finish(job.build_id, status, finished_at, message, document["tests"])
        return document

    def _announce(self, job: Job, status: BuildStatus, document: dict[str, Any]) -> None:
        counts = counts_text(document.get("tests"))
        log.info("build %d of %s: %s%s: %s", job.build_id, job.sha[:12], status,
                 f" ({counts})" if counts else "", document.get("message", ""))  # fmt: skip
        for follower in self._followers.pop(job.sha, ()):
            follower.end()
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
                try:
                    self.store.mark_running(
                        action.build_id, action.attempt, action.runner, self._wall()
                    )
                    self.results.start_log(action.sha, action.build_id)
                except StorageError as e:
                    # Not sent: dropping the session gives the lease back (re-queued).
                    log.error("cannot start build %d: %s; dropping runner %s",
                              action.build_id, e, action.runner)  # fmt: skip
                    self._drop_session(action.session)
                    return
                log.info(
                    "build %d (%s) attempt %d → runner %s",
                    action.build_id, action.sha[:12], action.attempt, action.runner,
                )  # fmt: skip
                self._post(action.session, _build_message(action))
            case Requeue():
                if action.counted:
                    why = f"attempt {action.attempt} lost with runner {action.lost_runner}: "
                else:
                    why = (
                        f"attempt {action.attempt} given back (not counted) by runner "
                        f"{action.lost_runner}, which left: "
                    )
                log.warning("build %d re-queued: %s%s", action.build_id, why, action.reason)
                self.store.mark_queued(action.build_id, why + action.reason, action.counted)
            case EndBuild():
                record = self.store.get(action.build_id)
                assert record is not None
                log.warning(
                    "build %d ends as %s: %s", action.build_id, action.status, action.reason
                )
                self._record(record.to_job(), action.status, action.reason, None)
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

    def _drop_session(self, session: int) -> None:
        """Close a runner's connection; the usual lost-runner path takes it from there."""
        channel = self._sessions.get(session)
        if channel is not None:
            channel.close_nowait()

    def _post(self, session: int, message: protocol.Message) -> None:
        if self._outbox is not None:
            self._outbox.append((session, message))
            return
        channel = self._sessions.get(session)
        if channel is not None:
            channel.post(message)


def _ack(result: protocol.Result, **fields: Any) -> protocol.ResultAck:
    return protocol.ResultAck(build_id=result.build_id, attempt=result.attempt, **fields)


def _build_message(action: StartBuild) -> protocol.Build:
    return protocol.Build(
        build_id=action.build_id, attempt=action.attempt, sha=action.sha, branch=action.branch
    )


async def _send_chunks(channel: Channel, data: bytes) -> None:
    """Send log bytes in frames, waiting for the reader (its own pace, its own connection)."""
    for _, piece in protocol.split_data(data):
        await channel.send(protocol.LogData(data=piece))


async def run_dispatcher(
    host: str,
    port: int,
    results_dir: Path,
    state_file: Path,
    *,
    heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT,
    max_attempts: int = defaults.MAX_ATTEMPTS,
    build_timeout: float = defaults.MAX_TIMEOUT,
    max_log_bytes: int = defaults.MAX_LOG_BYTES,
    credentials: Credentials = NO_CREDENTIALS,
    on_result: ResultHook | None = None,
    ready: Callable[[Address], None] | None = None,
) -> None:
    """Run a dispatcher until cancelled (the process entry point)."""
    store = Store(state_file)
    dispatcher = Dispatcher(
        store,
        ResultsFolder(results_dir, max_log_bytes),
        heartbeat_timeout=heartbeat_timeout,
        max_attempts=max_attempts,
        build_timeout=build_timeout,
        credentials=credentials,
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
