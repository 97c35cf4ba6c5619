"""Who may connect to a split's unix sockets (the batch source, a seat's tunnel): the
runner itself and its build user, nobody else.

With a build user (``--build-user``) the test processes run as another user than the
runner, so the sockets cannot stay in a folder only the runner may enter: their folder
may be entered but not listed (0711), each socket has a name nobody can guess and may be
connected to by anyone (0666). The name keeps others from finding a socket; the
check of every connection's peer (the kernel's word for its uid, ``SO_PEERCRED``) keeps
out whoever finds one anyway, before it can say a word (any process of the build user
is admitted: a build user is dedicated to one runner, and its processes end with each
build). A socket also takes a bounded number of connections at once. Without a build user the folder
stays the runner's alone (0700), and the check only confirms it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superci.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)
#: A refused connection is logged, but a loop of them does not flood the runner's log.
_refusals = RateLimitedLog(log)

#: ``struct ucred`` as ``SO_PEERCRED`` returns it (Linux): pid, uid, gid.
UCRED = struct.Struct("3i")
#: Connections one socket keeps open at once: a split has at most 16 participants, each
#: with one test process at a time, and a dead one's connection lingers a few seconds;
#: beyond that a build's code could only be making the runner hold buffers (each
#: connection may hold a line of up to 4 MiB), so a new one is refused.
MAX_CONNECTIONS = 40


@dataclass(frozen=True)
class SocketAccess:
    """The uids a split's sockets admit: the runner's own and, if any, its build user's."""

    build_uid: int | None = None
    own_uid: int = field(default_factory=os.geteuid)

    @property
    def shared(self) -> bool:
        """Whether another user (the build user) must reach the sockets."""
        return self.build_uid is not None and self.build_uid != self.own_uid

    @property
    def uids(self) -> frozenset[int]:
        others = {self.build_uid} if self.build_uid is not None else set()
        return frozenset({self.own_uid, *others})

    def folder(self) -> Path:
        """A fresh folder for the sockets, with a short path (a unix socket's path has at
        most 107 bytes) and, when shared, mode 0711: its sockets' names cannot be listed
        (see :meth:`socket_in`)."""
        folder = Path(tempfile.mkdtemp(prefix="sci-split-"))
        if self.shared:
            folder.chmod(0o711)
        return folder

    def socket_in(self, folder: Path) -> Path:
        """Where a socket goes in ``folder``: a name nobody can guess, since the folder
        (in the shared temporary folder) can be found but, when shared, not listed."""
        return folder / f"batches-{secrets.token_hex(8)}.sock"

    def open(self, path: Path) -> None:
        """Let the build user connect to the socket at ``path`` (its peer is checked)."""
        if self.shared:
            path.chmod(0o666)

    def admits(self, writer: asyncio.StreamWriter, what: str, already_open: int) -> bool:
        """Whether the peer of a connection just accepted on ``what`` (which has
        ``already_open`` others) may use it; one that may not is logged (it never gets to
        say a word)."""
        uid = peer_uid(writer.get_extra_info("socket"))
        if not admitted(uid, self.uids, self.shared):
            allowed = f"the runner (uid {self.own_uid})" + (
                f" and its build user (uid {self.build_uid})" if self.shared else ""
            )
            peer = "an unknown uid" if uid is None else f"uid {uid}"
            _refusals.log(logging.WARNING, "%s: refused a connection from %s: only %s may "
                          "connect", what, peer, allowed)  # fmt: skip
            return False
        if already_open >= MAX_CONNECTIONS:
            _refusals.log(logging.WARNING, "%s: refused a connection: %d are open already, "
                          "more than a split needs", what, already_open)  # fmt: skip
            return False
        return True


def admitted(peer: int | None, uids: frozenset[int], shared: bool) -> bool:
    """Whether a peer of uid ``peer`` (None: the system cannot say) may connect: one of
    ``uids``; an unknown one only when the socket is not shared (its folder is the
    runner's alone, so the peer is the runner's)."""
    if peer is None:
        return not shared
    return peer in uids


def peer_uid(sock: Any) -> int | None:
    """The effective uid of the process at the other end of the connected unix socket
    ``sock`` when it connected; None where the system cannot say (not Linux)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None or sock is None:
        return None
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, option, UCRED.size)
    except OSError:
        return None
    _, uid, _ = UCRED.unpack(data)
    return int(uid)
