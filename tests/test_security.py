"""Token challenge-response, TLS and the safe default, against a real dispatcher on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import Repo, Superci, write_tls_files
from helpers import async_test, frames_until_closed
from support import WAIT, eventually, wait_until

from superci import auth, client, protocol
from superci.auth import Credentials
from superci.channel import Address, Channel
from superci.dispatcher import Dispatcher
from superci.errors import (
    AuthenticationError,
    ConfigError,
    ConnectionClosed,
    DispatcherUnavailable,
)
from superci.results import ResultsFolder
from superci.store import Store

TOKEN = b"correct horse battery staple 42, 128 bits"
SHA = "c" * 40


@contextlib.asynccontextmanager
async def dispatcher(tmp_path: Path, credentials: Credentials) -> AsyncIterator[Address]:
    store = Store(tmp_path / "superci.db")
    server = Dispatcher(store, ResultsFolder(tmp_path / "results"), credentials=credentials)
    try:
        address = await server.start("127.0.0.1", 0)
        yield address
    finally:
        await server.close()
        store.close()


def queued_builds(tmp_path: Path) -> int:
    store = Store(tmp_path / "superci.db")
    try:
        return len(store.unfinished())
    finally:
        store.close()


@async_test()
async def test_client_with_the_right_token_is_served(tmp_path):
    async with dispatcher(tmp_path, Credentials(token=TOKEN)) as address:
        reply = await client.submit_async(
            replace(address, credentials=Credentials(TOKEN)), SHA, "main"
        )
    assert reply.queued


@async_test()
async def test_wrong_token_is_refused_on_both_sides_and_nothing_takes_effect(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="superci.dispatcher")
    async with dispatcher(tmp_path, Credentials(token=TOKEN)) as address:
        wrong = replace(address, credentials=Credentials(b"x" * 32))
        with pytest.raises(AuthenticationError, match="does not know our token"):
            await client.submit_async(wrong, SHA, "main")
        await eventually(lambda: "authentication failed" in caplog.text)
    assert queued_builds(tmp_path) == 0


@async_test()
async def test_missing_token_is_refused_with_a_message_naming_the_setting(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="superci.dispatcher")
    async with dispatcher(tmp_path, Credentials(token=TOKEN)) as address:
        with pytest.raises(AuthenticationError, match="requires a token: set SUPERCI_TOKEN"):
            await client.submit_async(address, SHA, "main")
        await eventually(lambda: "without authenticating" in caplog.text)
    assert queued_builds(tmp_path) == 0


@async_test()
async def test_token_never_crosses_the_wire(tmp_path, monkeypatch):
    sent: list[bytes] = []
    original = protocol.encode

    def recording_encode(message):
        data = original(message)
        sent.append(data)
        return data

    monkeypatch.setattr("superci.channel.protocol.encode", recording_encode)
    async with dispatcher(tmp_path, Credentials(token=TOKEN)) as address:
        await client.submit_async(replace(address, credentials=Credentials(TOKEN)), SHA, "main")
    assert sent and not any(TOKEN in frame for frame in sent)


@async_test()
async def test_tls_with_a_trusted_certificate_works_and_an_untrusted_one_is_refused(tmp_path):
    tls = write_tls_files(tmp_path)
    cert_file, key_file, ca_file = tls["cert"], tls["key"], tls["ca"]
    server = Credentials(token=TOKEN, ssl=auth.server_tls(cert_file, key_file))
    async with dispatcher(tmp_path, server) as address:
        trusted = replace(address, credentials=Credentials(TOKEN, auth.client_tls(ca_file)))
        assert (await client.submit_async(trusted, SHA, "main")).queued
        untrusted = replace(address, credentials=Credentials(TOKEN, auth.client_tls(None)))
        with pytest.raises(DispatcherUnavailable, match="TLS|certificate"):
            await client.submit_async(untrusted, SHA, "main")
        plain = replace(address, credentials=Credentials(TOKEN))
        with pytest.raises(DispatcherUnavailable):
            await client.submit_async(plain, SHA, "main", timeout=2.0)


def test_short_or_unreadable_tokens_are_configuration_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(auth.TOKEN_ENV, "short")
    with pytest.raises(ConfigError, match="shorter than"):
        auth.load_token()
    with pytest.raises(ConfigError, match="cannot read the token file"):
        auth.load_token(tmp_path / "missing")
    (tmp_path / "token").write_text(TOKEN.decode() + "\n")
    assert auth.load_token(tmp_path / "token") == TOKEN


def test_proofs_depend_on_token_role_and_both_nonces():
    base = auth.proof(TOKEN, "client", "a" * 32, "b" * 32)
    assert auth.verify(TOKEN, "client", "a" * 32, "b" * 32, base)
    assert not auth.verify(TOKEN, "server", "a" * 32, "b" * 32, base)
    assert not auth.verify(TOKEN, "client", "c" * 32, "b" * 32, base)
    assert not auth.verify(TOKEN + b"!", "client", "a" * 32, "b" * 32, base)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"])
def test_dispatcher_refuses_a_non_loopback_address_without_a_token(host, tmp_path, monkeypatch):
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    done = subprocess.run(
        [sys.executable, "-m", "superci", "dispatcher", "--host", host, "--port", "0",
         "--results", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert "without a token" in done.stderr and "--insecure" in done.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
def test_loopback_addresses_are_recognised(host):
    assert auth.is_loopback(host)


@async_test()
async def test_client_with_a_token_refuses_a_dispatcher_that_does_not_ask_for_one(tmp_path):
    async with dispatcher(tmp_path, Credentials()) as address:  # an impostor: no token
        with pytest.raises(AuthenticationError, match="does not ask for a token"):
            await client.submit_async(replace(address, credentials=Credentials(TOKEN)), SHA, "main")
    assert queued_builds(tmp_path) == 0


@async_test()
async def test_a_stranger_gets_no_proof_to_test_token_guesses_against(tmp_path):
    """The dispatcher proves the token only after the client did: a connection that
    cannot prove it learns nothing but the challenge."""
    async with dispatcher(tmp_path, Credentials(token=TOKEN)) as address:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            hello = protocol.Hello(version=protocol.PROTOCOL_VERSION, role="client",
                                   nonce="a" * 32)  # fmt: skip
            writer.write(protocol.encode(hello) + protocol.encode(protocol.Auth(proof="b" * 64)))
            await writer.drain()
            frames = await frames_until_closed(reader)
        finally:
            writer.close()
    assert [type(f) for f in frames] == [protocol.Welcome, protocol.Error]
    assert frames[0].challenge is not None
    assert frames[1].code == "auth"
    assert not any(isinstance(f, protocol.Authenticated) for f in frames)


# --- a TLS connection cut mid-build ---------------------------------------------------


class HoldingProxy:
    """A TCP relay on 127.0.0.1 between a runner and the dispatcher that can hold back
    what the runner sends on the connections open now: one direction of the link stops
    delivering, as in a half-broken network, and is healed later by :meth:`release`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            link = _Link(downstream, socket.create_connection(self._upstream))
            with self._lock:
                self._links.append(link)

    def hold(self) -> list[_Link]:
        """Hold the runner's bytes on every link open now; returns those links."""
        with self._lock:
            held = list(self._links)
        for link in held:
            link.hold()
        return held

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for link in self._links:
                link.close()


class _Link:
    def __init__(self, downstream: socket.socket, upstream: socket.socket) -> None:
        self.downstream, self.upstream = downstream, upstream
        #: The dispatcher's side of this link as the dispatcher sees it: its peer name.
        self.peer = f"127.0.0.1:{upstream.getsockname()[1]}"
        self._held: list[bytes] | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._pump, args=(downstream, upstream, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, downstream, False), daemon=True).start()

    def hold(self) -> None:
        with self._lock:
            self._held = []

    def release(self) -> None:
        """Deliver what was held; if the dispatcher has closed its end meanwhile, the
        bytes are refused by the kernel (EPIPE), which is a cut link too."""
        with self._lock:
            held, self._held = self._held or [], None
            try:
                for data in held:
                    self.upstream.sendall(data)
            except OSError:
                pass

    def _pump(self, source: socket.socket, target: socket.socket, from_runner: bool) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    if from_runner and self._held is not None:
                        self._held.append(data)
                        continue
                    target.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        for sock in (self.downstream, self.upstream):
            sock.close()


@pytest.mark.e2e
def test_a_tls_connection_cut_mid_build_is_a_logged_disconnect_on_both_sides_not_an_error(
    repo: Repo, superci: Superci, tmp_path: Path
):
    """The runner's link to the dispatcher stops delivering mid-build: the dispatcher
    drops the silent runner (TLS close_notify), and when the link heals the runner's
    heartbeats arrive after it, which TLS reports as an SSLError, not a closed stream."""
    tls = write_tls_files(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN.decode())
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    clone = repo.clone(tmp_path / "runner-clone")
    dispatcher = superci.dispatcher(
        0, "--heartbeat-timeout", "1", "--tls-cert", str(tls["cert"]),
        "--tls-key", str(tls["key"]), "--token-file", str(token_file),
    )  # fmt: skip
    direct = superci.address
    host, _, port = direct.rpartition(":")
    proxy = HoldingProxy((host, int(port)))
    try:
        credentials = ("--tls-ca", str(tls["ca"]), "--token-file", str(token_file))
        superci.address = proxy.address
        runner = superci.runner(clone, "runner-tls", *credentials)
        runner.wait_for_log("registered with the dispatcher")
        superci.address = direct
        assert "queued" in superci.notify(sha, *credentials).stdout
        wait_until(lambda: (gate / "started-1").exists(), what="the build to start")

        (link,) = proxy.hold()
        dispatcher.wait_for_log("lost with runner runner-tls")
        runner.wait_for_log("runner declared dead")
        link.release()
        dispatcher.wait_for_log(rf"(serving |DEBUG .*){re.escape(link.peer)}\b")
    finally:
        proxy.close()
    for process in (dispatcher, runner):
        assert "internal error" not in process.log and "Traceback" not in process.log


@async_test()
async def test_tls_data_after_close_notify_is_a_closed_connection_for_every_channel_call(
    tmp_path,
):
    """The side that closed first and then gets the peer's late frames sees ssl.SSLError
    from the stream; the channel turns it into ConnectionClosed on receive, send and close."""
    tls = write_tls_files(tmp_path)
    accepted: asyncio.Queue[Channel] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put(Channel(reader, writer))

    server = await asyncio.start_server(
        serve, "127.0.0.1", 0, ssl=auth.server_tls(tls["cert"], tls["key"])
    )
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=auth.client_tls(tls["ca"]), server_hostname="127.0.0.1"
        )
        late_sender = Channel(reader, writer)
        closer = await asyncio.wait_for(accepted.get(), WAIT)
        writer.transport.pause_reading()  # it has not seen the close_notify yet...
        closer.close_nowait()
        await late_sender.send(protocol.Heartbeat())  # ...and sends after it
        with pytest.raises(ConnectionClosed):
            await closer.receive(WAIT)
        with pytest.raises(ConnectionClosed):
            await closer.send(protocol.Heartbeat())
        await closer.close()
        writer.transport.resume_reading()
        with pytest.raises(ConnectionClosed):
            await late_sender.receive(WAIT)
        await late_sender.close()
    finally:
        server.close()
        await server.wait_closed()


def test_runner_help_presents_the_token_file_option_as_a_file_and_superci_token_as_the_token():
    done = subprocess.run(
        [sys.executable, "-m", "superci", "runner", "--help"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    help_text = " ".join(done.stdout.split())
    assert f"${auth.TOKEN_ENV}" not in help_text  # not offered as a default path
    assert "--token-file FILE File holding the shared token (SUPERCI_TOKEN_FILE)" in help_text
    assert f"or set {auth.TOKEN_ENV} to the token itself" in help_text


def test_a_token_file_others_can_read_is_used_with_a_warning_naming_the_chmod(tmp_path, caplog):
    token_file = tmp_path / "superci.token"
    token_file.write_text(TOKEN.decode())
    token_file.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="superci.auth"):
        assert auth.load_token(token_file) == TOKEN
    assert f"chmod 600 {token_file}" in caplog.text and "mode 644" in caplog.text
    caplog.clear()
    token_file.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="superci.auth"):
        assert auth.load_token(token_file) == TOKEN
    assert caplog.text == ""


def test_the_token_recipe_makes_a_file_only_its_owner_can_read(tmp_path):
    done = subprocess.run(
        ["sh", "-c", auth.TOKEN_RECIPE.replace("python", shlex.quote(sys.executable))],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    token_file = tmp_path / "superci.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert len(auth.load_token(token_file) or b"") == 64
