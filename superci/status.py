"""The vocabulary of build and runner states, as ``str`` enums so they go into JSON and
SQLite as they are."""

from enum import StrEnum


class BuildStatus(StrEnum):
    """Where a build is in its lifecycle: queued → running → one of the final states."""

    QUEUED = "queued"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    #: Not run, because a job it runs after did not pass.
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        """Final states are never left again (only a rebuild makes a new build)."""
        return self not in (BuildStatus.QUEUED, BuildStatus.RUNNING)


class RunnerState(StrEnum):
    """A runner in the pool is idle or busy, or benched (its checkouts keep failing);
    a dead one leaves the pool."""

    IDLE = "idle"
    BUSY = "busy"
    BENCHED = "benched"
    DISCONNECTED = "disconnected"
