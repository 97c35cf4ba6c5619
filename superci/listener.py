"""The listener: accepts connections and lets in those that complete the opening.

It keeps every limit that protects the dispatcher from strangers: how many connections
are open, how many are still in their handshake (the silent ones are dropped first to
make room, see :mod:`superci.admission`), how long a handshake may take, TLS, the token
(see :mod:`superci.handshake`), and what to do when the process runs out of file
descriptors. A connection that completes its opening is handed to ``route`` with its
hello; whatever ends it is reported to the peer here, in one place.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from superci import __version__, protocol
from superci.admission import Admission, bytes_received
from superci.auth import NO_CREDENTIALS, Credentials
from superci.channel import Address, Channel
from superci.errors import (
    ConfigError,
    ConnectionClosed,
    ProtocolError,
    RemoteError,
    StorageError,
)
from superci.handshake import ServerHandshake
from superci.ratelimit import RateLimitedLog
from superci.settings import DispatcherSettings

log = logging.getLogger("superci.dispatcher.listener")  # a part of the dispatcher, logged as one

#: What serves a connection once its peer said hello and proved the token.
Route = Callable[[Channel, protocol.Hello], Awaitable[None]]


class Listener:
    """Accepts connections within the limits and routes each admitted one."""

    def __init__(
        self,
        route: Route,
        credentials: Credentials = NO_CREDENTIALS,
        *,
        settings: DispatcherSettings,
    ) -> None:
        self._route = route
        self._credentials = credentials
        self.settings = settings
        self.connections: set[Channel] = set()  # every open connection
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._closing = False
        # Connections still in their opening handshake (TLS, hello, token), by handler.
        self._admission: Admission[asyncio.Task[None]] = Admission(settings.max_unauthenticated)
        self._dropped: set[asyncio.Task[None]] = set()  # made room for newer ones
        self._sockets: dict[asyncio.Task[None], Any] = {}  # each handler's socket
        # What strangers cause (failed handshakes, floods) is logged at a bounded rate.
        self._stranger_log = RateLimitedLog(log)
        self._resource_log = RateLimitedLog(log, burst=1, period=1.0)
        self._loop_handler: Any = None

    @property
    def pending(self) -> int:
        """How many connections are in their opening handshake."""
        return len(self._admission)

    async def start(self, host: str, port: int) -> Address:
        """Listen; returns the bound address (port 0 → the real one)."""
        loop = asyncio.get_running_loop()
        self._loop_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._on_loop_error)
        try:
            # Plain TCP: TLS is set up in _serve, once admitted, so a TLS handshake counts
            # against the same limits as any other (see superci.admission).
            self._server = await asyncio.start_server(
                self._serve, host, port, backlog=self.settings.listen_backlog
            )
        except OSError as e:
            loop.set_exception_handler(self._loop_handler)
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        bound = self._server.sockets[0].getsockname()
        return Address(bound[0], bound[1])

    async def serve_forever(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening and end every connection (each ends on its closed channel)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for channel in list(self.connections):
            channel.close_nowait()
        for task in list(self._handlers):
            if task in self._admission:
                self._admission.leave(task)
                self._drop(task)
        handlers = [t for t in self._handlers if not t.done()]
        if handlers:  # let them end on their closed connection rather than be cancelled
            await asyncio.wait(handlers, timeout=self.settings.shutdown_grace)
        if self._server is not None:
            await self._server.wait_closed()
        asyncio.get_running_loop().set_exception_handler(self._loop_handler)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing or len(self._handlers) >= self.settings.max_connections:
            self._stranger_log.log(
                logging.WARNING, "refused a connection: %d connections open", len(self._handlers)
            )
            if self._credentials.ssl is None:  # with TLS, nothing can be said before it
                busy = protocol.Error(code="busy", message="too many connections; retry later")
                writer.write(protocol.encode(busy))
            writer.close()
            return
        self._handlers.add(task)
        self._sockets[task] = writer.get_extra_info("socket")
        # Over TLS no whole message is read before the TLS handshake ends: whether the
        # peer sent any byte at all tells a client mid-handshake from a silent socket.
        spoke = self._has_sent_bytes if self._credentials.ssl is not None else None
        for victim in self._admission.admit(task, spoke):
            self._drop(victim)
        deadline = asyncio.get_running_loop().time() + self.settings.handshake_timeout
        try:
            channel = await self._secure(reader, writer, deadline)  # no await before this
            if channel is not None:
                self.connections.add(channel)
                try:
                    await self._serve_connection(channel, deadline)
                finally:
                    self.connections.discard(channel)
        finally:
            self._admission.leave(task)
            self._dropped.discard(task)
            self._handlers.discard(task)
            self._sockets.pop(task, None)

    def _has_sent_bytes(self, task: asyncio.Task[None]) -> bool:
        """Whether the peer of a pending connection sent anything yet, by the kernel's
        count: a TLS client in its handshake has, a silent socket of a flood has not."""
        sock = self._sockets.get(task)
        return sock is not None and bytes_received(sock) > 0

    def _drop(self, task: asyncio.Task[None]) -> None:
        """End a connection still in its handshake, to make room for a newer one."""
        self._stranger_log.log(
            logging.WARNING,
            "dropped a connection still in its handshake to make room (%d of them pending; "
            "silent ones go first)",
            len(self._admission) + 1,
        )
        self._dropped.add(task)
        task.cancel()

    def _was_dropped(self, task: asyncio.Task[None] | None) -> bool:
        """Whether a CancelledError is our :meth:`_drop` (then it is taken back)."""
        if task is None or task not in self._dropped:
            return False
        self._dropped.discard(task)
        task.uncancel()
        return True

    async def _secure(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: float
    ) -> Channel | None:
        """The channel, over TLS when it is served; None if the TLS handshake failed.

        Called before anything else awaits, so the first bytes of the peer reach TLS."""
        context = self._credentials.ssl
        if context is None:
            return Channel(reader, writer, self.settings.send_timeout)
        peer = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout_at(deadline):
                await writer.start_tls(context)
        except asyncio.CancelledError:
            if not self._was_dropped(asyncio.current_task()):
                raise
            reason = "dropped to make room for newer connections"
        except TimeoutError:
            reason = "no TLS handshake in time"
        except OSError as e:  # ssl.SSLError, a reset
            reason = f"TLS handshake failed: {e}"
        else:
            if writer.transport is not None:  # None: closed under the handshake
                return Channel(reader, writer, self.settings.send_timeout)
            return None
        self._stranger_log.log(logging.INFO, "closing %s: %s", peer, reason)
        writer.transport.close()
        return None

    async def _serve_connection(self, channel: Channel, deadline: float) -> None:
        task = asyncio.current_task()
        try:
            async with asyncio.timeout_at(deadline):
                hello = await self._handshake(channel)
            self._admission.leave(task)  # type: ignore[arg-type]
            await self._route(channel, hello)
        except asyncio.CancelledError:
            if not self._was_dropped(task):
                raise
            busy = "too many connections in their handshake; retry later"
            await channel.refuse(protocol.Error(code="busy", message=busy))
        except ProtocolError as e:
            self._stranger_log.log(logging.WARNING, "refused %s: %s", channel.peer, e)
            await channel.refuse(e)
        except TimeoutError:
            self._stranger_log.log(
                logging.INFO, "closing %s: it stayed silent too long", channel.peer
            )
            await channel.refuse(ProtocolError("connection idle for too long", code="timeout"))
        except (ConnectionClosed, RemoteError) as e:
            log.debug("%s: %s", channel.peer, e)
        except StorageError as e:
            log.error("serving %s: %s", channel.peer, e)
            await channel.refuse(protocol.Error(code="storage", message=f"dispatcher: {e}"))
        except Exception:
            log.exception("internal error while serving %s", channel.peer)
            await channel.refuse(
                protocol.Error(code="internal", message="internal error; see the dispatcher log")
            )
        finally:
            await channel.close()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Out of file descriptors, asyncio stops accepting for a second and reports it
        here each time: say so at most once a second, and drop silent handshakes so
        their descriptors serve the next accepts."""
        error = context.get("exception")
        if not (isinstance(error, OSError) and error.errno in _OUT_OF_RESOURCES):
            if self._loop_handler is not None:
                self._loop_handler(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        victims = self._admission.out_of_files()
        for victim in victims:
            self._drop(victim)
        self._resource_log.log(
            logging.WARNING,
            "cannot accept connections (%s): %d open, %d in their handshake now (%d dropped); "
            "trying again in a second. If this is no attack, raise the limit (ulimit -n)",
            error.strerror or error, len(self._handlers), len(self._admission), len(victims),
        )  # fmt: skip

    async def _handshake(self, channel: Channel) -> protocol.Hello:
        """Hello, welcome and, with a token, the challenge-response (see superci.handshake)."""
        handshake = ServerHandshake(self._credentials.token, __version__)
        while not handshake.done:
            try:
                message = await channel.receive(self.settings.handshake_timeout)
            except ConnectionClosed:
                if handshake.hello is not None and self._credentials.token is not None:
                    self._stranger_log.log(
                        logging.WARNING,
                        "%s left without authenticating (missing or wrong token?)",
                        channel.peer,
                    )
                raise
            self._admission.heard(asyncio.current_task())  # type: ignore[arg-type]
            for answer in handshake.receive(message):
                channel.post(answer)
        assert handshake.hello is not None
        return handshake.hello


#: accept() errors after which asyncio pauses accepting and reports to the loop's handler.
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
