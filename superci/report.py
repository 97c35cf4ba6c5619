"""The documents that describe builds to people and scripts: ``result.json`` and the
status overview. Plain functions of the stored records, no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from superci import defaults, protocol
from superci.jobs import commit_status
from superci.scheduler import PoolView, RunnerView
from superci.status import BuildStatus, RunnerState
from superci.store import BuildRecord, Store
from superci.waiting import why_waiting


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
        "subject": record.subject,
        "author": record.author,
        "build_id": record.id,
        "job": record.job,
        "round": record.round,
        "status": str(status),
        "exit_code": result.exit_code if result else None,
        "duration": round(result.duration, 3) if result else None,
        "install_seconds": _rounded(result.install_seconds) if result else None,
        "message": message,
        "runner": record.runner,
        "attempt": record.attempt,
        "runners": record.runners,
        "tests": dict(result.counts) if result else {},
        "failures": list(result.failures) if result else [],
        # a split build: the tests each runner that took part ran (None: not split)
        "split": dict(result.split) if result and result.split else None,
        "queued_at": iso(record.queued_at),
        "started_at": iso(record.started_at),
        "finished_at": iso(finished_at),
    }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def build_summary(record: BuildRecord) -> dict[str, Any]:
    """What is known of a build from the database alone (queued, running, or older)."""
    duration = None
    if record.started_at is not None and record.finished_at is not None:
        duration = round(record.finished_at - record.started_at, 3)
    return {
        "sha": record.sha,
        "branch": record.branch,
        "subject": record.subject,
        "author": record.author,
        "build_id": record.id,
        "job": record.job,
        "round": record.round,
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
        "needs": dict(record.needs),
    }


def commit_document(records: Sequence[BuildRecord]) -> dict[str, Any]:
    """The ``result.json`` of a commit of several jobs: the status of a round of its jobs (see
    :func:`superci.jobs.commit_status`) and one entry per job, in the file's order."""
    first = records[0]
    jobs = [
        {key: summary[key] for key in JOB_FIELDS}
        for summary in (build_summary(record) for record in records)
    ]
    not_passed = [job["job"] for job in jobs if job["status"] != BuildStatus.PASSED]
    status = commit_status(record.status for record in records)
    return {
        "sha": first.sha,
        "branch": first.branch,
        "subject": first.subject,
        "author": first.author,
        "round": first.round,
        "status": str(status),
        "not_passed": not_passed if status.finished else [],
        "jobs": jobs,
    }


def commit_view(records: Sequence[BuildRecord], pool: PoolView, now: float) -> dict[str, Any]:
    """What ``show`` says of a commit of several jobs: :func:`commit_document`, each
    queued job with why it waits."""
    document = commit_document(records)
    for entry, record in zip(document["jobs"], records, strict=True):
        if record.status is BuildStatus.QUEUED:
            entry["waiting"] = waiting_summary(record, pool, now).get("waiting")
    return document


#: What a commit's result.json says of each of its jobs.
JOB_FIELDS = ("job", "build_id", "status", "runner", "duration", "tests", "message",
              "started_at", "finished_at")  # fmt: skip


def waiting_summary(record: BuildRecord, pool: PoolView, now: float) -> dict[str, Any]:
    """What ``show`` says of an unfinished build: :func:`build_summary`, for a queued one
    why it waits, for a running one its runner's labels."""
    summary = build_summary(record)
    if record.status is BuildStatus.QUEUED:
        ids = [job.build_id for job in pool.queue]
        position = ids.index(record.id) if record.id in ids else len(ids)
        after = pool.queue[position].waiting_for if position < len(ids) else ()
        summary["waiting"] = why_waiting(record.needs, pool.runners, position, now, after)
    runner = next((r for r in pool.runners if r.name == record.runner), None)
    if runner is not None:
        summary["runner_labels"] = runner.offer.merged()
    return summary


def _bench_reason(runner: RunnerView, now: float) -> str | None:
    """Why a benched runner gets no builds, and for how much longer."""
    if runner.state is not RunnerState.BENCHED or runner.benched_until is None:
        return None
    return f"{runner.bench_reason} ({max(0.0, runner.benched_until - now):.0f}s left)"


#: The lists of a status document, in the order they lose items when it is too long: the
#: oldest builds first, the runners last.
STATUS_LISTS = ("builds", "queue", "runners")


def status_document(pool: PoolView, store: Store, now: float, limit: int) -> dict[str, Any]:
    """The pool, the queue (its first ``limit`` builds and its length) and the last
    ``limit`` builds, for ``superci status``."""
    runners = [
        {
            "name": runner.name,
            "host": runner.host,
            "state": str(runner.state),
            "build": runner.build_sha,
            "since_heartbeat": round(now - runner.last_seen, 1),
            "reason": _bench_reason(runner, now),
            "isolated": runner.isolated,
            "labels": runner.offer.merged(),
            "exclusive": runner.offer.exclusive,
        }
        for runner in pool.runners
    ]
    queue = [
        {"build_id": job.build_id, "sha": job.sha, "branch": job.branch, "attempt": job.attempt,
         "needs": dict(job.needs), "job": job.job,
         "waiting": why_waiting(job.needs, pool.runners, position, now, job.waiting_for)}
        for position, job in enumerate(pool.queue[:limit])
    ]  # fmt: skip
    builds = [build_summary(record) for record in store.recent(limit)]
    return {"runners": runners, "queue": queue, "queued": len(pool.queue), "builds": builds}


#: Bytes of a reply frame kept for everything but its document (type, status, message).
REPLY_ENVELOPE = 6 * protocol.MAX_TEXT + 256


def fitted(
    document: dict[str, Any],
    lists: Sequence[str],
    max_document: int = protocol.MAX_DOCUMENT,
    max_frame: int = defaults.MAX_FRAME_BYTES - REPLY_ENVELOPE,
) -> str:
    """``document`` as the JSON text of a reply, which must fit in one frame. When it is
    too long, items are left out from the end of ``lists`` (the first named loses items
    first), and ``"truncated": true`` and ``"left_out"`` (how many, per list) say so.

    Two limits apply: the text's length (the reply's document field) and what the text
    costs inside the frame, where every quote and backslash is escaped once more."""
    text = json.dumps(document)
    if _fits(text, max_document, max_frame):
        return text
    lists = [key for key in lists if document.get(key)]
    trimmed = {**document, "truncated": True, "left_out": {k: len(document[k]) for k in lists}}
    for key in lists:
        trimmed[key] = []
    room = [max_document - len(json.dumps(trimmed)), max_frame - _frame_cost(json.dumps(trimmed))]
    for key in reversed(lists):  # the last named keeps the most
        kept = 0
        for item in document[key]:
            piece = json.dumps(item) + ", "
            cost = (len(piece), _frame_cost(piece))
            if cost[0] > room[0] or cost[1] > room[1]:
                break
            room = [room[0] - cost[0], room[1] - cost[1]]
            kept += 1
        trimmed[key] = document[key][:kept]
        trimmed["left_out"][key] = len(document[key]) - kept
    trimmed["left_out"] = {k: n for k, n in trimmed["left_out"].items() if n}
    text = json.dumps(trimmed)
    assert _fits(text, max_document, max_frame), "every kept item was paid for"
    return text


def _frame_cost(text: str) -> int:
    """Bytes of ``text`` (ASCII JSON) once encoded again as a string inside a frame."""
    return len(text) + text.count('"') + text.count("\\")


def _fits(text: str, max_document: int, max_frame: int) -> bool:
    return len(text) <= max_document and _frame_cost(text) <= max_frame
