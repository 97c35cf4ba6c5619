"""What a watcher of the dispatcher sees: one frozen event per change it cares about.

Builds are queued, started, print output and finish (or are cancelled); runners join,
leave, become busy or idle. The dispatcher publishes each one on its
:class:`~superci.bus.EventBus` once the change is committed, so a watcher never sees
what the database does not have. ``to_dict`` is the event's JSON form, for the wire
(``superci watch --json``) and any later web page.

Output events carry the new bytes themselves (a ``logs --follow`` reader needs them,
and the object is shared by every subscriber), but their JSON form only says where they
are in the log (offset and length): watchers read the log itself with ``superci logs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from superci.defaults import DEFAULT_JOB
from superci.status import BuildStatus, RunnerState


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event; ``kind`` names it in JSON, ``time`` is when it was published
    (the bus's wall clock, seconds since the epoch)."""

    kind: ClassVar[str] = ""
    time: float = 0.0

    @property
    def held_bytes(self) -> int:
        """Memory a queued copy keeps alive beyond the object itself (output bytes)."""
        return 0

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON object: ``{"event": kind, ...fields}``."""
        body: dict[str, Any] = {"event": self.kind}
        for f in dataclasses.fields(self):
            if f.metadata.get("wire", True):
                body[f.name] = _json_value(getattr(self, f.name))
        return body


def _json_value(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    return str(value) if isinstance(value, BuildStatus | RunnerState) else value


# --- builds ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BuildEvent(Event):
    """Something happened to one build of one commit."""

    build_id: int
    sha: str
    branch: str
    job: str = DEFAULT_JOB  # which of the commit's jobs (see superci.jobs)


@dataclass(frozen=True, kw_only=True)
class BuildQueued(BuildEvent):
    """A build waits for a runner: newly submitted, or given back (``reason`` says why)."""

    kind: ClassVar[str] = "queued"
    reason: str = ""
    subject: str | None = None  # the commit's first line, when its submitter said it
    author: str | None = None


@dataclass(frozen=True, kw_only=True)
class BuildStarted(BuildEvent):
    """A runner got the build (its lease is stored)."""

    kind: ClassVar[str] = "started"
    runner: str
    attempt: int


@dataclass(frozen=True, kw_only=True)
class BuildOutput(BuildEvent):
    """New bytes of a build's output, at ``offset`` in its output stream."""

    kind: ClassVar[str] = "output"
    offset: int
    data: bytes = field(default=b"", metadata={"wire": False}, repr=False)

    @property
    def held_bytes(self) -> int:
        return len(self.data)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "length": len(self.data)}


@dataclass(frozen=True, kw_only=True)
class BuildFinished(BuildEvent):
    """The build's result is recorded; ``tests`` holds its test counts."""

    kind: ClassVar[str] = "finished"
    status: BuildStatus
    message: str = ""
    runner: str | None = None
    attempt: int = 0
    duration: float | None = None
    tests: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class BuildCancelled(BuildFinished):
    """The build ended because it was cancelled (a finished build like any other)."""

    kind: ClassVar[str] = "cancelled"


def build_ended(document: Mapping[str, Any]) -> BuildFinished:
    """The event for a recorded result (a ``result.json`` document)."""
    status = BuildStatus(document["status"])
    cls = BuildCancelled if status is BuildStatus.CANCELLED else BuildFinished
    return cls(
        build_id=document["build_id"],
        sha=document["sha"],
        branch=document["branch"],
        job=document.get("job") or DEFAULT_JOB,
        status=status,
        message=document.get("message") or "",
        runner=document.get("runner"),
        attempt=document.get("attempt") or 0,
        duration=document.get("duration"),
        tests=dict(document.get("tests") or {}),
    )


# --- runners --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunnerEvent(Event):
    """Something happened to one runner of the pool."""

    runner: str


@dataclass(frozen=True, kw_only=True)
class RunnerJoined(RunnerEvent):
    """A runner connected and registered (``build_id``: a build it kept across a
    reconnect)."""

    kind: ClassVar[str] = "joined"
    host: str = ""
    build_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class RunnerLeft(RunnerEvent):
    """A runner is no longer connected: it left, its connection closed, or it was
    declared dead."""

    kind: ClassVar[str] = "left"


@dataclass(frozen=True, kw_only=True)
class RunnerBusy(RunnerEvent):
    """A runner got a build."""

    kind: ClassVar[str] = "busy"
    build_id: int


@dataclass(frozen=True, kw_only=True)
class RunnerIdle(RunnerEvent):
    """A runner has no build any more (``benched``: and gets none for a while)."""

    kind: ClassVar[str] = "idle"
    benched: bool = False


# --- the subscriber's own -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Resync(Event):
    """The last event of a subscriber that fell behind: events after the ones it got
    were not kept for it, so it must read the state again (and subscribe again)."""

    kind: ClassVar[str] = "resync"
    reason: str = "fell behind the events"


# --- the pool, as events --------------------------------------------------------------


class PoolMember(Protocol):
    """What the pool's events need to know of one runner (the scheduler's view of it,
    :class:`~superci.scheduler.RunnerView`)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> RunnerState: ...

    @property
    def build_id(self) -> int | None: ...

    @property
    def host(self) -> str: ...


@dataclass(frozen=True)
class Seat:
    """One connected runner as a watcher knows it."""

    state: RunnerState
    build_id: int | None
    host: str


Pool = dict[str, Seat]


def pool_of(runners: Iterable[PoolMember]) -> Pool:
    """The connected runners (a disconnected one keeping its lease is gone for watchers)."""
    return {
        runner.name: Seat(runner.state, runner.build_id, runner.host)
        for runner in runners
        if runner.state is not RunnerState.DISCONNECTED
    }


def pool_changes(before: Pool, after: Pool) -> list[RunnerEvent]:
    """The runner events that take a watcher from one picture of the pool to the next."""
    changes: list[RunnerEvent] = [RunnerLeft(runner=name) for name in before if name not in after]
    for name, seat in after.items():
        old = before.get(name)
        if old is None:
            changes.append(RunnerJoined(runner=name, host=seat.host, build_id=seat.build_id))
        elif seat.build_id is not None and seat.build_id != old.build_id:
            changes.append(RunnerBusy(runner=name, build_id=seat.build_id))
        elif seat.build_id is None and (old.build_id is not None or seat.state != old.state):
            changes.append(RunnerIdle(runner=name, benched=seat.state is RunnerState.BENCHED))
    return changes
