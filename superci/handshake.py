"""Both halves of the opening handshake as I/O-free state machines.

The caller owns the connection: it gives each side the messages it received and sends
what they return, as with :mod:`superci.protocol`. With a token, the client proves it
knows the token *first*; the dispatcher answers with its own proof only after checking
the client's, so a stranger who opens a connection learns nothing it could test token
guesses against offline::

    client                                   dispatcher
    hello(version, role, nonce)      ──▶
                                     ◀──     welcome(version, challenge)
    auth(proof of client)            ──▶     (checks it; else error "auth", close)
                                     ◀──     authenticated(proof of dispatcher)
    (checks it; else closes)

Without a token the welcome carries no challenge and the handshake ends there.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from superci import auth, protocol
from superci.errors import AuthenticationError, ProtocolError


class _Step(enum.Enum):
    HELLO = "hello"
    AUTH = "auth"
    PROOF = "proof"
    DONE = "done"


class ServerHandshake:
    """The dispatcher's half: ``receive`` each message until :attr:`done`."""

    def __init__(
        self, token: bytes | None, server: str, new_nonce: Callable[[], str] = auth.new_nonce
    ) -> None:
        self._token = token
        self._server = server
        self._new_nonce = new_nonce
        self._step = _Step.HELLO
        self._challenge = ""
        self.hello: protocol.Hello | None = None

    @property
    def done(self) -> bool:
        return self._step is _Step.DONE

    def receive(self, message: protocol.Message) -> list[protocol.Message]:
        """The messages to send in answer; :class:`ProtocolError` ends the connection."""
        if self._step is _Step.HELLO:
            return self._on_hello(protocol.check_hello(message))
        if self._step is _Step.AUTH:
            return self._on_auth(message)
        raise ProtocolError(f"unexpected {message.type} after the handshake", code="handshake")

    def _on_hello(self, hello: protocol.Hello) -> list[protocol.Message]:
        self.hello = hello
        version = protocol.PROTOCOL_VERSION
        if self._token is None:
            self._step = _Step.DONE
            return [protocol.Welcome(version=version, server=self._server)]
        self._challenge = self._new_nonce()
        self._step = _Step.AUTH
        return [protocol.Welcome(version=version, server=self._server, challenge=self._challenge)]

    def _on_auth(self, answer: protocol.Message) -> list[protocol.Message]:
        assert self._token is not None and self.hello is not None
        nonce = self.hello.nonce
        if not (
            isinstance(answer, protocol.Auth)
            and nonce is not None
            and auth.verify(self._token, "client", nonce, self._challenge, answer.proof)
        ):
            raise ProtocolError("authentication failed: wrong or missing token", code="auth")
        self._step = _Step.DONE
        own = auth.proof(self._token, "server", nonce, self._challenge)
        return [protocol.Authenticated(proof=own)]


class ClientHandshake:
    """The client's half: send :meth:`start`'s hello, then ``receive`` until :attr:`done`.

    ``where`` names the dispatcher in error messages.
    """

    def __init__(
        self,
        token: bytes | None,
        role: str,
        where: str,
        new_nonce: Callable[[], str] = auth.new_nonce,
    ) -> None:
        self._token = token
        self._role = role
        self._where = where
        self._nonce = new_nonce() if token is not None else None
        self._challenge = ""
        self._step = _Step.HELLO

    @property
    def done(self) -> bool:
        return self._step is _Step.DONE

    def start(self) -> protocol.Hello:
        return protocol.Hello(
            version=protocol.PROTOCOL_VERSION, role=protocol.Role(self._role), nonce=self._nonce
        )

    def receive(self, message: protocol.Message) -> list[protocol.Message]:
        """The messages to send in answer; :class:`AuthenticationError` or
        :class:`ProtocolError` mean the connection must be closed."""
        if self._step is _Step.HELLO:
            return self._on_welcome(message)
        if self._step is _Step.PROOF:
            return self._on_proof(message)
        raise ProtocolError(f"unexpected {message.type} after the handshake", code="handshake")

    def _on_welcome(self, welcome: protocol.Message) -> list[protocol.Message]:
        if not isinstance(welcome, protocol.Welcome):
            raise ProtocolError(f"expected welcome from {self._where}, got {welcome.type}")
        if welcome.challenge is None:
            if self._token is not None:  # an impostor without our token must not get commits
                raise AuthenticationError(
                    f"the dispatcher at {self._where} does not ask for a token but we have "
                    f"one: start it with {auth.TOKEN_ENV} or --token-file too"
                )
            self._step = _Step.DONE
            return []
        if self._token is None or self._nonce is None:
            raise AuthenticationError(
                f"the dispatcher at {self._where} requires a token: "
                f"set {auth.TOKEN_ENV} or --token-file"
            )
        self._challenge = welcome.challenge
        self._step = _Step.PROOF
        return [
            protocol.Auth(proof=auth.proof(self._token, "client", self._nonce, welcome.challenge))
        ]

    def _on_proof(self, message: protocol.Message) -> list[protocol.Message]:
        assert self._token is not None and self._nonce is not None
        if not (
            isinstance(message, protocol.Authenticated)
            and auth.verify(self._token, "server", self._nonce, self._challenge, message.proof)
        ):
            raise AuthenticationError(
                f"the dispatcher at {self._where} does not know our token (its proof is "
                f"wrong): check {auth.TOKEN_ENV} / --token-file on both sides"
            )
        self._step = _Step.DONE
        return []

    def refused(self, error: protocol.Message | Exception) -> AuthenticationError:
        """The error to raise when the dispatcher answered our proof with an error frame."""
        return AuthenticationError(
            f"the dispatcher at {self._where} does not know our token (it refused our "
            f"proof: {error}): check {auth.TOKEN_ENV} / --token-file on both sides"
        )

    @property
    def proving(self) -> bool:
        """Whether our proof is out and the dispatcher's verdict awaited."""
        return self._step is _Step.PROOF
