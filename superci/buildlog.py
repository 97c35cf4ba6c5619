"""One build's ``output.log``: written live, bounded on disk, and resumable by offset.

Offsets are counted in bytes of the build's output as the runner produced it ("raw"),
not in bytes of the file, so a runner that resends after a reconnect never duplicates
anything even once the log has been cut. The head (how the build started) and the tail
(where test summaries live) are kept; the middle is dropped and replaced by one marker.

Layout, chosen so that no byte is ever rewritten while the build runs (bounded work per
byte of output) and a crash at any moment leaves files that say exactly how much output
they hold:

* ``output.log`` holds the first ``max_bytes // 4`` bytes (the head);
* past the head, output goes to tail segments ``.output.log.tail.<raw offset>``, each
  named after the raw offset of its first byte; when the newest is full a new one
  starts and the oldest beyond three is deleted (that is the cut: one ``unlink``);
* ``.output.log.state`` (written atomically once the head is full) says how long the
  head is and which raw offset it ends at.

The raw offset a resumed log continues at is the end of its newest segment (or of the
head), read from the files themselves, so the runner's resend fills exactly what is
missing. When the build ends, :meth:`BuildLog.finish` appends the marker and the kept
segments to ``output.log`` (at most ``3/4`` of the cap, once per build) and updates the
state, so a finished log is one plain file; a crash halfway is undone on resume.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from superci.errors import StorageError

MARKER = "\n[superci: {dropped} bytes of output dropped here to keep this log under {cap} bytes]\n"
#: Room left for the marker line, so head + marker + tail stays under the cap.
MARKER_ROOM = 128
#: Segments kept behind the head: the newest (growing) and two full ones before it.
KEPT_SEGMENTS = 3
_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class _Cut:
    """What ``.output.log.state`` records once the head is complete."""

    head: int  # bytes of output.log that are the head (a finished log: the whole file)
    head_raw: int  # raw offset at the end of the head
    dropped: int  # bytes already dropped inside the head (a finished log's marker)
    cap: int  # the cap the marker names


class BuildLog:
    """An open ``output.log``; ``raw`` is how many bytes of output it has accounted for."""

    def __init__(self, path: Path, max_bytes: int, *, fresh: bool) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.head_bytes = max_bytes // 4
        self.segment_bytes = max(1, (max_bytes - self.head_bytes - MARKER_ROOM) // KEPT_SEGMENTS)
        self._state_path = state_path(path)
        self._cut: _Cut | None = None
        self._segments: list[int] = []  # raw offsets of the kept tail segments, oldest first
        self._segment_fd: int | None = None
        self._segment_size = 0
        self._head_size = 0
        self._head_reader: int | None = None  # opened when first read (a runner's spool)
        self._closed = False
        self.raw = 0
        try:
            if fresh:
                for start in segment_starts(path):
                    segment_path(path, start).unlink(missing_ok=True)
                self._state_path.unlink(missing_ok=True)
            self._head_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND
                                    | (os.O_TRUNC if fresh else 0), 0o666)  # fmt: skip
            if not fresh:
                self._resume()
        except OSError as e:
            raise StorageError(f"cannot open the log {path}: {e}") from e

    @property
    def dropped(self) -> int:
        """Bytes of output no longer in the log (all of them counted in the marker)."""
        if self._cut is None:
            return 0
        first_kept = self._segments[0] if self._segments else self.raw
        return self._cut.dropped + first_kept - self._cut.head_raw

    def _resume(self) -> None:
        """Continue a log a previous dispatcher process wrote (an adopted build)."""
        self._cut = read_state(self.path)
        self._head_size = os.fstat(self._head_fd).st_size
        starts = segment_starts(self.path)
        if self._cut is None:
            for start in starts:  # no state: a segment can only be a crash's leftover
                segment_path(self.path, start).unlink(missing_ok=True)
            self.raw = self._head_size
            return
        if self._head_size > self._cut.head:  # a crash while finishing: undo the append
            os.ftruncate(self._head_fd, self._cut.head)
            self._head_size = self._cut.head
        for start in [s for s in starts if s < self._cut.head_raw]:  # finished already
            segment_path(self.path, start).unlink(missing_ok=True)
        self._segments = [s for s in starts if s >= self._cut.head_raw]
        self.raw = self._cut.head_raw
        if self._segments:
            newest = self._segments[-1]
            self._segment_fd = _open_append(segment_path(self.path, newest))
            self._segment_size = os.fstat(self._segment_fd).st_size
            self.raw = newest + self._segment_size

    def append(self, offset: int, data: bytes, *, skipped: bool = False) -> bytes:
        """Write bytes ``offset``.. of the output; returns the part that was new.

        ``skipped``: the sender no longer has the bytes between the end of this log and
        ``offset`` (a runner's bounded spool); they are counted as dropped. Otherwise a
        gap is refused. A write that fails halfway (a full disk) keeps what it wrote
        accounted in ``raw``, so the resend continues exactly there.
        """
        if offset > self.raw:
            if not skipped:
                have = f"have {self.raw}, got {offset}"
                raise StorageError(f"{self.path}: gap in the output ({have})")
            self._skip_to(offset)
        new = data[self.raw - offset :]
        try:
            view = memoryview(new)
            while view:
                written = self._write_some(view)
                self.raw += written
                view = view[written:]
        except OSError as e:
            raise StorageError(f"cannot write the log {self.path}: {e}") from e
        return new

    def _write_some(self, data: memoryview) -> int:
        """Write a prefix of ``data`` where it belongs (head or newest segment); returns
        how much was written (a short write is fine: the caller loops)."""
        if self._cut is None:
            room = self.head_bytes - self._head_size
            if room > 0:
                written = _write(self._head_fd, data[:room])
                self._head_size += written
                return written
            self._start_tail(_Cut(self._head_size, self.raw, 0, self.max_bytes))
        if self._segment_fd is None or self._segment_size >= self.segment_bytes:
            self._new_segment(self.raw)
        assert self._segment_fd is not None
        written = _write(self._segment_fd, data[: self.segment_bytes - self._segment_size])
        self._segment_size += written
        return written

    def _start_tail(self, cut: _Cut) -> None:
        """The head is complete: record where it ends before any segment exists."""
        _write_atomically(self._state_path, json.dumps(asdict(cut)))
        self._cut = cut

    def _new_segment(self, start: int) -> None:
        """Start a segment at raw offset ``start``; the oldest beyond the kept ones go."""
        fd = _open_append(segment_path(self.path, start))
        if self._segment_fd is not None:
            os.close(self._segment_fd)
        self._segment_fd, self._segment_size = fd, 0
        self._segments.append(start)
        while len(self._segments) > KEPT_SEGMENTS:
            segment_path(self.path, self._segments.pop(0)).unlink(missing_ok=True)

    def _skip_to(self, offset: int) -> None:
        """Count the bytes up to ``offset`` as dropped: the tail so far goes (it would
        leave a second hole), and a new segment starts at ``offset``."""
        try:
            if self._cut is None:
                self._start_tail(_Cut(self._head_size, self.raw, 0, self.max_bytes))
            for start in self._segments:
                segment_path(self.path, start).unlink(missing_ok=True)
            self._segments = []
            self._new_segment(offset)
        except OSError as e:
            raise StorageError(f"cannot write the log {self.path}: {e}") from e
        self.raw = offset

    def read_raw(self, offset: int, size: int) -> tuple[int, bytes]:
        """Up to ``size`` kept bytes of output from raw ``offset`` on; if those were
        dropped, from the first kept byte after them. Returns (raw start, bytes)."""
        head_end = self._cut.head_raw if self._cut is not None else self.raw
        if offset < head_end and (self._cut is None or self._cut.dropped == 0):
            if self._head_reader is None:
                self._head_reader = os.open(self.path, os.O_RDONLY)
            return offset, os.pread(self._head_reader, min(size, head_end - offset), offset)
        for start in self._segments:
            path = segment_path(self.path, start)
            if offset < start + _size(path):
                offset = max(offset, start)
                with open(path, "rb") as f:
                    f.seek(offset - start)
                    return offset, f.read(size)
        return self.raw, b""

    def close(self) -> None:
        """Flush to disk and stop writing (the build may go on: see :meth:`finish`)."""
        if self._closed:
            return
        self._closed = True
        fds = [self._segment_fd, self._head_fd, self._head_reader]
        self._segment_fd = self._head_reader = None
        try:
            for fd in fds[:2]:
                if fd is not None:
                    os.fsync(fd)
        finally:
            for fd in fds:
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def finish(self) -> None:
        """The build is over: make ``output.log`` the whole log (head, marker, tail) and
        close it. Bounded work: the kept tail is copied once."""
        try:
            if self._cut is not None and self._segments:
                self._materialise()
        except OSError as e:
            self.close()
            raise StorageError(f"cannot finish the log {self.path}: {e}") from e
        self.close()

    def _materialise(self) -> None:
        dropped = self.dropped
        if self._segment_fd is not None:
            os.close(self._segment_fd)
            self._segment_fd = None
        if dropped:
            _write_all(self._head_fd, MARKER.format(dropped=dropped, cap=self.max_bytes).encode())
        for start in self._segments:
            with open(segment_path(self.path, start), "rb") as f:
                while chunk := f.read(_COPY_CHUNK):
                    _write_all(self._head_fd, chunk)
        os.fsync(self._head_fd)
        size = os.fstat(self._head_fd).st_size
        self._cut = _Cut(size, self.raw, dropped, self.max_bytes)
        _write_atomically(self._state_path, json.dumps(asdict(self._cut)))
        for start in self._segments:
            segment_path(self.path, start).unlink(missing_ok=True)
        self._segments = []
        self._head_size = size


# --- the files, read without an open BuildLog (the log of any build, live or not) ---------


def state_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.state")


def segment_path(path: Path, start: int) -> Path:
    return path.with_name(f".{path.name}.tail.{start}")


def segment_starts(path: Path) -> list[int]:
    """Raw offsets of the tail segments on disk, oldest first."""
    prefix = f".{path.name}.tail."
    starts = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(path.parent):
            if entry.name.startswith(prefix) and entry.name[len(prefix) :].isdigit():
                starts.append(int(entry.name[len(prefix) :]))
    return sorted(starts)


def read_state(path: Path) -> _Cut | None:
    try:
        return _Cut(**json.loads(state_path(path).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        raise StorageError(f"unreadable log state {state_path(path)}: {e}") from e


def read(path: Path, offset: int = 0, limit: int | None = None) -> bytes:
    """The log as a reader sees it (head, marker, kept tail), from byte ``offset`` of that
    view, at most ``limit`` bytes; empty if there is no log."""
    return b"".join(pieces(path, offset, limit=limit))


def pieces(
    path: Path, offset: int = 0, chunk: int = _COPY_CHUNK, limit: int | None = None
) -> Generator[bytes, None, None]:
    """The reader's view from ``offset`` in pieces of at most ``chunk`` bytes, as the log
    stands at the call (what arrives later is not included: a follower gets it live).
    Files are read one piece at a time, so a slow reader of a big log holds one piece."""
    view = _view(path)
    remaining = limit if limit is not None else sum(length for _, length in view)
    for source, length in view:
        if remaining <= 0:
            return
        if offset >= length:
            offset -= length
            continue
        take = min(length - offset, remaining)
        if isinstance(source, bytes):
            yield source[offset : offset + take]
        else:
            yield from _file_pieces(source, offset, take, chunk)
        remaining -= take
        offset = 0


def view_size(path: Path) -> int:
    """Bytes of the reader's view (what :func:`pieces` yields from offset 0)."""
    return sum(length for _, length in _view(path))


def is_plain(path: Path) -> bool:
    """True when the reader's view is the file itself, whole (no marker, no segments)."""
    view = _view(path)
    return len(view) == 1 and view[0][0] == path and path.is_file()


def nothing() -> Generator[bytes, None, None]:
    """No pieces: the reader's view of a log that does not exist."""
    yield from ()


def _view(path: Path) -> list[tuple[Path | bytes, int]]:
    """What a reader sees, as (file or marker, length) in order."""
    try:
        cut = read_state(path)
    except StorageError:
        cut = None
    view: list[tuple[Path | bytes, int]] = [(path, _size(path) if cut is None else cut.head)]
    if cut is not None:
        starts = [s for s in segment_starts(path) if s >= cut.head_raw]
        if starts and starts[0] > cut.head_raw:
            dropped = cut.dropped + starts[0] - cut.head_raw
            marker = MARKER.format(dropped=dropped, cap=cut.cap).encode()
            view.append((marker, len(marker)))
        view += [(segment_path(path, s), _size(segment_path(path, s))) for s in starts]
    return view


def _file_pieces(path: Path, offset: int, size: int, chunk: int) -> Iterator[bytes]:
    """``size`` bytes of a file from ``offset``; a segment cut meanwhile yields nothing."""
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        f.seek(offset)
        while size > 0 and (data := f.read(min(chunk, size))):
            size -= len(data)
            yield data


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)


def _write(fd: int, data: memoryview | bytes) -> int:
    """One write; a full disk that accepts nothing raises rather than spinning."""
    written = os.write(fd, data)
    if written == 0 and len(data):
        raise OSError(28, "no space left on device (nothing written)")
    return written


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[_write(fd, view) :]


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
