"""Token challenge-response, TLS and the safe default, against a real dispatcher on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme
from helpers import async_test, frames_until_closed

from superci import auth, client, protocol
from superci.auth import Credentials
from superci.channel import Address
from superci.dispatcher import Dispatcher
from superci.errors import AuthenticationError, ConfigError, DispatcherUnavailable
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
        await _until(lambda: "authentication failed" in caplog.text)
    assert queued_builds(tmp_path) == 0


@async_test()
async def test_missing_token_is_refused_with_a_message_naming_the_setting(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="superci.dispatcher")
    async with dispatcher(tmp_path, Credentials(token=TOKEN)) as address:
        with pytest.raises(AuthenticationError, match="requires a token: set SUPERCI_TOKEN"):
            await client.submit_async(address, SHA, "main")
        await _until(lambda: "without authenticating" in caplog.text)
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
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
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


async def _until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


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
