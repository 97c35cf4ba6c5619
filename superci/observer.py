"""Polling a git clone for new commits and asking the dispatcher to build each one.

What was handed over is remembered as a git ref inside the clone
(``refs/superci/delivered/<branch>``), moved one commit at a time and only after the
dispatcher acknowledged that commit. Before anything is delivered, the tip seen on the
first look is kept as ``refs/superci/start/<branch>``, so commits made while the
dispatcher is still unreachable are all built once it answers. A crash, a restart or
an absent dispatcher therefore loses nothing and repeats nothing (except, at worst,
the one commit acknowledged just before a crash, which the dispatcher recognises as
already known).
"""

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import git

from superci.backoff import Backoff
from superci.errors import ConfigError, SuperCIError, WorkspaceError
from superci.gitname import Description, describe
from superci.ownership import claim
from superci.settings import ObserverSettings, with_given
from superci.workspace import git_message

log = logging.getLogger(__name__)

#: deliver(sha, branch): returns only once the dispatcher acknowledged the build request;
#: raises DispatcherUnavailable (or another SuperCIError) when it did not.
Deliver = Callable[[str, str], None]

#: Where the last delivered commit of each watched branch is remembered.
DELIVERED_REF_PREFIX = "refs/superci/delivered/"
#: Where the tip seen on the first look at a branch waits until it is delivered.
START_REF_PREFIX = "refs/superci/start/"


class Observer:
    """Watches branches of one clone and delivers every new commit once, oldest first."""

    def __init__(
        self,
        repo_path: Path,
        deliver: Deliver,
        branches: Sequence[str] = (),
        max_backlog: int | None = None,
        *,
        settings: ObserverSettings | None = None,
    ) -> None:
        """The tunables come from ``settings``; ``max_backlog``, when given, overrides it."""
        self.settings = with_given(settings or ObserverSettings(), max_backlog=max_backlog)
        if self.settings.max_backlog < 1:
            raise ConfigError(
                f"the backlog limit must be at least 1 commit, not {self.settings.max_backlog}"
            )
        self._path = Path(repo_path)
        self._repo = _open_repo(self._path)
        claim(self._repo, "observer", require_clean=False)  # it never touches the work tree
        # Non-interactive: a remote asking for a password must fail, not wait for a terminal.
        self._repo.git.update_environment(GIT_TERMINAL_PROMPT="0")
        self._deliver = deliver
        names = [_check_branch(self._repo, name) for name in branches]
        self._branches = tuple(dict.fromkeys(names)) or (_current_branch(self._repo, self._path),)

    @property
    def branches(self) -> tuple[str, ...]:
        """The watched branch names, as given (or the clone's current branch)."""
        return self._branches

    def describe(self, sha: str) -> Description | None:
        """The subject and author of a commit of the clone, to send along with it."""
        return describe(self._repo, sha)

    def poll_once(self) -> list[tuple[str, str]]:
        """Fetch, then deliver each watched branch's new commits, oldest first.

        Returns the (sha, branch) pairs delivered in this step. When delivery fails on a
        branch, that branch's remaining commits stay pending, in order, for the next poll;
        the other branches are still tried, and then the first failure is raised so that
        the caller can back off. Commits delivered before it are already remembered.
        """
        self._forget_lost_commits()
        self._fetch()
        delivered: list[tuple[str, str]] = []
        failures: list[SuperCIError] = []
        for branch in self._branches:
            try:
                self._catch_up(branch, delivered)
            except SuperCIError as e:
                log.warning("branch %s: %s; its next commits wait for the next poll", branch, e)
                failures.append(e)
        if failures:
            raise failures[0]
        return delivered

    def run(self, interval: float, stop: threading.Event) -> None:
        """Call poll_once every ``interval`` seconds until ``stop`` is set.

        After a failed poll the next one (fetch included) comes after a backoff delay
        instead, growing while failures go on, so an absent dispatcher is not hammered and
        is caught up with soon after it is back. A SuperCIError never ends the loop.
        """
        if interval <= 0:
            raise ConfigError(f"the poll interval must be above 0 seconds, not {interval}")
        backoff = Backoff()
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
            except SuperCIError as e:
                delay = backoff.next_delay()
                log.info("poll failed (%s); next try in %.2fs", e, delay)
            else:
                backoff.reset()  # polls start every `interval`, however long one takes
                delay = max(0.0, interval - (time.monotonic() - started))
            stop.wait(delay)

    def _forget_lost_commits(self) -> None:
        """Drop a delivered mark whose commit the clone no longer has (rewritten and gc'd).

        Done before fetching, because git refuses to fetch while a ref points at a missing
        object. Without a mark, the branch's tip alone is delivered, as on a first run.
        """
        for ref in [
            p + b for b in self._branches for p in (DELIVERED_REF_PREFIX, START_REF_PREFIX)
        ]:
            last = self._resolve(ref)
            if last is not None and self._resolve(f"{last}^{{commit}}") is None:
                log.warning(
                    "the commit %s remembered in %s is gone from %s (history rewritten?); "
                    "delivering the tip only",
                    last,
                    ref,
                    self._path,
                )
                self._git("update-ref", "-d", ref)

    def _fetch(self) -> None:
        """Update every remote's refs; an unreachable remote leaves its refs as they were.

        Plain ``git fetch`` through GitPython's command wrapper: Remote.fetch() insists on a
        configured refspec and parses progress output that is not needed here.
        """
        for remote in self._repo.remotes:
            try:
                self._repo.git.fetch(
                    "--prune", "--", remote.name, kill_after_timeout=self.settings.fetch_timeout
                )
            except git.CommandError as e:
                log.warning(
                    "fetch from remote %r of %s failed, going on with the refs fetched before: %s",
                    remote.name,
                    self._path,
                    git_message(e),
                )

    def _catch_up(self, branch: str, delivered: list[tuple[str, str]]) -> None:
        """Deliver the pending commits of one branch, remembering each once acknowledged."""
        tip = self._tip(branch)
        if tip is None:
            log.warning(
                "branch %r not found in %s (neither origin/%s nor a local %s); "
                "check the name and that it was pushed",
                branch,
                self._path,
                branch,
                branch,
            )
            return
        pending, start = self._pending(branch, tip)
        if len(pending) > self.settings.max_backlog:
            skipped = len(pending) - self.settings.max_backlog
            log.warning(
                "branch %s has %d new commits (force-pushed or rewritten?); building the "
                "newest %d, skipping %d older ones (--max-backlog)",
                branch, len(pending), self.settings.max_backlog, skipped,
            )  # fmt: skip
            pending = pending[skipped:]
        for sha in pending:
            self._deliver(sha, branch)
            self._git("update-ref", DELIVERED_REF_PREFIX + branch, sha)
            if start is not None:  # delivered, or skipped with the backlog: either way done
                self._git("update-ref", "-d", START_REF_PREFIX + branch)
                start = None
            delivered.append((sha, branch))
            log.info("delivered %s on %s", sha, branch)

    def _tip(self, branch: str) -> str | None:
        """origin/<branch> when the clone has it, else the local branch (a watched repo)."""
        for ref in (f"refs/remotes/origin/{branch}", f"refs/heads/{branch}"):
            sha = self._resolve(f"{ref}^{{commit}}")
            if sha is not None:
                return sha
        return None

    def _pending(self, branch: str, tip: str) -> tuple[list[str], str | None]:
        """Commits after the last delivered one up to ``tip``, oldest first.

        With nothing delivered yet, the first tip seen is remembered and delivered together
        with everything after it; the second value names it, so its mark can go once sent.
        """
        last = self._resolve(DELIVERED_REF_PREFIX + branch)
        if last is not None:
            return self._since(last, tip), None
        start = self._resolve(START_REF_PREFIX + branch)
        if start is None:
            log.info("first look at %s: building from its tip %s on", branch, tip[:12])
            self._git("update-ref", START_REF_PREFIX + branch, tip)
            start = tip
        return [start, *self._since(start, tip)], start

    def _since(self, last: str, tip: str) -> list[str]:
        return self._git("rev-list", "--reverse", "--topo-order", f"{last}..{tip}").split()

    def _resolve(self, rev: str) -> str | None:
        """The SHA ``rev`` names, or None when it names nothing."""
        try:
            return str(self._repo.git.rev_parse("--verify", "--quiet", rev))
        except git.CommandError as e:
            if e.status == 1:  # with --quiet, exit code 1 only means "no such object"
                return None
            raise self._failure("rev-parse", e) from e

    def _git(self, command: str, *args: str) -> str:
        try:
            return str(getattr(self._repo.git, command.replace("-", "_"))(*args))
        except git.CommandError as e:
            raise self._failure(command, e) from e

    def _failure(self, command: str, e: git.CommandError) -> WorkspaceError:
        return WorkspaceError(f"git {command} failed in {self._path}: {git_message(e)}")


def _open_repo(path: Path) -> git.Repo:
    try:
        return git.Repo(path)
    except git.NoSuchPathError as e:
        raise WorkspaceError(
            f"{path} does not exist; give the path of a clone of the repository to watch"
        ) from e
    except git.InvalidGitRepositoryError as e:
        raise WorkspaceError(
            f"{path} is not a git repository; give the path of a clone of the repository "
            "to watch (git clone URL PATH)"
        ) from e


def _check_branch(repo: git.Repo, name: str) -> str:
    """Refuse names git itself would refuse, before they reach a ref path or a command."""
    try:
        normalized = repo.git.check_ref_format("--branch", name)
    except git.GitCommandError as e:
        raise ConfigError(
            f"{name!r} is not a valid branch name (see git check-ref-format); "
            "name a branch such as 'main' or 'release/1.2'"
        ) from e
    if normalized != name:
        raise ConfigError(f"{name!r} is shorthand for {normalized!r}; name the branch itself")
    return name


def _current_branch(repo: git.Repo, path: Path) -> str:
    if repo.head.is_detached:
        raise WorkspaceError(
            f"{path} has a detached HEAD, so it has no current branch to watch; "
            "name the branches to watch with --branch (e.g. --branch main)"
        )
    return repo.head.reference.name
