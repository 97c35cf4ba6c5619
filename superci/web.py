"""The web page: builds, logs, runners, badges and live events over HTTP, served by
aiohttp from the dispatcher's own event loop.

It reads what the dispatcher has (the store, the results folder, the scheduler's view)
between two ``await`` points like every other part, and sees every change through the
event bus (:class:`~superci.eventring.EventRing`), so it never polls. The pages are
rendered in :mod:`superci.webviews`; this module is the routes and their I/O; who may
see them is :mod:`superci.weblogin`'s. The only changes it makes are cancel and rebuild,
through the dispatcher's own :class:`~superci.requests.ClientRequests`, as ``superci
cancel`` and ``notify --rebuild`` do. Logs are read off the loop (``run_in_executor``),
a bounded window at a time (:mod:`superci.weblog`), so a large log never stalls dispatch.

Paths name builds only through :func:`superci.names.resolve`; files are found from the
stored commit id, never from the URL, so no path in a request can reach another file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from ssl import SSLContext
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from superci import names, protocol, weblog, webviews
from superci.bus import EventBus
from superci.channel import Address
from superci.defaults import DEFAULT_JOB
from superci.errors import AmbiguousCommit, ProtocolError, StorageError, UnknownBuild
from superci.eventring import EventRing, Numbered
from superci.jobs import commit_status
from superci.report import build_summary, commit_view, status_document, waiting_summary
from superci.requests import ClientRequests
from superci.results import ResultsFolder
from superci.scheduler import Scheduler
from superci.settings import DispatcherSettings
from superci.store import BuildRecord, Store
from superci.weblog import TAIL_LINES, Window
from superci.weblogin import WebAccess

log = logging.getLogger(__name__)

#: Longest query string accepted (characters); a branch name and a page number fit.
MAX_QUERY = 1024
#: Highest page number of the build list (far beyond any real history).
MAX_PAGE = 1_000_000
#: The page's script and the ANSI converter it imports, shipped as package data.
STATIC = Path(__file__).parent / "static"
#: Scripts only from this site, so even a missed escape could not run one.
CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)

#: How long an event stream waits after an event for more before it writes (seconds):
#: far below what a person notices, and one write per browser for a whole burst.
EVENT_BATCH_DELAY = 0.05

__all__ = ["TAIL_LINES", "WebServer", "parse_web_address"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


def parse_web_address(text: str) -> tuple[str, int]:
    """``host:port`` (port 0 picks a free one) for ``--web``, or ProtocolError saying why."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ProtocolError(f"--web wants HOST:PORT (such as 127.0.0.1:8080), got {text!r}")
    return host, int(port)


class WebServer:
    """The HTTP routes of the web page, and the server that runs them."""

    def __init__(
        self,
        store: Store,
        results: ResultsFolder,
        scheduler: Scheduler,
        bus: EventBus,
        *,
        requests: ClientRequests,
        settings: DispatcherSettings,
        clock: Callable[[], float],
        access: WebAccess | None = None,
    ) -> None:
        self._store = store
        self._results = results
        self._scheduler = scheduler
        self._bus = bus
        self._requests = requests
        self._settings = settings
        self._clock = clock
        self.ring = EventRing(settings.web_event_ring)
        self._access = access = access or WebAccess(None, public=True)
        self.app = web.Application(
            middlewares=[_bounded_query, _errors_as_pages, access.middleware]
        )
        self.app.add_routes(access.routes())
        self.app.add_routes([
            web.get("/", self.index),
            web.get("/runners", self.runners),
            web.get("/commit/{name:.+}/log.txt", self.log_text),
            web.get("/commit/{name:.+}/log.json", self.log_json),
            web.post("/commit/{name:.+}/cancel", self.cancel),
            web.post("/commit/{name:.+}/rebuild", self.rebuild),
            web.get("/commit/{name:.+}", self.commit),
            web.get("/badge/{branch:.+}.svg", self.badge),
            web.get("/api/builds", self.api_builds),
            web.get("/api/commit/{name:.+}", self.api_commit),
            web.get("/api/runners", self.api_runners),
            web.get("/events", self.events),
            web.static("/static", STATIC),
        ])  # fmt: skip
        self._runner: web.AppRunner | None = None

    async def start(
        self, host: str, port: int, ssl: SSLContext | None = None,
        sock: socket.socket | None = None,
    ) -> Address:  # fmt: skip
        """Listen (over HTTPS with ``ssl``; on ``sock`` when given, a socket the caller
        bound already); returns the bound address (port 0 → the real one)."""
        self.ring.start(self._bus)
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=self._settings.shutdown_grace
        )
        await self._runner.setup()
        if sock is not None:
            await web.SockSite(self._runner, sock, ssl_context=ssl).start()
        else:
            await web.TCPSite(self._runner, host, port, ssl_context=ssl).start()
        bound = self._runner.addresses[0]
        return Address(host, bound[1])

    async def close(self) -> None:
        """Stop serving: event streams end, open requests get the shutdown grace."""
        await self.ring.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- pages ------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        branch = _branch_param(request)
        number = _int_param(request, "page", 1, 1, MAX_PAGE)
        size = self._settings.web_page_size
        events = self.ring.last_id  # before reading: the script misses nothing after
        records = self._store.page(size + 1, (number - 1) * size, branch)
        builds = [build_summary(r) for r in records[:size]]
        queue = self._status(size)["queue"] if number == 1 and not branch else []
        more = len(records) > size
        html = webviews.builds_page(queue, builds, branch, number, more, events, size)
        return _html(html)

    async def commit(self, request: web.Request) -> web.Response:
        events = self.ring.last_id
        record = self._resolve(request.match_info["name"])
        actions = webviews.Actions(self._access.may_act(request), self._access.csrf_token(request))
        note = request.query.get("said")
        document = self._document(record)
        if record.job != DEFAULT_JOB:  # several jobs, each with its own log: listed
            return _html(webviews.jobs_page(document, actions, note))
        window = await self._off_loop(self._tail, record)
        return _html(webviews.commit_page(document, window, actions, note, events))

    async def log_text(self, request: web.Request) -> web.StreamResponse:
        """The raw log: a finished build's file with Range support, else what there is."""
        record = self._resolve(request.match_info["name"])
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        path = None
        if record.status.finished:
            path = await self._off_loop(self._results.log_file, record.sha, record.id, record.job)
        if path is not None:
            return web.FileResponse(path, headers=headers)
        response = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
        await response.prepare(request)
        pieces = self._results.read_log(record.sha, 0, record.id, job=record.job)
        try:
            while (piece := await self._off_loop(next, pieces, b"")) != b"":
                await response.write(piece)
        finally:
            pieces.close()
        await response.write_eof()
        return response

    async def log_json(self, request: web.Request) -> web.Response:
        """A window of a build's log for the viewer, by byte offset in ``log.txt``:
        ``before=N``: the lines before N; ``from=N``: the output from N on; neither: the
        last lines, with the number of the first. ``build`` names the build."""
        build_id = _int_param(request, "build", 0, 0, 2**62) or None
        record = self._resolve(request.match_info["name"], build_id)
        size = await self._off_loop(self._results.log_view_size, record.sha, record.id, record.job)
        read = self._reader(record)
        complete = record.status.finished
        more = False  # True: there is more after this window than one answer carries
        if "before" in request.query:
            end = min(_int_param(request, "before", 0, 0, 2**62), size)
            window = await self._off_loop(weblog.last_lines, read, end)
        elif "from" in request.query and _int_param(request, "from", 0, 0, 2**62) <= size:
            start = _int_param(request, "from", 0, 0, 2**62)
            window = await self._off_loop(weblog.output_after, read, start, size, complete)
            more = size - start > weblog.FOLLOW_BYTES
        else:  # no window asked, or one past the end (the log was cut meanwhile)
            window = await self._off_loop(self._tail, record)
        document = {
            "build_id": record.id, "status": str(record.status), "complete": complete,
            "size": size, "start": window.start, "end": window.end, "more": more,
            "first_line": window.first_line, "text": window.text,
        }  # fmt: skip
        return web.json_response(document)

    async def runners(self, request: web.Request) -> web.Response:
        events = self.ring.last_id
        return _html(webviews.runners_page(self._status(1)["runners"], events))

    # --- changes --------------------------------------------------------------------

    async def cancel(self, request: web.Request) -> web.Response:
        """The cancel button: the same path as ``superci cancel``."""
        await self._access.check_action(request)
        record = self._resolve(request.match_info["name"])
        reply = self._requests.cancel(record.sha)
        log.info("web page at %s: cancel %s: %s", request.remote, record.sha[:12], reply.message)
        raise _back_to(record, reply.status)

    async def rebuild(self, request: web.Request) -> web.Response:
        """The rebuild button: the same path as ``notify --rebuild``."""
        await self._access.check_action(request)
        record = self._resolve(request.match_info["name"])
        try:
            submitted = self._requests.submit(record.sha, record.branch, rebuild=True)
        except StorageError as e:
            raise web.HTTPServiceUnavailable(text=f"the rebuild was not queued: {e}") from None
        log.info("web page at %s: rebuild %s", request.remote, record.sha[:12])
        raise _back_to(record, "queued" if submitted.queued else "busy")

    async def badge(self, request: web.Request) -> web.Response:
        """The branch's last finished result; public, and shows nothing but the status."""
        branch = request.match_info["branch"]
        jobs = (
            self._store.latest_finished_round_on_branch(branch) if names.is_branch(branch) else []
        )
        status = commit_status(job.status for job in jobs) if jobs else None
        svg = webviews.badge(None if status is None else str(status))
        etag = hashlib.sha256(svg.encode()).hexdigest()[:20]
        headers = {"Cache-Control": "no-cache, max-age=0", "ETag": f'"{etag}"'}
        if request.headers.get("If-None-Match") == f'"{etag}"':
            return web.Response(status=304, headers=headers)
        code = 404 if status is None else 200
        return web.Response(text=svg, status=code, content_type="image/svg+xml", headers=headers)

    # --- JSON -------------------------------------------------------------------------

    async def api_builds(self, request: web.Request) -> web.Response:
        """What ``status --json`` prints; ``branch`` keeps the builds of one branch."""
        branch = _branch_param(request)
        limit = _int_param(request, "limit", 20, 1, protocol.MAX_QUERY_LIMIT)
        document = self._status(limit)
        if branch is not None:
            document["builds"] = [build_summary(r) for r in self._store.page(limit, 0, branch)]
        return web.json_response(document)

    async def api_commit(self, request: web.Request) -> web.Response:
        """What ``show --json`` prints."""
        return web.json_response(self._document(self._resolve(request.match_info["name"])))

    async def api_runners(self, request: web.Request) -> web.Response:
        return web.json_response({"runners": self._status(1)["runners"]})

    # --- live events ------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: every bus event with its ring number as ``id``; from
        ``Last-Event-ID`` on when the browser reconnects, else from now on."""
        last = _last_event_id(request)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        last = self.ring.last_id if last is None else last
        try:
            await response.write(b": connected\n\n")
            while not self.ring.closed:
                frames = self.ring.frames_since(last)
                if frames is None:  # older than the ring: read the page again
                    resync = json.dumps({"event": "resync"})
                    frames = Numbered(self.ring.last_id, "resync", resync).frame
                last = self.ring.last_id  # what ``frames`` holds, in this same step
                if frames:
                    await response.write(frames)
                elif not await self.ring.wait(last, self._settings.web_keepalive_interval):
                    if not self.ring.closed:
                        await response.write(b": keep-alive\n\n")
                else:  # let a burst gather: one write per browser, not one per event
                    await asyncio.sleep(EVENT_BATCH_DELAY)
        except (ConnectionResetError, ConnectionError):
            log.debug("an event stream's browser went away")
        return response

    # --- reading ----------------------------------------------------------------------

    def _status(self, limit: int) -> dict[str, Any]:
        return status_document(self._scheduler.view(), self._store, self._clock(), limit)

    def _resolve(self, name: str, build_id: int | None = None) -> BuildRecord:
        try:
            return names.resolve(self._store, name, build_id)
        except UnknownBuild as e:
            raise web.HTTPNotFound(text=str(e)) from None
        except AmbiguousCommit as e:
            raise web.HTTPConflict(text=str(e)) from None

    def _document(self, record: BuildRecord) -> dict[str, Any]:
        """The build's ``result.json`` once it has one, else what the store knows; of a
        commit of several jobs, its jobs (see :func:`commit_view`), as ``show`` says."""
        if record.job != DEFAULT_JOB:
            records = self._store.round_of(record.round)
            return commit_view(records, self._scheduler.view(), self._clock())
        result = self._results.read_result(record.sha, record.id)
        if result is None or result.get("build_id") != record.id:
            return waiting_summary(record, self._scheduler.view(), self._clock())
        return result

    def _reader(self, record: BuildRecord) -> weblog.Reader:
        return weblog.reader_of(
            lambda offset: self._results.read_log(record.sha, offset, record.id, job=record.job)
        )

    def _tail(self, record: BuildRecord) -> Window:
        """The last :data:`TAIL_LINES` of a build's log and the number of the first
        (blocking: run it off the loop)."""
        read = self._reader(record)
        size = self._results.log_view_size(record.sha, record.id, record.job)
        window = weblog.last_lines(read, size)
        return weblog.with_line_number(read, window)

    async def _off_loop(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking file I/O in a thread, so the dispatcher's loop never waits on it."""
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def _back_to(record: BuildRecord, said: str) -> web.HTTPSeeOther:
    """Back to the commit page, which says what happened (post/redirect/get)."""
    return web.HTTPSeeOther(f"/commit/{quote(record.sha)}?said={quote(said)}")


def _html(text: str) -> web.Response:
    return web.Response(
        text=text, content_type="text/html", headers={"Content-Security-Policy": CSP}
    )


def _last_event_id(request: web.Request) -> int | None:
    """The last event a browser had: its reconnect's ``Last-Event-ID``, else the page's
    ``since`` (the newest event when the page was read)."""
    text = request.headers.get("Last-Event-ID", "").strip() or request.query.get("since", "")
    return int(text) if text.isdigit() and len(text) < 19 else None


def _branch_param(request: web.Request) -> str | None:
    branch = request.query.get("branch") or None
    if branch is not None and not names.is_branch(branch):
        raise web.HTTPBadRequest(text=f"{branch!r} is not a branch name")
    return branch


def _int_param(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    text = request.query.get(key)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise web.HTTPBadRequest(text=f"{key} must be a number from {low} to {high}")
    return int(text)


@web.middleware
async def _bounded_query(request: web.Request, handler: Handler) -> web.StreamResponse:
    if len(request.query_string) > MAX_QUERY:
        raise web.HTTPRequestURITooLong(text=f"the query is longer than {MAX_QUERY} characters")
    return await handler(request)


@web.middleware
async def _errors_as_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as short pages (HTML, or JSON under ``/api/``) that say what is wrong."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = e.text or e.reason
        if request.path.startswith("/api/"):
            return web.json_response({"error": message}, status=e.status)
        return web.Response(
            text=webviews.error_page(e.status, message), status=e.status, content_type="text/html"
        )
