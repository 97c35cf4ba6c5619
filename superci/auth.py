"""Who may talk to the dispatcher: the shared token, its HMAC challenge-response, and TLS.

With a token set, both sides prove they know it without sending it, over two fresh
nonces, the client first (see :mod:`superci.handshake`). Proofs are HMAC-SHA256 and
compared in constant time. TLS (standard library ``ssl``) protects the traffic itself.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from superci.errors import ConfigError

if TYPE_CHECKING:  # ssl is imported only where TLS is used: it slows every command's start
    import ssl

log = logging.getLogger(__name__)

#: Environment variable that carries the shared token itself (not a path to it).
TOKEN_ENV = "SUPERCI_TOKEN"
#: How to make a token file only its owner can read (README and error messages show it).
TOKEN_RECIPE = (
    "(umask 077; python -c 'import secrets; print(secrets.token_hex(32))' > superci.token)"
)
#: Shortest token accepted (characters): 32 hex characters are 128 bits, beyond any
#: guessing, even offline; a guessable token is no protection.
MIN_TOKEN_LENGTH = 32


@dataclass(frozen=True)
class Credentials:
    """What a connection needs beyond an address: the token and the TLS context."""

    token: bytes | None = None
    ssl: ssl.SSLContext | None = None


#: Plain TCP, no token: what a loopback-only set-up uses.
NO_CREDENTIALS = Credentials()


def load_token(token_file: Path | None = None) -> bytes | None:
    """The token from ``--token-file`` if given, else from ``SUPERCI_TOKEN``; None if neither."""
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"cannot read the token file {token_file}: {e.strerror or e}") from e
        _warn_if_others_can_read(token_file)
        source = str(token_file)
    else:
        text = os.environ.get(TOKEN_ENV, "").strip()
        source = TOKEN_ENV
        if not text:
            return None
    if len(text) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"the token in {source} is shorter than {MIN_TOKEN_LENGTH} characters "
            f"(128 bits as hex); make one with: {TOKEN_RECIPE}"
        )
    return text.encode("utf-8")


def _warn_if_others_can_read(token_file: Path) -> None:
    """Anyone who can read the token can run builds and read results: say how to fix it."""
    try:
        mode = token_file.stat().st_mode
    except OSError:  # it was just read; a file that vanished since has nothing to warn about
        return
    if mode & 0o077:
        log.warning(
            "the token file %s can be read by other users (mode %03o); "
            "make it private with: chmod 600 %s",
            token_file, mode & 0o777, token_file,
        )  # fmt: skip


def new_nonce() -> str:
    return secrets.token_hex(16)


def proof(token: bytes, role: str, client_nonce: str, server_challenge: str) -> str:
    """HMAC-SHA256 over both nonces and who is proving (so a proof cannot be replayed
    back at its sender)."""
    message = f"superci-v1|{role}|{client_nonce}|{server_challenge}".encode()
    return hmac.new(token, message, hashlib.sha256).hexdigest()


def verify(token: bytes, role: str, client_nonce: str, server_challenge: str, given: str) -> bool:
    return hmac.compare_digest(proof(token, role, client_nonce, server_challenge), given)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """The dispatcher's TLS context from a certificate chain and its key."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the TLS certificate {cert} / key {key}: {e}") from e
    return context


def client_tls(ca: Path | None) -> ssl.SSLContext:
    """A verifying client context: the given CA bundle, else the system's trust store."""
    import ssl

    try:
        return ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the TLS CA bundle {ca}: {e}") from e
