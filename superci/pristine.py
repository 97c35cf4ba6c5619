"""The files of a runner's git dir that decide what git runs, kept as they were before a
build and put back before the next one.

A build runs in the clone and can write its ``.git``: a ``core.fsmonitor``, ``alias.*``,
``filter.<x>.smudge``, ``include.path`` or ``remote.<x>.uploadpack`` in ``config``, a
``commondir`` that swaps the repository, ``info/attributes`` that send every file through
a filter. The next checkout would run that code or change the files it writes, so the
runner keeps these files in memory (where no build reaches) and restores them, and
removes the submodule git dirs a build added. Hooks are not restored but disabled for
every git command (see ``workspace.git_environment``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Files of a git dir that make git run commands, read other repositories or rewrite
#: what it checks out.
GUARDED = ("config", "commondir", "info/attributes", "info/grafts", "objects/info/alternates")
#: Where git keeps the git dirs of submodules, inside a git dir.
MODULES = "modules"


@dataclass(frozen=True)
class Pristine:
    """The guarded files of a git dir and of its submodules' git dirs, as bytes (None: absent)."""

    git_dir: Path
    files: dict[str, dict[str, bytes | None]]  # git dir (relative, "" = main) -> file -> bytes

    @classmethod
    def take(cls, git_dir: Path) -> Pristine:
        """Record the guarded files as they are now (a state superci trusts)."""
        git_dir = Path(git_dir)
        return cls(git_dir, {rel: _read(git_dir / rel) for rel in _git_dirs(git_dir)})

    def restore(self) -> list[str]:
        """Put every guarded file back and remove submodule git dirs that were not there;
        returns what was changed (for the log)."""
        changed: list[str] = []
        _real_folder(self.git_dir, Path(MODULES), create=False)  # drops a planted symlink
        for rel in _git_dirs(self.git_dir):
            if rel not in self.files:
                shutil.rmtree(self.git_dir / rel, ignore_errors=True)
                changed.append(rel)
        for rel, files in self.files.items():
            if rel and not _real_folder(self.git_dir, Path(rel), create=False):
                continue  # gone: git clones the submodule again
            for name, content in files.items():
                if _put_back(self.git_dir, Path(rel, name), content):
                    changed.append(str(Path(rel, name)))
        if changed:
            log.warning(
                "a build changed %s in %s; restored as they were before it",
                ", ".join(changed), self.git_dir,
            )  # fmt: skip
        return changed


def _read(git_dir: Path) -> dict[str, bytes | None]:
    files: dict[str, bytes | None] = {}
    for name in GUARDED:
        path = git_dir / name
        files[name] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return files


def _git_dirs(git_dir: Path) -> list[str]:
    """The main git dir ("") and every submodule git dir under it, relative to it; a
    symlink is never followed (a build may have planted one)."""
    found = [""]
    for top, dirs, files in os.walk(git_dir / MODULES):
        here = Path(top)
        if "HEAD" in files or "config" in files:  # a git dir: only its own modules/ below
            found.append(str(here.relative_to(git_dir)))
            dirs[:] = [MODULES] if MODULES in dirs else []
    return found


def _put_back(git_dir: Path, rel: Path, content: bytes | None) -> bool:
    """Make ``git_dir/rel`` hold ``content`` (or not exist); True if it had to change."""
    path = git_dir / rel
    if not _real_folder(git_dir, rel.parent, create=content is not None):
        return False  # no folder, so no file in it
    if content is None:
        if not os.path.lexists(path):
            return False
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    if path.is_file() and not path.is_symlink() and path.read_bytes() == content:
        return False
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    fd, temporary = tempfile.mkstemp(prefix=".superci-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.replace(temporary, path)  # replaces a symlink itself, never what it points to
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def _real_folder(git_dir: Path, rel: Path, *, create: bool) -> bool:
    """Whether ``git_dir/rel`` is a real folder inside ``git_dir``; a symlink or file a
    build put on the way is removed first, and with ``create`` missing folders are made."""
    current = git_dir
    for part in rel.parts:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            log.warning("removing %s, which a build put in the clone's git dir", current)
            current.unlink()
        if not current.exists():
            if not create:
                return False
            current.mkdir()
    return True
