"""The dispatcher's decisions as a pure state machine: who is free, who is dead, what runs next.

Nothing here touches a socket, a file or the clock: every event carries ``now``, and every
method returns the :data:`Action` list the I/O layer must carry out (send a build, close a
replaced session, record a lost build). That keeps the hard rules — leases, attempts,
stale results, reconnects — testable in microseconds with a fake clock.

A *session* is an opaque integer the caller assigns to one connection, so a runner that
reconnects under the same name is told apart from its own ghost.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from superci import defaults, identity
from superci.errors import RunnerRefused, StaleResult, UnknownBuild
from superci.jobs import DEFAULT_JOB, Readiness, readiness_after
from superci.labels import Offer
from superci.status import BuildStatus, RunnerState


@dataclass(frozen=True)
class Lease:
    """The right to run one attempt of one build; results from any other lease are stale."""

    build_id: int
    attempt: int


@dataclass
class Job:
    """A build the scheduler still has to finish (queued or running)."""

    build_id: int
    sha: str
    branch: str
    status: BuildStatus = BuildStatus.QUEUED
    attempt: int = 0  # dispatches so far; each one is a lease of its own
    runner: str | None = None
    runners: list[str] = field(default_factory=list)
    lost: int = 0  # runners lost while they held it; only these count towards max_attempts
    deadline: float | None = None  # when a running attempt has overstayed its time limit
    stopping: BuildStatus | None = None  # cancelled or timeout, once asked to stop
    stop_by: float | None = None  # when a runner that was asked to stop is given up on
    stop_reason: str = ""
    stop_grace: float | None = None  # the runner's own kill grace plus margin, once known
    needs: Mapping[str, str] = field(default_factory=dict)  # labels its runner must offer
    job: str = DEFAULT_JOB  # the job's key among its commit's jobs (see superci.jobs)
    round: int = 0  # the first build id of its round (the jobs of one submission); 0: its own
    after: tuple[str, ...] = ()  # the job names of its round that must pass before it runs
    #: A split build: participants wanted in all (its own runner included; 0: no seats
    #: offered), the runner of each seat taken, and the number the next seat gets.
    seat_width: int = 0
    seats: dict[int, str] = field(default_factory=dict)
    next_seat: int = 1

    def __post_init__(self) -> None:
        self.round = self.round or self.build_id

    @property
    def lease(self) -> Lease:
        return Lease(self.build_id, self.attempt)


@dataclass
class Round:
    """What the scheduler keeps of a round in which a job runs after others: every job's
    key, and how those that ended ended (see :func:`superci.jobs.readiness_after`)."""

    keys: list[str]
    ended: dict[str, BuildStatus] = field(default_factory=dict)


@dataclass
class PoolRunner:
    """The scheduler's record of a runner in the pool (not the runner process itself, see
    :class:`superci.runner.RunnerProcess`); ``session`` is None while it is not connected."""

    name: str
    session: int | None
    host: str
    pid: int
    last_seen: float
    build_id: int | None = None
    failed_checkouts: list[str] = field(default_factory=list)  # commits, since a good one
    benches: int = 0  # times benched since its last good checkout
    benched_until: float | None = None
    bench_reason: str = ""
    instance: str | None = None  # the runner process (see superci.identity.new_instance)
    leaving: bool = False  # said it leaves: it is handed nothing more
    isolated: bool = False  # its builds run as a user of their own (--build-user)
    offer: Offer = field(default_factory=Offer)  # its labels (see superci.labels)
    seat: int = 0  # with build_id: the seat of that build's split it takes part in

    @property
    def state(self) -> RunnerState:
        if self.session is None:
            return RunnerState.DISCONNECTED
        if self.build_id is not None:
            return RunnerState.BUSY
        return RunnerState.BENCHED if self.benched_until is not None else RunnerState.IDLE


class Proof(enum.Enum):
    """What a registering runner showed of its name's identity (see superci.identity)."""

    PROVEN = "proven"  # the name's secret
    NEW = "new"  # nothing to show: the name has no identity yet, one is issued
    UNPROVEN = "unproven"  # the name has an identity, and the runner did not show it


def identify(shown: str | None, stored: str | None) -> Proof:
    """What a registering runner proves: ``shown`` is the secret it sent (if any),
    ``stored`` the digest its name is bound to (if any)."""
    if stored is None:
        return Proof.NEW
    return Proof.PROVEN if identity.proves(shown, stored) else Proof.UNPROVEN


# --- decisions returned as values ------------------------------------------------------


@dataclass(frozen=True)
class Kept:
    """A build a reconnecting runner keeps: it resends its output from what the log holds."""

    build_id: int
    attempt: int
    sha: str
    job: str = DEFAULT_JOB


@dataclass(frozen=True)
class Registration:
    """What follows from a runner's registration: the actions to carry out, the build it
    keeps (if any), and the lease it claimed that is no longer its own (if any: the
    runner is told to drop it, and its result for it will be refused)."""

    actions: list[Action]
    kept: Kept | None = None
    disowned: Lease | None = None


@dataclass(frozen=True)
class Outcome:
    """How a build ends by its runner's result: the status and message to record, which
    are the dispatcher's own when it asked the runner to stop the build."""

    lease: Lease
    sha: str
    status: BuildStatus
    message: str


@dataclass(frozen=True)
class RunnerView:
    """A runner of the pool as people see it (see :meth:`Scheduler.view`)."""

    name: str
    host: str
    state: RunnerState
    last_seen: float
    build_sha: str | None  # the commit it builds
    build_id: int | None  # the build it runs (with build_sha)
    benched_until: float | None
    bench_reason: str
    isolated: bool = False  # its builds run as a user of their own
    offer: Offer = field(default_factory=Offer)  # its labels


@dataclass(frozen=True)
class QueuedView:
    """A build waiting for a runner."""

    build_id: int
    sha: str
    branch: str
    attempt: int
    needs: Mapping[str, str] = field(default_factory=dict)
    job: str = DEFAULT_JOB
    #: The jobs of its round it waits for (they must pass first); empty: only a runner.
    waiting_for: tuple[str, ...] = ()


@dataclass(frozen=True)
class PoolView:
    """A snapshot of the pool (by name) and the queue (in the order it is handed out)."""

    runners: tuple[RunnerView, ...]
    queue: tuple[QueuedView, ...]


# --- actions: what the I/O layer must do ---------------------------------------------


@dataclass(frozen=True)
class StartBuild:
    """Send this build to this runner's session (and persist it as running first)."""

    session: int
    runner: str
    build_id: int
    attempt: int
    sha: str
    branch: str
    job: str = DEFAULT_JOB  # which of the commit's jobs


@dataclass(frozen=True)
class Requeue:
    """The build's runner is gone; the build waits for another one (persist it as queued).

    ``counted`` is False when the runner left on purpose (stopped, or gave up on its
    clone): that costs the build no attempt. ``needs``: what the runner learned the build
    needs, which it does not offer (persist them with the build)."""

    build_id: int
    attempt: int
    lost_runner: str
    reason: str
    counted: bool = True
    needs: Mapping[str, str] | None = None


@dataclass(frozen=True)
class EndBuild:
    """The build ends without a runner's result (runners lost, cancelled while queued, a
    wedged runner); record it with this status and reason."""

    build_id: int
    status: BuildStatus
    reason: str


@dataclass(frozen=True)
class CloseSession:
    """Close a connection: its runner was replaced or declared dead."""

    session: int
    reason: str


@dataclass(frozen=True)
class CancelLease:
    """Tell a runner to stop a build it still runs under a lease that is no longer current."""

    session: int
    build_id: int
    attempt: int
    reason: str


@dataclass(frozen=True)
class StartSeat:
    """Send this runner a seat of a split build: it checks the commit out and runs the
    tests the build's own runner hands out (persist nothing: a seat is no attempt)."""

    session: int
    runner: str
    build_id: int
    attempt: int
    seat: int
    sha: str
    branch: str
    job: str = DEFAULT_JOB


@dataclass(frozen=True)
class SeatLost:
    """Tell the build's own runner (``session``) that a seat's runner is gone: its batch
    source loses that participant, whose batch goes back to the others."""

    session: int
    build_id: int
    attempt: int
    seat: int
    runner: str
    reason: str


Action = StartBuild | Requeue | EndBuild | CloseSession | CancelLease | StartSeat | SeatLost


class Scheduler:
    """Pool of runners plus queue of jobs; all methods are pure decisions."""

    def __init__(
        self,
        heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT,
        max_attempts: int = defaults.MAX_ATTEMPTS,
        build_timeout: float = defaults.MAX_TIMEOUT,
        stop_grace: float | None = None,
        max_handbacks: int = defaults.MAX_HANDBACKS,
        *,
        deadline_margin: float = defaults.DEADLINE_MARGIN,
        bench_after: int = defaults.BENCH_AFTER,
        bench_time: float = defaults.BENCH_TIME,
        bench_max: float = defaults.BENCH_MAX,
    ) -> None:
        """``stop_grace`` is the runner's default kill grace plus ``deadline_margin``
        when not given; a runner's own grace replaces it once it says so."""
        self.heartbeat_timeout = heartbeat_timeout
        self.max_attempts = max_attempts
        self.max_handbacks = max_handbacks
        self.build_timeout = build_timeout  # until the runner says which limit applies
        self.deadline_margin = deadline_margin
        if stop_grace is None:
            stop_grace = defaults.KILL_GRACE + deadline_margin
        self.stop_grace = stop_grace  # how long a runner may take to stop a build
        self.bench_after = bench_after  # failed checkouts in a row that bench a runner
        self.bench_time = bench_time  # its first bench, doubled each time up to bench_max
        self.bench_max = bench_max
        self.jobs: dict[int, Job] = {}
        self.rounds: dict[int, Round] = {}  # rounds with a job that runs after others
        self.runners: dict[str, PoolRunner] = {}
        self._queue: list[int] = []  # heap of build ids: oldest first
        self._idle: dict[str, None] = {}  # insertion-ordered: longest idle first
        # The checkout record of runners gone from the pool, so that reconnecting does
        # not take a benched runner off the bench (nor forget its failures).
        self._bench_records: dict[str, PoolRunner] = {}

    # --- events ---------------------------------------------------------------------

    def add_build(
        self, build_id: int, sha: str, branch: str, now: float,
        needs: Mapping[str, str] | None = None,
    ) -> list[Action]:  # fmt: skip
        """A new build was stored; queue it and hand it out if a runner that offers what
        it ``needs`` is free."""
        return self.add_round([Job(build_id, sha, branch, needs=dict(needs or {}))], now)

    def add_round(self, jobs: Sequence[Job], now: float) -> list[Action]:
        """A commit's jobs were stored (one round); queue them all and hand out those
        that run after no other to free runners that take them."""
        for job in jobs:
            self.jobs[job.build_id] = job
            heapq.heappush(self._queue, job.build_id)
        self._note_rounds(jobs)
        return self._dispatch(now)

    def _note_rounds(self, jobs: Iterable[Job], ended: Iterable[Job] = ()) -> None:
        """Keep the rounds of these jobs in which one runs after others (with the jobs of
        those rounds that already ended, after a restart)."""
        members: dict[int, dict[str, BuildStatus | None]] = {}
        for job in jobs:
            members.setdefault(job.round, {})[job.job] = None
        for job in ended:
            if job.round in members:
                members[job.round][job.job] = job.status
        for round_id, keys in members.items():
            if any(self.jobs[j].after for j in self._unfinished_of(round_id)):
                self.rounds[round_id] = Round(
                    list(keys), {key: status for key, status in keys.items() if status}
                )

    def _unfinished_of(self, round_id: int) -> list[int]:
        return [build_id for build_id, job in self.jobs.items() if job.round == round_id]

    def restore(self, jobs: Iterable[Job], now: float, ended: Iterable[Job] = ()) -> list[Action]:
        """Take over the unfinished builds of a previous dispatcher process; ``ended``:
        the jobs of their rounds that already finished, which the others may run after.

        A build that was running keeps its lease for one heartbeat timeout, held by a
        disconnected placeholder of its runner: if that runner reconnects and claims the
        lease, it is adopted; if not, the usual death of a runner re-queues it.
        """
        jobs = list(jobs)
        for job in jobs:
            self.jobs[job.build_id] = job
            # A runner builds one thing at a time: should the database say it held two
            # (a requeue whose write never landed), only the newest lease can be its own.
            held = self.runners.get(job.runner) if job.runner is not None else None
            if held is not None and held.build_id is not None:
                older = self.jobs[held.build_id]
                older.status, older.runner = BuildStatus.QUEUED, None
                heapq.heappush(self._queue, older.build_id)
            if job.status is BuildStatus.RUNNING and job.runner is not None:
                job.deadline = now + self.build_timeout + self.stop_grace
                self.runners[job.runner] = PoolRunner(
                    job.runner, None, "", 0, last_seen=now, build_id=job.build_id
                )
            else:
                job.status = BuildStatus.QUEUED
                heapq.heappush(self._queue, job.build_id)
        self._note_rounds(jobs, ended)
        skipped: list[Action] = []  # a skip decided before the restart but not recorded
        for round_id in list(self.rounds):
            skipped += self._skip_blocked(round_id)
        return skipped + self._dispatch(now)

    def admit(
        self, name: str, instance: str | None, proof: Proof, now: float, last_host: str = ""
    ) -> None:
        """Refuse a registration with :class:`RunnerRefused` unless the runner may take
        the name: only its identity replaces a session (or a lease held since a
        dispatcher restart), and not while a session of another process of the same
        identity (a cloned machine) is still heard from. ``last_host``: where the name
        last registered, if the dispatcher knows."""
        old = self.runners.get(name)
        if proof is Proof.UNPROVEN or (proof is Proof.NEW and old is not None):
            raise RunnerRefused(_taken(name, old, last_host))
        if old is None or old.session is None:
            return
        silent = now - old.last_seen
        if (instance is None or instance != old.instance) and silent <= self.heartbeat_timeout:
            raise RunnerRefused(_copied(name, old, silent, self.heartbeat_timeout),
                                code="identity-in-use")  # fmt: skip

    def register(
        self,
        name: str,
        session: int,
        host: str,
        pid: int,
        lease: Lease | None,
        now: float,
        *,
        proof: Proof,
        instance: str | None,
        isolated: bool = False,
        offer: Offer | None = None,
    ) -> Registration:
        """A runner joined (see :meth:`admit`); it replaces its own older session at once,
        and keeps the build it claims only if that is still its lease."""
        self.admit(name, instance, proof, now)
        actions: list[Action] = []
        old = self.runners.get(name)
        kept: Job | None = None
        if old is not None:
            if old.session is not None and old.session != session:
                why = (
                    f"replaced by a new session of runner {name} from {host} (pid {pid}); "
                    "if that is another machine, give each runner its own --name"
                )
                actions.append(CloseSession(old.session, why))
            held = self.jobs.get(old.build_id) if old.build_id is not None else None
            if old.seat:  # a seat is not kept across connections: its participant is lost
                actions += self._lose_seat(old, "runner reconnected")
            elif held is not None and lease == held.lease:
                kept = held
            elif held is not None:
                actions += self._lose_job(held, name, "runner reconnected without its build")
            self._idle.pop(name, None)
        disowned = lease if lease is not None and kept is None else None
        if disowned is not None:
            actions.append(CancelLease(session, disowned.build_id, disowned.attempt,
                                       "lease expired"))  # fmt: skip
        runner = self.runners[name] = PoolRunner(
            name, session, host, pid, now, kept.build_id if kept else None, instance=instance,
            isolated=isolated, offer=offer or Offer(),
        )  # fmt: skip
        _carry_bench(old or self._bench_records.pop(name, None), runner, now)
        if kept is None:
            if runner.benched_until is None:
                self._idle[name] = None
        elif kept.stopping is not None:  # asked to stop before it reconnected: ask again
            actions.append(CancelLease(session, kept.build_id, kept.attempt, kept.stop_reason))
        return Registration(
            actions + self._dispatch(now),
            Kept(kept.build_id, kept.attempt, kept.sha, kept.job) if kept else None,
            disowned,
        )

    def heartbeat(self, name: str, session: int, now: float) -> None:
        """The runner is alive; a heartbeat of a replaced session does not count."""
        runner = self.runners.get(name)
        if runner is not None and runner.session == session:
            runner.last_seen = now

    def disconnect(self, name: str, session: int, now: float) -> list[Action]:
        """A connection closed or reset: its runner is dead at once."""
        runner = self.runners.get(name)
        if runner is None or runner.session != session:
            return []
        return self._mark_runner_dead(runner, "connection closed", now)

    def leaving(self, name: str, session: int) -> None:
        """A runner said it leaves: it is handed nothing more, while what it sent before
        (a result) is still recorded and frees it."""
        runner = self.runners.get(name)
        if runner is not None and runner.session == session:
            runner.leaving = True
            self._idle.pop(name, None)

    def leave(self, name: str, session: int, reason: str, now: float) -> list[Action]:
        """A runner leaves on purpose (stopped, or it cannot build any more): it leaves the
        pool and its build is queued again without counting an attempt."""
        runner = self.runners.get(name)
        if runner is None or runner.session != session:
            return []
        del self.runners[name]
        self._idle.pop(name, None)
        self._remember_bench(runner)
        actions: list[Action] = [CloseSession(session, f"runner {name} left: {reason}")]
        job = self.jobs.get(runner.build_id) if runner.build_id is not None else None
        if runner.seat:
            actions += self._lose_seat(runner, f"runner left: {reason}")
        elif job is not None:
            actions += self._hand_back_job(job, name, reason)
        return actions + self._dispatch(now)

    def unsuited(
        self, build_id: int, attempt: int, name: str, session: int,
        needs: Mapping[str, str], reason: str, now: float,
    ) -> list[Action]:  # fmt: skip
        """The runner found that the build needs labels it does not offer (the commit's
        .superci.toml said so, the submission did not): the build learns its needs and
        waits, uncounted, for a runner that offers them; this one is free again. Raises
        :class:`StaleResult` unless this session holds the lease."""
        job = self.check_lease(build_id, attempt, name, session)
        job.needs = dict(needs)
        runner = self.runners[name]
        runner.build_id = None
        if runner.benched_until is None and not runner.leaving:
            self._idle[name] = None
        return self._hand_back_job(job, name, reason, job.needs) + self._dispatch(now)

    def give_back(self, build_id: int, attempt: int) -> None:
        """A build could not be started (its lease was never sent: the results disk or the
        database refused it): it waits again as if never handed out, its runner is free,
        and no attempt is counted. It is not handed out again here (that would retry at
        once, in a loop): the next dispatch does, e.g. :meth:`dispatch` on a later tick."""
        job = self.jobs.get(build_id)
        if job is None or job.attempt != attempt or job.status is not BuildStatus.RUNNING:
            return
        runner = self.runners.get(job.runner) if job.runner else None
        if runner is not None and runner.build_id == build_id:
            runner.build_id = None
            if runner.session is not None:
                self._idle[runner.name] = None
        job.attempt -= 1
        job.runners.pop()
        job.runner, job.deadline = None, None
        job.status = BuildStatus.QUEUED
        heapq.heappush(self._queue, build_id)

    def detach(self, name: str, session: int, now: float) -> list[Action]:
        """Close a runner's connection on purpose (its output could not be written) but keep
        its lease, as after a dispatcher restart: it registers again and resends from what
        the log holds. If it does not come back, the heartbeat timeout judges it."""
        runner = self.runners.get(name)
        if runner is None or runner.session != session:
            return []
        self._idle.pop(name, None)
        runner.session, runner.last_seen = None, now
        if runner.build_id is None:
            del self.runners[name]
        return [CloseSession(session, "the dispatcher could not store the output; resend it")]

    def dispatch(self, now: float) -> list[Action]:
        """Hand out queued builds to idle runners (after builds were given back)."""
        return self._dispatch(now)

    def resumed(self, paused_for: float) -> None:
        """The dispatcher could not listen for ``paused_for`` seconds (its process or VM
        was paused, its loop blocked): that time is not the runners' silence. Each runner
        is judged as if the clock had stopped, so heartbeats that waited in the socket
        are read before anyone is declared dead."""
        for runner in self.runners.values():
            runner.last_seen += paused_for

    def check_heartbeats(self, now: float) -> list[Action]:
        """Declare dead every runner silent for longer than the heartbeat timeout."""
        actions: list[Action] = []
        dead = [r for r in self.runners.values() if now - r.last_seen > self.heartbeat_timeout]
        for runner in dead:  # first, so a lost build is not handed to another silent runner
            self._idle.pop(runner.name, None)
        for runner in dead:
            silent = now - runner.last_seen
            actions += self._mark_runner_dead(runner, f"no heartbeat for {silent:.1f}s", now)
        return actions

    def started(self, job: Job, timeout: float, kill_grace: float, now: float) -> None:
        """The runner started the tests with this limit: the dispatcher's deadline follows,
        and a stop it is asked for may take the runner's own kill grace. Both are capped by
        the dispatcher's own ``build_timeout``: a runner cannot keep a build for ever."""
        job.stop_grace = min(kill_grace, self.build_timeout) + self.deadline_margin
        job.deadline = now + min(timeout, self.build_timeout) + job.stop_grace

    def cancel(
        self,
        build_id: int,
        now: float,
        status: BuildStatus = BuildStatus.CANCELLED,
        reason: str = "cancelled",
    ) -> list[Action]:
        """Stop a build: a queued one ends at once, a running one's runner is told to stop
        it (and has its kill grace, or ``stop_grace``, to report back before it is given
        up on)."""
        job = self.jobs.get(build_id)
        if job is None:
            raise UnknownBuild(f"build {build_id} is neither queued nor running")
        runner = self.runners.get(job.runner) if job.runner else None
        if job.status is BuildStatus.QUEUED or runner is None or runner.session is None:
            return self._end(job, status, reason) + self._dispatch(now)
        if job.stopping is None:
            grace = job.stop_grace if job.stop_grace is not None else self.stop_grace
            job.stopping, job.stop_by, job.stop_reason = status, now + grace, reason
            return [CancelLease(runner.session, build_id, job.attempt, reason),
                    *self._release_seats(job, reason)]  # fmt: skip
        return []

    def check_deadlines(self, now: float) -> list[Action]:
        """Stop builds that overstayed their time limit; end those whose runner did not
        stop them in time, and declare that runner dead (it is wedged)."""
        actions: list[Action] = []
        for job in [j for j in self.jobs.values() if j.status is BuildStatus.RUNNING]:
            if self.jobs.get(job.build_id) is not job:
                continue  # ended by what an earlier job of this loop did to its runner
            if job.stopping is not None and job.stop_by is not None and now > job.stop_by:
                runner = self.runners.get(job.runner) if job.runner else None
                wedged = runner is not None and runner.build_id == job.build_id
                why = f"{job.stop_reason}; runner {job.runner} did not stop it and was dropped"
                actions += self._end(job, job.stopping, why)
                if runner is not None and wedged:  # not a runner busy with something else
                    actions += self._mark_runner_dead(runner, "did not stop a build", now)
            elif job.stopping is None and job.deadline is not None and now > job.deadline:
                why = "build overstayed its time limit; stopped by the dispatcher"
                actions += self.cancel(job.build_id, now, BuildStatus.TIMEOUT, why)
        return actions

    def check_lease(self, build_id: int, attempt: int, name: str, session: int) -> Job:
        """The job, if this session holds its current lease; else :class:`StaleResult`."""
        job = self.jobs.get(build_id)
        runner = self.runners.get(name)
        if job is None:
            raise StaleResult(f"build {build_id} is not running")
        if job.attempt != attempt or job.status is not BuildStatus.RUNNING:
            raise StaleResult(
                f"build {build_id} attempt {attempt} is stale (current attempt {job.attempt})"
            )
        if runner is None or runner.session != session or runner.build_id != build_id:
            raise StaleResult(f"build {build_id} is not leased to this connection")
        if runner.seat:
            raise StaleResult(f"runner {name} holds seat {runner.seat} of build {build_id}, "
                              "not the build")  # fmt: skip
        return job

    # --- a split build's seats ------------------------------------------------------

    def open_seats(
        self, build_id: int, attempt: int, name: str, session: int, width: int, now: float,
        next_seat: int = 0,
    ) -> list[Action]:  # fmt: skip
        """The build's runner splits its suite over ``width`` participants at most (itself
        included): free runners that take the build get seats (after queued builds);
        0 offers no more (running seats go on). Seats are numbered from ``next_seat`` at
        least (the host knows seats of before a restart). :class:`StaleResult` unless
        its lease."""
        job = self.check_lease(build_id, attempt, name, session)
        job.seat_width = width
        job.next_seat = max(job.next_seat, next_seat)
        return self._dispatch(now)

    def check_seat(self, build_id: int, attempt: int, seat: int, name: str, session: int) -> Job:
        """The job, if this session holds this seat of its current attempt; else
        :class:`StaleResult`."""
        job = self.jobs.get(build_id)
        runner = self.runners.get(name)
        if (
            job is None or job.attempt != attempt or job.status is not BuildStatus.RUNNING
            or job.seats.get(seat) != name or runner is None or runner.session != session
            or runner.build_id != build_id or runner.seat != seat
        ):  # fmt: skip
            raise StaleResult(f"seat {seat} of build {build_id} attempt {attempt} is not "
                              f"held by this connection")  # fmt: skip
        return job

    def primary_session(self, job: Job) -> int | None:
        """The session of the runner that holds the build itself (None: not connected)."""
        runner = self.runners.get(job.runner) if job.runner else None
        return runner.session if runner is not None and runner.build_id == job.build_id else None

    def seat_session(self, job: Job, seat: int) -> int | None:
        """The session of the runner that holds this seat (None: nobody, or not connected)."""
        runner = self.runners.get(job.seats.get(seat, ""))
        if runner is None or runner.build_id != job.build_id or runner.seat != seat:
            return None
        return runner.session

    def end_seat(
        self, build_id: int, attempt: int, seat: int, name: str, session: int, now: float
    ) -> list[Action]:
        """The runner is done with its seat (its test process left): it is free again.
        :class:`StaleResult` unless it holds that seat."""
        job = self.check_seat(build_id, attempt, seat, name, session)
        del job.seats[seat]
        self._free(self.runners[name])
        return self._dispatch(now)

    def give_back_seat(self, build_id: int, seat: int) -> None:
        """A seat could not be sent (its transaction rolled back): its runner is free."""
        job = self.jobs.get(build_id)
        runner = self.runners.get(job.seats.pop(seat, "")) if job is not None else None
        if runner is not None and runner.build_id == build_id and runner.seat == seat:
            self._free(runner)

    def _lose_seat(self, runner: PoolRunner, reason: str) -> list[Action]:
        """The seat's runner is gone (or came back without it): the seat ends, and the
        build's own runner is told, so that participant's batch goes back."""
        job = self.jobs.get(runner.build_id) if runner.build_id is not None else None
        seat, runner.seat, runner.build_id = runner.seat, 0, None
        if job is None or job.seats.get(seat) != runner.name:
            return []
        del job.seats[seat]
        session = self.primary_session(job)
        if session is None:
            return []
        return [SeatLost(session, job.build_id, job.attempt, seat, runner.name, reason)]

    def _release_seats(self, job: Job, reason: str) -> list[Action]:
        """The build ended or went back to the queue: every seat's runner is told to stop
        and is free at once (a runner stops a seat before it starts the next build)."""
        actions: list[Action] = []
        for seat, name in sorted(job.seats.items()):
            runner = self.runners.get(name)
            if runner is None or runner.build_id != job.build_id or runner.seat != seat:
                continue
            if runner.session is not None:
                actions.append(CancelLease(runner.session, job.build_id, job.attempt, reason))
            self._free(runner)
        job.seats.clear()
        job.seat_width = 0
        return actions

    def _free(self, runner: PoolRunner) -> None:
        runner.build_id, runner.seat = None, 0
        if runner.session is not None and runner.benched_until is None and not runner.leaving:
            self._idle[runner.name] = None

    def _fill_seats(self, now: float) -> list[Action]:
        """Give idle runners seats of running split builds, oldest build first."""
        actions: list[Action] = []
        for job in sorted(self.jobs.values(), key=lambda j: j.build_id):
            if not self._idle:
                break
            while (
                job.status is BuildStatus.RUNNING and job.stopping is None
                and len(job.seats) + 1 < job.seat_width and self.primary_session(job) is not None
            ):  # fmt: skip
                name = self._idle_runner_for(job)
                if name is None:
                    break
                del self._idle[name]
                runner = self.runners[name]
                assert runner.session is not None, "idle runners are connected"
                seat, job.next_seat = job.next_seat, job.next_seat + 1
                runner.build_id, runner.seat = job.build_id, seat
                job.seats[seat] = name
                actions.append(StartSeat(runner.session, name, job.build_id, job.attempt, seat,
                                         job.sha, job.branch, job.job))  # fmt: skip
        return actions

    def accept_result(
        self,
        build_id: int,
        attempt: int,
        name: str,
        session: int,
        status: BuildStatus,
        message: str,
    ) -> Outcome:
        """How a runner's result ends its build, if this session holds the lease (else
        :class:`StaleResult`). A build the dispatcher asked to stop ends as it asked
        (cancelled or timeout, with its reason) when the runner reports it stopped."""
        job = self.check_lease(build_id, attempt, name, session)
        if job.stopping is not None and status in (BuildStatus.CANCELLED, BuildStatus.TIMEOUT):
            status, message = job.stopping, job.stop_reason
        return Outcome(job.lease, job.sha, status, message)

    def is_current(self, lease: Lease) -> bool:
        """Whether this lease still runs: a result for it may be recorded (its build did
        not end, nor move to another attempt, since the result arrived)."""
        job = self.jobs.get(lease.build_id)
        return job is not None and job.status is BuildStatus.RUNNING and job.lease == lease

    def finish(
        self, build_id: int, now: float, checkout_error: str | None = None,
        status: BuildStatus | None = None,
    ) -> list[Action]:  # fmt: skip
        """The build's result is recorded: forget the job, free its runner; the jobs of
        its round that run after it learn its ``status`` (the recorder always says it),
        and may start, or are skipped when it did not pass.

        ``checkout_error``: the build ended because its runner could not check the commit
        out (the runner's message); see :meth:`_note_checkout`.
        """
        job = self.jobs.get(build_id)
        if job is None:
            raise UnknownBuild(f"build {build_id} is not known to the scheduler")
        runner = self.runners.get(job.runner) if job.runner else None
        if runner is not None and runner.build_id == build_id:
            self._note_checkout(runner, job.sha, checkout_error, now)
        released = self._release_seats(job, "the build ended")
        self._drop_job(job)
        return released + self._ended(job, status) + self._dispatch(now)

    def check_benched(self, now: float) -> list[Action]:
        """Give benched runners whose time is up builds again, on probation: their next
        checkout failure benches them again (for longer), a good checkout clears them."""
        actions: list[Action] = []
        for runner in self.runners.values():
            if runner.benched_until is not None and now >= runner.benched_until:
                runner.benched_until = None
                if runner.session is not None and runner.build_id is None and not runner.leaving:
                    self._idle[runner.name] = None
        if self._idle:
            actions += self._dispatch(now)
        return actions

    # --- views ----------------------------------------------------------------------

    def queued(self) -> list[Job]:
        """Jobs waiting for a runner, oldest first: the order they are handed out in,
        among those a free runner takes."""
        return [
            self.jobs[b] for b in sorted(set(self._queue))
            if b in self.jobs and self.jobs[b].status is BuildStatus.QUEUED
        ]  # fmt: skip

    def view(self) -> PoolView:
        """The pool and the queue as they stand, for reports (a copy: reading it changes
        nothing, and it does not change under the reader)."""
        runners = tuple(
            RunnerView(
                runner.name,
                runner.host,
                runner.state,
                runner.last_seen,
                self._sha_of(runner.build_id),
                runner.build_id,
                runner.benched_until,
                runner.bench_reason,
                runner.isolated,
                runner.offer,
            )  # fmt: skip
            for runner in sorted(self.runners.values(), key=lambda r: r.name)
        )
        queue = tuple(
            QueuedView(j.build_id, j.sha, j.branch, j.attempt, j.needs, j.job,
                       self._readiness(j).waiting_for)
            for j in self.queued()
        )  # fmt: skip
        return PoolView(runners, queue)

    def _sha_of(self, build_id: int | None) -> str | None:
        job = self.jobs.get(build_id) if build_id is not None else None
        return job.sha if job is not None else None

    # --- internals ------------------------------------------------------------------

    def _note_checkout(self, runner: PoolRunner, sha: str, error: str | None, now: float) -> None:
        """Count the runner's failed checkouts of different commits in a row and bench it
        after ``bench_after`` of them (or after one more once it was benched): a runner that
        cannot check out takes builds only to fail them."""
        if error is None:
            runner.failed_checkouts.clear()
            runner.benches = 0
            return
        if sha not in runner.failed_checkouts:
            runner.failed_checkouts.append(sha)
        if len(runner.failed_checkouts) < self.bench_after and runner.benches == 0:
            return
        seconds = min(self.bench_time * 2**runner.benches, self.bench_max)
        runner.benches += 1
        runner.benched_until = now + seconds
        count = len(runner.failed_checkouts)
        runner.bench_reason = (
            f"checkouts of {count} different commits failed in a row, "
            f"no builds for {seconds:g}s; last: {error}"
        )

    def _drop_job(self, job: Job) -> None:
        """Forget a job (its heap entry is skipped later) and free the runner it held."""
        del self.jobs[job.build_id]
        runner = self.runners.get(job.runner) if job.runner else None
        if runner is not None and runner.build_id == job.build_id:
            runner.build_id = None
            if runner.session is not None and runner.benched_until is None and not runner.leaving:
                self._idle[runner.name] = None

    def _remember_bench(self, runner: PoolRunner) -> None:
        if runner.failed_checkouts or runner.benches or runner.benched_until is not None:
            self._bench_records[runner.name] = runner

    def _mark_runner_dead(self, runner: PoolRunner, reason: str, now: float) -> list[Action]:
        self._remember_bench(runner)
        del self.runners[runner.name]
        self._idle.pop(runner.name, None)
        actions: list[Action] = []
        if runner.session is not None:
            actions.append(CloseSession(runner.session, f"runner declared dead: {reason}"))
        job = self.jobs.get(runner.build_id) if runner.build_id is not None else None
        if runner.seat:
            actions += self._lose_seat(runner, f"runner lost: {reason}")
        elif job is not None:
            actions += self._lose_job(job, runner.name, reason)
        return actions + self._dispatch(now)

    def _lose_job(self, job: Job, runner: str, reason: str) -> list[Action]:
        """The job's runner is gone: re-queue it, or give up after the last attempt."""
        job.runner = None
        if job.stopping is not None:  # it was being stopped anyway: end it as asked
            return self._end_stopped_job(job, f"runner {runner} lost while stopping it")
        job.lost += 1
        if job.lost >= self.max_attempts:
            tried = ", ".join(job.runners)
            why = f"runner lost on {job.lost} attempts, the limit ({tried}); last: {reason}"
            return self._end(job, BuildStatus.ERROR, why)
        return self._requeue(job, Requeue(job.build_id, job.attempt, runner, reason))

    def _hand_back_job(
        self, job: Job, runner: str, reason: str, needs: Mapping[str, str] | None = None
    ) -> list[Action]:
        """The job's runner left on purpose (or, with the ``needs`` it learned, does not
        suit it): re-queue it without counting an attempt, unless runners keep sending it
        away (then something about the build is wrong)."""
        job.runner = None
        if job.stopping is not None:
            return self._end_stopped_job(job, f"runner {runner} left while stopping it")
        handbacks = job.attempt - job.lost
        if handbacks >= self.max_handbacks:
            why = (
                f"runners left while building it {handbacks} times "
                f"({', '.join(job.runners[-3:])}, ...); last: {reason}"
            )
            return self._end(job, BuildStatus.ERROR, why)
        return self._requeue(job, Requeue(job.build_id, job.attempt, runner, reason, False, needs))

    def _end_stopped_job(self, job: Job, what: str) -> list[Action]:
        """A job that was being stopped ends as it was asked to, whatever became of its runner."""
        return self._end(job, job.stopping or BuildStatus.CANCELLED, f"{job.stop_reason}; {what}")

    def _end(self, job: Job, status: BuildStatus, reason: str) -> list[Action]:
        """End a job without a runner's result (see :class:`EndBuild`); the jobs that run
        after it learn how it ended."""
        released = self._release_seats(job, f"the build ended: {reason}")
        self._drop_job(job)
        return [EndBuild(job.build_id, status, reason), *released, *self._ended(job, status)]

    def _ended(self, job: Job, status: BuildStatus | None) -> list[Action]:
        """Tell the job's round how it ended: the queued jobs of the round that run after
        a job that did not pass end as skipped, with the reason (and so, in turn, theirs)."""
        round_ = self.rounds.get(job.round)
        if round_ is None:
            return []
        if status is not None:
            round_.ended[job.job] = status
        return self._skip_blocked(job.round)

    def _skip_blocked(self, round_id: int) -> list[Action]:
        """End as skipped the queued jobs of a round that run after one that did not pass;
        forget the round once none of its jobs is left."""
        actions: list[Action] = []
        for build_id in self._unfinished_of(round_id):
            other = self.jobs.get(build_id)
            if other is None or other.status is not BuildStatus.QUEUED:
                continue  # ended meanwhile (by a skip below), or already running
            because = self._readiness(other).skipped_because
            if because is not None:
                actions += self._end(other, BuildStatus.SKIPPED, f"skipped: {because}")
        if not self._unfinished_of(round_id):
            self.rounds.pop(round_id, None)
        return actions

    def _readiness(self, job: Job) -> Readiness:
        """Whether the jobs the job runs after have all passed (see superci.jobs)."""
        round_ = self.rounds.get(job.round) if job.after else None
        if round_ is None:
            return Readiness(True)
        return readiness_after(job.after, round_.keys, round_.ended)

    def _requeue(self, job: Job, action: Requeue) -> list[Action]:
        released = self._release_seats(job, f"the build went back to the queue: {action.reason}")
        job.deadline = None
        job.status = BuildStatus.QUEUED
        heapq.heappush(self._queue, job.build_id)
        return [action, *released]

    def _dispatch(self, now: float) -> list[Action]:
        """Hand each queued job, oldest first, to the longest idle runner that takes it
        (see :meth:`Offer.takes`); a job no idle runner takes keeps its place."""
        actions: list[Action] = []
        passed_over: dict[int, None] = {}
        untaken: set[frozenset[tuple[str, str]]] = set()  # needs no idle runner takes now
        while self._queue and self._idle:
            build_id = heapq.heappop(self._queue)
            job = self.jobs.get(build_id)
            if job is None or job.status is not BuildStatus.QUEUED:
                continue  # finished or cancelled while it waited
            if not self._readiness(job).ready:  # a job of its round must pass first
                passed_over[build_id] = None
                continue
            wanted = frozenset(job.needs.items())
            name = None if wanted in untaken else self._idle_runner_for(job)
            if name is None:
                untaken.add(wanted)
                passed_over[build_id] = None
                continue
            del self._idle[name]
            runner = self.runners[name]
            assert runner.session is not None, "idle runners are connected"
            runner.build_id = build_id
            job.status = BuildStatus.RUNNING
            job.attempt += 1
            job.runner = name
            job.runners.append(name)
            job.deadline = now + self.build_timeout + self.stop_grace
            actions.append(StartBuild(runner.session, name, build_id, job.attempt, job.sha,
                                      job.branch, job.job))  # fmt: skip
        for build_id in passed_over:
            heapq.heappush(self._queue, build_id)
        return actions + self._fill_seats(now)

    def _idle_runner_for(self, job: Job) -> str | None:
        """The longest idle runner that takes the job, if any."""
        for name in self._idle:
            if self.runners[name].offer.takes(job.needs):
                return name
        return None


def _taken(name: str, holder: PoolRunner | None, last_host: str) -> str:
    """Why a runner that cannot prove the name's identity is refused, and what to do."""
    if holder is not None and holder.session is not None:
        return (
            f"runner name {name} is taken by a runner connected from {holder.host!r} "
            f"(pid {holder.pid}), and this runner cannot prove it is that one: give each "
            "runner its own name with --name (SUPERCI_RUNNER_NAME)"
        )
    where = holder.host if holder is not None and holder.host else last_host
    return (
        f"runner name {name} belongs to another runner"
        + (f" (last registered from {where!r})" if where else "")
        + ", and this runner cannot prove it is that one: give this runner its own name "
        "with --name (SUPERCI_RUNNER_NAME); if it is that runner and it lost its identity "
        f"file, run `superci forget-runner {name}` where the dispatcher runs, then start "
        "it again"
    )


def _copied(name: str, holder: PoolRunner, silent: float, timeout: float) -> str:
    """Why a second process with the same name and identity is refused while the first lives."""
    return (
        f"runner {name} is already connected from {holder.host!r} (pid {holder.pid}, heard "
        f"from {silent:.1f}s ago) with this same identity: this machine looks like a copy "
        "of that one, identity file included. Remove this runner's identity file and give "
        "it its own name with --name (SUPERCI_RUNNER_NAME). If it is that runner "
        f"restarted, this clears once its old connection is silent for {timeout:g}s."
    )


def _carry_bench(source: PoolRunner | None, runner: PoolRunner, now: float) -> None:
    """The same runner process coming back (a reconnect) keeps its record of failed
    checkouts, and its bench while that lasts: reconnecting mends nothing. A restarted
    runner (another process) starts clean: restarting it is how its operator says so."""
    if source is None or source.instance is None or source.instance != runner.instance:
        return
    runner.failed_checkouts = list(source.failed_checkouts)
    runner.benches = source.benches
    if source.benched_until is not None and source.benched_until > now:
        runner.benched_until, runner.bench_reason = source.benched_until, source.bench_reason
