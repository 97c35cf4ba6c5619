"""The log viewer's windows onto a build log: its last lines, the lines before a point,
the output after a point, and the number of a line counted from the log's start.

A browser never gets a whole log: the commit page shows the last :data:`TAIL_LINES`
lines, and the viewer asks for earlier lines or new output by byte offset in the
reader's view of the log (what ``log.txt`` serves). Every function here reads through a
:data:`Reader` a bounded number of bytes at a time and does blocking file I/O, so the web
server calls them off the event loop (``run_in_executor``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from dataclasses import dataclass

#: Lines of a window (the commit page's tail, one "load earlier" step).
TAIL_LINES = 2000
#: Bytes read at most to find a window's lines (a window of very long lines is shorter).
TAIL_BYTES = 512 * 1024
#: Bytes of new output sent at most in one answer (the viewer asks again for more).
FOLLOW_BYTES = 512 * 1024
#: Bytes read at a time when counting the lines before a window.
COUNT_CHUNK = 1024 * 1024

#: Reads the log's view: (offset, limit) → at most ``limit`` bytes from ``offset``.
Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Window:
    """Bytes ``start``..``end`` of the log's view, as text; ``first_line`` is the number
    (from 1) of the line ``start`` is on, when it was counted."""

    start: int
    end: int
    text: str
    first_line: int | None = None


def reader_of(pieces: Callable[[int], Generator[bytes, None, None]]) -> Reader:
    """A :data:`Reader` over a source of pieces from an offset (``ResultsFolder.read_log``),
    stopping as soon as it has ``limit`` bytes."""

    def read(offset: int, limit: int) -> bytes:
        data = bytearray()
        if limit <= 0:
            return b""
        source = pieces(offset)
        with contextlib.closing(source):
            for piece in source:
                data += piece
                if len(data) >= limit:
                    break
        return bytes(data[:limit])

    return read


def last_lines(read: Reader, end: int, lines: int = TAIL_LINES, limit: int = TAIL_BYTES) -> Window:
    """The last ``lines`` lines before ``end`` (a line's start, or the log's end), read
    from at most ``limit`` bytes; ``first_line`` is left for :func:`with_line_number`."""
    start = max(0, end - limit)
    data = read(start, end - start)
    if start > 0:
        cut = data.find(b"\n")
        if 0 <= cut < len(data) - 1:  # the first line may be cut: start after it
            data, start = data[cut + 1 :], start + cut + 1
    body = data[:-1] if data.endswith(b"\n") else data
    position = len(body)
    for _ in range(lines):
        position = body.rfind(b"\n", 0, position)
        if position < 0:
            break
    if position >= 0:
        data, start = data[position + 1 :], start + position + 1
    return Window(start, start + len(data), _text(data))


def with_line_number(read: Reader, window: Window, chunk: int = COUNT_CHUNK) -> Window:
    """The window with the number of its first line: the newlines before it, counted a
    ``chunk`` at a time (16 MiB takes tens of milliseconds, off the loop)."""
    newlines, offset = 0, 0
    while offset < window.start:
        data = read(offset, min(chunk, window.start - offset))
        if not data:
            break
        newlines += data.count(b"\n")
        offset += len(data)
    return Window(window.start, window.end, window.text, newlines + 1)


def output_after(read: Reader, start: int, size: int, complete: bool) -> Window:
    """The output from ``start`` on (at most :data:`FOLLOW_BYTES`). While the build runs
    (``complete`` False) only whole lines are sent, so a line is never shown half and a
    character never split; a line longer than the whole answer is sent as it is."""
    data = read(start, min(max(size - start, 0), FOLLOW_BYTES))
    if not complete or len(data) == FOLLOW_BYTES:
        last = data.rfind(b"\n")
        if last >= 0:
            data = data[: last + 1]
        elif len(data) < FOLLOW_BYTES:
            data = b""  # a line still being written: it comes whole with the next
    return Window(start, start + len(data), _text(data))


def _text(data: bytes) -> str:
    """Bytes of a log as text; bytes that are not UTF-8 show as U+FFFD."""
    return data.decode("utf-8", "replace")
