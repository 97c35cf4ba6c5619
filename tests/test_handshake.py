"""Both halves of the opening handshake, message by message and byte by byte, no I/O."""

import json

import pytest

from superci import auth, protocol
from superci.errors import AuthenticationError, ProtocolError
from superci.handshake import ClientHandshake, ServerHandshake

TOKEN = b"0123456789abcdef0123456789abcdef"
CLIENT_NONCE = "c" * 32
CHALLENGE = "d" * 32


def server(token: bytes | None = TOKEN) -> ServerHandshake:
    return ServerHandshake(token, "9.9", new_nonce=lambda: CHALLENGE)


def client(token: bytes | None = TOKEN) -> ClientHandshake:
    return ClientHandshake(token, "runner", "127.0.0.1:8888", new_nonce=lambda: CLIENT_NONCE)


def body(message: protocol.Message) -> dict:
    """What goes on the wire after the 4-byte length, as JSON."""
    frame = protocol.encode(message)
    assert protocol.HEADER.unpack(frame[:4])[0] == len(frame) - 4
    return json.loads(frame[4:])


def test_with_a_token_the_client_proves_first_and_the_server_only_then():
    s, c = server(), client()
    hello = c.start()
    assert body(hello) == {
        "type": "hello",
        "version": protocol.PROTOCOL_VERSION,
        "role": "runner",
        "nonce": CLIENT_NONCE,
    }

    (welcome,) = s.receive(hello)
    version = protocol.PROTOCOL_VERSION
    assert body(welcome) == {"type": "welcome", "version": version, "server": "9.9",
                             "challenge": CHALLENGE}  # fmt: skip
    assert "proof" not in protocol.encode(welcome).decode()  # nothing to test guesses on

    (answer,) = c.receive(welcome)
    client_proof = auth.proof(TOKEN, "client", CLIENT_NONCE, CHALLENGE)
    assert body(answer) == {"type": "auth", "proof": client_proof}
    assert not s.done and not c.done

    (authenticated,) = s.receive(answer)
    server_proof = auth.proof(TOKEN, "server", CLIENT_NONCE, CHALLENGE)
    assert body(authenticated) == {"type": "authenticated", "proof": server_proof}
    assert s.done and s.hello == hello
    assert c.receive(authenticated) == []
    assert c.done


def test_without_a_token_the_welcome_ends_the_handshake():
    s, c = server(None), client(None)
    hello = c.start()
    assert body(hello) == {
        "type": "hello",
        "version": protocol.PROTOCOL_VERSION,
        "role": "runner",
        "nonce": None,
    }
    (welcome,) = s.receive(hello)
    assert body(welcome) == {
        "type": "welcome",
        "version": protocol.PROTOCOL_VERSION,
        "server": "9.9",
        "challenge": None,
    }
    assert s.done
    assert c.receive(welcome) == []
    assert c.done


def test_a_wrong_client_proof_gets_no_server_proof():
    s = server()
    s.receive(client().start())
    wrong = auth.proof(b"another-token-another-token-1234", "client", CLIENT_NONCE, CHALLENGE)
    with pytest.raises(ProtocolError, match="wrong or missing token") as refused:
        s.receive(protocol.Auth(proof=wrong))
    assert refused.value.code == "auth"
    assert not s.done


@pytest.mark.parametrize(
    "answer",
    [
        protocol.Heartbeat(),
        protocol.Auth(proof=auth.proof(TOKEN, "server", CLIENT_NONCE, CHALLENGE)),
    ],
    ids=["not-an-auth", "the-server-proof-replayed"],
)
def test_anything_but_the_client_proof_is_refused(answer):
    s = server()
    s.receive(client().start())
    with pytest.raises(ProtocolError) as refused:
        s.receive(answer)
    assert refused.value.code == "auth"


def test_a_hello_without_a_nonce_cannot_authenticate():
    s = server()
    s.receive(client(None).start())
    with pytest.raises(ProtocolError, match="wrong or missing token"):
        s.receive(protocol.Auth(proof="a" * 64))


def test_the_first_message_must_be_a_hello_of_our_version():
    with pytest.raises(ProtocolError, match="expected hello"):
        server().receive(protocol.Heartbeat())
    with pytest.raises(ProtocolError, match="version 1 is not supported") as refused:
        server().receive(protocol.Hello(version=1, role="client"))
    assert refused.value.code == "version"


def test_a_client_with_a_token_refuses_a_server_that_asks_for_none():
    c = client()
    c.start()
    with pytest.raises(AuthenticationError, match="does not ask for a token"):
        c.receive(protocol.Welcome(version=3, server="impostor"))


def test_a_client_without_a_token_says_which_setting_is_missing():
    c = client(None)
    c.start()
    with pytest.raises(AuthenticationError, match="requires a token: set SUPERCI_TOKEN"):
        c.receive(protocol.Welcome(version=3, server="9.9", challenge=CHALLENGE))


def test_a_client_refuses_a_server_whose_proof_is_wrong():
    c = client()
    c.start()
    c.receive(protocol.Welcome(version=3, server="9.9", challenge=CHALLENGE))
    assert c.proving
    forged = auth.proof(b"another-token-another-token-1234", "server", CLIENT_NONCE, CHALLENGE)
    with pytest.raises(AuthenticationError, match="does not know our token"):
        c.receive(protocol.Authenticated(proof=forged))
    assert not c.done


def test_a_client_expects_a_welcome_first():
    c = client()
    c.start()
    with pytest.raises(ProtocolError, match="expected welcome"):
        c.receive(protocol.Heartbeat())
