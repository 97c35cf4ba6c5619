"""The web page against a real dispatcher on real sockets: every page and JSON document,
ranges of the raw log, badges, live events with Last-Event-ID resume, escaping of what
commits and runners say, hostile URLs, and ``--web`` through the real CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from click.testing import CliRunner
from helpers import FAST_WATCHDOG, FakeClock, FakeRunner, Harness, async_test
from support import WAIT
from yarl import URL

from superci import client, protocol
from superci.cli import main
from superci.eventring import EventRing
from superci.events import BuildQueued
from superci.status import BuildStatus
from superci.store import Store
from superci.web import MAX_QUERY, TAIL_LINES, WebServer
from superci.weblog import FOLLOW_BYTES
from superci.weblogin import COOKIE, SESSION_SECONDS, WebAccess

Session = aiohttp.ClientSession
SHA = "3f2a9c41d0e7" + "0" * 28
OTHER = "a1b2c3d4e5f6" + "1" * 28
HOSTILE = "<script>alert(1)</script>"


def sha_number(n: int) -> str:
    """A commit id whose short form tells it apart from the others."""
    return f"{n:02x}" + "c" * 38


@contextlib.asynccontextmanager
async def web(
    tmp_path: Path, token: bytes | None = None, public: bool = False, **settings: Any
) -> AsyncIterator[tuple[Harness, Session]]:
    """A dispatcher with its web page on 127.0.0.1 (behind a login when given a token
    and not ``public``), and an HTTP client of it that keeps cookies."""
    async with Harness(tmp_path, settings=replace(FAST_WATCHDOG, **settings)) as h:
        d = h.dispatcher
        assert d is not None
        d.web = WebServer(
            d.store, d.results, d.scheduler, d.bus, requests=d.requests, settings=d.settings,
            clock=h.clock, access=WebAccess(token, public),
        )  # fmt: skip
        address = await d.web.start("127.0.0.1", 0)
        base = URL(f"http://127.0.0.1:{address.port}")
        timeout = aiohttp.ClientTimeout(total=WAIT)
        jar = aiohttp.CookieJar(unsafe=True)  # cookies of an IP address, as browsers keep
        async with aiohttp.ClientSession(base, timeout=timeout, cookie_jar=jar) as session:
            yield h, session


async def finished_build(
    h: Harness, sha: str, branch: str = "main", status: str = "passed", log: bytes = b"",
    **fields: Any,
) -> protocol.Build:  # fmt: skip
    """A build of ``sha`` run to ``status`` by a fake runner that printed ``log``."""
    assert h.address is not None
    runner, _ = await FakeRunner.connect(h.address, f"runner-{sha[:4]}", host="box")
    await h.submit(sha, branch)
    build = await runner.expect(protocol.Build)
    for offset in range(0, len(log), 64 * 1024):  # in pieces an output frame can carry
        await runner.output(build, offset, log[offset : offset + 64 * 1024])
    await runner.result(build, status, output_bytes=len(log), **fields)
    await h.results.wait(sha)
    await runner.close()
    return build


async def text(session: aiohttp.ClientSession, path: str | URL, status: int = 200) -> str:
    async with session.get(path) as response:
        body = await response.text()
        assert response.status == status, body
        return body


# --- pages and documents ----------------------------------------------------------------


@async_test()
async def test_the_builds_page_lists_the_queue_and_builds_newest_first(tmp_path):
    async with web(tmp_path) as (h, session):
        await finished_build(h, SHA, "main", "failed", counts={"run": 2, "passed": 1, "failed": 1})
        await h.submit(OTHER, "feature/x")  # no runner: it waits in the queue
        page = await text(session, "/")
        queue, builds = page.split("<h2>Builds")
        assert OTHER[:12] in queue and "no runner connected; next in line" in queue
        assert builds.index(OTHER[:12]) < builds.index(SHA[:12]), "newest first"
        assert 'class="s-failed"' in builds and "1 passed, 1 failed" in builds
        only_main = await text(session, "/?branch=main")
        assert SHA[:12] in only_main and OTHER[:12] not in only_main


@async_test()
async def test_the_builds_page_is_paginated(tmp_path):
    async with web(tmp_path, web_page_size=2) as (h, session):
        shas = [sha_number(n) for n in range(1, 6)]
        for sha in shas:
            await h.submit(sha, "main")
        first = (await text(session, "/")).split("<h2>Builds")[1]
        assert [s[:12] in first for s in shas] == [False, False, False, True, True]
        assert 'href="/?page=2"' in first
        last = (await text(session, "/?page=3")).split("<h2>Builds")[1]
        assert shas[0][:12] in last and shas[1][:12] not in last
        assert "older" not in last and 'href="/?page=2"' in last


@async_test()
async def test_any_page_of_ten_thousand_builds_is_quick(tmp_path):
    store = Store(tmp_path / "superci.db")  # the harness's database, filled beforehand
    with store.transaction():
        for n in range(10_000):
            record = store.add_build(f"{n:08x}" + "d" * 32, ("main", "dev")[n % 2], 1000.0)
            store.finish(record.id, BuildStatus.PASSED, 1001.0, tests={"passed": 1})
    store.close()
    async with web(tmp_path) as (_, session):
        for path in ("/", "/?page=200", "/?page=100&branch=dev", "/api/builds?limit=1000"):
            started = time.monotonic()
            page = await text(session, path)
            assert time.monotonic() - started < 2.0, f"{path} is slow"
        last = (await text(session, "/?page=200")).split("<h2>Builds")[1]  # 50 a page
        assert f"{0:08x}dddd" in last and 'href="/?page=201"' not in last
        assert f"{49:08x}dddd" in last and f"{50:08x}dddd" not in last
        assert len(json.loads(page)["builds"]) == 1000


@async_test()
async def test_the_dispatcher_stops_promptly_with_a_browser_on_its_event_stream(tmp_path):
    async with web(tmp_path) as (h, session):
        async with session.get("/events") as response:
            await response.content.readline()
            started = time.monotonic()
            await h.stop()
            assert time.monotonic() - started < WAIT / 2
            assert (await response.content.read()).strip() == b"", "the stream ended"


@async_test()
async def test_bad_page_and_branch_parameters_get_a_clear_400(tmp_path):
    async with web(tmp_path) as (_, session):
        assert "page must be a number" in await text(session, "/?page=0", 400)
        assert "page must be a number" in await text(session, "/?page=x", 400)
        assert "not a branch name" in await text(session, "/?branch=a..b", 400)
        error = json.loads(await text(session, "/api/builds?limit=5000", 400))
        assert "limit must be a number from 1 to 1000" in error["error"]


@async_test()
async def test_the_commit_page_shows_status_counts_failures_runners_and_the_log(tmp_path):
    async with web(tmp_path) as (h, session):
        log = b"".join(b"line %d\n" % n for n in range(TAIL_LINES + 500))
        await finished_build(
            h, SHA, "main", "failed", log, counts={"run": 3, "passed": 2, "failed": 1},
            failures=["tests.test_app.test_login"], message="tests failed",
        )  # fmt: skip
        for name in (SHA, SHA[:7], "main"):
            page = await text(session, f"/commit/{name}")
            assert 'class="s-failed"' in page and "2 passed, 1 failed" in page
            assert "tests.test_app.test_login" in page and "runner-3f2a" in page
        shown = page.split('<div id="log"')[1]
        assert shown.count('<div class="l"') == TAIL_LINES, "only the last lines"
        last, first = TAIL_LINES + 500, 501  # numbered from the log's first line
        assert f'id="L{last}"><a class="n" href="#L{last}">{last}</a>' in shown
        assert f'<span class="t">line {last - 1}</span>' in shown
        assert f'id="L{first}"' in shown and f'id="L{first - 1}"' not in shown
        assert f"lines {first}–{last}" in page and "earlier lines are in the" in page


@async_test()
async def test_the_commit_page_of_a_split_build_shows_its_runners_and_what_each_ran(tmp_path):
    async with web(tmp_path) as (h, session):
        await finished_build(h, SHA, "main", "passed", counts={"run": 7, "passed": 7},
                             split={"r1": 4, "r2": 3})  # fmt: skip
        page = await text(session, f"/commit/{SHA}")
        assert '<td id="f-split">over 2 runners: r1 (4 tests), r2 (3 tests)</td>' in page


@async_test()
async def test_an_unknown_or_ambiguous_commit_is_a_clear_error(tmp_path):
    async with web(tmp_path) as (h, session):
        await h.submit("abcdef1" + "0" * 33, "a")
        await h.submit("abcdef1" + "1" * 33, "b")
        assert "no build of nowhere is known" in await text(session, "/commit/nowhere", 404)
        assert "is ambiguous" in await text(session, "/commit/abcdef1", 409)
        error = json.loads(await text(session, "/api/commit/nowhere", 404))
        assert error == {"error": "no build of nowhere is known"}


@async_test()
async def test_the_json_documents_are_those_of_status_and_show(tmp_path):
    async with web(tmp_path) as (h, session):
        await finished_build(h, SHA, "main", "passed", counts={"run": 1, "passed": 1})
        await h.submit(OTHER, "feature/x")
        assert h.dispatcher is not None
        status = h.dispatcher.query(protocol.Query(what="status", limit=20))
        builds = json.loads(await text(session, "/api/builds"))
        assert builds == json.loads(status.document or "")
        only = json.loads(await text(session, "/api/builds?branch=feature/x&limit=5"))
        assert [b["sha"] for b in only["builds"]] == [OTHER]
        show = h.dispatcher.query(protocol.Query(what="show", commit=SHA))
        assert json.loads(await text(session, f"/api/commit/{SHA[:8]}")) == json.loads(
            show.document or ""
        )
        assert json.loads(await text(session, "/api/runners")) == {"runners": builds["runners"]}


@async_test()
async def test_the_runners_page_names_each_runner_its_host_state_and_build(tmp_path):
    async with web(tmp_path) as (h, session):
        assert h.address is not None
        runner, _ = await FakeRunner.connect(h.address, "runner-1", host="build-box")
        await h.submit(SHA)
        await runner.expect(protocol.Build)
        page = await text(session, "/runners")
        row = page.split("runner-1")[1].split("</tr>")[0]
        assert "build-box" in row and "busy" in row and SHA[:12] in row
        await runner.close()


@async_test()
async def test_the_pages_show_runners_labels_and_what_a_waiting_build_needs_and_why(tmp_path):
    async with web(tmp_path) as (h, session):
        assert h.address is not None
        runner, _ = await FakeRunner.connect(
            h.address, "gpu-1", labels={"gpu": "true"}, facts={"os": ["linux"]}, exclusive=True
        )
        await client.submit_async(h.address, OTHER, "main", config='needs = {python = "3.13"}')
        row = (await text(session, "/runners")).split("gpu-1")[1].split("</tr>")[0]
        assert "gpu=true os=linux" in row and '<td class="c-exclusive">yes</td>' in row
        queue = (await text(session, "/")).split("<h2>Builds")[0]
        assert "no connected runner has python=3.13" in queue
        page = await text(session, f"/commit/{OTHER}")
        assert "python=3.13" in page and "no connected runner has python=3.13" in page
        await runner.close()


# --- the raw log --------------------------------------------------------------------------


@async_test()
async def test_the_raw_log_is_served_whole_and_by_ranges(tmp_path):
    async with web(tmp_path) as (h, session):
        log = b"".join(b"line %d\n" % n for n in range(1000))
        await finished_build(h, SHA, "main", "passed", log)
        async with session.get(f"/commit/{SHA[:7]}/log.txt") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            assert await response.read() == log
        async with session.get(f"/commit/{SHA}/log.txt", headers={"Range": "bytes=10-19"}) as r:
            assert r.status == 206 and await r.read() == log[10:20]
            assert r.headers["Content-Range"] == f"bytes 10-19/{len(log)}"
        async with session.get(f"/commit/{SHA}/log.txt", headers={"Range": "bytes=-8"}) as r:
            assert r.status == 206 and await r.read() == log[-8:]
        async with session.get(f"/commit/{SHA}/log.txt", headers={"Range": "bytes=99999-"}) as r:
            assert r.status == 416


@async_test()
async def test_the_raw_log_of_a_running_build_is_what_arrived_so_far(tmp_path):
    async with web(tmp_path) as (h, session):
        assert h.address is not None
        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        await h.submit(SHA)
        build = await runner.expect(protocol.Build)
        await runner.output(build, 0, b"first line\n")
        await h.wait_for_log(SHA, b"first line\n")
        assert await text(session, f"/commit/{SHA}/log.txt") == "first line\n"
        await runner.close()


# --- badges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "says"), [("passed", "passing"), ("failed", "failing"), ("error", "error")]
)
@async_test()
async def test_a_badge_shows_the_branch_s_last_finished_result(tmp_path, status, says):
    async with web(tmp_path) as (h, session):
        await finished_build(h, SHA, "release/1.x", status)
        await h.submit(OTHER, "release/1.x")  # queued: the badge keeps the finished one
        async with session.get("/badge/release/1.x.svg") as response:
            svg = await response.text()
            assert response.status == 200
            assert response.content_type == "image/svg+xml"
            assert "no-cache" in response.headers["Cache-Control"]
            etag = response.headers["ETag"]
        assert f"build: {says}" in svg and SHA[:7] not in svg
        async with session.get("/badge/release/1.x.svg", headers={"If-None-Match": etag}) as r:
            assert r.status == 304


@async_test()
async def test_the_badge_of_an_unknown_branch_says_unknown(tmp_path):
    async with web(tmp_path) as (_, session):
        async with session.get("/badge/nowhere.svg") as response:
            assert response.status == 404
            assert "build: unknown" in await response.text()


# --- live events ------------------------------------------------------------------------------


async def read_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, str]]:
    """The next ``count`` events of an SSE stream (comments skipped)."""
    events: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    while len(events) < count:
        line = (await response.content.readline()).decode().rstrip("\n")
        if line == "":
            if fields:
                events.append(fields)
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            fields[key] = value
    return events


@async_test()
async def test_events_of_a_submitted_build_arrive_with_increasing_ids(tmp_path):
    async with web(tmp_path) as (h, session):
        async with session.get("/events") as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            await response.content.readline()  # ": connected": the stream is on
            await finished_build(h, SHA, "main", "passed", b"hello\n")
            events = await read_events(response, 6)
        kinds = [e["event"] for e in events]
        assert kinds[:2] == ["joined", "queued"] and "finished" in kinds, kinds
        ids = [int(e["id"]) for e in events]
        assert ids == list(range(ids[0], ids[0] + 6))
        assert json.loads(events[1]["data"])["sha"] == SHA


@async_test()
async def test_a_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing(tmp_path):
    async with web(tmp_path) as (h, session):
        async with session.get("/events") as response:
            await response.content.readline()
            await h.submit(sha_number(1))
            (first,) = await read_events(response, 1)
        for n in range(2, 6):  # while the browser is away
            await h.submit(sha_number(n))
        headers = {"Last-Event-ID": first["id"]}
        async with session.get("/events", headers=headers) as response:
            missed = await read_events(response, 4)
            await h.submit(sha_number(6))
            (live,) = await read_events(response, 1)
        got = [json.loads(e["data"])["sha"] for e in [first, *missed, live]]
        assert got == [sha_number(n) for n in range(1, 7)]
        ids = [int(e["id"]) for e in [first, *missed, live]]
        assert ids == list(range(ids[0], ids[0] + 6))


@async_test()
async def test_a_reconnect_older_than_the_ring_gets_a_resync(tmp_path):
    async with web(tmp_path, web_event_ring=3) as (h, session):
        for n in range(1, 6):
            await h.submit(sha_number(n))
        assert h.dispatcher is not None and h.dispatcher.web is not None
        ring = h.dispatcher.web.ring
        await asyncio.wait_for(ring.wait(4, WAIT), WAIT)
        async with session.get("/events", headers={"Last-Event-ID": "1"}) as response:
            (resync,) = await read_events(response, 1)
        assert resync["event"] == "resync" and int(resync["id"]) == ring.last_id


@async_test()
async def test_a_quiet_event_stream_gets_keep_alive_comments(tmp_path):
    async with web(tmp_path, web_keepalive_interval=0.05) as (_, session):
        async with session.get("/events") as response:
            assert await response.content.readline() == b": connected\n"
            await response.content.readline()
            assert await response.content.readline() == b": keep-alive\n"


def test_the_ring_keeps_the_last_events_and_knows_what_it_lost():
    async def check() -> None:
        ring = EventRing(3)
        for n in range(1, 6):
            ring.add(BuildQueued(build_id=n, sha=SHA, branch="main"))
        assert [e.id for e in ring.since(2) or []] == [3, 4, 5]
        assert ring.since(5) == []
        assert ring.since(1) is None, "event 2 is gone"
        assert ring.since(6) is None, "a number never given"
        assert not await ring.wait(5, 0.01)

    asyncio.run(check())


def test_browsers_at_the_same_place_share_one_piece_of_frames():
    async def check() -> None:
        ring = EventRing(10)
        for n in range(1, 4):
            ring.add(BuildQueued(build_id=n, sha=SHA, branch="main"))
        frames = ring.frames_since(1)
        assert frames is not None and frames.count(b"\nevent: queued\n") == 2
        assert frames.startswith(b"id: 2\n") and frames.endswith(b"\n\n")
        assert ring.frames_since(1) is frames, "joined once for every browser"
        assert ring.frames_since(3) == b"" and ring.frames_since(99) is None

    asyncio.run(check())


# --- what commits and runners say, and hostile URLs -------------------------------------------


@async_test()
async def test_what_commits_and_runners_say_is_shown_as_text(tmp_path):
    async with web(tmp_path) as (h, session):
        assert h.address is not None
        runner, _ = await FakeRunner.connect(h.address, "runner-1", host=f"box{HOSTILE}")
        await h.submit(SHA)
        build = await runner.expect(protocol.Build)
        log = f"printed {HOSTILE}\n".encode()
        await runner.output(build, 0, log)
        await runner.result(
            build, "failed", output_bytes=len(log), message=f"failed {HOSTILE}",
            failures=[f"test_{HOSTILE}: assert {HOSTILE}"],
        )  # fmt: skip
        await h.results.wait(SHA)
        pages = [await text(session, p) for p in ("/", f"/commit/{SHA}")]
        pages.append(await text(session, "/runners"))
        for page in pages:
            assert "<script>" not in page
        assert page.count("&lt;script&gt;") >= 1
        commit = pages[1]
        assert commit.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # message, test, log
        await runner.close()


@pytest.mark.parametrize(
    "path",
    ["/commit/../../etc/passwd", "/commit/%2e%2e/%2e%2e/etc/passwd",
     "/commit/..%2f..%2fetc%2fpasswd/log.txt", "/badge/..%2f..%2fetc%2fpasswd.svg"],
)  # fmt: skip
@async_test()
async def test_a_path_that_climbs_out_reaches_no_file(tmp_path, path):
    async with web(tmp_path) as (_, session):
        async with session.get(URL(path, encoded=True)) as response:
            body = await response.text()
        assert response.status in (400, 404)
        assert "root:" not in body


@async_test()
async def test_an_oversized_query_string_is_refused(tmp_path):
    async with web(tmp_path) as (_, session):
        await text(session, "/?branch=" + "a" * (MAX_QUERY + 1), 414)
        async with session.get("/?branch=" + "a" * 20_000) as response:
            assert response.status in (400, 414)


# --- login ----------------------------------------------------------------------------------

TOKEN = b"t0ken-" + b"x" * 26


@async_test()
async def test_with_a_token_the_page_asks_for_it_once_and_keeps_a_strict_cookie(tmp_path):
    async with web(tmp_path, token=TOKEN) as (h, session):
        await finished_build(h, SHA, "main", "passed")
        async with session.get("/runners", allow_redirects=False) as response:
            assert response.status == 303
            location = URL(response.headers["Location"])
            assert (location.path, location.query["next"]) == ("/login", "/runners")
        assert json.loads(await text(session, "/api/builds", 401))["error"].startswith("log in")
        await text(session, "/events", 401)
        assert "build: passing" in await text(session, "/badge/main.svg"), "badges are public"

        wrong = {"token": "guess", "next": "/runners"}
        async with session.post("/login", data=wrong, allow_redirects=False) as response:
            assert response.status == 403 and "not the dispatcher" in await response.text()
            assert COOKIE not in response.cookies
        right = {"token": TOKEN.decode(), "next": "/runners"}
        async with session.post("/login", data=right, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/runners"
            cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "<h1>runners</h1>" in await text(session, "/runners")
        assert json.loads(await text(session, "/api/builds"))["builds"][0]["sha"] == SHA


@async_test()
async def test_login_sends_a_browser_back_only_to_this_site(tmp_path):
    async with web(tmp_path, token=TOKEN) as (_, session):
        hostile = (
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r//evil.example",
            " //evil.example",
        )
        for target in hostile:
            data = {"token": TOKEN.decode(), "next": target}
            async with session.post("/login", data=data, allow_redirects=False) as response:
                assert response.headers["Location"] == "/", target
        data = {"token": TOKEN.decode(), "next": "/commit/main?x=1"}
        async with session.post("/login", data=data, allow_redirects=False) as response:
            assert response.headers["Location"] == "/commit/main?x=1"


@async_test()
async def test_web_public_opens_viewing_without_a_login(tmp_path):
    async with web(tmp_path, token=TOKEN, public=True) as (h, session):
        await h.submit(SHA)
        assert SHA[:12] in await text(session, "/")
        assert json.loads(await text(session, "/api/builds"))["queued"] == 1


def test_a_session_cookie_is_refused_when_forged_signed_by_another_token_or_expired():
    clock = FakeClock(1_000_000.0)
    access = WebAccess(TOKEN, public=False, wall_clock=clock)
    cookie = access.cookie()
    assert access.valid(cookie)
    expiry, _, signature = cookie.partition(".")
    assert not access.valid(f"{int(expiry) + 999}.{signature}"), "a longer life, forged"
    assert not access.valid(f"{expiry}.{'0' * len(signature)}")
    assert not access.valid(WebAccess(b"another" * 5, False, clock).cookie())
    assert not access.valid("") and not access.valid(None) and not access.valid("x.y")
    clock.advance(SESSION_SECONDS + 1)
    assert not access.valid(cookie), "expired"


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_dispatcher_web_serves_the_page_through_the_real_cli(superci):
    process = superci.dispatcher(0, "--web", "127.0.0.1:0")
    url = process.wait_for_log(r"web page at (http://\S+/)").group(1)
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        assert response.status == 200
        assert "<h1>superci</h1>" in response.read().decode()
    assert process.stop() == 0


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--web", "0.0.0.0:0"], {}, "refusing to serve the web page on 0.0.0.0 without a token"),
        (["--web", "nowhere"], {}, "--web wants HOST:PORT"),
    ],
)
def test_a_web_address_the_rules_refuse_stops_the_dispatcher_with_a_reason(
    tmp_path, args, env, says
):
    result = CliRunner().invoke(
        main, ["dispatcher", "--results", str(tmp_path / "r"), *args], env=env
    )
    assert result.exit_code != 0
    assert says in re.sub(r"\s+", " ", result.output)


# --- the log viewer ---------------------------------------------------------------------------


async def log_window(session: aiohttp.ClientSession, sha: str, query: str = "") -> dict[str, Any]:
    return json.loads(await text(session, f"/commit/{sha}/log.json?{query}"))


@async_test()
async def test_the_log_viewer_gets_the_last_lines_numbered_from_the_start_and_earlier_ones(
    tmp_path,
):
    async with web(tmp_path) as (h, session):
        log = b"".join(b"line %d\n" % n for n in range(1, 5001))  # line n says "line n"
        build = await finished_build(h, SHA, "main", "passed", log)
        tail = await log_window(session, SHA[:7], f"build={build.build_id}")
        assert tail["first_line"] == 3001 and tail["end"] == tail["size"] == len(log)
        assert tail["text"].startswith("line 3001\n") and tail["text"].endswith("line 5000\n")
        assert log[tail["start"] :].decode() == tail["text"]
        earlier = await log_window(session, SHA, f"before={tail['start']}")
        assert earlier["text"].startswith("line 1001\n") and earlier["text"].endswith("line 3000\n")
        assert earlier["end"] == tail["start"] and earlier["first_line"] is None
        first = await log_window(session, SHA, f"before={earlier['start']}")
        assert first["start"] == 0 and first["text"].startswith("line 1\n")


@async_test()
async def test_the_log_viewer_follows_a_running_build_a_whole_line_at_a_time(tmp_path):
    async with web(tmp_path) as (h, session):
        assert h.address is not None
        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        await h.submit(SHA)
        build = await runner.expect(protocol.Build)
        await runner.output(build, 0, b"one\ntw")
        await h.wait_for_log(SHA, b"one\ntw")
        got = await log_window(session, SHA, "from=0")
        assert (got["text"], got["end"], got["complete"]) == ("one\n", 4, False)
        assert not got["more"], "the half-written line comes with the next output"
        await runner.output(build, 6, b"o\nthree")
        await h.wait_for_log(SHA, b"three")
        got = await log_window(session, SHA, f"from={got['end']}")
        assert got["text"] == "two\n", "the half-written line waits"
        await runner.result(build, "passed", output_bytes=13)
        await h.results.wait(SHA)
        got = await log_window(session, SHA, f"from={got['end']}")
        assert (got["text"], got["complete"]) == ("three", True), "the build ended: all of it"
        restarted = await log_window(session, SHA, "from=999")
        assert restarted["first_line"] == 1 and restarted["text"] == "one\ntwo\nthree"
        await runner.close()


@async_test()
async def test_a_burst_of_output_larger_than_one_answer_comes_in_whole_lines_over_several(
    tmp_path,
):
    async with web(tmp_path) as (h, session):
        log = b"".join(b"%07d %s\n" % (n, b"y" * 90) for n in range(6_000))  # 594 kB
        await finished_build(h, SHA, "main", "passed", log)
        got, texts = {"end": 0, "more": True}, []
        while got["more"]:
            got = await log_window(session, SHA, f"from={got['end']}")
            assert got["text"].endswith("\n") and len(got["text"]) <= FOLLOW_BYTES
            texts.append(got["text"])
        assert len(texts) > 1 and "".join(texts).encode() == log and got["end"] == len(log)


@async_test()
async def test_the_log_keeps_its_colours_for_the_script_and_shows_markup_as_text(tmp_path):
    async with web(tmp_path) as (h, session):
        log = f"\x1b[31mred {HOSTILE}\x1b[0m\nplain\n".encode()
        await finished_build(h, SHA, "main", "passed", log)
        page = await text(session, f"/commit/{SHA}")
        assert "<script>alert" not in page
        coloured = (
            '<span class="t" data-a="\x1b[31mred &lt;script&gt;alert(1)&lt;/script&gt;\x1b[0m">'
        )
        assert coloured + "red &lt;script&gt;alert(1)&lt;/script&gt;</span>" in page
        assert '<span class="t">plain</span>' in page, "no colour, no copy"
        assert "script-src" not in page and "default-src 'self'" in await csp(session, "/")


async def csp(session: aiohttp.ClientSession, path: str) -> str:
    async with session.get(path) as response:
        return response.headers["Content-Security-Policy"]


@async_test()
async def test_the_page_s_script_and_its_ansi_converter_are_served(tmp_path):
    async with web(tmp_path, token=TOKEN) as (_, session):  # public, even behind a login
        for name, says in (("superci.js", "new EventSource"), ("ansi_up.js", "MIT License")):
            async with session.get(f"/static/{name}") as response:
                assert response.status == 200 and "javascript" in response.content_type
                assert says in await response.text()
        async with session.get(URL("/static/..%2f..%2fweb.py", encoded=True)) as response:
            assert response.status in (400, 403, 404)


@async_test()
async def test_the_event_stream_starts_after_the_event_the_page_was_read_at(tmp_path):
    async with web(tmp_path) as (h, session):
        page = await text(session, "/")
        since = re.search(r'data-events="(\d+)"', page)
        assert since is not None
        await h.submit(SHA)  # after the page was read, before its script connects
        async with session.get(f"/events?since={since.group(1)}") as response:
            (event,) = await read_events(response, 1)
        assert event["event"] == "queued" and json.loads(event["data"])["sha"] == SHA


# --- cancel and rebuild -----------------------------------------------------------------------


async def form_token(session: aiohttp.ClientSession, sha: str, action: str) -> str:
    """The CSRF token of the commit page's ``action`` form."""
    page = await text(session, f"/commit/{sha}")
    form = re.search(rf'<form class="act" id="{action}"[^>]*>.*?name="csrf" value="(\w+)"', page)
    assert form is not None, page
    return form.group(1)


async def post(session: aiohttp.ClientSession, path: str, data: dict[str, str]) -> tuple[int, str]:
    async with session.post(path, data=data, allow_redirects=False) as response:
        return response.status, response.headers.get("Location") or await response.text()


@async_test()
async def test_cancel_and_rebuild_without_the_page_s_csrf_token_are_refused(tmp_path):
    async with web(tmp_path) as (h, session):
        await h.submit(SHA)
        for data in ({}, {"csrf": "0" * 64}, {"csrf": ""}):
            for action in ("cancel", "rebuild"):
                status, said = await post(session, f"/commit/{SHA}/{action}", data)
                assert status == 403 and "no valid CSRF token" in said, (action, data)
        assert h.dispatcher is not None
        assert h.dispatcher.store.latest_for(SHA).status is BuildStatus.QUEUED


@async_test()
async def test_the_cancel_button_cancels_a_queued_build(tmp_path):
    async with web(tmp_path) as (h, session):
        await h.submit(SHA)
        token = await form_token(session, SHA, "cancel")
        status, location = await post(session, f"/commit/{SHA[:7]}/cancel", {"csrf": token})
        assert (status, location) == (303, f"/commit/{SHA}?said=cancelled")
        assert h.dispatcher is not None
        assert h.dispatcher.store.latest_for(SHA).status is BuildStatus.CANCELLED
        page = await text(session, location)
        assert "Cancelled: the build had not started." in page and 'class="s-cancelled"' in page
        again = await post(session, f"/commit/{SHA}/cancel", {"csrf": token})
        assert again == (303, f"/commit/{SHA}?said=finished")


@async_test()
async def test_the_cancel_button_stops_a_running_build_through_its_runner(tmp_path):
    async with web(tmp_path) as (h, session):
        assert h.address is not None
        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        await h.submit(SHA)
        await runner.expect(protocol.Build)
        token = await form_token(session, SHA, "cancel")
        status, location = await post(session, f"/commit/{SHA}/cancel", {"csrf": token})
        assert (status, location) == (303, f"/commit/{SHA}?said=cancelling")
        await runner.expect(protocol.Cancel)
        await runner.close()


@async_test()
async def test_the_rebuild_button_queues_a_new_build_of_a_finished_commit(tmp_path):
    async with web(tmp_path) as (h, session):
        first = await finished_build(h, SHA, "feature/x", "failed")
        token = await form_token(session, SHA, "rebuild")
        status, location = await post(session, f"/commit/{SHA}/rebuild", {"csrf": token})
        assert (status, location) == (303, f"/commit/{SHA}?said=queued")
        assert h.dispatcher is not None
        newest = h.dispatcher.store.latest_for(SHA)
        assert newest.id != first.build_id and newest.status is BuildStatus.QUEUED
        assert newest.branch == "feature/x"
        assert "Rebuild queued." in await text(session, location)
        status, location = await post(session, f"/commit/{SHA}/rebuild", {"csrf": token})
        assert location == f"/commit/{SHA}?said=busy", "one rebuild at a time"


@async_test()
async def test_a_public_viewer_who_did_not_log_in_cannot_cancel_or_rebuild(tmp_path):
    async with web(tmp_path, token=TOKEN, public=True) as (h, session):
        await h.submit(SHA)
        page = await text(session, f"/commit/{SHA}")
        assert 'id="cancel"' not in page and "to cancel or rebuild" in page
        status, said = await post(session, f"/commit/{SHA}/cancel", {"csrf": "x"})
        assert status == 403 and "only a logged-in browser may cancel or rebuild" in said
        await post(session, "/login", {"token": TOKEN.decode(), "next": "/"})
        token = await form_token(session, SHA, "cancel")
        assert await post(session, f"/commit/{SHA}/cancel", {"csrf": token}) == (
            303, f"/commit/{SHA}?said=cancelled",
        )  # fmt: skip


def test_a_csrf_token_is_bound_to_its_session_cookie():
    clock = FakeClock(1_000_000.0)
    access = WebAccess(TOKEN, public=False, wall_clock=clock)

    def token_of(cookie: str | None) -> str:
        headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
        return access.csrf_token(make_mocked_request("GET", "/", headers=headers))

    first = access.cookie()
    clock.advance(1)
    second = access.cookie()
    assert token_of(first) == token_of(first), "stable for one session"
    assert len({token_of(first), token_of(second), token_of(None)}) == 3
    assert token_of(first) != WebAccess(b"another" * 5, False, clock).csrf_token(
        make_mocked_request("GET", "/", headers={"Cookie": f"{COOKIE}={first}"})
    ), "another dispatcher's token signs other forms"
