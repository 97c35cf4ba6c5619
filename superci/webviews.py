"""The web page's HTML, rendered on the server from the same documents as ``status`` and
``show`` (no I/O). It works without JavaScript; everything that comes from commits and
runners (branches, test names, failure messages, host names, log lines) goes through
:func:`html.escape`, so a ``<script>`` in any of them shows as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from superci.report import counts_text

#: Colour of each status (its CSS class).
COLOURS = {"queued": "#777", "running": "#1f6feb", "passed": "#2da44e", "failed": "#cf222e",
           "error": "#bf8700", "timeout": "#bf8700", "cancelled": "#777"}  # fmt: skip

_STYLE = "".join(f".s-{name}{{color:{c};font-weight:bold}}" for name, c in COLOURS.items())
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · superci</title>
<style>body{{font-family:sans-serif;margin:1em 2em}}table{{border-collapse:collapse}}
td,th{{padding:2px 8px;text-align:left;border-bottom:1px solid #ddd}}
pre{{background:#f6f8fa;padding:8px;overflow-x:auto}}{style}</style></head>
<body><nav><a href="/">builds</a> · <a href="/runners">runners</a></nav>
<h1>{title}</h1>
{body}
</body></html>
"""


def page(title: str, body: str) -> str:
    """A whole page around ``body`` (already HTML); ``title`` is escaped here."""
    return _PAGE.format(title=escape(title), body=body, style=_STYLE)


def _status(status: str) -> str:
    return f'<span class="s-{escape(status)}">{escape(status)}</span>'


def _commit_link(sha: str) -> str:
    return f'<a href="/commit/{quote(sha)}"><code>{escape(sha[:12])}</code></a>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _text(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _labels(labels: Mapping[str, str] | None) -> str:
    """``gpu=true os=linux`` (not escaped)."""
    return " ".join(f"{key}={value}" for key, value in (labels or {}).items())


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f}s"


def builds_page(
    queue: Sequence[Mapping[str, Any]],
    builds: Sequence[Mapping[str, Any]],
    branch: str | None,
    number: int,
    more: bool,
) -> str:
    """``/``: the queue, then one page of builds, newest first."""
    parts = []
    if number == 1 and not branch:
        rows = [[_commit_link(j["sha"]), _text(j["branch"]), _text(j["attempt"]),
                 _text(j.get("waiting"))] for j in queue]  # fmt: skip
        parts.append(f"<h2>Queue ({len(queue)})</h2>")
        headers = ["commit", "branch", "attempt", "why"]
        parts.append(_table(headers, rows) if rows else "<p>empty</p>")
    parts.append("<h2>Builds" + (f" of {escape(branch)}" if branch else "") + "</h2>")
    rows = [
        [_commit_link(b["sha"]), _text(b["branch"]),
         _text(b.get("subject")), _text(b.get("author")),
         _status(b["status"]),
         _duration(b["duration"]), _text(b["runner"]), _text(b["attempt"]),
         escape(counts_text(b["tests"]))]
        for b in builds
    ]  # fmt: skip
    headers = ["commit", "branch", "subject", "author", "status", "duration", "runner",
               "attempt", "tests"]  # fmt: skip
    parts.append(_table(headers, rows) if rows else "<p>no builds</p>")
    parts.append(_pager(branch, number, more))
    return page("superci", "\n".join(parts))


def _pager(branch: str | None, number: int, more: bool) -> str:
    def link(n: int, label: str) -> str:
        query = {"page": str(n), **({"branch": branch} if branch else {})}
        return f'<a href="/?{escape(urlencode(query))}">{label}</a>'

    links = ([link(number - 1, "newer")] if number > 1 else []) + (
        [link(number + 1, "older")] if more else []
    )
    return "<p>" + " · ".join(links) + "</p>"


def commit_page(document: Mapping[str, Any], log_tail: str, log_cut: bool) -> str:
    """``/commit/<name>``: status, counts, failures, runners, times and the log's end."""
    sha = document["sha"]
    if "jobs" in document:
        return _jobs_page(document)
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
        ("queued", _text(document.get("queued_at"))),
        ("started", _text(document.get("started_at"))),
        ("finished", _text(document.get("finished_at"))),
    ]
    parts = [_table(["", ""], [[escape(k), v] for k, v in facts])]
    failures = document.get("failures") or []
    if failures:
        items = "".join(f"<li><pre>{escape(str(f))}</pre></li>" for f in failures)
        parts.append(f"<h2>Failures ({len(failures)})</h2><ul>{items}</ul>")
    raw = f'<a href="/commit/{quote(sha)}/log.txt">raw log</a>'
    cut = "the last lines; " if log_cut else ""
    parts.append(f'<h2>Log</h2><p>{cut}{raw}</p><pre id="log">{escape(log_tail)}</pre>')
    return page(f"{sha[:12]} ({document['branch']})", "\n".join(parts))


def _jobs_page(document: Mapping[str, Any]) -> str:
    """A commit of several jobs: its status and a line per job (``superci show``'s)."""
    facts = [("commit", f"<code>{escape(document['sha'])}</code>"),
             ("branch", _text(document["branch"])), ("subject", _text(document.get("subject"))),
             ("status", _status(document["status"]))]  # fmt: skip
    rows = [[_text(j["job"]), _status(j["status"]), _text(j.get("runner")),
             _duration(j.get("duration")), escape(counts_text(j.get("tests"))),
             _text(j.get("waiting") or j.get("message"))]
            for j in document["jobs"]]  # fmt: skip
    body = (_table(["", ""], [[escape(k), v] for k, v in facts]) + f"<h2>Jobs ({len(rows)})</h2>"
            + _table(["job", "status", "runner", "duration", "tests", "reason"], rows))  # fmt: skip
    return page(f"{document['sha'][:12]} ({document['branch']})", body)


def runners_page(runners: Sequence[Mapping[str, Any]]) -> str:
    """``/runners``: name, host, state, current build, seconds since its last heartbeat."""
    rows = [
        [_text(r["name"]), _text(r["host"]), _text(r["state"]),
         _commit_link(r["build"]) if r["build"] else "", _text(r["since_heartbeat"]),
         _text(r.get("reason")), escape(_labels(r.get("labels"))),
         "yes" if r.get("exclusive") else "no"]
        for r in runners
    ]  # fmt: skip
    headers = ["name", "host", "state", "build", "since heartbeat (s)", "benched", "labels",
               "exclusive"]  # fmt: skip
    return page("runners", _table(headers, rows) if rows else "<p>no runners</p>")


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
