"""The recorder: carries out the scheduler's actions against the database, the results
folder and the runners' sessions, and records results in groups.

Results that arrive in one turn of the loop are written with one commit, and the builds
handed out after them with another: two fsyncs for many builds, not one per build. A
build goes out to its runner only once the transaction that leased it has committed.
Writes that failed (a full disk, a locked database) are kept per build, in order, and
retried before anything else is done to that build, so the store catches up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from superci import events, protocol
from superci.bus import EventBus
from superci.channel import Channel
from superci.errors import StorageError
from superci.jobs import DEFAULT_JOB
from superci.ratelimit import RateLimitedLog
from superci.report import commit_document, counts_text, result_document
from superci.results import JOBS_FOLDER, ResultsFolder
from superci.scheduler import (
    Action,
    CancelLease,
    CloseSession,
    EndBuild,
    Lease,
    Outcome,
    Requeue,
    Scheduler,
    SeatLost,
    StartBuild,
    StartSeat,
)
from superci.status import BuildStatus, RunnerState
from superci.store import BuildRecord, Store

log = logging.getLogger("superci.dispatcher.recorder")  # a part of the dispatcher, logged as one

ResultHook = Callable[[dict[str, Any]], None]


#: Commits of several jobs a restarted dispatcher checks for a missing result.json.
RECENT_COMMITS_CHECKED = 200


@dataclass(frozen=True)
class PendingResult:
    """A runner's result, accepted and waiting for the next group commit."""

    channel: Channel  # the runner's connection, which hears whether it was recorded
    outcome: Outcome  # what is recorded (see Scheduler.accept_result)
    result: protocol.Result  # what the runner sent


class Outbox:
    """Messages to runner sessions, held until the transaction that decided them commits."""

    def __init__(self, sessions: Mapping[int, Channel]) -> None:
        self._sessions = sessions
        self._messages: list[tuple[int, protocol.Message]] = []

    def post(self, session: int, message: protocol.Message) -> None:
        self._messages.append((session, message))

    def withhold(self, leases: set[Lease]) -> None:
        """Drop the builds of these leases: they were given back, not committed."""
        self._messages = [
            (session, message) for session, message in self._messages
            if not (isinstance(message, protocol.Build)
                    and Lease(message.build_id, message.attempt) in leases)
        ]  # fmt: skip

    def flush(self) -> None:
        """Send what is held (to sessions still open), in order."""
        messages, self._messages = self._messages, []
        for session, message in messages:
            channel = self._sessions.get(session)
            if channel is not None:
                channel.post(message)


class PoolEvents:
    """Tells the bus how the pool changed since it was last told: every way a runner comes
    and goes (registered, replaced, left, lost, declared dead, detached) the same way."""

    def __init__(self, scheduler: Scheduler, bus: EventBus) -> None:
        self._scheduler = scheduler
        self._bus = bus
        self._told: events.Pool = {}  # the runners as watchers were last told

    def publish(self, starting: Iterable[str] = ()) -> None:
        """Publish the changes. ``starting``: runners about to be sent a build, shown
        without it yet, so they are busy only once the build started."""
        pool = events.pool_of(self._scheduler.view().runners)
        for name in starting:
            if name in pool:
                pool[name] = events.Seat(RunnerState.IDLE, None, pool[name].host)
        for change in events.pool_changes(self._told, pool):
            self._bus.publish(change)
        self._told = pool


class Recorder:
    """Carries out actions and records results; the only writer of builds' states. What it
    carried out is published on the bus once it is committed."""

    def __init__(
        self,
        scheduler: Scheduler,
        store: Store,
        results: ResultsFolder,
        sessions: Mapping[int, Channel],
        bus: EventBus,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_result: ResultHook | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._store = store
        self._results = results
        self._sessions = sessions
        self._bus = bus
        self._pool = PoolEvents(scheduler, bus)
        self._clock = clock
        self._wall = wall_clock
        self._result_hook = on_result
        self._pending: dict[int, PendingResult] = {}  # by build, until the next commit
        # Requeue and EndBuild whose write failed, per build, in order.
        self._unwritten: dict[int, list[Requeue | EndBuild]] = {}
        # Faults retried every tick (a full disk, a locked database) are logged sparingly.
        self._fault_log = RateLimitedLog(log, burst=3, period=10.0)

    # --- results, in groups ---------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether results wait for the next group commit."""
        return bool(self._pending)

    def add(self, pending: PendingResult) -> None:
        """Record this result with the others of this turn of the loop (a resend of one
        already waiting is ignored)."""
        build_id = pending.outcome.lease.build_id
        if build_id in self._pending:
            return
        self._pending[build_id] = pending
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Record every waiting result with one commit, acknowledge each, then hand out the
        next builds with another (after the acks, so their runners are free for them)."""
        arrived, self._pending = list(self._pending.values()), {}
        current = []
        for pending in arrived:  # a lease may have ended since its result arrived
            if self._scheduler.is_current(pending.outcome.lease):
                current.append(pending)
            else:
                pending.channel.post(result_ack(pending.result, accepted=False,
                                          reason="the build ended meanwhile"))  # fmt: skip
        try:
            with self._store.transaction():
                documents = [self._write_result(p.outcome, p.result) for p in current]
        except StorageError as e:
            for pending in current:
                log.error("build %d: result not recorded, the runner will retry: %s",
                          pending.outcome.lease.build_id, e)  # fmt: skip
                pending.channel.post(result_ack(pending.result, accepted=False, retry=True,
                                          reason=str(e)))  # fmt: skip
            return
        actions: list[Action] = []
        now = self._clock()
        for pending, document in zip(current, documents, strict=True):
            outcome = pending.outcome
            self.announce(outcome.lease.build_id, outcome.sha, outcome.status, document)
            pending.channel.post(result_ack(pending.result, accepted=True))
            checkout_error = pending.result.message if pending.result.checkout_failed else None
            actions += self._scheduler.finish(outcome.lease.build_id, now, checkout_error,
                                              outcome.status)  # fmt: skip
        self._hand_out(actions)

    def _hand_out(self, actions: list[Action]) -> None:
        """Carry out what followed the results in one transaction. Builds go out only once
        their lease is committed: if the commit fails (or anything else does), they are
        given back and not sent, and the watchdog hands them out again later."""
        outbox = Outbox(self._sessions)
        self._pool.publish(_starting(actions))
        due = {build_id: list(writes) for build_id, writes in self._unwritten.items()}
        try:
            with self._bus.held(), self._store.transaction():  # published once committed
                self.carry_out(actions, outbox)
        except Exception as e:
            if isinstance(e, StorageError):
                self._fault_log.log(logging.ERROR, "could not store the builds handed out: %s", e)
            else:
                log.exception("internal error while handing out builds; they wait again")
            self._still_due(due)  # writes it made of earlier failures were rolled back too
            outbox.withhold(self._not_committed(actions))
        outbox.flush()
        self._pool.publish()

    def _still_due(self, due: dict[int, list[Requeue | EndBuild]]) -> None:
        """Put back the writes that were due before a transaction that rolled back, ahead
        of any that failed inside it."""
        for build_id, writes in due.items():
            later = [w for w in self._unwritten.get(build_id, []) if w not in writes]
            self._unwritten[build_id] = writes + later

    def _not_committed(self, actions: list[Action]) -> set[Lease]:
        """A transaction of actions was rolled back: builds it started are given back, its
        requeues and ends are written again later. Returns the leases given back."""
        given_back = set()
        for action in actions:
            if isinstance(action, StartBuild):
                self._scheduler.give_back(action.build_id, action.attempt)
                given_back.add(Lease(action.build_id, action.attempt))
            elif isinstance(action, StartSeat):  # withheld with its build's lease
                self._scheduler.give_back_seat(action.build_id, action.seat)
            elif isinstance(action, Requeue | EndBuild):
                self._unwritten.setdefault(action.build_id, []).append(action)
        return given_back

    def _write_result(self, outcome: Outcome, result: protocol.Result | None) -> dict[str, Any]:
        """Write result.json, then mark the build finished: in that order, so a crash
        between the two re-runs the build rather than losing its result."""
        record = self._store.get(outcome.lease.build_id)
        assert record is not None, "every job has a stored build"
        if result is not None:
            self._take_description(record, result)
        finished_at = self._wall()
        document = result_document(record, outcome.status, outcome.message, result, finished_at)
        self._results.write_result(outcome.sha, document, record.job)
        self._store.finish(record.id, outcome.status, finished_at, outcome.message,
                           document["tests"])  # fmt: skip
        if record.job != DEFAULT_JOB:
            self.write_commit(record.sha, record.round)
        return document

    def write_commit(self, sha: str, round_id: int) -> bool:
        """Once every job of a round of several has ended, sum it up in the commit's own
        ``result.json``; whether it was written."""
        records = self._store.round_of(round_id)
        if not all(record.status.finished for record in records):
            return False
        try:
            self._results.write_commit(sha, commit_document(records))
        except StorageError as e:  # the jobs' own results stand; show still sums them up
            self._fault_log.log(logging.ERROR, "cannot write the result of commit %s: %s",
                                sha[:12], e)  # fmt: skip
            return False
        return True

    def write_missing_commits(self, limit: int = RECENT_COMMITS_CHECKED) -> int:
        """After a restart: write the commit ``result.json`` of each recent round of named
        jobs that all ended, where it is missing or an earlier round's (the dispatcher
        stopped between the last job's result and the commit's, or could not write it
        then). A file it does not recognise, or a commit whose jobs' files are gone, is
        left as it is. Returns how many it wrote."""
        written = 0
        for sha in self._store.commits_with_jobs(limit):
            records = self._store.latest_round(sha)
            several = any(record.job != DEFAULT_JOB for record in records)
            if not several or not all(record.status.finished for record in records):
                continue
            if self._commit_result_missing(sha, records[0].round):
                log.info("writing the missing result of commit %s (round %d)", sha[:12],
                         records[0].round)  # fmt: skip
                written += self.write_commit(sha, records[0].round)
        return written

    def _commit_result_missing(self, sha: str, round_id: int) -> bool:
        """Whether the commit's own document of round ``round_id`` is to be written: its
        jobs' files are there, and at the top is nothing or a document superci wrote for
        another build or round (which the write sets aside)."""
        if not (self._results.folder(sha) / JOBS_FOLDER).is_dir():
            return False
        try:
            current = self._results.read_result(sha)
        except (OSError, ValueError) as e:
            log.warning("cannot read the result of commit %s: %s", sha[:12], e)
            return False
        if current is None:
            return True
        if not isinstance(current, dict):
            return False
        if "build_id" in current:  # a single job's, of an earlier round
            return True
        known = isinstance(current.get("round"), int)
        return known and current["round"] != round_id

    def _take_description(self, record: BuildRecord, result: protocol.Result) -> None:
        """The subject and author the runner said, where the submitter said none."""
        if (result.subject is None and result.author is None) or (
            record.subject is not None and record.author is not None
        ):
            return
        self._store.describe(record.id, result.subject, result.author)
        record.subject = result.subject if record.subject is None else record.subject
        record.author = result.author if record.author is None else record.author

    def announce(
        self, build_id: int, sha: str, status: BuildStatus, document: dict[str, Any]
    ) -> None:
        """A build ended and its result is recorded: say so to the log, on the bus (the
        readers following its output stop there), and to the ``on_result`` hook."""
        counts = counts_text(document.get("tests"))
        log.info("build %d of %s: %s%s: %s", build_id, sha[:12], status,
                 f" ({counts})" if counts else "", document.get("message", ""))  # fmt: skip
        self._bus.publish(events.build_ended(document))
        if self._result_hook is not None:
            self._result_hook(document)

    # --- carrying out the scheduler's decisions -------------------------------------

    def carry_out(self, actions: list[Action], outbox: Outbox | None = None) -> None:
        """Carry out actions in order; messages go to ``outbox`` when given (inside a
        transaction: the pool is published after it), else at once."""
        now = Outbox(self._sessions) if outbox is None else outbox
        if outbox is None:
            self._pool.publish(_starting(actions))
        for action in actions:
            if isinstance(action, Requeue | EndBuild) and action.build_id in self._unwritten:
                self._unwritten[action.build_id].append(action)  # after what is still due
                self._write_unwritten(action.build_id)
                continue
            try:
                self._carry_out_one(action, now)
            except StorageError as e:
                if isinstance(action, Requeue | EndBuild):
                    self._fault_log.log(logging.ERROR, "could not record %s of build %d "
                                        "(retried): %s", type(action).__name__,
                                        action.build_id, e)  # fmt: skip
                    self._unwritten.setdefault(action.build_id, []).append(action)
                else:
                    log.error("could not carry out %s: %s", type(action).__name__, e)
        if outbox is None:
            now.flush()
            self._pool.publish()

    def retry_unwritten(self) -> None:
        """Write again what failed to be written earlier (each watchdog tick)."""
        for build_id in list(self._unwritten):
            self._write_unwritten(build_id)

    def _write_unwritten(self, build_id: int) -> bool:
        """Write what is due for a build, in order; True once nothing is left."""
        due = self._unwritten.get(build_id, [])
        while due:
            try:
                self._carry_out_one(due[0], Outbox(self._sessions))
            except StorageError as e:
                self._fault_log.log(logging.ERROR, "build %d still not recorded: %s", build_id, e)
                return False
            due.pop(0)
        self._unwritten.pop(build_id, None)
        return True

    def _carry_out_one(self, action: Action, outbox: Outbox) -> None:
        match action:
            case StartBuild():
                self._start(action, outbox)
            case Requeue():
                if action.counted:
                    why = f"attempt {action.attempt} lost with runner {action.lost_runner}: "
                elif action.needs is not None:
                    why = (
                        f"attempt {action.attempt} given back (not counted) by runner "
                        f"{action.lost_runner}, which does not suit the commit: "
                    )
                else:
                    why = (
                        f"attempt {action.attempt} given back (not counted) by runner "
                        f"{action.lost_runner}, which left: "
                    )
                log.warning("build %d re-queued: %s%s", action.build_id, why, action.reason)
                needs = None if action.needs is None else dict(action.needs)
                self._store.mark_queued(action.build_id, why + action.reason, action.counted,
                                        needs)  # fmt: skip
                self._publish_queued(action.build_id, why + action.reason)
            case EndBuild():
                record = self._store.get(action.build_id)
                assert record is not None
                log.warning(
                    "build %d ends as %s: %s", action.build_id, action.status, action.reason
                )
                outcome = Outcome(Lease(record.id, record.attempt), record.sha, action.status,
                                  action.reason)  # fmt: skip
                document = self._write_result(outcome, None)
                self.announce(record.id, record.sha, action.status, document)
            case CloseSession():
                channel = self._sessions.get(action.session)
                if channel is not None:
                    channel.post(protocol.Error(code="closed", message=action.reason))
                    channel.close_nowait()
            case CancelLease():
                cancel = protocol.Cancel(
                    build_id=action.build_id, attempt=action.attempt, reason=action.reason
                )
                outbox.post(action.session, cancel)
            case StartSeat():
                log.info("build %d (%s) attempt %d: seat %d → runner %s", action.build_id,
                         action.sha[:12], action.attempt, action.seat, action.runner)  # fmt: skip
                outbox.post(action.session, protocol.Build(
                    build_id=action.build_id, attempt=action.attempt, sha=action.sha,
                    branch=action.branch, job=action.job, seat=action.seat,
                ))  # fmt: skip
            case SeatLost():
                log.warning("build %d: seat %d lost with runner %s: %s", action.build_id,
                            action.seat, action.runner, action.reason)  # fmt: skip
                lease = {"build_id": action.build_id, "attempt": action.attempt,
                         "seat": action.seat}  # fmt: skip
                outbox.post(
                    action.session, protocol.ForwardedClose(**lease, conn=0, reason=action.reason)
                )
                outbox.post(action.session, protocol.ForwardedSeatEnd(
                    **lease, runner=action.runner, message=f"lost: {action.reason}"
                ))  # fmt: skip

    def _start(self, action: StartBuild, outbox: Outbox) -> None:
        """Persist a build as running, then send it; one that cannot be stored is not sent:
        it waits again, uncounted, its runner stays, and a later tick hands it out."""
        try:
            if not self._write_unwritten(action.build_id):
                raise StorageError("its earlier state is not recorded yet")
            self._results.start_log(action.sha, action.build_id, action.job)
            self._store.mark_running(action.build_id, action.attempt, action.runner, self._wall())
        except StorageError as e:
            self._fault_log.log(logging.ERROR, "cannot start build %d yet: %s",
                                action.build_id, e)  # fmt: skip
            self._scheduler.give_back(action.build_id, action.attempt)
            return
        log.info(
            "build %d (%s) attempt %d → runner %s",
            action.build_id, action.sha[:12], action.attempt, action.runner,
        )  # fmt: skip
        outbox.post(action.session, _build_message(action))
        self._bus.publish(events.BuildStarted(build_id=action.build_id, sha=action.sha,
                                              branch=action.branch, job=action.job,
                                              runner=action.runner,
                                              attempt=action.attempt))  # fmt: skip

    def _publish_queued(self, build_id: int, reason: str) -> None:
        record = self._store.get(build_id)
        if record is not None:
            self._bus.publish(events.BuildQueued(build_id=build_id, sha=record.sha, job=record.job,
                                                 branch=record.branch, reason=reason))  # fmt: skip


def _starting(actions: list[Action]) -> list[str]:
    """The runners these actions send a build to."""
    return [action.runner for action in actions if isinstance(action, StartBuild | StartSeat)]


def result_ack(result: protocol.Result, **fields: Any) -> protocol.ResultAck:
    return protocol.ResultAck(build_id=result.build_id, attempt=result.attempt, **fields)


def _build_message(action: StartBuild) -> protocol.Build:
    return protocol.Build(
        build_id=action.build_id,
        attempt=action.attempt,
        sha=action.sha,
        branch=action.branch,
        job=action.job,
    )
