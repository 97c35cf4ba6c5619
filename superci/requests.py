"""Client requests: submit a commit, cancel a build, query the pool or a build, read a log.

Each request is answered on its own connection; a log is sent at the reader's pace (a
slow reader waits on its own socket, never the dispatcher's loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from superci import events, names, protocol
from superci.bus import EventBus
from superci.channel import Channel
from superci.config import parse_build_config
from superci.errors import AmbiguousCommit, ConfigError, ProtocolError, StorageError, UnknownBuild
from superci.logstream import LogFollower
from superci.ratelimit import RateLimitedLog
from superci.recorder import Recorder
from superci.report import STATUS_LISTS, fitted, status_document, waiting_summary
from superci.results import ResultsFolder
from superci.scheduler import EndBuild, Scheduler
from superci.settings import DispatcherSettings
from superci.status import BuildStatus
from superci.store import BuildRecord, Store

log = logging.getLogger("superci.dispatcher.requests")  # a part of the dispatcher, logged as one

#: What a watcher is sent when nothing happened for a keep-alive interval (never shown).
KEEPALIVE_EVENT = '{"event": "keepalive"}'


class ClientRequests:
    """Answers the requests of clients (the CLI, the observer, scripts)."""

    def __init__(
        self,
        scheduler: Scheduler,
        store: Store,
        results: ResultsFolder,
        recorder: Recorder,
        bus: EventBus,
        *,
        settings: DispatcherSettings,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._scheduler = scheduler
        self._store = store
        self._results = results
        self._recorder = recorder
        self._bus = bus
        self.settings = settings
        self._clock = clock
        self._wall = wall_clock
        self._fault_log = RateLimitedLog(log, burst=3, period=10.0)
        self._handlers: dict[type[protocol.Message], Callable[[Channel, Any], Awaitable[None]]]
        self._handlers = {
            protocol.Submit: self._on_submit,
            protocol.CancelRequest: self._on_cancel,
            protocol.Query: self._on_query,
            protocol.LogRequest: self._send_log,
            protocol.Watch: self._send_events,
        }

    async def serve(self, channel: Channel) -> None:
        """A client's connection, once its hello is accepted: one request after another."""
        while True:
            message = await channel.receive(self.settings.client_idle_timeout)
            protocol.check_allowed(protocol.Role.CLIENT, message)
            await self._handlers[type(message)](channel, message)
            if isinstance(message, protocol.Watch):
                return  # a watch is the connection's last request

    async def _on_submit(self, channel: Channel, message: protocol.Submit) -> None:
        channel.post(await self._submit_when_stored(message))

    async def _on_cancel(self, channel: Channel, message: protocol.CancelRequest) -> None:
        channel.post(self.cancel(message.commit))

    async def _on_query(self, channel: Channel, message: protocol.Query) -> None:
        channel.post(self.query(message))

    def submit(
        self, sha: str, branch: str, rebuild: bool = False,
        subject: str | None = None, author: str | None = None, config: str | None = None,
    ) -> protocol.Submitted:  # fmt: skip
        """Queue a commit unless it is known; acknowledged only once it is committed. A
        rebuild keeps the subject and author known of the commit unless given anew.

        ``config``: the commit's .superci.toml as the submitter read it, for the labels
        the build needs. One that does not parse ends the build as an error at once, with
        the parse error: no runner could build it, and the author hears why sooner."""
        known = self._store.latest_for(sha)
        if known is not None and (not rebuild or not known.status.finished):
            return protocol.Submitted(build_id=known.id, sha=sha, queued=False, status=known.status)
        if known is not None:
            subject, author = subject or known.subject, author or known.author
        try:
            needs = {} if config is None else dict(parse_build_config(config).needs)
        except ConfigError as e:
            return self._refuse(sha, branch, f"{e}; nothing was built", subject, author)
        record = self._store.add_build(sha, branch, self._wall(), subject, author, needs)
        log.info("queued build %d of %s (%s)", record.id, sha[:12], branch)
        self._bus.publish(events.BuildQueued(
            build_id=record.id, sha=sha, branch=branch, subject=subject, author=author
        ))  # fmt: skip
        self._recorder.carry_out(
            self._scheduler.add_build(record.id, sha, branch, self._clock(), needs)
        )
        return protocol.Submitted(build_id=record.id, sha=sha, queued=True, status=record.status)

    def _refuse(
        self, sha: str, branch: str, reason: str, subject: str | None, author: str | None
    ) -> protocol.Submitted:
        """Store a build that ends at once as an error with ``reason`` (its result.json
        says why), without ever reaching a runner."""
        record = self._store.add_build(sha, branch, self._wall(), subject, author)
        self._bus.publish(events.BuildQueued(build_id=record.id, sha=sha, branch=branch))
        self._recorder.carry_out([EndBuild(record.id, BuildStatus.ERROR, reason)])
        return protocol.Submitted(build_id=record.id, sha=sha, queued=True,
                                  status=BuildStatus.ERROR)  # fmt: skip

    async def _submit_when_stored(self, message: protocol.Submit) -> protocol.Submitted:
        """:meth:`submit`, retried while the database is locked by another process (the
        loop goes on meanwhile); the submitter hears back only once it is committed."""
        give_up = self._clock() + self.settings.store_retry_limit
        delay = self.settings.store_retry_initial
        while True:
            try:
                return self.submit(message.sha, message.branch, message.rebuild,
                                   message.subject, message.author, message.config)  # fmt: skip
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
            actions = self._scheduler.cancel(
                record.id, self._clock(), reason="cancelled by request"
            )
        except UnknownBuild:  # it ended in this very turn of the loop
            return protocol.Reply(status="finished", message=f"build {record.id} just ended")
        self._recorder.carry_out(actions)
        if record.status is BuildStatus.QUEUED:
            return protocol.Reply(status="cancelled", message=f"build {record.id} cancelled")
        return protocol.Reply(
            status="cancelling",
            message=f"build {record.id} is being stopped on runner {record.runner}",
        )

    def query(self, message: protocol.Query) -> protocol.Reply:
        """``status``: the pool, the queue and the last builds; ``show``: one commit."""
        if message.what is protocol.QueryKind.STATUS:
            pool = self._scheduler.view()
            document = status_document(pool, self._store, self._clock(), message.limit)
            return protocol.Reply(status="ok", document=fitted(document, STATUS_LISTS))
        assert message.commit is not None, "checked by the protocol"
        record = self._resolve(message.commit, message.build_id)
        if isinstance(record, protocol.Reply):
            return record
        result = self._results.read_result(record.sha, message.build_id)
        if result is None or result.get("build_id") != record.id:
            result = waiting_summary(record, self._scheduler.view(), self._clock())
        return protocol.Reply(status=record.status, document=fitted(result, ["failures"]))

    def _resolve(self, commit: str, build_id: int | None = None) -> BuildRecord | protocol.Reply:
        """The build a client means, or the reply that says why there is none."""
        try:
            return names.resolve(self._store, commit, build_id)
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
            follower = LogFollower(self._bus, record.id)
        # In the same turn as the follower joins: the file up to here, the rest live.
        pieces = self._results.read_log(sha, request.offset, request.build_id)
        try:
            with contextlib.closing(pieces):
                for piece in pieces:
                    await channel.send(protocol.LogData(data=protocol.pack_data(piece)))
            ended = follower is None or await self._follow(channel, follower)
        finally:
            if follower is not None:
                follower.close()
        record = self._store.get(record.id) or record
        if follower is not None and follower.overflowed:
            message = "the log reader fell too far behind; run the command again"
            channel.post(protocol.Reply(status="error", message=message))
        elif not ended:
            message = (
                f"build {record.id} is still {record.status} but said nothing for "
                f"{self.settings.log_idle_timeout:g}s; run the command again to keep following"
            )
            channel.post(protocol.Reply(status="idle", message=message))
        else:
            channel.post(protocol.Reply(status=record.status, message=record.message))

    async def _follow(self, channel: Channel, follower: LogFollower) -> bool:
        """Pass on new output until the build ends (True) or stays silent for the idle
        bound (False); an empty piece goes out while it is silent, as a keep-alive."""
        loop = asyncio.get_running_loop()
        idle = self.settings.log_idle_timeout
        keepalive = min(self.settings.log_keepalive_interval, idle / 3)
        heard = loop.time()
        while True:
            try:
                async with asyncio.timeout(keepalive):
                    data = await follower.next()
            except TimeoutError:
                if loop.time() - heard >= idle:
                    return False
                await channel.send(protocol.LogData(data=""))
                continue
            if data is None:
                return True
            heard = loop.time()
            for _, piece in protocol.split_data(data):  # at the reader's pace
                await channel.send(protocol.LogData(data=piece))

    async def _send_events(self, channel: Channel, request: protocol.Watch) -> None:
        """``watch``: every event from now on, until the watcher goes away. One that falls
        behind gets a resync as its last event, and the connection ends."""
        subscription = self._bus.subscribe()
        log.info("%s is watching the events", channel.peer)
        # A watcher says nothing more: whatever it sends, or its leaving, ends the stream.
        listener = asyncio.create_task(channel.receive())
        listener.add_done_callback(lambda _: subscription.close())
        try:
            while True:
                try:  # a quiet dispatcher still says it is there, so a cut link shows
                    async with asyncio.timeout(self.settings.log_keepalive_interval):
                        event = await subscription.next()
                except TimeoutError:
                    await channel.send(protocol.Event(document=KEEPALIVE_EVENT))
                    continue
                if event is None:
                    break
                document = json.dumps(event.to_dict(), ensure_ascii=False)  # fields are bounded
                await channel.send(protocol.Event(document=document))
        finally:
            subscription.close()
            listener.cancel()
        if subscription.fell_behind:
            log.warning("a watcher at %s fell behind the events; it was sent a resync",
                        channel.peer)  # fmt: skip
        if listener.done() and not listener.cancelled():
            said = listener.exception() or listener.result()
            if isinstance(said, protocol.Message):
                raise ProtocolError(f"a watcher cannot send {said.type}", code="unexpected")
