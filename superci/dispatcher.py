"""The dispatcher process: an asyncio TCP server that feeds the scheduler and carries out
its decisions against the store, the results folder and the runners' connections.

It is made of parts with one job each, wired here: the :class:`~superci.listener.Listener`
(connections, limits, TLS, the handshake), the :class:`~superci.sessions.RunnerSessions`
(what runners report), the :class:`~superci.requests.ClientRequests` (what clients ask)
and the :class:`~superci.recorder.Recorder` (carrying out the scheduler's actions, group
commits of results). The :class:`~superci.scheduler.Scheduler` decides; the watchdog
here gives it the time.

All state changes happen synchronously between two ``await`` points of the single event
loop, so the scheduler, the database and the connections never disagree halfway through
an event. Messages to peers are queued without waiting (:meth:`Channel.post`), so one
slow peer cannot stall everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from superci import protocol
from superci.auth import NO_CREDENTIALS, Credentials
from superci.bus import EventBus
from superci.channel import Address, Channel
from superci.listener import Listener
from superci.recorder import Recorder, ResultHook
from superci.requests import ClientRequests
from superci.results import ResultsFolder
from superci.scheduler import Scheduler
from superci.sessions import RunnerSessions
from superci.settings import DispatcherSettings, with_given
from superci.store import Store

if TYPE_CHECKING:  # aiohttp is imported only by a dispatcher that serves the web page
    from superci.web import WebServer

log = logging.getLogger(__name__)

__all__ = ["Dispatcher", "ResultHook", "run_dispatcher"]


class Dispatcher:
    """Accepts builds, keeps the runner pool, hands out work and records every result."""

    def __init__(
        self,
        store: Store,
        results: ResultsFolder,
        *,
        settings: DispatcherSettings | None = None,
        credentials: Credentials = NO_CREDENTIALS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_result: ResultHook | None = None,
        bus: EventBus | None = None,
        heartbeat_timeout: float | None = None,
        max_attempts: int | None = None,
        build_timeout: float | None = None,
        log_idle_timeout: float | None = None,
    ) -> None:
        """The tunables come from ``settings``, handed to each part; the older keywords,
        when given, override their field of it."""
        self.settings = settings = with_given(
            settings or DispatcherSettings(),
            heartbeat_timeout=heartbeat_timeout,
            max_attempts=max_attempts,
            build_timeout=build_timeout,
            log_idle_timeout=log_idle_timeout,
        )
        self.store = store
        self.bus = bus if bus is not None else EventBus(wall_clock)  # what watchers see
        self.results = results
        self.scheduler = _scheduler_from(settings)
        self._clock = clock
        sessions: dict[int, Channel] = {}
        self.recorder = Recorder(
            self.scheduler, store, results, sessions, self.bus,
            clock=clock, wall_clock=wall_clock, on_result=on_result,
        )  # fmt: skip
        self.sessions = RunnerSessions(
            self.scheduler, store, results, self.recorder, self.bus, sessions,
            settings=settings, clock=clock, wall_clock=wall_clock,
        )  # fmt: skip
        self.requests = ClientRequests(
            self.scheduler, store, results, self.recorder, self.bus,
            settings=settings, clock=clock, wall_clock=wall_clock,
        )  # fmt: skip
        self.listener = Listener(self._route, credentials, settings=settings)
        self._token = credentials.token  # the web page's login asks for it
        self._tls = credentials.ssl  # the web page is served over HTTPS with it too
        self._watchdog: asyncio.Task[None] | None = None
        self.web: WebServer | None = None

    @property
    def _unauthenticated(self) -> int:
        """How many connections are in their opening handshake."""
        return self.listener.pending

    @property
    def _connections(self) -> set[Channel]:
        return self.listener.connections

    @property
    def _sessions(self) -> dict[int, Channel]:
        return self.sessions.channels

    # --- lifecycle ------------------------------------------------------------------

    async def start(self, host: str, port: int) -> Address:
        """Resume the stored queue, then listen; returns the bound address (port 0 → real)."""
        unfinished = [record.to_job() for record in self.store.unfinished()]
        if unfinished:
            log.info("resuming %d unfinished build(s) from %s", len(unfinished), self.store.path)
        ended = [  # the finished jobs of their rounds, which others may run after
            record.to_job()
            for round_id in {job.round for job in unfinished if job.after}
            for record in self.store.round_of(round_id) if record.status.finished
        ]  # fmt: skip
        self.recorder.carry_out(self.scheduler.restore(unfinished, self._clock(), ended))
        self.recorder.write_missing_commits()
        address = await self.listener.start(host, port)
        self._watchdog = asyncio.create_task(self._watch())
        log.info("dispatcher listening on %s", address)
        return address

    async def start_web(
        self, host: str, port: int, public: bool = False, sock: socket.socket | None = None
    ) -> Address:
        """Serve the web page on this loop too (with a token, behind a login unless
        ``public``; over HTTPS when the dispatcher has TLS; on ``sock`` when given, a
        socket bound already); returns its bound address."""
        from superci.ratelimit import FailureLimit
        from superci.web import WebServer  # aiohttp only for a dispatcher that serves it
        from superci.weblogin import WebAccess

        limit = FailureLimit(self.settings.web_login_failures, self.settings.web_login_window)
        access = WebAccess(self._token, public, limit=limit)
        self.web = WebServer(
            self.store, self.results, self.scheduler, self.bus, requests=self.requests,
            settings=self.settings, clock=self._clock, access=access,
        )  # fmt: skip
        address = await self.web.start(host, port, self._tls, sock)
        log.info("web page at %s://%s/", "http" if self._tls is None else "https", address)
        return address

    async def serve_forever(self) -> None:
        await self.listener.serve_forever()

    async def close(self) -> None:
        """Stop listening and drop every connection; the database keeps the state."""
        self.sessions.closing = True  # runners we disconnect keep their leases
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.web is not None:
            await self.web.close()
        await self.listener.close()
        self.bus.close()  # subscribers read what is queued for them, then end

    async def _route(self, channel: Channel, hello: protocol.Hello) -> None:
        if hello.role is protocol.Role.RUNNER:
            await self.sessions.serve(channel)
        else:
            await self.requests.serve(channel)

    async def _watch(self) -> None:
        """Silent runners and overdue builds are found here, not by any one connection;
        writes that failed and builds that could not start are retried here."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.settings.heartbeat_check_interval)
            awake = loop.time()  # the process's own clock, not the injected one
            late, last = awake - last - self.settings.heartbeat_check_interval, awake
            try:
                self._tick(self._clock(), late)
            except Exception:  # the watchdog must outlive any one bad tick
                log.exception("internal error in the heartbeat and deadline checks")

    def _tick(self, now: float, late: float = 0.0) -> None:
        """One turn of the watchdog. A turn ``late`` by far more than its interval means
        the process was paused (SIGSTOP, a VM pause) or its loop blocked: that time is
        not held against the runners, whose heartbeats wait unread in the sockets."""
        if late > self.settings.heartbeat_check_interval:
            log.warning("the dispatcher was paused for %.1fs; runners get that time back", late)
            self.scheduler.resumed(late)
        self.recorder.retry_unwritten()
        # The dead are found first, so a build given back earlier is not handed to one.
        self.recorder.carry_out(self.scheduler.check_heartbeats(now))
        self.recorder.carry_out(self.scheduler.check_deadlines(now))
        self.recorder.carry_out(self.scheduler.check_benched(now))
        self.recorder.carry_out(self.scheduler.dispatch(now))  # builds given back earlier

    # --- requests made in-process (tests, tools) -------------------------------------

    def submit(
        self, sha: str, branch: str, rebuild: bool = False,
        subject: str | None = None, author: str | None = None, config: str | None = None,
    ) -> protocol.Submitted:  # fmt: skip
        return self.requests.submit(sha, branch, rebuild, subject, author, config)

    def cancel(self, commit: str) -> protocol.Reply:
        return self.requests.cancel(commit)

    def query(self, message: protocol.Query) -> protocol.Reply:
        return self.requests.query(message)


def _scheduler_from(settings: DispatcherSettings) -> Scheduler:
    """The scheduler whose limits are those of ``settings``."""
    return Scheduler(
        settings.heartbeat_timeout,
        settings.max_attempts,
        settings.build_timeout,
        max_handbacks=settings.max_handbacks,
        deadline_margin=settings.deadline_margin,
        bench_after=settings.bench_after,
        bench_time=settings.bench_time,
        bench_max=settings.bench_max,
    )


def _raise_file_limit(max_connections: int) -> None:
    """Every connection is a file descriptor: take as many as the hard limit allows, up
    to what ``max_connections`` needs (the usual soft limit, 1024, is far below)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FILES_BESIDES_CONNECTIONS
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
    settings: DispatcherSettings | None = None,
    credentials: Credentials = NO_CREDENTIALS,
    on_result: ResultHook | None = None,
    bus: EventBus | None = None,
    ready: Callable[[Address], None] | None = None,
    web: tuple[str, int] | None = None,
    web_public: bool = False,
    web_socket: socket.socket | None = None,
    heartbeat_timeout: float | None = None,
    max_attempts: int | None = None,
    build_timeout: float | None = None,
    max_log_bytes: int | None = None,
    log_idle_timeout: float | None = None,
) -> None:
    """Run a dispatcher until cancelled (the process entry point), with the web page on
    ``web`` (host, port) or the bound ``web_socket`` when given (``web_public``: viewing
    needs no login); the older keywords, when given, override their field of
    ``settings``."""
    settings = with_given(
        settings or DispatcherSettings(),
        heartbeat_timeout=heartbeat_timeout,
        max_attempts=max_attempts,
        build_timeout=build_timeout,
        max_log_bytes=max_log_bytes,
        log_idle_timeout=log_idle_timeout,
    )
    _raise_file_limit(settings.max_connections)
    store = Store(state_file)
    dispatcher = Dispatcher(
        store,
        ResultsFolder(results_dir, settings.max_log_bytes),
        settings=settings,
        credentials=credentials,
        on_result=on_result,
        bus=bus,
    )
    try:
        address = await dispatcher.start(host, port)
        if web_socket is not None:
            web_host, web_port = web_socket.getsockname()[:2]
            await dispatcher.start_web(web_host, web_port, public=web_public, sock=web_socket)
        elif web is not None:
            await dispatcher.start_web(*web, public=web_public)
        if ready is not None:
            ready(address)
        await dispatcher.serve_forever()
    finally:
        await dispatcher.close()
        store.close()
