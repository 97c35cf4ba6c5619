"""The web page's HTML, rendered on the server from the same documents as ``status`` and
``show`` (no I/O). It works without JavaScript; ``static/superci.js`` then applies the
live events to the same elements (found by their ``id`` and ``data-`` attributes) and
colours the log. Everything that comes from commits and runners (branches, test names,
failure messages, host names, log lines) goes through :func:`html.escape`, so a
``<script>`` in any of them shows as text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from superci.report import counts_text
from superci.tables import split_text
from superci.weblog import Window

#: Colour of each status (its CSS class).
COLOURS = {"queued": "#777", "running": "#1f6feb", "passed": "#2da44e", "failed": "#cf222e",
           "error": "#bf8700", "timeout": "#bf8700", "cancelled": "#777"}  # fmt: skip

_STYLE = "".join(f".s-{name}{{color:{c};font-weight:bold}}" for name, c in COLOURS.items())
_LOG_STYLE = (
    "#log{background:#f6f8fa;padding:8px;font-family:monospace;font-size:13px;overflow-x:auto}"
    "#log .l{display:flex}#log .t{white-space:pre-wrap;word-break:break-all;min-width:0}"
    "#log .n{flex:none;width:5em;color:#999;text-decoration:none;"
    "user-select:none;text-align:right;padding-right:1em}"
    "#log .l:target,#log .l.target{background:#fff8c5}.note{background:#ddf4ff;padding:4px 8px}"
    "form.act{display:inline}[hidden]{display:none!important}"
)
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · superci</title>
<link rel="icon" href="data:,">
<style>body{{font-family:sans-serif;margin:1em 2em}}table{{border-collapse:collapse}}
td,th{{padding:2px 8px;text-align:left;border-bottom:1px solid #ddd}}
pre{{background:#f6f8fa;padding:8px;overflow-x:auto}}{style}</style>{script}</head>
<body{attributes}><nav><a href="/">builds</a> · <a href="/runners">runners</a></nav>
<h1>{title}</h1>
{body}
</body></html>
"""
#: The live updates (a module: deferred, and may import the ANSI converter beside it).
SCRIPT = '<script type="module" src="/static/superci.js"></script>'


def page(title: str, body: str, *, view: str = "", events: int | None = None) -> str:
    """A whole page around ``body`` (already HTML); ``title`` is escaped here. A ``view``
    page gets the live-update script, which follows the events after number ``events``
    (the newest when the page was read, so none is missed in between)."""
    attributes = ""
    if view:
        attributes = f' data-view="{escape(view)}" data-events="{events or 0}"'
    return _PAGE.format(
        title=escape(title), body=body, style=_STYLE + _LOG_STYLE,
        script=SCRIPT if view else "", attributes=attributes,
    )  # fmt: skip


def _status(status: str) -> str:
    return f'<span class="s-{escape(status)}">{escape(status)}</span>'


def _commit_link(sha: str) -> str:
    return f'<a href="/commit/{quote(sha)}"><code>{escape(sha[:12])}</code></a>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _live_table(
    name: str, headers: Sequence[str], rows: Sequence[str], empty: str, attributes: str = ""
) -> str:
    """A table the script adds rows to: ``rows`` are whole ``<tr>`` (already HTML); an
    empty one says ``empty`` in a row the script removes."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    none = f'<tr class="none"><td colspan="{len(headers)}">{escape(empty)}</td></tr>'
    return (
        f'<table id="{name}"{attributes}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows) or none}</tbody></table>"
    )


def _cells(row: Sequence[tuple[str, str]]) -> str:
    """``<td class="c-name">`` cells, so the script finds each by what it shows."""
    return "".join(f'<td class="c-{name}">{cell}</td>' for name, cell in row)


def _text(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _labels(labels: Mapping[str, str] | None) -> str:
    """``gpu=true os=linux`` (not escaped)."""
    return " ".join(f"{key}={value}" for key, value in (labels or {}).items())


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f}s"


#: Why a queued build waits, as the builds page says it.


def queue_row(job: Mapping[str, Any]) -> str:
    cells = [("commit", _commit_link(job["sha"])), ("branch", _text(job["branch"])),
             ("attempt", _text(job["attempt"])), ("needs", escape(_labels(job.get("needs")))),
             ("why", _text(job.get("waiting")))]  # fmt: skip
    return f'<tr id="q-{int(job["build_id"])}">{_cells(cells)}</tr>'


def build_row(build: Mapping[str, Any]) -> str:
    cells = [
        ("commit", _commit_link(build["sha"])), ("branch", _text(build["branch"])),
        ("subject", _text(build.get("subject"))), ("author", _text(build.get("author"))),
        ("status", _status(build["status"])), ("duration", _duration(build["duration"])),
        ("runner", _text(build["runner"])), ("attempt", _text(build["attempt"])),
        ("tests", escape(counts_text(build["tests"]))),
    ]  # fmt: skip
    return f'<tr id="b-{int(build["build_id"])}">{_cells(cells)}</tr>'


def builds_page(
    queue: Sequence[Mapping[str, Any]],
    builds: Sequence[Mapping[str, Any]],
    branch: str | None,
    number: int,
    more: bool,
    events: int = 0,
    size: int = 50,
) -> str:
    """``/``: the queue, then one page of builds, newest first. The script adds new
    builds to the first page (of its branch) and updates every row it shows."""
    parts = []
    if number == 1 and not branch:
        parts.append(f'<h2>Queue (<span id="queued">{len(queue)}</span>)</h2>')
        headers = ["commit", "branch", "attempt", "needs", "why"]
        parts.append(_live_table("queue", headers, [queue_row(j) for j in queue], "empty"))
    parts.append("<h2>Builds" + (f" of {escape(branch)}" if branch else "") + "</h2>")
    headers = ["commit", "branch", "subject", "author", "status", "duration", "runner",
               "attempt", "tests"]  # fmt: skip
    # New builds go on top of the first page only (of their branch, when filtered).
    attributes = f' data-size="{size}"' + (' data-first-page="1"' if number == 1 else "")
    attributes += f' data-branch="{escape(branch)}"' if branch else ""
    rows = [build_row(b) for b in builds]
    parts.append(_live_table("builds", headers, rows, "no builds", attributes))
    parts.append(_pager(branch, number, more))
    return page("superci", "\n".join(parts), view="builds", events=events)


def _pager(branch: str | None, number: int, more: bool) -> str:
    def link(n: int, label: str) -> str:
        query = {"page": str(n), **({"branch": branch} if branch else {})}
        return f'<a href="/?{escape(urlencode(query))}">{label}</a>'

    links = ([link(number - 1, "newer")] if number > 1 else []) + (
        [link(number + 1, "older")] if more else []
    )
    return "<p>" + " · ".join(links) + "</p>"


#: What the commit page says after a cancel or rebuild (the reply's status, never text
#: from the URL).
NOTES = {
    "cancelled": "Cancelled: the build had not started.",
    "cancelling": "Cancelling: the runner is stopping the build.",
    "finished": "Nothing to cancel: the build had already finished.",
    "queued": "Rebuild queued.",
    "busy": "Not rebuilt: the build has not finished yet.",
}
#: Matches a terminal control sequence (colours and the like) of a log line.
ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


@dataclass(frozen=True)
class Actions:
    """What the commit page offers this browser: the buttons and their CSRF token, or
    the login that would enable them."""

    allowed: bool
    csrf: str


def commit_page(
    document: Mapping[str, Any],
    log: Window,
    actions: Actions,
    note: str | None = None,
    events: int = 0,
) -> str:
    """``/commit/<name>``: status, counts, failures, runners, times, the cancel and
    rebuild buttons, and the last lines of the log."""
    sha = document["sha"]
    facts = [
        ("commit", f"<code>{escape(sha)}</code>"),
        ("branch", _text(document["branch"])),
        ("subject", _text(document.get("subject"))),
        ("author", _text(document.get("author"))),
        ("build", _text(document["build_id"])),
        ("status", _status(document["status"])),
        ("message", _text(document.get("message"))),
        ("tests", escape(counts_text(document.get("tests")))),
        ("duration", _duration(document.get("duration"))),
        ("runner", _text(document.get("runner"))),
        ("needs", escape(_labels(document.get("needs")))),
        ("waiting", _text(document.get("waiting"))),
        ("attempt", _text(document.get("attempt"))),
        ("runners", escape(", ".join(document.get("runners") or []))),
        *([("split", escape(split_text(document["split"])))] if document.get("split") else []),
        ("queued", _text(document.get("queued_at"))),
        ("started", _text(document.get("started_at"))),
        ("finished", _text(document.get("finished_at"))),
    ]
    rows = "".join(f'<tr><th>{k}</th><td id="f-{k}">{v}</td></tr>' for k, v in facts)
    parts = [f'<p class="note">{escape(NOTES[note])}</p>' if note in NOTES else ""]
    parts.append(f'<table id="facts">{rows}</table>')
    parts.append(_buttons(sha, document["status"] in ("queued", "running"), actions))
    failures = document.get("failures") or []
    items = "".join(f"<li><pre>{escape(str(f))}</pre></li>" for f in failures)
    parts.append(
        f'<div id="failures"{"" if failures else " hidden"}>'
        f"<h2>Failures ({len(failures)})</h2><ul>{items}</ul></div>"
    )
    parts.append(_log(sha, document, log))
    title = f"{sha[:12]} ({document['branch']})"
    return page(title, "\n".join(parts), view="commit", events=events)


def jobs_page(document: Mapping[str, Any], actions: Actions, note: str | None = None) -> str:
    """``/commit/<name>`` of a commit of several jobs: its status and a line per job, as
    ``superci show`` prints them (each job's log: ``superci logs SHA --job JOB``)."""
    sha = document["sha"]
    facts = [("commit", f"<code>{escape(sha)}</code>"), ("branch", _text(document["branch"])),
             ("subject", _text(document.get("subject"))),
             ("status", _status(document["status"]))]  # fmt: skip
    rows = [[_text(j["job"]), _status(j["status"]), _text(j.get("runner")),
             _duration(j.get("duration")), escape(counts_text(j.get("tests"))),
             _text(j.get("waiting") or j.get("message"))]
            for j in document["jobs"]]  # fmt: skip
    parts = [f'<p class="note">{escape(NOTES[note])}</p>' if note in NOTES else ""]
    parts.append(_table(["", ""], [[escape(k), v] for k, v in facts]))
    parts.append(_buttons(sha, document["status"] in ("queued", "running"), actions))
    parts.append(f"<h2>Jobs ({len(rows)})</h2>")
    parts.append(_table(["job", "status", "runner", "duration", "tests", "reason"], rows))
    return page(f"{sha[:12]} ({document['branch']})", "\n".join(parts))


def _buttons(sha: str, unfinished: bool, actions: Actions) -> str:
    """Cancel while the build is queued or running, rebuild once it finished."""
    if not actions.allowed:
        login = f"/login?next={quote('/commit/' + sha, safe='')}"
        return f'<p><a href="{escape(login)}">Log in</a> to cancel or rebuild.</p>'

    def form(action: str, shown: bool) -> str:
        return (
            f'<form class="act" id="{action}" method="post" '
            f'action="/commit/{quote(sha)}/{action}"{"" if shown else " hidden"}>'
            f'<input type="hidden" name="csrf" value="{escape(actions.csrf)}">'
            f'<button type="submit">{action}</button></form>'
        )

    return f"<p>{form('cancel', unfinished)}{form('rebuild', not unfinished)}</p>"


def _log(sha: str, document: Mapping[str, Any], log: Window) -> str:
    """The log's last lines, each with its anchor (``#L123``, counted from the log's
    start); the script colours them, loads earlier lines and follows new output."""
    raw = f'<a href="/commit/{quote(sha)}/log.txt">raw log</a>'
    first = log.first_line or 1
    lines = log.text.split("\n") if log.text else []
    if log.text.endswith("\n"):
        lines.pop()
    shown = f"lines {first}–{first + len(lines) - 1}" if lines else "no output yet"
    earlier = f"; earlier lines are in the {raw}" if log.start > 0 else f"; {raw}"
    attributes = (
        f' data-sha="{escape(sha)}" data-build="{int(document["build_id"])}"'
        f' data-start="{log.start}" data-end="{log.end}" data-first="{first}"'
    )
    body = "".join(_line(first + n, line) for n, line in enumerate(lines))
    return (
        f'<h2>Log</h2><p><span id="log-lines">{shown}</span>{earlier}</p>'
        f'<p><button type="button" id="earlier" hidden>load earlier lines</button></p>'
        f'<div id="log"{attributes}>{body}</div>'
    )


def _line(number: int, text: str) -> str:
    """One log line: its anchor and its text without control sequences; a line that had
    some keeps them in ``data-a`` for the script's colours."""
    plain = ANSI.sub("", text)
    coloured = f' data-a="{escape(text)}"' if plain != text else ""
    return (
        f'<div class="l" id="L{number}"><a class="n" href="#L{number}">{number}</a>'
        f'<span class="t"{coloured}>{escape(plain)}</span></div>'
    )


def runner_row(runner: Mapping[str, Any]) -> str:
    cells = [
        ("name", _text(runner["name"])), ("host", _text(runner["host"])),
        ("state", _text(runner["state"])),
        ("build", _commit_link(runner["build"]) if runner["build"] else ""),
        ("heartbeat", _text(runner["since_heartbeat"])), ("benched", _text(runner.get("reason"))),
        ("labels", escape(_labels(runner.get("labels")))),
        ("exclusive", "yes" if runner.get("exclusive") else "no"),
    ]  # fmt: skip
    return f"<tr>{_cells(cells)}</tr>"


def runners_page(runners: Sequence[Mapping[str, Any]], events: int = 0) -> str:
    """``/runners``: name, host, state, current build, seconds since its last heartbeat."""
    headers = ["name", "host", "state", "build", "since heartbeat (s)", "benched", "labels",
               "exclusive"]  # fmt: skip
    table = _live_table("runners", headers, [runner_row(r) for r in runners], "no runners")
    return page("runners", table, view="runners", events=events)


def error_page(status: int, message: str) -> str:
    return page(f"{status}", f"<p>{escape(message)}</p>")


#: What a badge says for each finished status, and its colour.
BADGES = {"passed": ("passing", "#2da44e"), "failed": ("failing", "#cf222e")}
BADGE_ERROR = ("error", "#bf8700")
BADGE_UNKNOWN = ("unknown", "#777")


def badge(status: str | None) -> str:
    """An SVG badge "build | passing" for a README; nothing but the status is shown."""
    text, colour = BADGE_UNKNOWN if status is None else BADGES.get(status, BADGE_ERROR)
    left, right = 40, 8 + 7 * len(text)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + right}" height="20" '
        f'role="img" aria-label="build: {text}"><title>build: {text}</title>'
        f'<rect width="{left}" height="20" fill="#555"/>'
        f'<rect x="{left}" width="{right}" height="20" fill="{colour}"/>'
        '<g fill="#fff" font-family="Verdana,sans-serif" font-size="11">'
        f'<text x="6" y="14">build</text><text x="{left + 4}" y="14">{text}</text></g></svg>'
    )
