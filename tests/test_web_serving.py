"""How the web page is served: over HTTPS with the dispatcher's certificate, and a login
that refuses an address guessing the token."""

from __future__ import annotations

import ssl
import threading
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import FAST_WATCHDOG, FakeClock, Harness, async_test
from support import WAIT

from superci.auth import server_tls
from superci.ratelimit import FailureLimit
from superci.web import WebServer
from superci.weblogin import COOKIE, WebAccess

TOKEN = b"a web token of more than 32 characters"
SHA = "7c" * 20


@async_test()
async def test_a_login_guessed_at_too_often_is_refused_with_429_until_the_window_moves_on(
    tmp_path: Path,
):
    clock = FakeClock()
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        d = h.dispatcher
        assert d is not None
        access = WebAccess(TOKEN, public=False, limit=FailureLimit(3, 60.0, clock=clock))
        d.web = WebServer(d.store, d.results, d.scheduler, d.bus, requests=d.requests,
                          settings=d.settings,
                          clock=h.clock, access=access)  # fmt: skip
        address = await d.web.start("127.0.0.1", 0)
        timeout = aiohttp.ClientTimeout(total=WAIT)
        jar = aiohttp.CookieJar(unsafe=True)
        base = f"http://127.0.0.1:{address.port}"
        async with aiohttp.ClientSession(base, timeout=timeout, cookie_jar=jar) as session:

            async def login(token: str) -> aiohttp.ClientResponse:
                data = {"token": token, "next": "/"}
                async with session.post("/login", data=data, allow_redirects=False) as answer:
                    await answer.read()
                    return answer

            assert [(await login(f"guess {n}")).status for n in range(3)] == [403] * 3
            refused = await login(TOKEN.decode())  # even the right one, while it waits
            assert refused.status == 429 and refused.headers["Retry-After"] == "60"
            async with session.post("/login", data={"token": "x"}) as answer:
                assert "Too many wrong tokens from 127.0.0.1; try again in 60 s" in (
                    await answer.text()
                )
            assert COOKIE not in {c.key for c in jar}
            clock.advance(60.0)
            assert (await login(TOKEN.decode())).status == 303
            assert COOKIE in {c.key for c in jar}


@async_test()
async def test_the_web_page_is_served_over_https_with_the_dispatcher_s_certificate(
    tmp_path: Path, tls_files: dict[str, Path]
):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        d = h.dispatcher
        assert d is not None
        d.web = WebServer(d.store, d.results, d.scheduler, d.bus, requests=d.requests,
                          settings=d.settings,
                          clock=h.clock)  # fmt: skip
        tls = server_tls(tls_files["cert"], tls_files["key"])
        address = await d.web.start("127.0.0.1", 0, ssl=tls)
        trusted = ssl.create_default_context(cafile=str(tls_files["ca"]))
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            url = f"https://127.0.0.1:{address.port}/"
            async with session.get(url, ssl=trusted) as response:
                assert response.status == 200 and "<h1>superci</h1>" in await response.text()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(url)  # a certificate the system does not trust
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://127.0.0.1:{address.port}/")  # no plain HTTP


@pytest.mark.e2e
def test_dispatcher_tls_cert_and_key_serve_the_page_over_https_too(superci, tls_files):
    process = superci.dispatcher(
        0, "--web", "127.0.0.1:0",
        "--tls-cert", str(tls_files["cert"]), "--tls-key", str(tls_files["key"]),
    )  # fmt: skip
    url = process.wait_for_log(r"web page at (https://\S+/)").group(1)
    trusted = ssl.create_default_context(cafile=str(tls_files["ca"]))
    with urllib.request.urlopen(f"{url}runners", timeout=WAIT, context=trusted) as response:
        assert response.status == 200 and "<h1>runners</h1>" in response.read().decode()
    assert process.stop() == 0


@async_test()
async def test_the_commit_page_reads_its_log_off_the_event_loop(tmp_path: Path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        d = h.dispatcher
        assert d is not None and h.address is not None
        await h.submit(SHA)
        d.web = WebServer(d.store, d.results, d.scheduler, d.bus, requests=d.requests,
                          settings=d.settings,
                          clock=h.clock)  # fmt: skip
        address = await d.web.start("127.0.0.1", 0)
        readers: list[threading.Thread] = []
        log_view_size = d.results.log_view_size  # the first file the log window reads

        def recorded(*args: Any, **kwargs: Any) -> Any:
            readers.append(threading.current_thread())
            return log_view_size(*args, **kwargs)

        d.results.log_view_size = recorded  # type: ignore[method-assign]
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"http://127.0.0.1:{address.port}/commit/{SHA}") as page:
                assert page.status == 200
        assert readers and threading.main_thread() not in readers
