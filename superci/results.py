"""``test_results/<sha>/``: the live ``output.log`` and the atomically written ``result.json``.

``result.json`` is the record a team trusts, so it is written to a temporary file,
fsynced and renamed into place (then the folder is fsynced): a crash leaves either the
old file or the new one, never half of one. The log grows live while the build runs
(see :mod:`superci.buildlog`); reports such as ``junit.xml`` arrive beside it and are
put in place together with the result.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from superci import defaults
from superci.buildlog import BuildLog
from superci.errors import StorageError
from superci.protocol import ARTIFACT_NAMES, check_sha

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
LOG_FILE = "output.log"


class ResultsFolder:
    """The results root; every commit id is validated before it becomes a path."""

    def __init__(self, root: Path, max_log_bytes: int = defaults.MAX_LOG_BYTES) -> None:
        self.root = root
        self.max_log_bytes = max_log_bytes
        self._logs: dict[str, BuildLog] = {}

    def folder(self, sha: str) -> Path:
        return self.root / check_sha(sha)

    # --- the live log ---------------------------------------------------------------

    def start_log(self, sha: str) -> None:
        """Begin an empty log for a new attempt, so two attempts never mix; reports of an
        earlier build of the commit go too."""
        self.close_log(sha)
        folder = self._make_folder(sha)
        for name in ARTIFACT_NAMES:
            for path in (folder / name, folder / f".{name}.part"):
                path.unlink(missing_ok=True)
        self._logs[sha] = BuildLog(folder / LOG_FILE, self.max_log_bytes, fresh=True)

    def _log(self, sha: str) -> BuildLog:
        """The open log, or the existing file continued (a build adopted after a restart)."""
        log_ = self._logs.get(sha)
        if log_ is None:
            path = self._make_folder(sha) / LOG_FILE
            log_ = self._logs[sha] = BuildLog(path, self.max_log_bytes, fresh=False)
        return log_

    def _make_folder(self, sha: str) -> Path:
        folder = self.folder(sha)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create {folder}: {e}") from e
        return folder

    def log_size(self, sha: str) -> int:
        """Bytes of output received so far (counting any that were cut from the middle)."""
        if sha not in self._logs and not (self.folder(sha) / LOG_FILE).exists():
            return 0
        return self._log(sha).raw

    def append_output(self, sha: str, offset: int, data: bytes) -> bytes:
        """Write bytes ``offset``.. of the output; bytes already written are skipped, so a
        runner that resends after a reconnect never duplicates output. Returns the new
        bytes (for the people following the log)."""
        return self._log(sha).append(offset, data)

    def read_log(self, sha: str, offset: int = 0) -> bytes:
        """The log file from ``offset`` (bounded by the cap); empty if there is none."""
        try:
            with open(self.folder(sha) / LOG_FILE, "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def close_log(self, sha: str) -> None:
        """Flush the log to disk and stop writing it."""
        log_ = self._logs.pop(sha, None)
        if log_ is not None:
            log_.finish()

    # --- reports --------------------------------------------------------------------

    def append_artifact(self, sha: str, name: str, offset: int, data: bytes) -> None:
        """Receive bytes ``offset``.. of a report; it is put in place with the result."""
        if name not in ARTIFACT_NAMES:
            raise StorageError(f"unknown report {name!r}")
        part = self._make_folder(sha) / f".{name}.part"
        try:
            size = part.stat().st_size if part.exists() else 0
            if offset > size:
                raise StorageError(f"{part}: gap in the report (have {size}, got {offset})")
            with open(part, "r+b" if part.exists() else "wb") as f:
                f.seek(offset)
                f.write(data)
        except OSError as e:
            raise StorageError(f"cannot write {part}: {e}") from e

    def _publish_artifacts(self, folder: Path) -> None:
        for name in ARTIFACT_NAMES:
            part = folder / f".{name}.part"
            if part.exists():
                with open(part, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(part, folder / name)

    # --- the result -----------------------------------------------------------------

    def write_result(self, sha: str, result: dict[str, Any]) -> Path:
        """Atomically replace ``result.json``; the log is closed and synced first."""
        folder = self.folder(sha)
        try:
            self.close_log(sha)
            folder.mkdir(parents=True, exist_ok=True)
            self._publish_artifacts(folder)
            for stale in folder.glob(f".{RESULT_FILE}.*"):  # a crash mid-write left it
                stale.unlink(missing_ok=True)
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
