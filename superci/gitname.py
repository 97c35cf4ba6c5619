"""A commit named the way git names it (``HEAD``, a tag, a short id, a branch), resolved
in the clone a command runs in, with the branch it is on: what ``superci notify`` sends;
and a commit described as people know it (its subject and author), which every part
that has git sends along.

The choice of branch is a plain function of what git reports (:func:`choose_branch`);
the rest asks git through GitPython.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import git

from superci import protocol
from superci.errors import WorkspaceError

log = logging.getLogger(__name__)

#: The remote whose branches are preferred when only remote-tracking branches hold a commit.
PREFERRED_REMOTE = "origin"


@dataclass(frozen=True)
class NamedCommit:
    """A full commit id and the branch to record it on."""

    sha: str
    branch: str


@dataclass(frozen=True)
class Description:
    """A commit as people know it: its subject (first line) and its author's name, each
    cut to what the protocol carries."""

    subject: str
    author: str


def describe(repo: git.Repo, sha: str) -> Description | None:
    """How ``repo`` describes commit ``sha`` (a full id); None when git cannot say, and
    then the runner that checks it out says it instead."""
    try:
        text = str(repo.git.log("-1", "--no-show-signature", "--format=%an%x00%s", sha))
    except git.GitCommandError as e:
        log.debug("cannot describe %s: %s", sha, e)
        return None
    author, _, subject = text.partition("\0")
    return Description(
        _bounded(subject, protocol.MAX_SUBJECT), _bounded(author, protocol.MAX_AUTHOR)
    )


def _bounded(text: str, limit: int) -> str:
    """``text`` on one line as valid UTF-8 (git passes on bytes of other encodings),
    cut to ``limit`` characters with an ellipsis."""
    text = " ".join(text.encode("utf-8", "replace").decode("utf-8").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def open_clone(path: Path | None = None) -> git.Repo | None:
    """The repository ``path`` (default: here, or ``$GIT_DIR``) is in, if any."""
    try:
        return git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def where(repo: git.Repo) -> str:
    return str(repo.working_tree_dir or repo.git_dir)


def full_id(repo: git.Repo, name: str) -> str | None:
    """The commit ``name`` means to git (anything ``git rev-parse`` takes), or None."""
    if not name or name.startswith("-"):
        return None
    try:
        return str(
            repo.git.rev_parse("--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}")
        )
    except git.GitCommandError:
        return None


def resolve(repo: git.Repo, name: str, branch: str | None = None) -> NamedCommit | None:
    """The commit ``name`` means in ``repo`` and its branch (``branch`` if given); None if
    git does not know the name. Raises :class:`WorkspaceError` if no branch holds it."""
    sha = full_id(repo, name)
    if sha is None:
        return None
    if branch is not None:
        return NamedCommit(sha, branch)
    try:
        chosen = choose_branch(
            named=_branch_named(repo, name),
            current=None if repo.head.is_detached else repo.active_branch.name,
            local=_refs_containing(repo, sha, "refs/heads"),
            remote=_refs_containing(repo, sha, "refs/remotes"),
        )
    except git.GitCommandError as e:
        raise WorkspaceError(f"cannot find the branch of {name} in {where(repo)}: {e}") from e
    if chosen is None:
        raise WorkspaceError(
            f"commit {sha[:12]} ({name}) is on no branch of {where(repo)}; say which with --branch"
        )
    log.debug("%s is commit %s on branch %s", name, sha, chosen)
    return NamedCommit(sha, chosen)


def choose_branch(
    named: str | None, current: str | None, local: Sequence[str], remote: Sequence[str]
) -> str | None:
    """The branch to record a commit on: the one it was named by, else the current branch
    if it holds the commit, else a local branch that does, else a remote-tracking one
    (``refs/remotes/<remote>/<branch>``, preferring origin's), its remote name dropped."""
    if named is not None:
        return named
    if current is not None and current in local:
        return current
    if local:
        return local[0]
    tracking = [ref.split("/", 3)[2:] for ref in remote]
    tracking = [parts for parts in tracking if len(parts) == 2 and parts[1] != "HEAD"]
    tracking.sort(key=lambda parts: parts[0] != PREFERRED_REMOTE)  # stable: keeps git's order
    return tracking[0][1] if tracking else None


def _branch_named(repo: git.Repo, name: str) -> str | None:
    """The branch ``name`` is (``HEAD`` is the current one), without its remote's name;
    ``name`` is one :func:`full_id` took, so it is no option."""
    try:
        full = str(repo.git.rev_parse("--symbolic-full-name", name))
    except git.GitCommandError:
        return None
    if full.startswith("refs/heads/"):
        return full.removeprefix("refs/heads/")
    if full.startswith("refs/remotes/"):
        parts = full.split("/", 3)[2:]
        return parts[1] if len(parts) == 2 and parts[1] != "HEAD" else None
    return None


def _refs_containing(repo: git.Repo, sha: str, prefix: str) -> list[str]:
    fmt = "%(refname:lstrip=2)" if prefix == "refs/heads" else "%(refname)"
    out = str(repo.git.for_each_ref("--contains", sha, f"--format={fmt}", prefix))
    return out.splitlines()
