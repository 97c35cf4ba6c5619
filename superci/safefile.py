"""Reading a file a build's commit or its tests left behind, as data and never as a trap.

A commit can put anything where superci reads: a FIFO (a blocking ``open``), a symlink to
``/dev/zero`` (an endless read) or to a file of the runner's, a file of gigabytes. So a
file is read only when it is a regular file whose real path stays inside a given folder,
and only up to a size cap. Symlinks inside the folder are followed: repositories commit
them (a config shared between projects), and what they lead to is the commit's own file,
no more dangerous than a regular one; a link leading out is refused, as is every file
that is not regular. The calls block (a slow disk); an asyncio caller uses :func:`read_off_loop`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from superci.errors import UnsafeFile

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Opening never waits for a FIFO's writer, never follows a last symlink, and the
#: descriptor never leaks into the build's processes.
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
#: Bytes asked of the kernel per read.
CHUNK = 64 * 1024


def read_inside(root: Path, relative: str | Path, limit: int, *, what: str = "") -> bytes | None:
    """The bytes of ``root/relative``, or None when there is no such file.

    Raises :class:`UnsafeFile`, naming the file, when it is not a regular file, leads out
    of ``root`` or holds more than ``limit`` bytes. ``what`` says what the file is for.
    """
    root_real = os.path.realpath(root)
    shown = Path(root) / relative
    label = f"{what} {shown}" if what else str(shown)
    real = os.path.realpath(shown)
    if not _is_within(real, root_real):
        if not os.path.lexists(shown):
            return None
        raise UnsafeFile(f"{label} leads outside {root} (to {real}); refusing to read it")
    try:
        fd = os.open(real, OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # became a symlink since it was resolved
            raise UnsafeFile(f"{label} changed into a symlink while being read") from e
        raise UnsafeFile(f"{label} cannot be read: {e.strerror or e}") from e
    try:
        return _read_fd(fd, root_real, label, limit)
    finally:
        os.close(fd)


def _read_fd(fd: int, root_real: str, label: str, limit: int) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        kind = _kind(info.st_mode)
        raise UnsafeFile(f"{label} is {kind}, not a regular file; refusing to read it")
    opened = _opened_path(fd)
    if opened is not None and not _is_within(opened, root_real):
        raise UnsafeFile(f"{label} moved outside {root_real} while being opened")
    if info.st_size > limit:
        raise UnsafeFile(f"{label} is {info.st_size} bytes, more than the {limit} allowed")
    chunks: list[bytes] = []
    size = 0
    while size <= limit:  # one byte past the cap tells a file that grew since fstat
        data = os.read(fd, min(CHUNK, limit + 1 - size))
        if not data:
            break
        chunks.append(data)
        size += len(data)
    if size > limit:
        raise UnsafeFile(f"{label} holds more than the {limit} bytes allowed")
    return b"".join(chunks)


async def read_off_loop(fn: Callable[..., T], *args: object, timeout: float, what: str) -> T:
    """``fn(*args)`` in a worker thread, given up on after ``timeout`` seconds, so a file on
    a hung disk stalls neither heartbeats nor anything else of the event loop."""
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.to_thread(fn, *args)
    except TimeoutError:
        raise UnsafeFile(f"{what} was not read within {timeout:g}s; giving up on it") from None


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _opened_path(fd: int) -> str | None:
    """Where the descriptor really points (Linux), to catch a folder swapped for a symlink
    between resolving the path and opening it; None where the system cannot say."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"
