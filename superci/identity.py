"""A runner's own identity: a secret the dispatcher issues when a name first joins.

The shared token only says "one of ours"; every token holder can read runner names,
build ids and attempts in ``superci status``. So a name is bound to a secret of its own:
the dispatcher issues it at the name's first registration and keeps only its SHA-256
(a 256-bit random secret needs no slow hash), and the runner keeps it in a file only its
user can read. Registering a known name again (and with it re-adopting a lease) requires
the secret; output and results are then accepted only on the session that proved it.

The runner sends the secret itself in its registration rather than a proof over the
handshake's nonces: that connection has already been admitted by the token (and is
encrypted with TLS where the network is not trusted), and anyone who can read plain TCP
between runner and dispatcher can read and inject the build traffic itself anyway.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import tempfile
from pathlib import Path

from superci.errors import ConfigError

log = logging.getLogger(__name__)

#: Bytes of randomness in a secret (written as twice as many hex characters).
SECRET_BYTES = 32
SECRET_RE = re.compile(rf"[0-9a-f]{{{SECRET_BYTES * 2}}}")
#: The identity file's name inside a runner clone's git dir (beside the ownership mark).
IDENTITY_FILE = "superci-identity"
#: An identity file is a line of hex; anything much larger is not one.
MAX_FILE_BYTES = 4096


def new_secret() -> str:
    return secrets.token_hex(SECRET_BYTES)


def digest(secret: str) -> str:
    """What the dispatcher stores: enough to check a secret, useless to present one."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def proves(secret: str | None, stored_digest: str) -> bool:
    """Whether ``secret`` is the one whose digest is stored (constant-time comparison)."""
    if secret is None:
        return False
    return hmac.compare_digest(digest(secret), stored_digest)


def new_instance() -> str:
    """A random id of one runner process: a runner reconnecting sends the same one, so
    it is told apart from a copy of it (same name and secret) on a cloned machine."""
    return secrets.token_hex(16)


class IdentityFile:
    """The file that keeps a runner's secret across restarts, mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> str | None:
        """The secret, or None when the runner has none yet. The file is opened without
        following a symlink or blocking on a FIFO: a build can write in the clone."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._unusable(e.strerror or str(e)) from e
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise self._unusable("it is not a regular file")
            text = f.read(MAX_FILE_BYTES + 1).decode("ascii", errors="replace").strip()
        if not SECRET_RE.fullmatch(text):
            raise self._unusable(f"it does not hold a runner identity ({SECRET_BYTES * 2} hex)")
        if info.st_mode & 0o077:
            log.warning(
                "the runner identity file %s can be read by other users (mode %03o); "
                "make it private with: chmod 600 %s",
                self.path, info.st_mode & 0o777, self.path,
            )  # fmt: skip
        return text

    def save(self, secret: str) -> None:
        """Write the secret atomically, readable by this user only; a symlink or anything
        else in its place is replaced, not followed."""
        try:
            fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}-", dir=self.path.parent)
        except OSError as e:
            raise self._unusable(e.strerror or str(e)) from e
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:  # mkstemp makes it 0600
                out.write(secret + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise self._unusable(e.strerror or str(e)) from e
        log.info("runner identity kept in %s", self.path)

    def keep(self, secret: str) -> None:
        """Write the secret again if the file is gone or changed (a build removed the
        clone's .git, or wrote there)."""
        try:
            held = self.load()
        except ConfigError:
            held = None
        if held is not None and held != secret:
            log.warning("runner identity file %s was changed; writing it again", self.path)
        if held != secret:
            self.save(secret)

    def _unusable(self, why: str) -> ConfigError:
        return ConfigError(
            f"cannot use the runner identity file {self.path}: {why}; give another path "
            "with --identity-file (SUPERCI_IDENTITY_FILE)"
        )
