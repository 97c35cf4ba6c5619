"""A runner's own clone, reset to exactly one commit before each build.

Builds must not see each other's leftovers (build outputs, caches, edited files), so every
build starts from a forced checkout and a clean that also removes ignored files. The calls
block; an asyncio caller runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import git

from superci import defaults
from superci.errors import WorkspaceBroken, WorkspaceError
from superci.gitname import Description, describe
from superci.ownership import claim, clone_advice, write_mark
from superci.pristine import Pristine
from superci.protocol import SHA_RE

log = logging.getLogger(__name__)


#: Settings every git command of superci runs with, above any config file: no hook runs
#: (a build can write them into the clone), no fsmonitor command, no ``ext::`` transport.
SAFE_GIT_CONFIG = {
    "core.hooksPath": os.devnull,
    "core.fsmonitor": "false",
    "protocol.ext.allow": "never",
}

#: Git fails instead of waiting for a password nobody will type, and does not swap a
#: commit for a replacement a build recorded (refs/replace).
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_NO_REPLACE_OBJECTS": "1"}


def git_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """GIT_ENV plus SAFE_GIT_CONFIG as environment, for a ``git clone`` (which has no
    repository to pin yet), after any ``GIT_CONFIG_*`` settings ``base`` (the process's
    environment) already has, so that SAFE_GIT_CONFIG wins."""
    base = os.environ if base is None else base
    try:
        count = max(0, int(base.get("GIT_CONFIG_COUNT", "0")))
    except ValueError:
        count = 0
    env = dict(GIT_ENV)
    for i, (key, value) in enumerate(SAFE_GIT_CONFIG.items(), start=count):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    env["GIT_CONFIG_COUNT"] = str(count + len(SAFE_GIT_CONFIG))
    return env


class Workspace:
    """A runner's clone, which superci may reset and clean at will.

    Opening one claims it for the runner role (see :mod:`superci.ownership`): a clone with
    someone's work in it is refused rather than wiped. Every git command runs pinned to
    this clone's own git dir and work tree, so a clone whose ``.git`` a build removed can
    never lead git to an enclosing repository; such a clone is cloned again instead.
    """

    def __init__(self, path: Path, git_timeout: float = defaults.GIT_TIMEOUT) -> None:
        self.path = Path(path)
        self.git_timeout = git_timeout  # a fetch or submodule update is killed after it
        repo = _open_clone(self.path)
        self.remote_url = _origin_url(repo)  # where a broken clone is cloned from again
        self._repo = self._pin(repo)
        claim(repo, "runner", require_clean=True)
        self._pristine = Pristine.take(self.path / ".git")

    @classmethod
    def clone(cls, source: str, path: Path) -> Workspace:
        """Clone ``source`` into ``path``, so each runner builds in a tree of its own."""
        clone_repository(source, Path(path))
        return cls(Path(path))

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"

    def prepare(self, sha: str) -> None:
        """Make the working tree exactly commit ``sha``, with nothing left from earlier builds.

        What the last build wrote into the git dir is undone first (see
        :mod:`superci.pristine`), and its untracked files (a ``.gitattributes`` git would
        apply) go before the checkout. The index goes too: a build can forge its stat
        data so that git takes an edited file for the committed one; without an index,
        every file is written from the commit.
        """
        if not isinstance(sha, str) or not SHA_RE.fullmatch(sha):
            raise WorkspaceError(f"refusing to check out {sha!r}: not a full 40-hex commit id")
        if self._git_dir_is_real():
            self._pristine.restore()
        if not self._intact():
            self._repair()
        self._fetch(sha)
        self._git("clean", "-x", "-d", "-f", "-f")
        self._forget_index()
        self._git("checkout", "--force", "--detach", sha)
        self._git("clean", "-x", "-d", "-f", "-f")
        if (self.path / ".gitmodules").is_file():
            self._update_submodules()
        self._pristine = Pristine.take(self.path / ".git")  # the state the next build gets
        log.info("workspace %s is at %s", self.path, sha)

    def describe(self, sha: str) -> Description | None:
        """The subject and author of a commit the clone has (after :meth:`prepare`)."""
        return describe(self._repo, sha)

    def _git_dir_is_real(self) -> bool:
        dot_git = self.path / ".git"
        return dot_git.is_dir() and not dot_git.is_symlink()

    def _forget_index(self) -> None:
        index = self.path / ".git" / "index"
        try:
            if index.is_dir() and not index.is_symlink():
                shutil.rmtree(index)
            else:
                index.unlink(missing_ok=True)
        except OSError as e:
            raise WorkspaceError(f"cannot remove {index} before the checkout: {e}") from e

    def _fetch(self, sha: str) -> None:
        """Fetch every remote; a fetch failure only matters when the commit is missing."""
        try:
            self._repo.git.fetch(
                "--all", "--tags", "--prune", "--force", kill_after_timeout=self.git_timeout
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

    def _pin(self, repo: git.Repo) -> git.Repo:
        """Make every git command of ``repo`` use this clone and nothing above it, with
        SAFE_GIT_CONFIG on its command line (git hands it on to the gits it starts).

        Submodule commands still work: git gives the commands it runs inside a submodule
        (``submodule update``, ``submodule foreach``) that submodule's own GIT_DIR.
        """
        root = self.path.resolve()
        repo.git.set_persistent_git_options(c=[f"{k}={v}" for k, v in SAFE_GIT_CONFIG.items()])
        repo.git.update_environment(
            **GIT_ENV,
            GIT_DIR=str(root / ".git"),
            GIT_WORK_TREE=str(root),
            GIT_CEILING_DIRECTORIES=str(root.parent),
        )
        return repo

    def _intact(self) -> bool:
        """Whether the clone still has a git dir of its own that git can read."""
        dot_git = self.path / ".git"
        if dot_git.is_symlink() or not dot_git.is_dir():
            return False
        try:
            self._repo.git.rev_parse("--git-dir")
        except git.GitCommandError:
            return False
        return True

    def _repair(self) -> None:
        """Clone the remote again into a clone that lost its git dir (a build removed it).

        The runner took this clone clean, so its content is a checkout superci made plus
        what builds wrote: replacing the git dir loses nothing of anyone's, and the
        checkout and clean that follow leave exactly the commit. The new git dir is made
        beside the broken one first, so an unreachable remote leaves the clone as it was.
        """
        dot_git = self.path / ".git"
        if self.remote_url is None:
            raise WorkspaceBroken(self._broken_message("it has no remote to clone again from"))
        log.warning(
            "%s has no usable .git any more (did a build remove it?); cloning %s again",
            self.path,
            self.remote_url,
        )
        staging: Path | None = None
        try:
            self.path.mkdir(exist_ok=True)  # a build may have removed the whole folder
            staging = Path(tempfile.mkdtemp(prefix=".superci-repair-", dir=self.path))
            clone_repository(self.remote_url, staging / "clone", no_checkout=True)
            if dot_git.is_symlink() or not dot_git.is_dir():
                dot_git.unlink(missing_ok=True)
            else:
                shutil.rmtree(dot_git)
            os.replace(staging / "clone" / ".git", dot_git)
        except (WorkspaceError, OSError) as e:
            raise WorkspaceBroken(self._broken_message(str(e))) from e
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        self._repo = self._pin(git.Repo(self.path))
        write_mark(dot_git, "runner")
        self._pristine = Pristine.take(dot_git)
        log.info("%s is a clone of %s again", self.path, self.remote_url)

    def _broken_message(self, why: str) -> str:
        source = self.remote_url or "URL"
        return (
            f"the runner's clone {self.path} lost its .git and cannot be repaired ({why}); "
            f"this runner cannot build until it has a clone again: stop it, move {self.path} "
            f"away, make a fresh clone there (git clone {source} {self.path}) and start it again"
        )

    def _has_commit(self, sha: str) -> bool:
        try:
            self._repo.git.cat_file("-e", f"{sha}^{{commit}}")
        except git.GitCommandError:
            return False
        return True

    def _git(self, command: str, *args: str) -> None:
        try:
            getattr(self._repo.git, command)(*args, kill_after_timeout=self.git_timeout)
        except git.GitCommandError as e:
            raise WorkspaceError(f"git {command} failed in {self.path}: {git_message(e)}") from e


def clone_repository(source: str, path: Path, *, no_checkout: bool = False) -> None:
    """``git clone``, with git's own message in the error when it fails."""
    try:
        git.Repo.clone_from(source, Path(path), env=git_environment(), no_checkout=no_checkout)
    except git.GitCommandError as e:
        raise WorkspaceError(f"cannot clone {source} into {path}: {git_message(e)}") from e
    except (git.UnsafeProtocolError, git.UnsafeOptionError) as e:
        raise WorkspaceError(f"refusing to clone {source!r}: {e}") from e
    log.info("cloned %s into %s", source, path)


def _open_clone(path: Path) -> git.Repo:
    """The repository at ``path``, if it is the top of a plain clone with a work tree."""
    try:
        repo = git.Repo(path)
    except git.NoSuchPathError as e:
        raise WorkspaceError(f"workspace {path} does not exist; clone it first") from e
    except git.InvalidGitRepositoryError as e:
        raise WorkspaceError(
            f"workspace {path} is not a git repository; "
            "give the top folder of a clone of the repository to test"
        ) from e
    if repo.bare or repo.working_tree_dir is None:
        raise WorkspaceError(
            f"workspace {path} is a bare repository; a runner needs a clone with a working tree"
        )
    dot_git = path / ".git"
    if dot_git.is_symlink() or not dot_git.is_dir():
        raise WorkspaceError(
            f"workspace {path} has no .git folder of its own (a worktree or submodule?); "
            f"a runner needs a plain clone of its own: {clone_advice(repo, 'runner')}"
        )
    return repo


def _origin_url(repo: git.Repo) -> str | None:
    """The URL of ``origin`` (or of the only remote), or None when there is none."""
    remotes = {remote.name: remote for remote in repo.remotes}
    remote = remotes.get("origin") or (next(iter(remotes.values())) if len(remotes) == 1 else None)
    if remote is None:
        return None
    try:
        return remote.url
    except git.GitCommandError:
        return None


def git_message(e: git.CommandError) -> str:
    """Git's own message, without GitPython's ``stderr: '...'`` wrapping."""
    text = str(e.stderr or "").strip()
    prefix = "stderr: '"
    if text.startswith(prefix) and text.endswith("'"):
        text = text[len(prefix) : -1].strip()
    return text or f"git exited with status {e.status}"
