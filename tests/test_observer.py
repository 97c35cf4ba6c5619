"""The observer against real git repositories: an upstream, and a clone of it to watch."""

import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from superci.errors import ConfigError, DispatcherUnavailable, WorkspaceError
from superci.observer import DELIVERED_REF_PREFIX, Observer
from superci.ownership import read_mark, write_mark
from superci.settings import ObserverSettings

WAIT = 15.0  # upper bound for anything a test waits on; reached only when something is broken


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, timeout=WAIT
    )
    return done.stdout.strip()


def configure(repo: Path) -> Path:
    git(repo, "config", "user.name", "Test Author")
    git(repo, "config", "user.email", "author@example.com")
    return repo


def commit(repo: Path, message: str) -> str:
    git(repo, "commit", "--quiet", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


class FakeDispatcher:
    """A deliver() that records what it acknowledged and refuses on demand."""

    def __init__(self, failures: int = 0, refuse: set[str] | None = None) -> None:
        self.failures = failures  # refuse this many calls first, whatever they carry
        self.refuse = refuse or set()  # refuse these commits every time
        self.calls = 0
        self.delivered: list[tuple[str, str]] = []
        self._changed = threading.Condition()

    def __call__(self, sha: str, branch: str) -> None:
        with self._changed:
            self.calls += 1
            if self.failures > 0 or sha in self.refuse:
                self.failures -= 1
                raise DispatcherUnavailable("dispatcher at 127.0.0.1:8888 refused the connection")
            self.delivered.append((sha, branch))
            self._changed.notify_all()

    def wait_for(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.delivered) >= count, timeout=WAIT)


class RecordCounter(logging.Handler):
    """Lets a test wait, bounded, until the observer has logged a message n times."""

    def __init__(self, fragment: str) -> None:
        super().__init__(logging.DEBUG)
        self.fragment = fragment
        self.count = 0
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if self.fragment in record.getMessage():
            with self._changed:
                self.count += 1
                self._changed.notify_all()

    def wait_for(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.count >= count, timeout=WAIT)


def clone_of(upstream: Path, path: Path) -> Path:
    git(path.parent, "clone", "--quiet", str(upstream), str(path))
    return configure(path)


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    repo = tmp_path / "upstream"
    git(tmp_path, "init", "--quiet", "-b", "main", str(repo))
    configure(repo)
    commit(repo, "initial")
    return repo


@pytest.fixture
def clone(tmp_path: Path, upstream: Path) -> Path:
    return clone_of(upstream, tmp_path / "clone")


@pytest.fixture
def dispatcher() -> FakeDispatcher:
    return FakeDispatcher()


def delivered_ref(repo: Path, branch: str) -> str:
    return git(repo, "rev-parse", DELIVERED_REF_PREFIX + branch)


# poll_once


def test_first_run_delivers_the_tip_only(upstream, clone, dispatcher):
    commit(upstream, "second")
    tip = commit(upstream, "third")

    assert Observer(clone, dispatcher).poll_once() == [(tip, "main")]
    assert dispatcher.delivered == [(tip, "main")]


def test_commits_pushed_upstream_are_delivered_oldest_first(upstream, clone, dispatcher):
    observer = Observer(clone, dispatcher)
    observer.poll_once()
    new = [commit(upstream, f"change {n}") for n in range(3)]

    assert observer.poll_once() == [(sha, "main") for sha in new]


def test_nothing_new_delivers_nothing(clone, dispatcher):
    observer = Observer(clone, dispatcher)
    observer.poll_once()

    assert observer.poll_once() == []
    assert len(dispatcher.delivered) == 1


def test_failed_delivery_keeps_the_rest_pending_in_order(upstream, clone, dispatcher):
    observer = Observer(clone, dispatcher)
    [(first_tip, _)] = observer.poll_once()
    one, two, three = (commit(upstream, f"change {n}") for n in range(3))
    dispatcher.refuse = {two}

    with pytest.raises(DispatcherUnavailable):
        observer.poll_once()
    assert delivered_ref(clone, "main") == one

    dispatcher.refuse = set()
    assert observer.poll_once() == [(two, "main"), (three, "main")]
    assert dispatcher.delivered == [(sha, "main") for sha in (first_tip, one, two, three)]


def test_failed_first_delivery_remembers_nothing(clone):
    refusing = FakeDispatcher(failures=1)
    observer = Observer(clone, refusing)

    with pytest.raises(DispatcherUnavailable):
        observer.poll_once()
    with pytest.raises(subprocess.CalledProcessError):
        delivered_ref(clone, "main")
    assert observer.poll_once() == [(git(clone, "rev-parse", "origin/main"), "main")]


def test_restarted_observer_continues_where_the_last_one_stopped(upstream, clone, dispatcher):
    Observer(clone, dispatcher).poll_once()
    pushed_while_down = [commit(upstream, f"change {n}") for n in range(2)]

    assert Observer(clone, dispatcher).poll_once() == [(sha, "main") for sha in pushed_while_down]
    assert Observer(clone, dispatcher).poll_once() == []
    assert len(dispatcher.delivered) == 3


def test_each_watched_branch_is_delivered_with_its_name(upstream, tmp_path, dispatcher):
    git(upstream, "checkout", "--quiet", "-b", "feature/x")
    feature_tip = commit(upstream, "feature work")
    git(upstream, "checkout", "--quiet", "main")
    main_tip = git(upstream, "rev-parse", "HEAD")
    path = clone_of(upstream, tmp_path / "clone")
    observer = Observer(path, dispatcher, branches=["main", "feature/x"])

    assert observer.poll_once() == [(main_tip, "main"), (feature_tip, "feature/x")]

    on_main = commit(upstream, "more main")
    git(upstream, "checkout", "--quiet", "feature/x")
    on_feature = commit(upstream, "more feature")
    assert observer.poll_once() == [(on_main, "main"), (on_feature, "feature/x")]


def test_a_failing_branch_does_not_hold_back_the_others(upstream, tmp_path):
    git(upstream, "branch", "other")
    path = clone_of(upstream, tmp_path / "clone")
    tip = git(upstream, "rev-parse", "HEAD")
    # Both branches point at the same commit; refuse it only when main asks.
    delivered: list[tuple[str, str]] = []

    def deliver(sha: str, branch: str) -> None:
        if branch == "main":
            raise DispatcherUnavailable("dispatcher busy")
        delivered.append((sha, branch))

    observer = Observer(path, deliver, branches=["main", "other"])
    with pytest.raises(DispatcherUnavailable):
        observer.poll_once()
    assert delivered == [(tip, "other")]


def test_repository_without_remote_is_watched_directly(upstream, dispatcher):
    observer = Observer(upstream, dispatcher)
    [(tip, branch)] = observer.poll_once()
    assert (tip, branch) == (git(upstream, "rev-parse", "HEAD"), "main")

    new = commit(upstream, "local change")
    assert observer.poll_once() == [(new, "main")]


def test_rewritten_history_delivers_the_replacing_commits(upstream, clone, dispatcher):
    observer = Observer(clone, dispatcher)
    observer.poll_once()
    commit(upstream, "to be rewritten")
    observer.poll_once()
    git(upstream, "reset", "--quiet", "--hard", "HEAD~1")
    replacement = commit(upstream, "rewritten")

    assert observer.poll_once() == [(replacement, "main")]


def test_forgotten_last_commit_delivers_the_tip_with_a_warning(upstream, clone, dispatcher, caplog):
    observer = Observer(clone, dispatcher)
    observer.poll_once()
    # A ref to an object the clone no longer has, as after a rewrite and a gc.
    (clone / ".git" / DELIVERED_REF_PREFIX / "main").write_text("1" * 40 + "\n")
    commit(upstream, "change 1")
    tip = commit(upstream, "change 2")

    assert observer.poll_once() == [(tip, "main")]
    assert "is gone from" in caplog.text
    assert "fetch" not in caplog.text
    assert delivered_ref(clone, "main") == tip


# errors and warnings


def test_the_observer_marks_its_clone_and_refuses_a_runners_clone(
    tmp_path, upstream, clone, dispatcher
):
    Observer(clone, dispatcher)
    mark = read_mark(clone / ".git")
    assert mark is not None and mark.role == "observer"
    assert Observer(clone, dispatcher).branches == ("main",)  # its own clone, taken again

    runners = clone_of(upstream, tmp_path / "runner")
    write_mark(runners / ".git", "runner")
    with pytest.raises(WorkspaceError, match="is the runner's clone .*an observer needs"):
        Observer(runners, dispatcher)


def test_missing_path_is_a_clear_workspace_error(tmp_path, dispatcher):
    with pytest.raises(WorkspaceError, match="does not exist"):
        Observer(tmp_path / "nowhere", dispatcher)


def test_plain_directory_is_a_clear_workspace_error(tmp_path, dispatcher):
    with pytest.raises(WorkspaceError, match="is not a git repository"):
        Observer(tmp_path, dispatcher)


@pytest.mark.parametrize("name", ["a..b", "-x", "HEAD", "with space", "@{-1}", "ends.lock", ""])
def test_invalid_branch_name_is_a_config_error(clone, dispatcher, name):
    with pytest.raises(ConfigError, match="not a valid branch name"):
        Observer(clone, dispatcher, branches=[name])


def test_branch_shorthand_is_a_config_error(clone, dispatcher):
    git(clone, "checkout", "--quiet", "-b", "elsewhere")
    git(clone, "checkout", "--quiet", "main")

    with pytest.raises(ConfigError, match="shorthand for 'elsewhere'"):
        Observer(clone, dispatcher, branches=["@{-1}"])


def test_detached_head_without_branches_is_a_workspace_error(clone, dispatcher):
    git(clone, "checkout", "--quiet", "--detach")

    with pytest.raises(WorkspaceError, match="detached HEAD.*--branch"):
        Observer(clone, dispatcher)
    assert Observer(clone, dispatcher, branches=["main"]).branches == ("main",)


def test_unknown_branch_is_warned_about_on_every_poll(clone, dispatcher, caplog):
    observer = Observer(clone, dispatcher, branches=["main", "no-such-branch"])
    observer.poll_once()

    assert observer.poll_once() == []
    warnings = [r for r in caplog.records if "'no-such-branch' not found" in r.getMessage()]
    assert len(warnings) == 2
    assert all(r.levelno == logging.WARNING for r in warnings)


def test_unreachable_remote_is_logged_not_fatal(upstream, clone, dispatcher, caplog):
    observer = Observer(clone, dispatcher)
    observer.poll_once()
    shutil.rmtree(upstream)

    assert observer.poll_once() == []
    assert "fetch from remote 'origin'" in caplog.text
    assert "does not appear to be a git repository" in caplog.text


def test_unreachable_remote_does_not_stop_the_others(upstream, clone, tmp_path, dispatcher):
    git(clone, "remote", "add", "mirror", str(tmp_path / "gone"))
    observer = Observer(clone, dispatcher)
    observer.poll_once()
    new = commit(upstream, "change")

    assert observer.poll_once() == [(new, "main")]


def test_fetch_prunes_branches_deleted_upstream(upstream, tmp_path, dispatcher):
    git(upstream, "branch", "short-lived")
    path = clone_of(upstream, tmp_path / "clone")
    git(upstream, "branch", "--delete", "short-lived")

    Observer(path, dispatcher).poll_once()
    assert "origin/short-lived" not in git(path, "branch", "--remotes")


def test_hung_fetch_is_abandoned_after_the_fetch_timeout(clone, dispatcher, caplog):
    # git runs this instead of the upstream's upload-pack: a remote that never answers.
    git(clone, "config", "remote.origin.uploadpack", "sleep 30; git-upload-pack")

    started = time.monotonic()
    observer = Observer(clone, dispatcher, settings=ObserverSettings(fetch_timeout=0.5))
    assert observer.poll_once() == [(git(clone, "rev-parse", "origin/main"), "main")]
    assert time.monotonic() - started < 10
    assert "did not complete" in caplog.text


# run


def run_in_thread(observer: Observer, interval: float) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=observer.run, args=(interval, stop), daemon=True)
    thread.start()
    return thread, stop


def test_run_stops_promptly_when_the_event_is_set(clone, dispatcher):
    thread, stop = run_in_thread(Observer(clone, dispatcher), interval=3600)
    assert dispatcher.wait_for(1)

    started = time.monotonic()
    stop.set()
    thread.join(timeout=WAIT)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2


def test_run_keeps_retrying_until_the_dispatcher_is_back(upstream, clone):
    tip = git(upstream, "rev-parse", "HEAD")
    flaky = FakeDispatcher(failures=2)
    thread, stop = run_in_thread(Observer(clone, flaky), interval=0.01)
    try:
        assert flaky.wait_for(1)
        new = commit(upstream, "after recovery")
        assert flaky.wait_for(2)
    finally:
        stop.set()
        thread.join(timeout=WAIT)
    assert not thread.is_alive()
    assert flaky.delivered == [(tip, "main"), (new, "main")]
    assert flaky.calls == 4


def test_run_survives_an_unreachable_remote(upstream, clone, dispatcher):
    counter = RecordCounter("fetch from remote 'origin'")
    logger = logging.getLogger("superci.observer")
    logger.addHandler(counter)
    shutil.rmtree(upstream)
    thread, stop = run_in_thread(Observer(clone, dispatcher), interval=0.01)
    try:
        assert counter.wait_for(3)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=WAIT)
        logger.removeHandler(counter)
    assert not thread.is_alive()


@pytest.mark.parametrize("interval", [0, -1])
def test_run_refuses_an_interval_that_would_spin(clone, dispatcher, interval):
    with pytest.raises(ConfigError, match="poll interval"):
        Observer(clone, dispatcher).run(interval, threading.Event())


def test_commits_made_while_the_first_delivery_fails_are_all_delivered_later(upstream, clone):
    dispatcher = FakeDispatcher(failures=1)
    observer = Observer(clone, dispatcher)
    with pytest.raises(DispatcherUnavailable):
        observer.poll_once()
    first_tip = git(clone, "rev-parse", "origin/main")
    later = [commit(upstream, "made while the dispatcher was down") for _ in range(2)]

    delivered = Observer(clone, dispatcher).poll_once()  # a restart in between loses nothing

    assert delivered == [(sha, "main") for sha in [first_tip, *later]]
    assert git(clone, "for-each-ref", "refs/superci/start/") == ""


def test_force_push_of_a_long_rewritten_history_builds_only_the_newest_commits(
    upstream, clone, dispatcher, caplog
):
    observer = Observer(clone, dispatcher, max_backlog=3)
    observer.poll_once()
    git(upstream, "checkout", "--quiet", "--orphan", "rewritten")
    rewritten = [commit(upstream, f"rewritten {n}") for n in range(10)]
    git(upstream, "branch", "--quiet", "-M", "main")  # force-replace main with it

    with caplog.at_level(logging.WARNING, logger="superci.observer"):
        delivered = observer.poll_once()

    assert delivered == [(sha, "main") for sha in rewritten[-3:]]
    assert "skipping 7 older ones" in caplog.text
    assert delivered_ref(clone, "main") == rewritten[-1]
    commit(upstream, "after")
    assert len(observer.poll_once()) == 1  # the skipped ones stay skipped


def test_first_look_at_a_long_history_with_a_small_backlog_forgets_its_start(upstream, clone):
    dispatcher = FakeDispatcher(failures=1)
    observer = Observer(clone, dispatcher, max_backlog=2)
    with pytest.raises(DispatcherUnavailable):
        observer.poll_once()  # remembers the first tip as its start
    news = [commit(upstream, f"new {n}") for n in range(4)]
    assert observer.poll_once() == [(sha, "main") for sha in news[-2:]]
    assert git(clone, "for-each-ref", "refs/superci/start/") == ""


def test_a_backlog_limit_below_one_is_a_config_error(clone, dispatcher):
    with pytest.raises(ConfigError, match="at least 1"):
        Observer(clone, dispatcher, max_backlog=0)
