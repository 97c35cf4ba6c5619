"""The dispatcher process: an asyncio TCP server that feeds the scheduler and carries out
its decisions against the store, the results folder and the runners' connections.

All state changes happen synchronously between two ``await`` points of the single event
loop, so the scheduler, the database and the connections never disagree halfway through
an event. Messages to peers are queued without waiting (:meth:`Channel.post`), so one
slow peer cannot stall everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from superci import __version__, defaults, identity, names, protocol
from superci.admission import Admission, bytes_received
from superci.auth import NO_CREDENTIALS, Credentials
from superci.channel import Address, Channel
from superci.errors import (
    AmbiguousCommit,
    ConfigError,
    ConnectionClosed,
    ProtocolError,
    RemoteError,
    ReportTooLarge,
    RunnerRefused,
    StaleResult,
    StorageError,
    UnknownBuild,
)
from superci.handshake import ServerHandshake
from superci.logstream import LogFollower
from superci.ratelimit import RateLimitedLog
from superci.report import (
    STATUS_LISTS,
    build_summary,
    counts_text,
    fitted,
    result_document,
    status_document,
)
from superci.results import ResultsFolder
from superci.scheduler import (
    Action,
    CancelLease,
    CloseSession,
    EndBuild,
    Job,
    Lease,
    Proof,
    Requeue,
    Scheduler,
    StartBuild,
    identify,
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
        log_idle_timeout: float = defaults.LOG_IDLE_TIMEOUT,
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
        self._log_idle_timeout = log_idle_timeout
        self._unrecorded: dict[int, tuple[Channel, Job, BuildStatus, str, protocol.Result]] = {}
        self._outbox: list[tuple[int, protocol.Message]] | None = None  # held while committing
        # Connections still in their opening handshake (TLS, hello, token), by handler.
        self._admission: Admission[asyncio.Task[None]] = Admission()
        self._dropped: set[asyncio.Task[None]] = set()  # made room for newer ones
        self._sockets: dict[asyncio.Task[None], Any] = {}  # each handler's socket
        # What strangers cause (failed handshakes, floods) is logged at a bounded rate.
        self._stranger_log = RateLimitedLog(log)
        # Faults retried every tick (a full disk, a locked database) are logged sparingly.
        self._fault_log = RateLimitedLog(log, burst=3, period=10.0)
        # Requeue and EndBuild whose write failed, per build, in order: retried each tick,
        # and before anything else is done to the build, so the store catches up.
        self._unwritten: dict[int, list[Requeue | EndBuild]] = {}
        self._detached: set[int] = set()  # sessions closed to make their runner resend
        self._runner_log = RateLimitedLog(log)  # what a misbehaving runner causes, likewise
        self._resource_log = RateLimitedLog(log, burst=1, period=1.0)
        self._loop_handler: Any = None

    @property
    def _unauthenticated(self) -> int:
        """How many connections are in their opening handshake."""
        return len(self._admission)

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, host: str, port: int) -> Address:
        """Resume the stored queue, then listen; returns the bound address (port 0 → real)."""
        unfinished = [record.to_job() for record in self.store.unfinished()]
        if unfinished:
            log.info("resuming %d unfinished build(s) from %s", len(unfinished), self.store.path)
        self._carry_out(self.scheduler.restore(unfinished, self._clock()))
        loop = asyncio.get_running_loop()
        self._loop_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._on_loop_error)
        try:
            # Plain TCP: TLS is set up in _serve, once admitted, so a TLS handshake counts
            # against the same limits as any other (see superci.admission).
            self._server = await asyncio.start_server(
                self._serve, host, port, backlog=defaults.LISTEN_BACKLOG
            )
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
        for task in list(self._handlers):
            if task in self._admission:
                self._admission.leave(task)
                self._drop(task)
        handlers = [t for t in self._handlers if not t.done()]
        if handlers:  # let them end on their closed connection rather than be cancelled
            await asyncio.wait(handlers, timeout=defaults.SHUTDOWN_GRACE)
        if self._server is not None:
            await self._server.wait_closed()
        asyncio.get_running_loop().set_exception_handler(self._loop_handler)

    async def _watch(self) -> None:
        """Silent runners and overdue builds are found here, not by any one connection;
        writes that failed and builds that could not start are retried here."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(defaults.HEARTBEAT_CHECK_INTERVAL)
            awake = loop.time()  # the process's own clock, not the injected one
            late, last = awake - last - defaults.HEARTBEAT_CHECK_INTERVAL, awake
            try:
                self._tick(self._clock(), late)
            except Exception:  # the watchdog must outlive any one bad tick
                log.exception("internal error in the heartbeat and deadline checks")

    def _tick(self, now: float, late: float = 0.0) -> None:
        """One turn of the watchdog. A turn ``late`` by far more than its interval means
        the process was paused (SIGSTOP, a VM pause) or its loop blocked: that time is
        not held against the runners, whose heartbeats wait unread in the sockets."""
        if late > defaults.HEARTBEAT_CHECK_INTERVAL:
            log.warning("the dispatcher was paused for %.1fs; runners get that time back", late)
            self.scheduler.resumed(late)
        for build_id in list(self._unwritten):
            self._write_unwritten(build_id)
        self._carry_out(self.scheduler.dispatch(now))  # builds given back earlier
        self._carry_out(self.scheduler.check_heartbeats(now))
        self._carry_out(self.scheduler.check_deadlines(now))
        self._carry_out(self.scheduler.check_benched(now))

    # --- connections ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing or len(self._handlers) >= defaults.MAX_CONNECTIONS:
            self._stranger_log.log(
                logging.WARNING, "refused a connection: %d connections open", len(self._handlers)
            )
            if self._credentials.ssl is None:  # with TLS, nothing can be said before it
                busy = protocol.Error(code="busy", message="too many connections; retry later")
                writer.write(protocol.encode(busy))
            writer.close()
            return
        self._handlers.add(task)
        self._sockets[task] = writer.get_extra_info("socket")
        # Over TLS no whole message is read before the TLS handshake ends: whether the
        # peer sent any byte at all tells a client mid-handshake from a silent socket.
        spoke = self._has_sent_bytes if self._credentials.ssl is not None else None
        for victim in self._admission.admit(task, spoke):
            self._drop(victim)
        deadline = asyncio.get_running_loop().time() + defaults.HANDSHAKE_TIMEOUT
        try:
            channel = await self._secure(reader, writer, deadline)  # no await before this
            if channel is not None:
                self._connections.add(channel)
                try:
                    await self._serve_connection(channel, deadline)
                finally:
                    self._connections.discard(channel)
        finally:
            self._admission.leave(task)
            self._dropped.discard(task)
            self._handlers.discard(task)
            self._sockets.pop(task, None)

    def _has_sent_bytes(self, task: asyncio.Task[None]) -> bool:
        """Whether the peer of a pending connection sent anything yet, by the kernel's
        count: a TLS client in its handshake has, a silent socket of a flood has not."""
        sock = self._sockets.get(task)
        return sock is not None and bytes_received(sock) > 0

    def _drop(self, task: asyncio.Task[None]) -> None:
        """End a connection still in its handshake, to make room for a newer one."""
        self._stranger_log.log(
            logging.WARNING,
            "dropped a connection still in its handshake to make room (%d of them pending; "
            "silent ones go first)",
            len(self._admission) + 1,
        )
        self._dropped.add(task)
        task.cancel()

    def _was_dropped(self, task: asyncio.Task[None] | None) -> bool:
        """Whether a CancelledError is our :meth:`_drop` (then it is taken back)."""
        if task is None or task not in self._dropped:
            return False
        self._dropped.discard(task)
        task.uncancel()
        return True

    async def _secure(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: float
    ) -> Channel | None:
        """The channel, over TLS when it is served; None if the TLS handshake failed.

        Called before anything else awaits, so the first bytes of the peer reach TLS."""
        context = self._credentials.ssl
        if context is None:
            return Channel(reader, writer)
        peer = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout_at(deadline):
                await writer.start_tls(context)
        except asyncio.CancelledError:
            if not self._was_dropped(asyncio.current_task()):
                raise
            reason = "dropped to make room for newer connections"
        except TimeoutError:
            reason = "no TLS handshake in time"
        except OSError as e:  # ssl.SSLError, a reset
            reason = f"TLS handshake failed: {e}"
        else:
            if writer.transport is not None:  # None: closed under the handshake
                return Channel(reader, writer)
            return None
        self._stranger_log.log(logging.INFO, "closing %s: %s", peer, reason)
        writer.transport.close()
        return None

    async def _serve_connection(self, channel: Channel, deadline: float) -> None:
        task = asyncio.current_task()
        try:
            async with asyncio.timeout_at(deadline):
                hello = await self._handshake(channel)
            self._admission.leave(task)  # type: ignore[arg-type]
            if hello.role == "runner":
                await self._serve_runner(channel)
            else:
                await self._serve_client(channel)
        except asyncio.CancelledError:
            if not self._was_dropped(task):
                raise
            busy = "too many connections in their handshake; retry later"
            await channel.refuse(protocol.Error(code="busy", message=busy))
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
            await channel.close()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Out of file descriptors, asyncio stops accepting for a second and reports it
        here each time: say so at most once a second, and drop silent handshakes so
        their descriptors serve the next accepts."""
        error = context.get("exception")
        if not (isinstance(error, OSError) and error.errno in _OUT_OF_RESOURCES):
            if self._loop_handler is not None:
                self._loop_handler(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        victims = self._admission.out_of_files()
        for victim in victims:
            self._drop(victim)
        self._resource_log.log(
            logging.WARNING,
            "cannot accept connections (%s): %d open, %d in their handshake now (%d dropped); "
            "trying again in a second. If this is no attack, raise the limit (ulimit -n)",
            error.strerror or error, len(self._handlers), len(self._admission), len(victims),
        )  # fmt: skip

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
            self._admission.heard(asyncio.current_task())  # type: ignore[arg-type]
            for answer in handshake.receive(message):
                channel.post(answer)
        assert handshake.hello is not None
        return handshake.hello

    async def _serve_client(self, channel: Channel) -> None:
        while True:
            message = await channel.receive(defaults.CLIENT_IDLE_TIMEOUT)
            if isinstance(message, protocol.Submit):
                channel.post(await self._submit_when_stored(message))
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
                if session in self._detached:
                    return  # what is still buffered is sent again after it registers
                self.scheduler.heartbeat(name, session, self._clock())
                self._on_runner_message(channel, name, session, message)
        finally:
            del self._sessions[session]
            self._detached.discard(session)
            if self._unrecorded:  # results this runner sent just before it went away
                self._record_results()
            if not self._closing:
                self._carry_out(self.scheduler.disconnect(name, session, self._clock()))

    def _register(self, channel: Channel, session: int, message: protocol.Register) -> None:
        """Admit a runner under its name if it proves the name's identity (or the name is
        new: then it is bound to the secret the runner shows, or to one issued here)."""
        lease = None
        if message.build_id is not None and message.attempt is not None:
            lease = Lease(message.build_id, message.attempt)
        known = self.store.runner(message.name)
        proof = identify(message.identity, known.identity if known else None)
        issued = identity.new_secret() if proof is Proof.NEW and message.identity is None else None
        now = self._clock()
        try:
            self.scheduler.admit(
                message.name, message.instance, proof, now, known.host if known else ""
            )
        except RunnerRefused as e:
            raise ProtocolError(str(e), code=e.code) from None
        secret = issued or message.identity
        bind = identity.digest(secret) if proof is Proof.NEW and secret else None
        try:
            self.store.runner_seen(message.name, message.host, message.pid, self._wall(), bind)
        except StorageError as e:
            if bind is not None:
                raise  # its identity must be stored before the runner may rely on it
            # a note for people, not state: a runner that proved its name may join
            self._fault_log.log(logging.WARNING, "runner %s not noted: %s", message.name, e)
        registration = self.scheduler.register(
            message.name, session, message.host, message.pid, lease, now,
            proof=proof, instance=message.instance,
        )  # fmt: skip
        offset = None
        if registration.disowned is not None:
            log.warning(
                "runner %s claimed build %d attempt %d, which is no longer its lease; "
                "its result will be refused",
                message.name, registration.disowned.build_id, registration.disowned.attempt,
            )  # fmt: skip
        elif registration.kept is not None:
            offset = self.results.log_size(registration.kept.sha)
            log.info("runner %s re-adopted build %d at output byte %d",
                     message.name, registration.kept.build_id, offset)  # fmt: skip
        log.info("runner %s registered from %s (pid %d)", message.name, channel.peer, message.pid)
        channel.post(protocol.Registered(output_offset=offset, identity=issued))
        self._carry_out(registration.actions)

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

    async def _submit_when_stored(self, message: protocol.Submit) -> protocol.Submitted:
        """:meth:`submit`, retried while the database is locked by another process (the
        loop goes on meanwhile); the submitter hears back only once it is committed."""
        give_up = self._clock() + defaults.STORE_RETRY_LIMIT
        delay = defaults.STORE_RETRY_INITIAL
        while True:
            try:
                return self.submit(message.sha, message.branch, message.rebuild)
            except StorageError as e:
                if self._clock() + delay > give_up:
                    raise
                self._fault_log.log(logging.WARNING, "submit of %s waits: %s", message.sha[:12], e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

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
            document = status_document(
                self.scheduler.view(), self.store, self._clock(), message.limit
            )
            return protocol.Reply(status="ok", document=fitted(document, STATUS_LISTS))
        assert message.commit is not None, "checked by the protocol"
        record = self._resolve(message.commit, message.build_id)
        if isinstance(record, protocol.Reply):
            return record
        result = self.results.read_result(record.sha, message.build_id)
        if result is None or result.get("build_id") != record.id:
            result = build_summary(record)
        return protocol.Reply(status=record.status, document=fitted(result, ["failures"]))

    def _resolve(self, commit: str, build_id: int | None = None) -> BuildRecord | protocol.Reply:
        """The build a client means, or the reply that says why there is none."""
        try:
            return names.resolve(self.store, commit, build_id)
        except UnknownBuild as e:
            return protocol.Reply(status="unknown", message=str(e))
        except AmbiguousCommit as e:
            return protocol.Reply(status="ambiguous", message=str(e))

    async def _send_log(self, channel: Channel, request: protocol.LogRequest) -> None:
        """Send a commit's log a piece at a time; when following, keep sending until the
        build ends (or says nothing for the idle bound), then say how it ended."""
        record = self._resolve(request.commit, request.build_id)
        if isinstance(record, protocol.Reply):
            channel.post(record)
            return
        sha = record.sha
        follower = None
        if request.follow and not record.status.finished:
            follower = LogFollower()
            self._followers[sha].add(follower)
        # In the same turn as the follower joins: the file up to here, the rest live.
        pieces = self.results.read_log(sha, request.offset, request.build_id)
        try:
            with contextlib.closing(pieces):
                for piece in pieces:
                    await channel.send(protocol.LogData(data=protocol.pack_data(piece)))
            ended = follower is None or await self._follow(channel, follower)
        finally:
            if follower is not None and sha in self._followers:
                self._followers[sha].discard(follower)
        record = self.store.get(record.id) or record
        if follower is not None and follower.overflowed:
            message = "the log reader fell too far behind; run the command again"
            channel.post(protocol.Reply(status="error", message=message))
        elif not ended:
            message = (
                f"build {record.id} is still {record.status} but said nothing for "
                f"{self._log_idle_timeout:g}s; run the command again to keep following"
            )
            channel.post(protocol.Reply(status="idle", message=message))
        else:
            channel.post(protocol.Reply(status=record.status, message=record.message))

    async def _follow(self, channel: Channel, follower: LogFollower) -> bool:
        """Pass on new output until the build ends (True) or stays silent for the idle
        bound (False); an empty piece goes out while it is silent, as a keep-alive."""
        loop = asyncio.get_running_loop()
        keepalive = min(defaults.LOG_KEEPALIVE_INTERVAL, self._log_idle_timeout / 3)
        heard = loop.time()
        while True:
            try:
                async with asyncio.timeout(keepalive):
                    data = await follower.next()
            except TimeoutError:
                if loop.time() - heard >= self._log_idle_timeout:
                    return False
                await channel.send(protocol.LogData(data=""))
                continue
            if data is None:
                return True
            heard = loop.time()
            await _send_chunks(channel, data)

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
            new = self.results.append_output(job.sha, message.offset, data, skipped=message.skipped)
        except StorageError as e:
            # Close the connection but keep the lease: the runner registers again and
            # resends from what the log really holds (no attempt is counted).
            self._fault_log.log(logging.ERROR, "build %d: %s; its runner will resend",
                                job.build_id, e)  # fmt: skip
            self._carry_out(self.scheduler.detach(name, session, self._clock()))
            self._detached.add(session)
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
        except ReportTooLarge as e:  # runners cap reports, but that is not relied on
            self._runner_log.log(logging.WARNING, "build %d from runner %s: %s",
                                 job.build_id, name, e)  # fmt: skip
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
            outcome = self.scheduler.accept_result(
                message.build_id, message.attempt, name, session, status, message.message
            )
        except StaleResult as e:
            log.warning("refused a result from %s: %s", name, e)
            channel.post(_ack(message, accepted=False, reason=str(e)))
            return
        job = self.scheduler.jobs[message.build_id]
        status, text = outcome.status, outcome.message
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
            if self.scheduler.is_current(Lease(job.build_id, message.attempt)):
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
            checkout_error = message.message if message.checkout_failed else None
            actions += self.scheduler.finish(job.build_id, now, checkout_error)
        self._outbox = []  # builds go out once their lease is committed
        try:
            with self.store.transaction():
                self._carry_out(actions)
        except StorageError as e:
            self._fault_log.log(logging.ERROR, "could not store the builds handed out: %s", e)
            self._outbox = self._not_committed(actions, self._outbox)
        finally:
            outbox, self._outbox = self._outbox, None
            for session, outgoing in outbox:
                self._post(session, outgoing)

    def _not_committed(
        self, actions: list[Action], outbox: list[tuple[int, protocol.Message]]
    ) -> list[tuple[int, protocol.Message]]:
        """A transaction of actions was rolled back: builds it started are given back
        (and not sent), its requeues and ends are written again later. Returns what may
        still be sent."""
        given_back = set()
        for action in actions:
            if isinstance(action, StartBuild):
                self.scheduler.give_back(action.build_id, action.attempt)
                given_back.add((action.build_id, action.attempt))
            elif isinstance(action, Requeue | EndBuild):
                self._unwritten.setdefault(action.build_id, []).append(action)
        return [
            (session, message) for session, message in outbox
            if not (isinstance(message, protocol.Build)
                    and (message.build_id, message.attempt) in given_back)
        ]  # fmt: skip

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
            if isinstance(action, Requeue | EndBuild) and action.build_id in self._unwritten:
                self._unwritten[action.build_id].append(action)  # after what is still due
                self._write_unwritten(action.build_id)
                continue
            try:
                self._carry_out_one(action)
            except StorageError as e:
                if isinstance(action, Requeue | EndBuild):
                    self._fault_log.log(logging.ERROR, "could not record %s of build %d "
                                        "(retried): %s", type(action).__name__,
                                        action.build_id, e)  # fmt: skip
                    self._unwritten.setdefault(action.build_id, []).append(action)
                else:
                    log.error("could not carry out %s: %s", type(action).__name__, e)

    def _write_unwritten(self, build_id: int) -> bool:
        """Write what is due for a build, in order; True once nothing is left."""
        due = self._unwritten.get(build_id, [])
        while due:
            try:
                self._carry_out_one(due[0])
            except StorageError as e:
                self._fault_log.log(logging.ERROR, "build %d still not recorded: %s", build_id, e)
                return False
            due.pop(0)
        self._unwritten.pop(build_id, None)
        return True

    def _carry_out_one(self, action: Action) -> None:
        match action:
            case StartBuild():
                try:
                    if not self._write_unwritten(action.build_id):
                        raise StorageError("its earlier state is not recorded yet")
                    self.results.start_log(action.sha, action.build_id)
                    self.store.mark_running(
                        action.build_id, action.attempt, action.runner, self._wall()
                    )
                except StorageError as e:
                    # Not sent: the build waits again, uncounted, and the runner stays;
                    # the watchdog hands it out again on a later tick.
                    self._fault_log.log(logging.ERROR, "cannot start build %d yet: %s",
                                        action.build_id, e)  # fmt: skip
                    self.scheduler.give_back(action.build_id, action.attempt)
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

    def _post(self, session: int, message: protocol.Message) -> None:
        if self._outbox is not None:
            self._outbox.append((session, message))
            return
        channel = self._sessions.get(session)
        if channel is not None:
            channel.post(message)


#: accept() errors after which asyncio pauses accepting and reports to the loop's handler.
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


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


def _raise_file_limit() -> None:
    """Every connection is a file descriptor: take as many as the hard limit allows, up
    to what ``MAX_CONNECTIONS`` needs (the usual soft limit, 1024, is far below)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = defaults.MAX_CONNECTIONS + FILES_BESIDES_CONNECTIONS
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        log.debug("file descriptor limit raised from %d to %d", soft, wanted)


#: File descriptors the dispatcher uses for other things than connections (database,
#: logs being written and read, reports).
FILES_BESIDES_CONNECTIONS = 256


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
    log_idle_timeout: float = defaults.LOG_IDLE_TIMEOUT,
    on_result: ResultHook | None = None,
    ready: Callable[[Address], None] | None = None,
) -> None:
    """Run a dispatcher until cancelled (the process entry point)."""
    _raise_file_limit()
    store = Store(state_file)
    dispatcher = Dispatcher(
        store,
        ResultsFolder(results_dir, max_log_bytes),
        heartbeat_timeout=heartbeat_timeout,
        max_attempts=max_attempts,
        build_timeout=build_timeout,
        credentials=credentials,
        log_idle_timeout=log_idle_timeout,
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
