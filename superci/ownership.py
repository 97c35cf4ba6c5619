"""Which superci process a clone belongs to, recorded in a small file inside its git dir.

A runner resets and cleans its clone before every build (``checkout --force`` and
``clean -xdff``), which would destroy a person's uncommitted edits, a ``.env`` or a
virtualenv. So a runner only takes a clone that is clean the first time it sees it, and
then marks it as its own; from then on the clone's content is what superci made plus what
builds wrote. The observer marks its clone too (it never changes the work tree), so that a
runner and an observer never share one clone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import git

from superci.errors import WorkspaceError

log = logging.getLogger(__name__)

Role = Literal["runner", "observer"]
ROLES: tuple[Role, ...] = ("runner", "observer")

#: The mark's file name, inside the clone's git dir (where no build or checkout looks).
MARK_FILE = "superci-owner"
_ARTICLE: dict[Role, str] = {"runner": "a", "observer": "an"}
#: How many offending files a refusal lists.
SHOWN_FILES = 5


@dataclass(frozen=True)
class Mark:
    """What the mark says: which role took the clone, when and on which host."""

    role: Role
    created: str
    host: str


def mark_path(git_dir: Path) -> Path:
    return Path(git_dir) / MARK_FILE


def read_mark(git_dir: Path) -> Mark | None:
    """The clone's mark, or None when no superci process has taken it yet."""
    path = mark_path(git_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise WorkspaceError(
            f"cannot read {path}: {e}; remove it if this clone is superci's"
        ) from e
    if not isinstance(data, dict) or data.get("role") not in ROLES:
        raise WorkspaceError(
            f"{path} does not say which superci process owns this clone; "
            "remove it if this clone is superci's"
        )
    return Mark(role=data["role"], created=str(data.get("created")), host=str(data.get("host")))


def write_mark(git_dir: Path, role: Role) -> Mark:
    """Record ``role`` as the clone's owner; atomic, so a crash never leaves half a mark."""
    mark = Mark(role=role, created=datetime.now(UTC).isoformat(), host=socket.gethostname())
    text = json.dumps({"role": mark.role, "created": mark.created, "host": mark.host})
    fd, temporary = tempfile.mkstemp(prefix=f".{MARK_FILE}-", dir=git_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, mark_path(git_dir))
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return mark


def claim(repo: git.Repo, role: Role, *, require_clean: bool) -> Mark:
    """Take the clone for ``role``, or refuse it with a message that says what to do.

    A clone marked by the other role is refused. An unmarked clone is taken as is, or, with
    ``require_clean`` (a runner, which deletes what it finds), only when git reports
    nothing in it but committed files: no change, no untracked and no ignored file.
    """
    git_dir = Path(repo.git_dir)
    where = repo.working_tree_dir or repo.git_dir
    mark = read_mark(git_dir)
    if mark is not None:
        if mark.role != role:
            raise WorkspaceError(
                f"{where} is the {mark.role}'s clone (marked in {mark_path(git_dir)} on "
                f"{mark.host} at {mark.created}); {_ARTICLE[role]} {role} needs a clone of "
                f"its own: {clone_advice(repo, role)}"
            )
        return mark
    if require_clean:
        found = foreign_files(repo)
        if found:
            raise WorkspaceError(
                f"refusing to use {where} as a runner's clone: before every build a runner "
                "deletes uncommitted changes, untracked and ignored files, and this clone "
                f"has some that superci did not make:\n{_listing(found)}\n"
                "Make a fresh clone for the runner and give its path instead: "
                + clone_advice(repo, role)
            )
    mark = write_mark(git_dir, role)
    log.info("%s is now this %s's clone (%s)", where, role, mark_path(git_dir))
    return mark


def _listing(lines: list[str]) -> str:
    shown = [f"  {line}" for line in lines[:SHOWN_FILES]]
    if len(lines) > SHOWN_FILES:
        shown.append(f"  ... and {len(lines) - SHOWN_FILES} more")
    return "\n".join(shown)


def foreign_files(repo: git.Repo) -> list[str]:
    """git's one-line report of each changed, untracked or ignored file (empty: clean)."""
    try:
        status = repo.git.status("--porcelain", "--ignored", "--untracked-files=all")
    except git.GitCommandError as e:
        raise WorkspaceError(f"cannot read the status of {repo.working_tree_dir}: {e}") from e
    return [line for line in status.splitlines() if line.strip()]


def clone_advice(repo: git.Repo, role: Role) -> str:
    """The command that makes a clone of the same repository for ``role``, beside this one."""
    try:
        source = str(repo.remote("origin").url)
    except ValueError:
        source = str(repo.working_tree_dir or repo.git_dir)
    here = Path(repo.working_tree_dir or repo.git_dir)
    return f"git clone {source} {here.parent / (here.name + '-' + role)}"
