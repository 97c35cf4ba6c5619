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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from superci import events, names, protocol
from superci.bus import EventBus
from superci.channel import Channel
from superci.errors import AmbiguousCommit, ConfigError, ProtocolError, StorageError, UnknownBuild
from superci.jobs import DEFAULT_JOB, JobSpec, commit_status, job_name, parse_jobs
from superci.logstream import LogFollower
from superci.ratelimit import RateLimitedLog
from superci.recorder import Recorder
from superci.report import STATUS_LISTS, commit_view, fitted, status_document, waiting_summary
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
        """Queue a commit's jobs (one round) unless the commit is known; acknowledged only
        once they are committed. A rebuild makes a new round of all its jobs, and keeps
        the subject and author known of the commit unless given anew.

        ``config``: the commit's .superci.toml as the submitter read it, for its jobs
        (superci.jobs) and the labels each needs; None (the submitter has no git, or the
        web page's rebuild): the jobs of the commit's last round, else one default job.
        One that does not parse, or whose jobs cannot be expanded, ends the
        build as an error at once, with the reason: no runner could build it, and the
        author hears why sooner."""
        known = self._store.latest_round(sha)
        if known:
            status = commit_status(record.status for record in known)
            if not rebuild or not status.finished:
                return protocol.Submitted(build_id=known[0].id, sha=sha, queued=False,
                                          status=status)  # fmt: skip
            subject, author = subject or known[0].subject, author or known[0].author
        try:
            plan: list[PlannedJob] = [
                (record.job, record.needs, tuple(record.after)) for record in known
            ]  # a rebuild without the file: the jobs the commit had
            if config is not None or not known:
                plan = _plan(parse_jobs(config))
        except ConfigError as e:
            return self._refuse(sha, branch, f"{e}; nothing was built", subject, author)
        with self._store.transaction():  # all the jobs, or none
            records = self._store_round(sha, branch, plan, subject, author)
        round_id = records[0].id
        log.info("queued build %d of %s (%s)%s", round_id, sha[:12], branch,
                 f" with {len(records)} jobs" if len(records) > 1 else "")  # fmt: skip
        for record in records:
            self._bus.publish(events.BuildQueued(
                build_id=record.id, sha=sha, branch=branch, job=record.job, subject=subject,
                author=author,
            ))  # fmt: skip
        self._new_round(sha, several=records[0].job != DEFAULT_JOB)
        self._recorder.carry_out(
            self._scheduler.add_round([record.to_job() for record in records], self._clock())
        )
        return protocol.Submitted(build_id=round_id, sha=sha, queued=True,
                                  status=BuildStatus.QUEUED)  # fmt: skip

    def _store_round(
        self, sha: str, branch: str, plan: list[PlannedJob], subject: str | None,
        author: str | None,
    ) -> list[BuildRecord]:  # fmt: skip
        """One build row per job, the first one's id naming the round."""
        records: list[BuildRecord] = []
        for key, needs, after in plan:
            records.append(self._store.add_build(
                sha, branch, self._wall(), subject, author, dict(needs),
                job=key, round=records[0].id if records else None, after=after,
            ))  # fmt: skip
        return records

    def _new_round(self, sha: str, several: bool) -> None:
        """Make the commit's results folder ready for a new round (see
        :meth:`ResultsFolder.new_round`)."""
        try:
            self._results.new_round(sha, several)
        except StorageError as e:  # tried again before the round's result is written
            log.warning("the results of %s are not ready for the new round yet: %s", sha[:12], e)

    def _refuse(
        self, sha: str, branch: str, reason: str, subject: str | None, author: str | None
    ) -> protocol.Submitted:
        """Store a build that ends at once as an error with ``reason`` (its result.json
        says why), without ever reaching a runner."""
        record = self._store.add_build(sha, branch, self._wall(), subject, author)
        self._bus.publish(events.BuildQueued(build_id=record.id, sha=sha, branch=branch))
        self._new_round(sha, several=False)
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
        """Cancel the newest build of a commit (every unfinished job of its newest round):
        at once if queued, through its runner if running; a finished or unknown commit is
        said to be so."""
        record = self._resolve(commit)
        if isinstance(record, protocol.Reply):
            return record
        if record.job != DEFAULT_JOB:
            return self._cancel_jobs(self._store.round_of(record.round))
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

    def _cancel_jobs(self, records: list[BuildRecord]) -> protocol.Reply:
        """Cancel every unfinished job of a round; the reply names them."""
        unfinished = [record for record in records if not record.status.finished]
        if not unfinished:
            status = commit_status(record.status for record in records)
            return protocol.Reply(status="finished", message=f"every job of "
                                  f"{records[0].sha} already finished ({status}); "
                                  "nothing to cancel")  # fmt: skip
        stopping = []
        for record in sorted(unfinished, key=_depth(records), reverse=True):
            try:
                actions = self._scheduler.cancel(record.id, self._clock(),
                                                 reason="cancelled by request")  # fmt: skip
            except UnknownBuild:  # it ended in this very turn of the loop
                continue
            self._recorder.carry_out(actions)
            if record.status is not BuildStatus.QUEUED:
                stopping.append(f"{record.job} on runner {record.runner}")
        names = ", ".join(record.job for record in unfinished)
        if stopping:
            return protocol.Reply(status="cancelling", message=f"cancelling {names}; being "
                                  f"stopped: {'; '.join(stopping)}")  # fmt: skip
        return protocol.Reply(status="cancelled", message=f"cancelled {names}")

    def query(self, message: protocol.Query) -> protocol.Reply:
        """``status``: the pool, the queue and the last builds; ``show``: one commit."""
        if message.what is protocol.QueryKind.STATUS:
            pool = self._scheduler.view()
            document = status_document(pool, self._store, self._clock(), message.limit)
            return protocol.Reply(status="ok", document=fitted(document, STATUS_LISTS))
        assert message.commit is not None, "checked by the protocol"
        record = self._resolve(message.commit, message.build_id, message.job)
        if isinstance(record, protocol.Reply):
            return record
        if record.job != DEFAULT_JOB and message.job is None and message.build_id is None:
            return self._show_commit(record)
        result = self._results.read_result(record.sha, message.build_id, record.job)
        if result is None or result.get("build_id") != record.id:
            result = waiting_summary(record, self._scheduler.view(), self._clock())
        return protocol.Reply(status=record.status, document=fitted(result, ["failures"]))

    def _show_commit(self, record: BuildRecord) -> protocol.Reply:
        """``show`` of a commit of several jobs: the round's status and each job's line,
        a queued one with why it waits."""
        records = self._store.round_of(record.round)
        document = commit_view(records, self._scheduler.view(), self._clock())
        return protocol.Reply(status=document["status"], document=fitted(document, ["jobs"]))

    def _resolve(
        self, commit: str, build_id: int | None = None, job: str | None = None
    ) -> BuildRecord | protocol.Reply:
        """The build a client means (the job ``job`` of the commit's newest round, when
        given), or the reply that says why there is none."""
        try:
            record = names.resolve(self._store, commit, build_id)
        except UnknownBuild as e:
            return protocol.Reply(status="unknown", message=str(e))
        except AmbiguousCommit as e:
            return protocol.Reply(status="ambiguous", message=str(e))
        if job is None or record.job == job:
            return record
        jobs = self._store.round_of(record.round)
        chosen = next((other for other in jobs if other.job == job), None)
        if chosen is not None:
            return chosen
        return protocol.Reply(status="unknown", message=f"{record.sha[:12]} has no job {job!r}; "
                              f"its jobs: {', '.join(other.job for other in jobs)}")  # fmt: skip

    async def _send_log(self, channel: Channel, request: protocol.LogRequest) -> None:
        """Send a commit's log a piece at a time; when following, keep sending until the
        build ends (or says nothing for the idle bound), then say how it ended."""
        record = self._resolve(request.commit, request.build_id, request.job)
        if isinstance(record, protocol.Reply):
            channel.post(record)
            return
        if record.job != DEFAULT_JOB and request.job is None and request.build_id is None:
            jobs = ", ".join(other.job for other in self._store.round_of(record.round))
            why = (f"{record.sha[:12]} has several jobs, each with its own log: pick one "
                   f"with --job (its jobs: {jobs})")  # fmt: skip
            channel.post(protocol.Reply(status="choose-job", message=why))
            return
        sha = record.sha
        follower = None
        if request.follow and not record.status.finished:
            follower = LogFollower(self._bus, record.id)
        # In the same turn as the follower joins: the file up to here, the rest live.
        pieces = self._results.read_log(sha, request.offset, request.build_id, job=record.job)
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


#: A job to store: its key, the labels it needs, the job names it runs after.
PlannedJob = tuple[str, Mapping[str, str], tuple[str, ...]]


def _plan(specs: list[JobSpec]) -> list[PlannedJob]:
    return [(spec.key, spec.needs, spec.after) for spec in specs]


def _depth(records: list[BuildRecord]) -> Callable[[BuildRecord], int]:
    """How many jobs deep a job runs after others: cancelled deepest first, so a job is
    cancelled as asked rather than skipped because the job before it was cancelled."""
    after = {job_name(record.job): record.after for record in records}
    memo: dict[str, int] = {}

    def depth(name: str) -> int:
        if name not in memo:
            memo[name] = 0  # the jobs were checked for cycles when they were expanded
            memo[name] = 1 + max((depth(other) for other in after.get(name, [])), default=-1)
        return memo[name]

    return lambda record: depth(job_name(record.job))
