"""One build's ``output.log``: written live, bounded on disk, and resumable by offset.

Offsets are counted in bytes of the build's output as the runner produced it ("raw"),
not in bytes of the file, so a runner that resends after a reconnect never duplicates
anything even once the log has been cut. Past ``max_bytes`` the middle of the log is
dropped and replaced by one marker line: the head (how the build started) and the
tail (where test summaries live) are kept. How much was cut is noted in a small
sidecar file, so a restarted dispatcher resumes the same log at the right raw offset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from superci.errors import StorageError

MARKER = "\n[superci: {dropped} bytes of output dropped here to keep this log under {cap} bytes]\n"


class BuildLog:
    """An open ``output.log``; ``raw`` is how many bytes of output it has accounted for."""

    def __init__(self, path: Path, max_bytes: int, *, fresh: bool) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._state_path = path.with_name(f".{path.name}.state")
        self.raw, self.dropped, self._marker_len, self._cut_size = 0, 0, 0, 0
        self._head_len = 0  # bytes kept before the marker, fixed by the first cut
        try:
            if fresh:
                self._state_path.unlink(missing_ok=True)
            self._handle: IO[bytes] = open(path, "wb" if fresh else "ab", buffering=0)  # noqa: SIM115
        except OSError as e:
            raise StorageError(f"cannot open the log {path}: {e}") from e
        if not fresh:
            self._resume()

    def _resume(self) -> None:
        """Continue a log a previous dispatcher process wrote (an adopted build)."""
        size = self._handle.tell()
        raw_at_cut = 0
        if self._state_path.exists():
            state = json.loads(self._state_path.read_text())
            self.dropped, self._marker_len = state["dropped"], state["marker_len"]
            raw_at_cut, self._cut_size = state["raw"], state["size"]
            self._head_len = state.get("head", self.max_bytes // 4)
        self.raw = raw_at_cut + size - self._cut_size

    def append(self, offset: int, data: bytes) -> bytes:
        """Write bytes ``offset``.. of the output; returns the part that was new."""
        if offset > self.raw:
            raise StorageError(f"{self.path}: gap in the output (have {self.raw}, got {offset})")
        new = data[self.raw - offset :]
        if not new:
            return new
        try:
            if self._handle.tell() + len(new) > self.max_bytes:
                self._cut_middle(new)
            else:
                self._handle.write(new)
        except OSError as e:
            raise StorageError(f"cannot write the log {self.path}: {e}") from e
        self.raw += len(new)
        return new

    def _cut_middle(self, new: bytes) -> None:
        """Rewrite the log as head + marker + tail, atomically; if that fails, the log
        stays as it was and open (the caller reports the error)."""
        content = self.path.read_bytes()
        # Once cut, the head is whatever the first cut kept (it may be shorter than a
        # quarter of the cap): taking more would copy the marker into the head.
        head = content[: self._head_len if self._marker_len else self.max_bytes // 4]
        body = content[len(head) + self._marker_len :] + new
        tail = body[-(self.max_bytes // 2) :] if self.max_bytes // 2 else b""
        dropped = self.dropped + len(body) - len(tail)
        marker = MARKER.format(dropped=dropped, cap=self.max_bytes).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_bytes(head + marker + tail)
        cut_size = len(head) + len(marker) + len(tail)
        state = {"raw": self.raw + len(new), "size": cut_size, "dropped": dropped,
                 "marker_len": len(marker), "head": len(head)}  # fmt: skip
        self._state_path.write_text(json.dumps(state))
        self._handle.close()
        try:
            os.replace(tmp, self.path)
        finally:
            self._handle = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self.dropped, self._marker_len, self._head_len = dropped, len(marker), len(head)
        self._cut_size = cut_size

    def close(self) -> None:
        """Flush to disk; the sidecar is no longer needed once the build is over."""
        try:
            os.fsync(self._handle.fileno())
        finally:
            self._handle.close()

    def finish(self) -> None:
        self.close()
        self._state_path.unlink(missing_ok=True)
