"""Runner sessions: a runner's connection from its registration to its leaving.

Each message a runner sends is passed to the scheduler (is this lease current? how does
the build end?) and what it decides is carried out by the recorder; output and reports go
to the results folder, results to the recorder's next group commit.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from superci import events, identity, labels, protocol, splitkept
from superci.bus import EventBus
from superci.channel import Channel
from superci.errors import (
    ConfigError,
    ProtocolError,
    ReportTooLarge,
    RunnerRefused,
    StaleResult,
    StorageError,
)
from superci.ratelimit import RateLimitedLog
from superci.recorder import PendingResult, Recorder, result_ack
from superci.results import ResultsFolder
from superci.scheduler import Job, Lease, Proof, Scheduler, identify
from superci.settings import DispatcherSettings
from superci.split import TestResult
from superci.status import BuildStatus
from superci.store import Store

log = logging.getLogger("superci.dispatcher.sessions")  # a part of the dispatcher, logged as one
T = TypeVar("T")


class RunnerSessions:
    """Serves every runner connection; ``channels`` holds the open ones, by session."""

    def __init__(
        self,
        scheduler: Scheduler,
        store: Store,
        results: ResultsFolder,
        recorder: Recorder,
        bus: EventBus,
        channels: dict[int, Channel],
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
        self.channels = channels  # open sessions; shared with the recorder, which posts
        self.closing = False  # set on shutdown: runners keep their leases for the next process
        self._session_ids = itertools.count(1)
        self._detached: set[int] = set()  # sessions closed to make their runner resend
        self._fault_log = RateLimitedLog(log, burst=3, period=10.0)
        self._runner_log = RateLimitedLog(log)  # what a misbehaving runner causes
        self._handlers: dict[type[protocol.Message], Callable[[Any, Any, Any, Any], None]] = {
            protocol.Heartbeat: lambda *_: None,
            protocol.Output: self._on_output,
            protocol.Started: self._on_started,
            protocol.Artifact: self._on_artifact,
            protocol.Result: self._on_result,
            protocol.Leaving: self._on_leaving,
            protocol.Unsuited: self._on_unsuited,
            protocol.SplitTests: self._on_split_tests,
            protocol.SplitKept: self._on_split_kept,
            protocol.SplitSeats: self._on_split_seats,
            protocol.SplitMeasured: self._on_split_measured,
            protocol.SplitLine: self._from_seat,
            protocol.SplitClose: self._from_seat,
            protocol.SplitOutput: self._from_seat,
            protocol.SplitSeatEnd: self._from_seat,
            protocol.SplitReply: self._from_host,
            protocol.SplitHangUp: self._from_host,
        }

    async def serve(self, channel: Channel) -> None:
        """A runner's connection, once its hello is accepted: it registers, then reports."""
        register = await channel.receive(self.settings.handshake_timeout)
        if not isinstance(register, protocol.Register):
            raise ProtocolError("a runner must register first", code="handshake")
        name, session = register.name, next(self._session_ids)
        self.channels[session] = channel
        try:
            self.on_register(channel, session, register)
            while True:
                message = await channel.receive()  # silence is the watchdog's job
                if session in self._detached:
                    return  # what is still buffered is sent again after it registers
                self._scheduler.heartbeat(name, session, self._clock())
                protocol.check_allowed(protocol.Role.RUNNER, message)
                self._handlers[type(message)](channel, name, session, message)
        finally:
            del self.channels[session]
            self._detached.discard(session)
            if self._recorder.pending:  # results this runner sent just before it went away
                self._recorder.flush()
            if not self.closing:
                self._recorder.carry_out(self._scheduler.disconnect(name, session, self._clock()))

    def on_register(self, channel: Channel, session: int, message: protocol.Register) -> None:
        """Admit a runner under its name if it proves the name's identity (or the name is
        new: then it is bound to the secret the runner shows, or to one issued here)."""
        lease = None
        if message.build_id is not None and message.attempt is not None:
            lease = Lease(message.build_id, message.attempt)
        known = self._store.runner(message.name)
        proof = identify(message.identity, known.identity if known else None)
        issued = identity.new_secret() if proof is Proof.NEW and message.identity is None else None
        now = self._clock()
        try:
            self._scheduler.admit(
                message.name, message.instance, proof, now, known.host if known else ""
            )
        except RunnerRefused as e:
            raise ProtocolError(str(e), code=e.code) from None
        secret = issued or message.identity
        bind = identity.digest(secret) if proof is Proof.NEW and secret else None
        try:
            self._store.runner_seen(message.name, message.host, message.pid, self._wall(), bind)
        except StorageError as e:
            if bind is not None:
                raise  # its identity must be stored before the runner may rely on it
            # a note for people, not state: a runner that proved its name may join
            self._fault_log.log(logging.WARNING, "runner %s not noted: %s", message.name, e)
        registration = self._scheduler.register(
            message.name, session, message.host, message.pid, lease, now,
            proof=proof, instance=message.instance, isolated=message.isolated,
            offer=_offer(message),
        )  # fmt: skip
        offset = None
        if registration.disowned is not None:
            log.warning(
                "runner %s claimed build %d attempt %d, which is no longer its lease; "
                "its result will be refused",
                message.name, registration.disowned.build_id, registration.disowned.attempt,
            )  # fmt: skip
        elif registration.kept is not None:
            offset = self._results.log_size(registration.kept.sha, registration.kept.job)
            log.info("runner %s re-adopted build %d at output byte %d",
                     message.name, registration.kept.build_id, offset)  # fmt: skip
        log.info("runner %s registered from %s (pid %d)", message.name, channel.peer, message.pid)
        channel.post(protocol.Registered(output_offset=offset, identity=issued))
        self._recorder.carry_out(registration.actions)

    def _leased(self, build_id: int, attempt: int, name: str, session: int) -> Job | None:
        """The job if this session holds its lease; stale messages are dropped quietly."""
        return _unless_stale(
            name, lambda: self._scheduler.check_lease(build_id, attempt, name, session)
        )

    def _on_started(
        self, channel: Channel, name: str, session: int, message: protocol.Started
    ) -> None:
        job = self._leased(message.build_id, message.attempt, name, session)
        if job is not None:
            self._scheduler.started(job, message.timeout, message.kill_grace, self._clock())

    def _on_output(
        self, channel: Channel, name: str, session: int, message: protocol.Output
    ) -> None:
        data = protocol.unpack_data(message.data)  # malformed is malformed, stale or not
        job = self._leased(message.build_id, message.attempt, name, session)
        if job is None:
            return
        try:
            new = self._results.append_output(
                job.sha, message.offset, data, skipped=message.skipped, job=job.job
            )
        except StorageError as e:
            # Close the connection but keep the lease: the runner registers again and
            # resends from what the log really holds (no attempt is counted).
            self._fault_log.log(logging.ERROR, "build %d: %s; its runner will resend",
                                job.build_id, e)  # fmt: skip
            self._recorder.carry_out(self._scheduler.detach(name, session, self._clock()))
            self._detached.add(session)
            return
        if new:  # the part of data that was not in the log yet, at the end of data
            start = message.offset + len(data) - len(new)
            self._bus.publish(
                events.BuildOutput(
                    build_id=job.build_id,
                    sha=job.sha,
                    branch=job.branch,
                    job=job.job,
                    offset=start,
                    data=new,
                )
            )

    def _on_artifact(
        self, channel: Channel, name: str, session: int, message: protocol.Artifact
    ) -> None:
        data = protocol.unpack_data(message.data)
        job = self._leased(message.build_id, message.attempt, name, session)
        if job is None:
            return
        try:
            self._results.append_artifact(
                job.sha,
                message.name,
                message.offset,
                data,
                self.settings.max_report_bytes,
                job.job,
            )
        except ReportTooLarge as e:  # runners cap reports, but that is not relied on
            self._runner_log.log(logging.WARNING, "build %d from runner %s: %s",
                                 job.build_id, name, e)  # fmt: skip
        except StorageError as e:
            log.error("build %d: %s", job.build_id, e)

    def _on_result(
        self, channel: Channel, name: str, session: int, message: protocol.Result
    ) -> None:
        """Accept a result if it is the current lease's; the recorder records it with the
        others of this turn, acknowledges it, then hands out the next build."""
        status = BuildStatus(message.status)
        if not status.finished:
            raise ProtocolError(f"a result cannot have status {status}", code="bad-message")
        try:
            outcome = self._scheduler.accept_result(
                message.build_id, message.attempt, name, session, status, message.message
            )
        except StaleResult as e:
            log.warning("refused a result from %s: %s", name, e)
            channel.post(result_ack(message, accepted=False, reason=str(e)))
            return
        self._recorder.add(PendingResult(channel, outcome, message))

    def _on_unsuited(
        self, channel: Channel, name: str, session: int, message: protocol.Unsuited
    ) -> None:
        """The runner lacks labels the commit's own .superci.toml needs: the build learns
        them and waits, uncounted, for a runner that offers them."""
        actions = _unless_stale(name, lambda: self._scheduler.unsuited(
            message.build_id, message.attempt, name, session,
            labels.check_labels(message.needs), message.reason, self._clock(),
        ))  # fmt: skip
        if actions is not None:
            self._recorder.carry_out(actions)

    def _on_leaving(
        self, channel: Channel, name: str, session: int, message: protocol.Leaving
    ) -> None:
        """A runner leaves on purpose: results it sent first are recorded, then its build
        goes back to the queue without counting an attempt."""
        self._scheduler.leaving(name, session)  # nothing new for it while its results land
        if self._recorder.pending:
            self._recorder.flush()
        log.info("runner %s is leaving: %s", name, message.reason)
        self._recorder.carry_out(
            self._scheduler.leave(name, session, message.reason, self._clock())
        )

    # --- a split build: the host holds the split, the dispatcher routes its seats ----

    def _on_split_tests(
        self, channel: Channel, name: str, session: int, message: protocol.SplitTests
    ) -> None:
        """The host collected these tests: it gets their known durations back, and the
        results an earlier attempt kept (it runs only the rest)."""
        if self._leased(message.build_id, message.attempt, name, session) is None:
            return
        durations: dict[str, float] = {}
        kept: dict[str, TestResult] = {}
        try:
            durations = self._store.test_durations(message.tests)
            kept = self._store.kept_split_results(message.build_id, message.tests)
        except StorageError as e:  # the split goes on with what it has: the median, tests
            self._fault_log.log(logging.ERROR, "build %d: %s", message.build_id, e)
        channel.post(protocol.SplitDurations(
            build_id=message.build_id, attempt=message.attempt, request=message.request,
            durations=durations, **splitkept.fields(kept.values(), splitkept.ANSWER_BYTES),
        ))  # fmt: skip

    def _on_split_kept(
        self, channel: Channel, name: str, session: int, message: protocol.SplitKept
    ) -> None:
        """Results the host's split recorded: kept with the build for its next attempt."""
        if self._leased(message.build_id, message.attempt, name, session) is None:
            return
        try:
            if not self._store.keep_split_results(message.build_id, splitkept.results(message)):
                self._fault_log.log(logging.WARNING, "build %d: split results not kept: more "
                                    "than a build keeps", message.build_id)  # fmt: skip
        except StorageError as e:  # a lost host would cost more: its whole split
            self._fault_log.log(logging.ERROR, "build %d: split results not kept: %s",
                                message.build_id, e)  # fmt: skip

    def _on_split_seats(
        self, channel: Channel, name: str, session: int, message: protocol.SplitSeats
    ) -> None:
        actions = _unless_stale(name, lambda: self._scheduler.open_seats(
            message.build_id, message.attempt, name, session, message.width,
            self._clock(), message.next_seat,
        ))  # fmt: skip
        if actions is not None:
            self._recorder.carry_out(actions)

    def _on_split_measured(
        self, channel: Channel, name: str, session: int, message: protocol.SplitMeasured
    ) -> None:
        if self._leased(message.build_id, message.attempt, name, session) is None:
            return
        try:
            self._store.record_test_durations(message.durations, self._wall())
        except StorageError as e:  # timings are a help, not a result: the build goes on
            self._fault_log.log(logging.ERROR, "build %d: durations not kept: %s",
                                message.build_id, e)  # fmt: skip

    def _from_seat(self, channel: Channel, name: str, session: int, message: Any) -> None:
        """A participant's message, for the build's own runner (the host)."""
        job = _unless_stale(name, lambda: self._scheduler.check_seat(
            message.build_id, message.attempt, message.seat, name, session
        ))  # fmt: skip
        if job is None:
            return
        host = self._scheduler.primary_session(job)
        if isinstance(message, protocol.SplitSeatEnd):
            log.info("build %d: seat %d of runner %s ended: %s", job.build_id, message.seat,
                     name, message.message)  # fmt: skip
            self._recorder.carry_out(self._scheduler.end_seat(
                message.build_id, message.attempt, message.seat, name, session, self._clock()
            ))  # fmt: skip
        forwarded = _FORWARDED[type(message)]
        fields = {f: getattr(message, f) for f in protocol.fields_of(type(message))}
        if "runner" in fields:
            fields["runner"] = name
        if host is not None and host in self.channels:
            self.channels[host].post(forwarded(**fields))
        elif isinstance(message, protocol.SplitLine):  # nobody to answer: the line is lost
            channel.post(protocol.ForwardedHangUp(
                build_id=message.build_id, attempt=message.attempt, seat=message.seat,
                conn=message.conn, reason="the build's own runner is not connected",
            ))  # fmt: skip

    def _from_host(self, channel: Channel, name: str, session: int, message: Any) -> None:
        """The host's answer on a seat's connection, for that seat's runner."""
        job = self._leased(message.build_id, message.attempt, name, session)
        if job is None:
            return
        seat = self._scheduler.seat_session(job, message.seat)
        if seat is not None and seat in self.channels:
            fields = {f: getattr(message, f) for f in protocol.fields_of(type(message))}
            self.channels[seat].post(_FORWARDED[type(message)](**fields))


def _unless_stale(name: str, decide: Callable[[], T]) -> T | None:
    """What ``decide`` returns, or None when it finds the message from runner ``name``
    stale (a lease or seat that is no longer its own): such a message is dropped quietly."""
    try:
        return decide()
    except StaleResult as e:
        log.debug("dropped a message from %s: %s", name, e)
        return None


#: What the dispatcher sends on for each message of a split it routes.
_FORWARDED: dict[type[protocol.Message], Any] = {
    protocol.SplitLine: protocol.ForwardedLine,
    protocol.SplitClose: protocol.ForwardedClose,
    protocol.SplitOutput: protocol.ForwardedOutput,
    protocol.SplitSeatEnd: protocol.ForwardedSeatEnd,
    protocol.SplitReply: protocol.ForwardedReply,
    protocol.SplitHangUp: protocol.ForwardedHangUp,
}


def _offer(message: protocol.Register) -> labels.Offer:
    """The labels a registering runner offers, checked (lowercase) by superci.labels."""
    try:
        given = labels.check_labels(message.labels)
        facts = labels.check_facts(message.facts)
    except ConfigError as e:  # the protocol checked them already
        raise ProtocolError(str(e)) from None
    return labels.Offer(given, facts, message.exclusive)
