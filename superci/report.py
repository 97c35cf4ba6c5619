"""The documents that describe builds to people and scripts: ``result.json`` and the
status overview. Plain functions of the stored records, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from superci import protocol
from superci.scheduler import Runner, Scheduler
from superci.status import BuildStatus, RunnerState
from superci.store import BuildRecord, Store


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


#: The counts every outcome line shows, in this order, even when zero: a build with only
#: erroring tests must not read as "0 failed".
COUNTED = (("passed", "passed", "passed"), ("failed", "failed", "failed"),
           ("errors", "error", "errors"), ("skipped", "skipped", "skipped"))  # fmt: skip


def counts_text(tests: Mapping[str, int] | None) -> str:
    """Counts as "3 passed, 1 failed, 2 errors, 1 skipped"; "" when none were read."""
    if not tests:
        return ""
    return ", ".join(
        f"{n} {one if n == 1 else many}" for key, one, many in COUNTED for n in [tests.get(key, 0)]
    )


def result_document(
    record: BuildRecord,
    status: BuildStatus,
    message: str,
    result: protocol.Result | None,
    finished_at: float,
) -> dict[str, Any]:
    """The content of ``result.json``: what happened, where, when, and the test counts."""
    return {
        "sha": record.sha,
        "branch": record.branch,
        "build_id": record.id,
        "status": str(status),
        "exit_code": result.exit_code if result else None,
        "duration": round(result.duration, 3) if result else None,
        "message": message,
        "runner": record.runner,
        "attempt": record.attempt,
        "runners": record.runners,
        "tests": dict(result.counts) if result else {},
        "failures": list(result.failures) if result else [],
        "queued_at": iso(record.queued_at),
        "started_at": iso(record.started_at),
        "finished_at": iso(finished_at),
    }


def build_summary(record: BuildRecord) -> dict[str, Any]:
    """What is known of a build from the database alone (queued, running, or older)."""
    duration = None
    if record.started_at is not None and record.finished_at is not None:
        duration = round(record.finished_at - record.started_at, 3)
    return {
        "sha": record.sha,
        "branch": record.branch,
        "build_id": record.id,
        "status": str(record.status),
        "duration": duration,
        "message": record.message,
        "runner": record.runner,
        "attempt": record.attempt,
        "runners": record.runners,
        "tests": dict(record.tests),
        "queued_at": iso(record.queued_at),
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
    }


def _bench_reason(runner: Runner, now: float) -> str | None:
    """Why a benched runner gets no builds, and for how much longer."""
    if runner.state is not RunnerState.BENCHED or runner.benched_until is None:
        return None
    return f"{runner.bench_reason} ({max(0.0, runner.benched_until - now):.0f}s left)"


def status_document(scheduler: Scheduler, store: Store, now: float, limit: int) -> dict[str, Any]:
    """The pool, the queue (its first ``limit`` builds and its length) and the last
    ``limit`` builds, for ``superci status``."""
    runners = [
        {
            "name": runner.name,
            "host": runner.host,
            "state": str(runner.state),
            "build": scheduler.jobs[runner.build_id].sha
            if runner.build_id in scheduler.jobs
            else None,
            "since_heartbeat": round(now - runner.last_seen, 1),
            "reason": _bench_reason(runner, now),
        }
        for runner in sorted(scheduler.runners.values(), key=lambda r: r.name)
    ]
    queued = scheduler.queued()
    queue = [
        {"build_id": job.build_id, "sha": job.sha, "branch": job.branch, "attempt": job.attempt}
        for job in queued[:limit]
    ]
    builds = [build_summary(record) for record in store.recent(limit)]
    return {"runners": runners, "queue": queue, "queued": len(queued), "builds": builds}
