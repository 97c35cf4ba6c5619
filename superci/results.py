"""``test_results/<sha>/``: the live ``output.log`` and the atomically written ``result.json``.

``result.json`` is the record a team trusts, so it is written to a temporary file,
fsynced and renamed into place (then the folder is fsynced): a crash leaves either the
old file or the new one, never half of one. The log grows live while the build runs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from superci.errors import StorageError
from superci.protocol import check_sha

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
LOG_FILE = "output.log"


class ResultsFolder:
    """The results root; every commit id is validated before it becomes a path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._logs: dict[str, IO[bytes]] = {}

    def folder(self, sha: str) -> Path:
        return self.root / check_sha(sha)

    # --- the live log ---------------------------------------------------------------

    def start_log(self, sha: str) -> None:
        """Begin an empty log for a new attempt, so two attempts never mix."""
        self.close_log(sha)
        self._open_log(sha, "wb")

    def _open_log(self, sha: str, mode: str) -> IO[bytes]:
        folder = self.folder(sha)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = self._logs[sha] = open(folder / LOG_FILE, mode, buffering=0)  # noqa: SIM115
        except OSError as e:
            raise StorageError(f"cannot open the log of {sha} in {folder}: {e}") from e
        return handle

    def log_size(self, sha: str) -> int:
        handle = self._logs.get(sha)
        if handle is not None:
            return handle.tell()
        try:
            return (self.folder(sha) / LOG_FILE).stat().st_size
        except FileNotFoundError:
            return 0

    def append_output(self, sha: str, offset: int, data: bytes) -> None:
        """Write bytes ``offset``.. of the log; bytes already written are skipped, so a
        runner that resends after a reconnect never duplicates output."""
        handle = self._logs.get(sha) or self._open_log(sha, "ab")  # "ab": an adopted build's log
        size = handle.tell()
        if offset > size:
            raise StorageError(f"output of {sha} has a gap: have {size} bytes, got offset {offset}")
        try:
            handle.write(data[size - offset :])
        except OSError as e:
            raise StorageError(f"cannot write the log of {sha}: {e}") from e

    def close_log(self, sha: str) -> None:
        """Flush the log to disk and stop writing it."""
        handle = self._logs.pop(sha, None)
        if handle is not None:
            try:
                os.fsync(handle.fileno())
            finally:
                handle.close()

    # --- the result -----------------------------------------------------------------

    def write_result(self, sha: str, result: dict[str, Any]) -> Path:
        """Atomically replace ``result.json``; the log is closed and synced first."""
        folder = self.folder(sha)
        try:
            self.close_log(sha)
            folder.mkdir(parents=True, exist_ok=True)
            return _atomic_write(folder / RESULT_FILE, json.dumps(result, indent=2) + "\n")
        except OSError as e:
            raise StorageError(f"cannot write the result of {sha} to {folder}: {e}") from e

    def read_result(self, sha: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder(sha) / RESULT_FILE).read_text("utf-8"))
        except FileNotFoundError:
            return None


def _atomic_write(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
