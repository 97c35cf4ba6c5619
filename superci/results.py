"""``test_results/<sha>/``: the live ``output.log`` and the atomically written ``result.json``.

``result.json`` is the record a team trusts, so it is written to a temporary file,
fsynced and renamed into place (then the folder is fsynced): a crash leaves either the
old file or the new one, never half of one. The log grows live while the build runs
(see :mod:`superci.buildlog`); reports such as ``junit.xml`` arrive beside it and are
put in place together with the result.

The newest build of a commit keeps those paths; when another build of the commit starts
(or ends without starting), the earlier build's files move to ``builds/<build_id>/``, so
a rebuild never hides what the commit did before.

A commit of several jobs (see :mod:`superci.jobs`) keeps each job's files the same way in
``jobs/<job>/``, and its own ``result.json`` sums its newest round up once every job has
ended (the earlier round's moves to ``builds/<round>/``). The one default job keeps the
commit's own folder.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Generator
from pathlib import Path
from typing import Any

from superci import buildlog, defaults
from superci.buildlog import BuildLog
from superci.errors import ReportTooLarge, StorageError
from superci.jobs import DEFAULT_JOB, folder_name
from superci.protocol import ARTIFACT_NAMES, DATA_CHUNK, check_sha

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
LOG_FILE = "output.log"
#: Bytes of a log read at a time: what one data frame carries.
READ_CHUNK = DATA_CHUNK
#: Where the files of a commit's earlier builds go: ``builds/<build_id>/``.
EARLIER_BUILDS = "builds"
#: Where each job of a commit of several jobs keeps its files: ``jobs/<job>/``.
JOBS_FOLDER = "jobs"


class ResultsFolder:
    """The results root; every commit id is validated before it becomes a path."""

    def __init__(self, root: Path, max_log_bytes: int = defaults.MAX_LOG_BYTES) -> None:
        self.root = root
        self.max_log_bytes = max_log_bytes
        self._logs: dict[tuple[str, str], BuildLog] = {}

    def folder(self, sha: str, job: str = DEFAULT_JOB) -> Path:
        """The folder of a commit's files, or of one of its jobs' (see :func:`folder_name`)."""
        folder = self.root / check_sha(sha)
        return folder if job == DEFAULT_JOB else folder / JOBS_FOLDER / folder_name(job)

    # --- the live log ---------------------------------------------------------------

    def build_folder(self, sha: str, build_id: int, job: str = DEFAULT_JOB) -> Path:
        """Where an earlier build of a commit (or of one of its jobs) keeps its files."""
        return self.folder(sha, job) / EARLIER_BUILDS / str(build_id)

    def start_log(self, sha: str, build_id: int | None = None, job: str = DEFAULT_JOB) -> None:
        """Begin an empty log for a new attempt, so two attempts never mix. The files of
        an earlier build (one whose result is here; any, without ``build_id``) move to
        ``builds/<its id>/``; reports a lost attempt left go."""
        self.close_log(sha, job)
        folder = self._make_folder(sha, job)
        self._set_aside_earlier(folder, build_id)
        for name in ARTIFACT_NAMES:
            for path in (folder / name, folder / f".{name}.part"):
                path.unlink(missing_ok=True)
        self._logs[sha, job] = BuildLog(folder / LOG_FILE, self.max_log_bytes, fresh=True)

    def _log(self, sha: str, job: str) -> BuildLog:
        """The open log, or the existing file continued (a build adopted after a restart)."""
        log_ = self._logs.get((sha, job))
        if log_ is None:
            path = self._make_folder(sha, job) / LOG_FILE
            log_ = self._logs[sha, job] = BuildLog(path, self.max_log_bytes, fresh=False)
        return log_

    def _make_folder(self, sha: str, job: str = DEFAULT_JOB) -> Path:
        folder = self.folder(sha, job)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create {folder}: {e}") from e
        return folder

    def log_size(self, sha: str, job: str = DEFAULT_JOB) -> int:
        """Bytes of output received so far (counting any that were cut from the middle)."""
        if (sha, job) not in self._logs and not (self.folder(sha, job) / LOG_FILE).exists():
            return 0
        return self._log(sha, job).raw

    def append_output(
        self, sha: str, offset: int, data: bytes, *, skipped: bool = False, job: str = DEFAULT_JOB
    ) -> bytes:
        """Write bytes ``offset``.. of the output; bytes already written are skipped, so a
        runner that resends after a reconnect never duplicates output. Returns the new
        bytes (for the people following the log). ``skipped``: the runner no longer has
        the bytes before ``offset`` (see :meth:`BuildLog.append`)."""
        return self._log(sha, job).append(offset, data, skipped=skipped)

    def read_log(
        self, sha: str, offset: int = 0, build_id: int | None = None, chunk: int = READ_CHUNK,
        job: str = DEFAULT_JOB,
    ) -> Generator[bytes, None, None]:  # fmt: skip
        """The log (head, marker, tail; bounded by the cap) from ``offset`` as it stands
        now, in pieces of up to ``chunk`` bytes, of the newest build or of ``build_id``;
        nothing if there is none. Output that arrives later is not included (a follower
        receives it live), and pieces are read one at a time, so many readers of a large
        log cost the dispatcher one piece each."""
        folder = self._files_of(sha, build_id, job)
        if folder is None:
            return buildlog.nothing()
        return buildlog.pieces(folder / LOG_FILE, offset, chunk)

    def log_view_size(self, sha: str, build_id: int | None = None, job: str = DEFAULT_JOB) -> int:
        """Bytes :meth:`read_log` yields from offset 0 now (0 when there is no log)."""
        folder = self._files_of(sha, build_id, job)
        return 0 if folder is None else buildlog.view_size(folder / LOG_FILE)

    def log_file(
        self, sha: str, build_id: int | None = None, job: str = DEFAULT_JOB
    ) -> Path | None:
        """The log as one plain file (what a download of a finished build serves with
        ranges), or None when there is none or it is in parts (cut, being written)."""
        folder = self._files_of(sha, build_id, job)
        if folder is None:
            return None
        path = folder / LOG_FILE
        return path if buildlog.is_plain(path) else None

    def close_log(self, sha: str, job: str = DEFAULT_JOB) -> None:
        """Flush the log to disk and stop writing it."""
        log_ = self._logs.pop((sha, job), None)
        if log_ is not None:
            log_.finish()

    # --- reports --------------------------------------------------------------------

    def append_artifact(
        self,
        sha: str,
        name: str,
        offset: int,
        data: bytes,
        max_bytes: int | None = None,
        job: str = DEFAULT_JOB,
    ) -> None:
        """Receive bytes ``offset``.. of a report; it is put in place with the result.
        A report that would grow past ``max_bytes`` (default: the largest a runner
        sends) is dropped, whatever the runner sent before: :class:`ReportTooLarge`."""
        if name not in ARTIFACT_NAMES:
            raise StorageError(f"unknown report {name!r}")
        max_bytes = defaults.MAX_REPORT_BYTES if max_bytes is None else max_bytes
        part = self._make_folder(sha, job) / f".{name}.part"
        if offset + len(data) > max_bytes:
            part.unlink(missing_ok=True)
            raise ReportTooLarge(
                f"{name} of {sha[:12]} would exceed {max_bytes} bytes (the runner sent bytes "
                f"up to {offset + len(data)}); the report is dropped"
            )
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

    def write_result(self, sha: str, result: dict[str, Any], job: str = DEFAULT_JOB) -> Path:
        """Atomically replace ``result.json``; the log is closed and synced first. The
        result of another build (one that ended without starting) moves aside first."""
        folder = self.folder(sha, job)
        try:
            self.close_log(sha, job)
            folder.mkdir(parents=True, exist_ok=True)
            if isinstance(result.get("build_id"), int):
                self._set_aside_earlier(folder, result["build_id"])
            self._publish_artifacts(folder)
            for stale in folder.glob(f".{RESULT_FILE}.*"):  # a crash mid-write left it
                stale.unlink(missing_ok=True)
            return _atomic_write(folder / RESULT_FILE, json.dumps(result, indent=2) + "\n")
        except OSError as e:
            raise StorageError(f"cannot write the result of {sha} to {folder}: {e}") from e

    def read_result(
        self, sha: str, build_id: int | None = None, job: str = DEFAULT_JOB
    ) -> dict[str, Any] | None:
        """``result.json`` of the newest build, or of ``build_id``; None if there is none."""
        folder = self._files_of(sha, build_id, job)
        return None if folder is None else _read_json(folder / RESULT_FILE)

    def new_round(self, sha: str, several: bool) -> None:
        """A new round of the commit's jobs was queued: what an earlier round left at the
        top of the commit's folder moves to ``builds/<id>/`` (its document, if it had
        several jobs; the one default job's files, before a round of ``several``), so the
        top never shows another round's verdict as this one's."""
        folder = self.folder(sha)
        if not folder.is_dir():
            return
        self._set_aside_commit(folder, None)
        if several:
            self._set_aside_earlier(folder, None)

    def write_commit(self, sha: str, document: dict[str, Any]) -> Path:
        """Atomically write the commit's ``result.json`` for a round of several jobs (once
        every job has ended: what a team trusts is final); that of an earlier round
        (``document["round"]`` tells) moves to ``builds/<round>/`` first."""
        folder = self._make_folder(sha)
        try:
            self._set_aside_commit(folder, document.get("round"))
            self._set_aside_earlier(folder, None)  # a default job's, should new_round have failed
            return _atomic_write(folder / RESULT_FILE, json.dumps(document, indent=2) + "\n")
        except OSError as e:
            raise StorageError(f"cannot write {folder / RESULT_FILE}: {e}") from e

    def _set_aside_commit(self, folder: Path, keep: int | None) -> None:
        """Move the document of an earlier round of several jobs (a ``result.json`` with a
        ``round`` and no ``build_id``) to ``builds/<round>/``, unless it is round ``keep``."""
        try:
            earlier = _read_json(folder / RESULT_FILE)
        except (OSError, ValueError) as e:
            raise StorageError(f"cannot read {folder / RESULT_FILE}: {e}") from e
        if not isinstance(earlier, dict) or "build_id" in earlier:
            return
        old = earlier.get("round")
        if not isinstance(old, int) or isinstance(old, bool) or old == keep:
            return
        target = folder / EARLIER_BUILDS / str(old)
        try:
            target.mkdir(parents=True, exist_ok=True)
            os.replace(folder / RESULT_FILE, target / RESULT_FILE)
            _fsync_folder(folder)
        except OSError as e:
            raise StorageError(f"cannot keep round {old}'s result in {target}: {e}") from e

    # --- earlier builds -------------------------------------------------------------

    def _files_of(self, sha: str, build_id: int | None, job: str = DEFAULT_JOB) -> Path | None:
        """The folder with a build's files: its own under ``builds/``, else the commit's
        (or its job's) while no other build's result is there; None if it has none."""
        folder = self.folder(sha, job)
        if build_id is None:
            return folder
        earlier = self.build_folder(sha, build_id, job)
        if earlier.is_dir():
            return earlier
        newest = _build_id_of(folder)
        return folder if newest in (None, build_id) else None

    def _set_aside_earlier(self, folder: Path, build_id: int | None) -> None:
        """Move the files of the build whose result is in ``folder`` to ``builds/<id>/``,
        unless it is ``build_id`` itself; the result goes last, so a crash midway is
        finished by the next call."""
        earlier = _build_id_of(folder)
        if earlier is None or earlier == build_id:
            return
        target = folder / EARLIER_BUILDS / str(earlier)
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name in (LOG_FILE, *ARTIFACT_NAMES, RESULT_FILE):
                if (folder / name).exists() and not (target / name).exists():
                    os.replace(folder / name, target / name)
            _fsync_folder(target)
            _fsync_folder(folder)
        except OSError as e:
            raise StorageError(f"cannot keep build {earlier}'s files in {target}: {e}") from e
        log.info("kept the files of build %d of %s in %s", earlier, folder.name[:12], target)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(path.read_text("utf-8"))
        return document
    except FileNotFoundError:
        return None


def _build_id_of(folder: Path) -> int | None:
    """The build whose result is in ``folder``, if one is there and says so."""
    try:
        result = _read_json(folder / RESULT_FILE)
    except (OSError, ValueError):
        return None
    build_id = result.get("build_id") if isinstance(result, dict) else None
    return build_id if isinstance(build_id, int) and not isinstance(build_id, bool) else None


def _atomic_write(path: Path, text: str) -> Path:
    """Write, fsync, rename into place, fsync the folder. The temporary file is created
    like any other (mode 0666 less the umask, as ``output.log``), not 0600 as by mkstemp:
    a result must be as readable as the log beside it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
