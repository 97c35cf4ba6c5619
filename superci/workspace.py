"""A runner's own clone, reset to exactly one commit before each build.

Builds must not see each other's leftovers (build outputs, caches, edited files), so every
build starts from a forced checkout and a clean that also removes ignored files. The calls
block; an asyncio caller runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import git

from superci import defaults
from superci.errors import WorkspaceError
from superci.protocol import SHA_RE

log = logging.getLogger(__name__)


#: Git must fail instead of waiting for a password nobody will type.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0"}


class Workspace:
    """A working-tree clone that superci may reset and clean at will."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            repo = git.Repo(self.path)
        except git.NoSuchPathError as e:
            raise WorkspaceError(f"workspace {self.path} does not exist; clone it first") from e
        except git.InvalidGitRepositoryError as e:
            raise WorkspaceError(
                f"workspace {self.path} is not a git repository; "
                "give the top folder of a clone of the repository to test"
            ) from e
        if repo.bare or repo.working_tree_dir is None:
            raise WorkspaceError(
                f"workspace {self.path} is a bare repository; a runner needs a clone "
                "with a working tree"
            )
        repo.git.update_environment(**GIT_ENV)
        self._repo = repo

    @classmethod
    def clone(cls, source: str, path: Path) -> Workspace:
        """Clone ``source`` into ``path``, so each runner builds in a tree of its own."""
        try:
            git.Repo.clone_from(source, Path(path), env=GIT_ENV)
        except git.GitCommandError as e:
            raise WorkspaceError(f"cannot clone {source} into {path}: {git_message(e)}") from e
        except (git.UnsafeProtocolError, git.UnsafeOptionError) as e:
            raise WorkspaceError(f"refusing to clone {source!r}: {e}") from e
        log.info("cloned %s into %s", source, path)
        return cls(Path(path))

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"

    def prepare(self, sha: str) -> None:
        """Make the working tree exactly commit ``sha``, with nothing left from earlier builds."""
        if not isinstance(sha, str) or not SHA_RE.fullmatch(sha):
            raise WorkspaceError(f"refusing to check out {sha!r}: not a full 40-hex commit id")
        self._fetch(sha)
        self._git("checkout", "--force", "--detach", sha)
        self._git("clean", "-x", "-d", "-f", "-f")
        if (self.path / ".gitmodules").is_file():
            self._update_submodules()
        log.info("workspace %s is at %s", self.path, sha)

    def _fetch(self, sha: str) -> None:
        """Fetch every remote; a fetch failure only matters when the commit is missing."""
        try:
            self._repo.git.fetch(
                "--all", "--tags", "--prune", "--force", kill_after_timeout=defaults.GIT_TIMEOUT
            )
        except git.GitCommandError as e:
            if not self._has_commit(sha):
                raise WorkspaceError(
                    f"commit {sha} not found in {self.path}: fetching failed: {git_message(e)}"
                ) from e
            log.warning(
                "fetching into %s failed, building %s from the local copy: %s",
                self.path,
                sha,
                git_message(e),
            )
            return
        if not self._has_commit(sha):
            raise WorkspaceError(
                f"commit {sha} not found in {self.path} after fetching all remotes; "
                "is it pushed to a branch or tag the clone fetches?"
            )

    def _update_submodules(self) -> None:
        """Check out submodules as recorded, following URL changes, and clean them too."""
        self._git("submodule", "sync", "--recursive")
        self._git("submodule", "update", "--init", "--recursive", "--force")
        self._git("submodule", "foreach", "--recursive", "git clean -x -d -f -f")

    def _has_commit(self, sha: str) -> bool:
        try:
            self._repo.git.cat_file("-e", f"{sha}^{{commit}}")
        except git.GitCommandError:
            return False
        return True

    def _git(self, command: str, *args: str) -> None:
        try:
            getattr(self._repo.git, command)(*args, kill_after_timeout=defaults.GIT_TIMEOUT)
        except git.GitCommandError as e:
            raise WorkspaceError(f"git {command} failed in {self.path}: {git_message(e)}") from e


def git_message(e: git.CommandError) -> str:
    """Git's own message, without GitPython's ``stderr: '...'`` wrapping."""
    text = str(e.stderr or "").strip()
    prefix = "stderr: '"
    if text.startswith(prefix) and text.endswith("'"):
        text = text[len(prefix) : -1].strip()
    return text or f"git exited with status {e.status}"
