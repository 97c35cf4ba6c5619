"""Plain-text rendering of status, result and event documents for people at a terminal."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from superci.defaults import DEFAULT_JOB
from superci.report import counts_text
from superci.sanitize import printable


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; ``-`` for a missing value. Cells are made
    printable: they hold names and messages from commits and runners."""
    cells = [[("-" if v is None else printable(str(v))) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)  # fmt: skip


def _short(sha: str | None) -> str | None:
    return sha[:12] if sha else None


def _labels(labels: dict[str, str] | None, exclusive: bool = False) -> str | None:
    """``gpu=true os=linux``, and whether the runner is exclusive; None when there are none."""
    text = " ".join(f"{key}={value}" for key, value in (labels or {}).items())
    text += " (exclusive)" if exclusive else ""
    return text.strip() or None


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}s"


#: Longest reason shown in the status table; ``superci show`` has the whole message.
REASON_WIDTH = 60
#: Longest commit subject and author name in the status table (``show`` has them whole).
SUBJECT_WIDTH = 40
AUTHOR_WIDTH = 20


def _cut(text: str | None, width: int) -> str | None:
    if not text:
        return None
    return text if len(text) <= width else text[: width - 1] + "…"


def _reason(build: dict[str, Any]) -> str | None:
    """Why a build did not pass, shortened to fit a table row."""
    if build["status"] in ("passed", "queued", "running"):
        return None
    return _cut(build.get("message"), REASON_WIDTH)


def status_tables(document: dict[str, Any]) -> str:
    """The three sections of ``superci status``."""
    runners = [
        (r["name"], r["host"], r["state"], _short(r["build"]), _seconds(r["since_heartbeat"]),
         "yes" if r.get("isolated") else "no", _labels(r.get("labels"), r.get("exclusive")))
        for r in document["runners"]
    ]  # fmt: skip
    queue = [
        (q["build_id"], _short(q["sha"]), _job(q), q["branch"], q["attempt"],
         _labels(q.get("needs")), q.get("waiting"))
        for q in document["queue"]
    ]  # fmt: skip
    builds = [
        (b["build_id"], _short(b["sha"]), _job(b), b["branch"],
         _cut(b.get("subject"), SUBJECT_WIDTH), _cut(b.get("author"), AUTHOR_WIDTH),
         b["status"], _seconds(b["duration"]),
         b["runner"], b["attempt"], counts_text(b.get("tests")) or None, _reason(b))
        for b in document["builds"]
    ]  # fmt: skip
    benched = [f"{r['name']} is {r['state']}: {r['reason']}" for r in document["runners"]
               if r.get("reason")]  # fmt: skip
    return "\n\n".join(
        [
            f"Runners ({len(runners)})\n"
            + table(
                ["NAME", "HOST", "STATE", "BUILD", "HEARTBEAT", "ISOLATED", "LABELS"], runners
            )  # fmt: skip
            + "".join(f"\n{line}" for line in benched),
            f"Queue ({document.get('queued', len(queue))})\n"
            + table(["BUILD", "COMMIT", "JOB", "BRANCH", "ATTEMPTS", "NEEDS", "WAITING"], queue),
            "Last builds\n"
            + table(
                [
                    "BUILD",
                    "COMMIT",
                    "JOB",
                    "BRANCH",
                    "SUBJECT",
                    "AUTHOR",
                    "STATUS",
                    "DURATION",
                    "RUNNER",
                    "ATTEMPT",
                    "TESTS",
                    "REASON",
                ],  # fmt: skip
                builds,
            ),
        ]
    )


def result_summary(result: dict[str, Any]) -> str:
    """One commit's result: what, where, how long, the counts and the failing tests."""
    lines = [
        f"commit   {result['sha']} ({result['branch']})",
        *([f"subject  {result['subject']}"] if result.get("subject") else []),
        *([f"author   {result['author']}"] if result.get("author") else []),
        f"status   {result['status']}"
        + (f": {result['message']}" if result.get("message") else ""),
        f"build    {result['build_id']}, attempt {result['attempt']}"
        f" on {result.get('runner') or '-'}"
        + (f" ({_labels(result['runner_labels'])})" if result.get("runner_labels") else ""),
        f"duration {_seconds(result.get('duration')) or '-'}",
    ]
    if result.get("needs"):
        lines.append(f"needs    {_labels(result['needs'])}")
    if result.get("waiting"):
        lines.append(f"waiting  {result['waiting']}")
    if _number(result.get("install_seconds")):
        lines.append(f"install  {_seconds(result['install_seconds'])} (of the duration)")
    tests = counts_text(result.get("tests"))
    if tests:
        lines.append(f"tests    {tests}")
    lines += split_lines(result.get("split"))
    failures = result.get("failures") or []
    if failures:
        lines.append(f"failing  ({len(failures)})")
        lines += [f"  {name}" for name in failures]
    return "\n".join(printable(line) for line in lines)  # names and messages from commits


def split_text(split: Any) -> str:
    """A split build's runners and how many tests each ran ("": not split)."""
    if not isinstance(split, dict) or not split:
        return ""
    ran = ", ".join(f"{runner} ({count} tests)" for runner, count in split.items())
    return f"over {len(split)} runner{'s' if len(split) != 1 else ''}: {ran}"


def split_lines(split: Any) -> list[str]:
    text = split_text(split)
    return [f"split    {text}"] if text else []


def commit_summary(document: dict[str, Any]) -> str:
    """A commit of several jobs: its status, one line per job, the jobs that did not pass."""
    lines = [
        f"commit   {document['sha']} ({document['branch']})",
        *([f"subject  {document['subject']}"] if document.get("subject") else []),
        *([f"author   {document['author']}"] if document.get("author") else []),
        f"status   {document['status']} ({len(document['jobs'])} jobs, round {document['round']})",
    ]
    if document.get("not_passed"):
        lines.append(f"not passed: {', '.join(document['not_passed'])}")
    rows = [
        (job["job"], job["status"], _seconds(job.get("duration")), job.get("runner"),
         counts_text(job.get("tests")) or None,
         job.get("waiting") or (_reason(job) if job.get("message") else None))
        for job in document["jobs"]
    ]  # fmt: skip
    lines += ["", table(["JOB", "STATUS", "DURATION", "RUNNER", "TESTS", "REASON"], rows)]
    lines.append("(superci show COMMIT --job JOB for one job, superci logs COMMIT --job JOB "
                 "for its output)")  # fmt: skip
    return "\n".join(printable(line) for line in "\n".join(lines).split("\n"))


def _job(build: dict[str, Any]) -> str | None:
    """A build's job, left out (``-``) for the one job of a commit without [jobs]."""
    job = build.get("job")
    return None if job in (None, DEFAULT_JOB) else str(job)


def event_line(document: dict[str, Any]) -> str:
    """One event of ``superci watch`` as one line: its local time, then what happened.
    An event kind this version does not know is still shown, by its name."""
    when = document.get("time")
    clock = time.strftime("%H:%M:%S", time.localtime(when)) if _number(when) else "--:--:--"
    return printable(f"{clock} {_event_text(document)}")


def _event_text(event: dict[str, Any]) -> str:
    kind = str(event.get("event", "?"))
    if kind in _RUNNER_EVENTS:
        return f"runner {event.get('runner', '?')} {_RUNNER_EVENTS[kind](event)}"
    if kind not in _BUILD_EVENTS:
        return "fell behind the events; some were missed" if kind == "resync" else kind
    sha = str(event.get("sha") or "?")
    build = f"build {event.get('build_id', '?')} {sha[:12]} ({event.get('branch', '?')})"
    if event.get("job") not in (None, DEFAULT_JOB):
        build += f" job {event['job']}"
    return f"{build} {_BUILD_EVENTS[kind](event)}"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _queued(event: dict[str, Any]) -> str:
    return "queued" + (f" again: {event['reason']}" if event.get("reason") else "")


def _started(event: dict[str, Any]) -> str:
    return f"started on {event.get('runner', '?')}, attempt {event.get('attempt', '?')}"


def _output(event: dict[str, Any]) -> str:
    return f"output: {event.get('length', '?')} bytes at {event.get('offset', '?')}"


def _finished(event: dict[str, Any]) -> str:
    duration = event.get("duration")
    took = f" in {duration:.1f}s" if _number(duration) else ""
    tests = counts_text(event.get("tests")) if isinstance(event.get("tests"), dict) else ""
    on = f" on {event['runner']}" if event.get("runner") else ""
    message = f": {event['message']}" if event.get("message") else ""
    return f"{event.get('status', '?')}{on}{took}{f' [{tests}]' if tests else ''}{message}"


_BUILD_EVENTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "queued": _queued,
    "started": _started,
    "output": _output,
    "finished": _finished,
    "cancelled": _finished,
}
_RUNNER_EVENTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "joined": lambda e: "joined" + (f" from {e['host']}" if e.get("host") else ""),
    "left": lambda e: "left",
    "busy": lambda e: f"busy with build {e.get('build_id', '?')}",
    "idle": lambda e: "benched" if e.get("benched") else "idle",
}
