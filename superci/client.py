"""Short connections to the dispatcher, for the runner and for client commands.

Connection problems become :class:`DispatcherUnavailable` with the address in the
message, so every command reports an unreachable dispatcher the same clear way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from superci import defaults, protocol
from superci.channel import Address, Channel
from superci.errors import (
    ConnectionClosed,
    DispatcherUnavailable,
    ProtocolError,
    RemoteError,
)
from superci.handshake import ClientHandshake

if TYPE_CHECKING:  # GitPython is loaded only by the callers that have git
    from superci.gitname import Description

#: How long ``logs --follow`` waits for any frame before it takes the dispatcher for
#: gone: a few of its keep-alive intervals.
FOLLOW_SILENCE = 4 * defaults.LOG_KEEPALIVE_INTERVAL


async def connect(
    address: Address, role: protocol.Role, timeout: float = defaults.CLIENT_TIMEOUT
) -> Channel:
    """Open a connection (TLS if configured) and complete the handshake, proving the
    token when the dispatcher asks for it. A dispatcher too busy to let us in (a flood of
    connections) is asked again with backoff until ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = defaults.BUSY_RETRY_INITIAL
    while True:
        try:
            return await _connect_once(address, role, deadline, timeout)
        except _Busy as busy:
            wait = delay * random.uniform(1 - defaults.BACKOFF_JITTER, 1 + defaults.BACKOFF_JITTER)
            if loop.time() + wait >= deadline:
                raise DispatcherUnavailable(
                    f"the dispatcher at {address} was too busy to let us in for {timeout:g}s: "
                    f"{busy}"
                ) from busy
            await asyncio.sleep(wait)
            delay = min(2 * delay, defaults.BUSY_RETRY_MAX)


class _Busy(Exception):
    """The dispatcher turned us away for now: it said "busy", or dropped the connection
    in the middle of the handshake, as it does to make room under a flood."""


def _turned_away(error: BaseException, tls: bool) -> bool:
    """Whether the dispatcher sent us away for now. Over TLS, a connection closed before
    the welcome is that too (the dispatcher cannot say "busy" before TLS is set up); in
    plain text it more likely means the dispatcher expects TLS, which retrying won't fix."""
    if isinstance(error, RemoteError):
        return error.code == "busy"
    cause = error.__cause__ if isinstance(error, ConnectionClosed) else error
    if isinstance(cause, ConnectionResetError) or type(cause).__name__ == "SSLEOFError":
        return True
    return tls and isinstance(error, ConnectionClosed)


async def _connect_once(
    address: Address, role: protocol.Role, deadline: float, timeout: float
) -> Channel:
    credentials = address.credentials
    try:
        async with asyncio.timeout_at(deadline):
            reader, writer = await asyncio.open_connection(
                address.host, address.port, ssl=credentials.ssl,
                server_hostname=address.host if credentials.ssl else None,
            )  # fmt: skip
            channel = Channel(reader, writer)
            try:
                await _handshake(channel, ClientHandshake(credentials.token, role, str(address)))
            except BaseException:
                await channel.close()
                raise
    except TimeoutError as e:  # before OSError, of which it is one
        raise DispatcherUnavailable(
            f"no answer from the dispatcher at {address} within {timeout:g}s"
        ) from e
    except (OSError, ConnectionClosed, RemoteError) as e:
        if _turned_away(e, credentials.ssl is not None):
            raise _Busy(str(e)) from e
        if isinstance(e, RemoteError):
            raise
        if isinstance(e, ConnectionClosed):
            hint = "" if credentials.ssl else " (if it serves TLS, pass --tls or --tls-ca)"
            raise DispatcherUnavailable(
                f"the dispatcher at {address} closed the connection{hint}"
            ) from e
        if credentials.ssl is not None and type(e).__module__ == "ssl":
            raise DispatcherUnavailable(f"TLS with the dispatcher at {address} failed: {e}") from e
        reason = e.strerror or str(e)
        raise DispatcherUnavailable(
            f"cannot reach the dispatcher at {address}: {reason} (is `superci dispatcher` running?)"
        ) from e
    return channel


async def _handshake(channel: Channel, handshake: ClientHandshake) -> None:
    await channel.send(handshake.start())
    while not handshake.done:
        try:
            message = await channel.receive()
        except RemoteError as e:
            if handshake.proving and e.code == "auth":
                raise handshake.refused(e) from e
            raise
        for answer in handshake.receive(message):
            await channel.send(answer)


@contextlib.asynccontextmanager
async def connection(
    address: Address,
    role: protocol.Role = protocol.Role.CLIENT,
    timeout: float = defaults.CLIENT_TIMEOUT,
) -> AsyncIterator[Channel]:
    channel = await connect(address, role, timeout)
    try:
        yield channel
    finally:
        await channel.close()


async def request(
    address: Address, message: protocol.Message, timeout: float = defaults.CLIENT_TIMEOUT
) -> protocol.Message:
    """Send one request and return the reply; an error frame raises RemoteError."""
    async with connection(address, timeout=timeout) as channel:
        try:
            await channel.send(message)
            return await channel.receive(timeout)
        except TimeoutError as e:
            raise DispatcherUnavailable(
                f"no reply from the dispatcher at {address} within {timeout:g}s"
            ) from e
        except ConnectionClosed as e:
            raise DispatcherUnavailable(f"the dispatcher at {address} closed the connection") from e


async def submit_async(
    address: Address,
    sha: str,
    branch: str,
    rebuild: bool = False,
    timeout: float = defaults.CLIENT_TIMEOUT,
    described: Description | None = None,
    config: str | None = None,
) -> protocol.Submitted:
    protocol.check_sha(sha)
    protocol.check_branch(branch)
    message = protocol.Submit(
        sha=sha, branch=branch, rebuild=rebuild,
        subject=described.subject if described else None,
        author=described.author if described else None,
        config=config,
    )  # fmt: skip
    reply = await request(address, message, timeout)
    if not isinstance(reply, protocol.Submitted):
        raise ProtocolError(f"expected submitted from {address}, got {reply.type}")
    return reply


def submit(
    address: Address,
    sha: str,
    branch: str,
    rebuild: bool = False,
    timeout: float = defaults.CLIENT_TIMEOUT,
    described: Description | None = None,
    config: str | None = None,
) -> protocol.Submitted:
    """Ask the dispatcher to build a commit; returns once it is durably queued (or known).
    ``described``: its subject and author, when the caller has git; ``config``: the
    commit's .superci.toml (see superci.commitconfig), for its needs."""
    return asyncio.run(submit_async(address, sha, branch, rebuild, timeout, described, config))


async def _expect_reply(address: Address, message: protocol.Message) -> protocol.Reply:
    reply = await request(address, message)
    if not isinstance(reply, protocol.Reply):
        raise ProtocolError(f"expected a reply from {address}, got {reply.type}")
    return reply


def cancel(address: Address, commit: str) -> protocol.Reply:
    """Cancel the newest build of a commit (id, prefix or branch); the reply says what
    happened."""
    message = protocol.CancelRequest(commit=protocol.check_commit_name(commit))
    return asyncio.run(_expect_reply(address, message))


def query(
    address: Address,
    what: protocol.QueryKind,
    commit: str | None = None,
    limit: int = 20,
    build_id: int | None = None,
    job: str | None = None,
) -> protocol.Reply:
    """``status`` or ``show`` (of one commit, by id, prefix or branch; its newest build or
    ``build_id``; one of its jobs with ``job``); the reply's document is JSON."""
    if commit is not None:
        protocol.check_commit_name(commit)
    message = protocol.Query(what=what, commit=commit, limit=limit, build_id=build_id, job=job)
    return asyncio.run(_expect_reply(address, message))


async def read_log(
    address: Address,
    commit: str,
    follow: bool,
    write: Callable[[bytes], None],
    build_id: int | None = None,
    job: str | None = None,
) -> protocol.Reply:
    """Pass a commit's log to ``write`` (live until the build ends, with ``follow``); of
    its newest build, or of ``build_id``; of its job ``job`` (a commit of several)."""
    request_ = protocol.LogRequest(
        commit=protocol.check_commit_name(commit), follow=follow, build_id=build_id, job=job
    )
    # While following, the dispatcher sends a keep-alive at least this often.
    silence = FOLLOW_SILENCE if follow else defaults.CLIENT_TIMEOUT
    async with connection(address) as channel:
        await channel.send(request_)
        while True:
            message = await _next_streamed(channel, address, silence)
            if isinstance(message, protocol.LogData):
                write(protocol.unpack_data(message.data))
            elif isinstance(message, protocol.Reply):
                return message
            else:
                raise ProtocolError(f"unexpected {message.type} while reading a log")


async def watch(
    address: Address, show: Callable[[dict[str, Any]], None], silence: float = FOLLOW_SILENCE
) -> None:
    """Pass every event the dispatcher publishes to ``show``, as its JSON object, until
    the connection ends; a ``resync`` event (this watcher fell behind) is the last. A
    quiet dispatcher sends keep-alives; silence beyond a few of them is a cut link."""
    async with connection(address) as channel:
        await channel.send(protocol.Watch())
        while True:
            message = await _next_streamed(channel, address, silence)
            if not isinstance(message, protocol.Event):
                raise ProtocolError(f"unexpected {message.type} while watching events")
            try:
                document = json.loads(message.document)
            except ValueError as e:
                raise ProtocolError(f"an event from {address} is not JSON: {e}") from None
            if not isinstance(document, dict):
                raise ProtocolError(f"an event from {address} is not a JSON object")
            if document.get("event") == "keepalive":
                continue
            show(document)
            if document.get("event") == "resync":
                return


async def _next_streamed(channel: Channel, address: Address, silence: float) -> protocol.Message:
    """The next message of a stream the dispatcher keeps alive (a log, events); silence
    past ``silence`` seconds is a cut link."""
    try:
        return await channel.receive(silence)
    except ConnectionClosed as e:
        raise DispatcherUnavailable(f"the dispatcher at {address} went away") from e
    except TimeoutError as e:
        raise DispatcherUnavailable(
            f"no word from the dispatcher at {address} for {silence:g}s "
            "(the link may be cut); run the command again"
        ) from e
