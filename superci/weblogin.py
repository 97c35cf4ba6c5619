"""Who may see the web page: with a token, only a browser that showed it once.

The login form takes the dispatcher's token and answers with a session cookie: its
expiry and an HMAC of it under a key derived from the token, so the dispatcher keeps no
session table, a restarted dispatcher still knows its cookies, and a changed token ends
them all. The cookie is HttpOnly (no script reads it) and SameSite=Strict (no other site
sends it). Badges stay public and show nothing but a status; ``--web-public`` opens
read-only viewing to everyone.

Cancel and rebuild are POSTs that carry a CSRF token: an HMAC of the session cookie (of
nothing, on an open page) under a key no other site can know, which a page of another
site cannot read, so it cannot make a browser post one. Only a logged-in browser (or
anyone, on a page with no token) may change a build.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from html import escape
from urllib.parse import quote, urlsplit

from aiohttp import web

from superci import webviews
from superci.ratelimit import FailureLimit, RateLimitedLog

log = logging.getLogger(__name__)

COOKIE = "superci_session"
#: How long a login lasts (seconds).
SESSION_SECONDS = 7 * 24 * 3600
#: Paths anyone may open: the login itself, the badges and the page's script.
PUBLIC_PREFIXES = ("/login", "/badge/", "/static/")
#: The form field that carries the CSRF token.
CSRF_FIELD = "csrf"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebAccess:
    """The login rule of the web page, and its form."""

    def __init__(
        self, token: bytes | None, public: bool, wall_clock: Callable[[], float] = time.time,
        limit: FailureLimit | None = None,
    ) -> None:  # fmt: skip
        """``limit``: how many wrong tokens one address may give (see :mod:`ratelimit`)."""
        self._limit = limit or FailureLimit()
        self._wrong_log = RateLimitedLog(log)  # a guesser must not flood the log either
        self._token = token
        self._key = None if token is None else hmac.digest(token, b"superci web session", "sha256")
        self._open = token is None or public
        self._clock = wall_clock
        # With a token, forms stay valid across restarts; without, per process.
        self._csrf_key = (
            secrets.token_bytes(32)
            if token is None
            else hmac.digest(token, b"superci web csrf", "sha256")
        )

    def cookie(self) -> str:
        """A new session cookie's value: expiry and its signature."""
        assert self._key is not None, "only a dispatcher with a token signs sessions"
        expiry = str(int(self._clock() + SESSION_SECONDS))
        return f"{expiry}.{self._sign(expiry)}"

    def valid(self, value: str | None) -> bool:
        """True for a cookie this dispatcher signed that has not expired."""
        if self._key is None or not value or "." not in value:
            return False
        expiry, _, signature = value.partition(".")
        if not expiry.isdigit() or not hmac.compare_digest(signature, self._sign(expiry)):
            return False
        return int(expiry) > self._clock()

    def _sign(self, expiry: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, expiry.encode(), hashlib.sha256).hexdigest()

    def may_act(self, request: web.Request) -> bool:
        """True when this browser may cancel and rebuild: a logged-in one, or anyone on a
        page without a token (never a ``--web-public`` viewer who did not log in)."""
        return self._key is None or self.valid(request.cookies.get(COOKIE))

    def csrf_token(self, request: web.Request) -> str:
        """The token this browser's forms carry, bound to its session cookie."""
        session = request.cookies.get(COOKIE, "") if self._key is not None else ""
        return hmac.new(self._csrf_key, session.encode(), hashlib.sha256).hexdigest()

    async def check_action(self, request: web.Request) -> None:
        """Refuse (403, saying why) a POST that may not change a build."""
        if not self.may_act(request):
            raise web.HTTPForbidden(
                text="viewing is open to everyone here, but only a logged-in browser may "
                "cancel or rebuild: log in at /login with the dispatcher's token"
            )
        given = (await request.post()).get(CSRF_FIELD)
        if not isinstance(given, str) or not hmac.compare_digest(given, self.csrf_token(request)):
            log.warning("a POST to %s without this page's CSRF token", request.path)
            raise web.HTTPForbidden(
                text="this form is out of date or came from another site (no valid CSRF "
                "token); reload the page and try again"
            )

    # --- in the server ----------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Let a request through, or send it to the login form (401 for scripts)."""
        if self._open or request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        if self.valid(request.cookies.get(COOKIE)):
            return await handler(request)
        if request.path.startswith("/api/") or request.path == "/events":
            raise web.HTTPUnauthorized(text="log in at /login first (the dispatcher's token)")
        raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/login", self.form), web.post("/login", self.login)]

    async def form(self, request: web.Request) -> web.Response:
        return _form(_next(request.query.get("next")), "")

    async def login(self, request: web.Request) -> web.Response:
        """The token, once: a cookie and back to where the browser was going."""
        posted = await request.post()
        given, target = posted.get("token"), _next(str(posted.get("next") or "/"))
        if self._key is None:
            raise web.HTTPSeeOther(target)
        assert self._token is not None
        address = request.remote or "an unknown address"
        refused = self._too_many(address, target)
        if refused is not None:  # not even compared: a guesser learns nothing meanwhile
            return refused
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self._token):
            self._limit.failed(address)
            self._wrong_log.log(logging.WARNING, "a wrong token at the web page's login "
                                "from %s", address)  # fmt: skip
            return _form(target, "That is not the dispatcher's token.", status=403)
        self._limit.succeeded(address)
        response = web.HTTPSeeOther(target)
        response.set_cookie(
            COOKIE, self.cookie(), max_age=SESSION_SECONDS, httponly=True,
            samesite="Strict", path="/", secure=request.secure,
        )  # fmt: skip
        raise response

    def _too_many(self, address: str, target: str) -> web.Response | None:
        """The 429 answer for an address that gave too many wrong tokens lately."""
        wait = self._limit.wait(address)
        if wait <= 0:
            return None
        self._wrong_log.log(logging.WARNING, "web login from %s refused: too many wrong "
                            "tokens", address)  # fmt: skip
        seconds = math.ceil(wait)
        problem = f"Too many wrong tokens from {address}; try again in {seconds} s."
        return _form(target, problem, status=429, headers={"Retry-After": str(seconds)})


def _next(target: str | None) -> str:
    """Where to go after login: a path on this site only, with no scheme and no host, and
    no control character or space (URL parsers drop tabs and newlines, so ``/\t/host``
    would become ``//host``) nor backslash (which browsers read as ``/``)."""
    if not target or any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in target):
        return "/"
    url = urlsplit(target)
    if url.scheme or url.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _form(
    target: str, problem: str, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    note = f'<p class="s-failed">{escape(problem)}</p>' if problem else ""
    body = (
        f'{note}<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{escape(target)}">'
        '<label>Token <input type="password" name="token" autofocus></label> '
        '<button type="submit">Log in</button></form>'
    )
    return web.Response(
        text=webviews.page("log in", body), status=status, content_type="text/html",
        headers=headers,
    )  # fmt: skip
