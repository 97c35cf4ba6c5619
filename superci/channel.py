"""A framed message channel over an asyncio stream: the only place protocol meets socket.

Both the dispatcher and its clients use it, so framing, size limits, send back-pressure
and the handling of a peer's error frame are written once. Every way a connection can
break under it (a reset, and with TLS also ``ssl.SSLError``: data after close_notify, an
EOF inside a record) becomes :class:`ConnectionClosed`, so callers handle one thing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from superci import defaults, protocol
from superci.auth import NO_CREDENTIALS, Credentials
from superci.errors import ConfigError, ConnectionClosed, ProtocolError, RemoteError

log = logging.getLogger(__name__)

#: Bytes read from the socket at a time.
READ_SIZE = 256 * 1024


@dataclass(frozen=True)
class Address:
    """Where a dispatcher listens, and what it takes to be let in."""

    host: str
    port: int
    credentials: Credentials = field(default=NO_CREDENTIALS, compare=False, repr=False)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, credentials: Credentials = NO_CREDENTIALS) -> Address:
    """``host:port`` or ``[v6-host]:port`` → :class:`Address`, with an error a user can act on."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"dispatcher address must look like host:port (e.g. 127.0.0.1:8888), got {text!r}"
        )
    return Address(host, int(port), credentials)


class Channel:
    """Sends and receives whole :mod:`superci.protocol` messages on one connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        send_timeout: float | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = protocol.Decoder()
        self._send_timeout = defaults.SEND_TIMEOUT if send_timeout is None else send_timeout
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def send(self, message: protocol.Message) -> None:
        """Write one frame; a peer that stops reading for ``send_timeout`` is cut off."""
        if self._writer.is_closing():
            raise ConnectionClosed(f"connection to {self.peer} is closed")
        self._writer.write(protocol.encode(message))
        try:
            async with asyncio.timeout(self._send_timeout):
                await self._writer.drain()
        except OSError as e:  # ConnectionError, ssl.SSLError, and the timeout above
            self._writer.close()
            raise ConnectionClosed(f"cannot send to {self.peer}: {e or 'peer not reading'}") from e

    def post(self, message: protocol.Message) -> None:
        """Queue one frame without waiting: for a server that must never block on one peer.

        A peer whose unread backlog passes ``defaults.MAX_SEND_BUFFER`` is disconnected.
        """
        if self._writer.is_closing():
            return
        self._writer.write(protocol.encode(message))
        if self._writer.transport.get_write_buffer_size() > defaults.MAX_SEND_BUFFER:
            log.warning("%s is not reading its messages; disconnecting it", self.peer)
            self._writer.close()

    def close_nowait(self) -> None:
        """Start closing; the reading side then sees the end of the stream."""
        self._writer.close()

    async def receive(self, timeout: float | None = None) -> protocol.Message:
        """The next message; an :class:`~protocol.Error` from the peer raises RemoteError."""
        async with asyncio.timeout(timeout):
            while True:
                message = self._decoder.next_message()
                if message is not protocol.NEED_DATA:
                    break
                try:
                    data = await self._reader.read(READ_SIZE)
                except OSError as e:  # ConnectionError, ssl.SSLError
                    raise ConnectionClosed(f"connection to {self.peer} lost: {e}") from e
                if not data:
                    raise ConnectionClosed(f"{self.peer} closed the connection")
                self._decoder.feed(data)
        assert isinstance(message, protocol.Message)
        if isinstance(message, protocol.Error):
            raise RemoteError(message.message, message.code)
        return message

    async def refuse(self, error: ProtocolError | protocol.Error) -> None:
        """Tell the peer why, then close: the answer to anything malformed or unwelcome."""
        frame = protocol.error_for(error) if isinstance(error, ProtocolError) else error
        try:
            await self.send(frame)
        except ConnectionClosed:
            pass
        await self.close()

    async def close(self) -> None:
        """Close the connection without waiting on a peer that may be gone."""
        self._writer.close()
        try:
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()
        except OSError:  # the reason it broke, if any; the connection is closed either way
            pass
