"""A runner's clone: each prepare leaves exactly the asked-for commit and nothing else."""

import logging
import shutil
from pathlib import Path

import git
import pytest

from superci.errors import WorkspaceBroken, WorkspaceError
from superci.ownership import MARK_FILE, SHOWN_FILES, read_mark, write_mark
from superci.workspace import Workspace


def new_repo(path: Path) -> git.Repo:
    repo = git.Repo.init(path, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "Test Author")
        config.set_value("user", "email", "test@example.com")
    return repo


def commit_file(repo: git.Repo, name: str, text: str, message: str | None = None) -> str:
    path = Path(repo.working_tree_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    repo.index.add([name])
    return repo.index.commit(message or f"write {name}").hexsha


@pytest.fixture
def upstream(tmp_path):
    """A bare "upstream" repository with one commit, and a developer clone pushing to it."""
    bare = git.Repo.init(tmp_path / "upstream.git", bare=True, initial_branch="main")
    dev = new_repo(tmp_path / "dev")
    commit_file(dev, ".gitignore", "*.pyc\nbuild/\n")
    commit_file(dev, "app.py", "VERSION = 1\n")
    dev.create_remote("origin", bare.working_dir).push("main").raise_if_error()
    return dev


@pytest.fixture
def workspace(tmp_path, upstream):
    return Workspace.clone(upstream.remote("origin").url, tmp_path / "runner")


def test_clone_gives_a_workspace_of_its_own(workspace, tmp_path):
    assert workspace.path == tmp_path / "runner"
    assert (workspace.path / "app.py").read_text() == "VERSION = 1\n"


def test_prepare_checks_out_a_commit_pushed_after_the_clone(upstream, workspace):
    sha = commit_file(upstream, "app.py", "VERSION = 2\n")
    upstream.remote("origin").push("main").raise_if_error()

    workspace.prepare(sha)

    assert (workspace.path / "app.py").read_text() == "VERSION = 2\n"
    repo = git.Repo(workspace.path)
    assert repo.head.is_detached
    assert repo.head.commit.hexsha == sha


def test_prepare_checks_out_an_older_commit(upstream, workspace):
    first = upstream.head.commit.hexsha
    commit_file(upstream, "app.py", "VERSION = 2\n")
    upstream.remote("origin").push("main").raise_if_error()
    workspace.prepare(upstream.head.commit.hexsha)

    workspace.prepare(first)

    assert (workspace.path / "app.py").read_text() == "VERSION = 1\n"


def test_prepare_removes_untracked_and_ignored_leftovers(upstream, workspace):
    sha = upstream.head.commit.hexsha
    workspace.prepare(sha)
    (workspace.path / "leftover.txt").write_text("from the last build")
    (workspace.path / "cache.pyc").write_bytes(b"ignored")
    (workspace.path / "build" / "deep").mkdir(parents=True)
    (workspace.path / "build" / "deep" / "out.o").write_bytes(b"ignored dir")

    workspace.prepare(sha)

    assert not (workspace.path / "leftover.txt").exists()
    assert not (workspace.path / "cache.pyc").exists()
    assert not (workspace.path / "build").exists()


def test_prepare_resets_a_modified_tracked_file(upstream, workspace):
    sha = upstream.head.commit.hexsha
    workspace.prepare(sha)
    (workspace.path / "app.py").write_text("VERSION = 'edited by a test'\n")
    (workspace.path / ".gitignore").unlink()

    workspace.prepare(sha)

    assert (workspace.path / "app.py").read_text() == "VERSION = 1\n"
    assert (workspace.path / ".gitignore").exists()
    assert not git.Repo(workspace.path).is_dirty(untracked_files=True)


def test_unknown_commit_gives_error_naming_it(workspace):
    sha = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(WorkspaceError, match=f"commit {sha} not found in .*runner"):
        workspace.prepare(sha)


@pytest.mark.parametrize(
    "sha",
    [
        "--upload-pack=touch /tmp/pwned",
        "HEAD",
        "0123456",
        "0123456789ABCDEF0123456789ABCDEF01234567",
        "0123456789abcdef0123456789abcdef01234567\n",
        "0123456789abcdef0123456789abcdef012345678",
    ],
)
def test_anything_but_a_full_lowercase_sha_is_refused(workspace, sha):
    with pytest.raises(WorkspaceError, match="not a full 40-hex commit id"):
        workspace.prepare(sha)


def test_fetch_failure_with_commit_present_warns_and_builds(upstream, workspace, caplog):
    sha = upstream.head.commit.hexsha
    shutil.rmtree(upstream.remote("origin").url)  # the remote is gone

    with caplog.at_level(logging.WARNING, logger="superci.workspace"):
        workspace.prepare(sha)

    assert git.Repo(workspace.path).head.commit.hexsha == sha
    assert any("fetching" in r.getMessage() for r in caplog.records)


def test_fetch_failure_with_commit_missing_gives_git_message(upstream, workspace):
    sha = commit_file(upstream, "app.py", "VERSION = 2\n")  # never pushed
    shutil.rmtree(upstream.remote("origin").url)

    with pytest.raises(WorkspaceError, match=f"commit {sha} not found") as excinfo:
        workspace.prepare(sha)
    assert "fetching failed" in str(excinfo.value)
    assert "stderr: '" not in str(excinfo.value)


def test_non_repository_path_gives_error_naming_it(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(WorkspaceError, match=f"{plain} is not a git repository"):
        Workspace(plain)


def test_missing_path_gives_error_naming_it(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(WorkspaceError, match=f"{missing} does not exist"):
        Workspace(missing)


def test_bare_repository_is_refused(tmp_path):
    bare = tmp_path / "bare.git"
    git.Repo.init(bare, bare=True)
    with pytest.raises(WorkspaceError, match="bare repository"):
        Workspace(bare)


def test_clone_failure_gives_error_with_git_message(tmp_path):
    with pytest.raises(WorkspaceError, match="cannot clone .*nowhere") as excinfo:
        Workspace.clone(str(tmp_path / "nowhere"), tmp_path / "runner")
    assert "does not exist" in str(excinfo.value)


def test_submodules_are_checked_out_and_cleaned_when_present(
    tmp_path, upstream, workspace, monkeypatch
):
    # Local file:// submodules are off by default since git 2.38.1 (CVE-2022-39253).
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.file.allow")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "always")
    library = new_repo(tmp_path / "library")
    commit_file(library, "lib.py", "NAME = 'library'\n")
    upstream.git.submodule("add", str(library.working_dir), "vendor/library")
    upstream.index.commit("add library as a submodule")
    upstream.remote("origin").push("main").raise_if_error()
    sha = upstream.head.commit.hexsha

    workspace.prepare(sha)
    lib = workspace.path / "vendor" / "library" / "lib.py"
    assert lib.read_text() == "NAME = 'library'\n"

    lib.write_text("edited by a build\n")
    (lib.parent / "junk.txt").write_text("leftover")
    workspace.prepare(sha)
    assert lib.read_text() == "NAME = 'library'\n"
    assert not (lib.parent / "junk.txt").exists()


# ownership: a runner never destroys work it did not make


def status(path: Path) -> str:
    return git.Repo(path).git.status("--porcelain", "--ignored", "--untracked-files=all")


def test_a_clone_with_someones_work_is_refused_and_nothing_in_it_changes(upstream, tmp_path):
    mine = tmp_path / "mine"
    git.Repo.clone_from(upstream.remote("origin").url, mine)
    (mine / "app.py").write_text("VERSION = 'my edit'\n")
    (mine / "notes.txt").write_text("my notes")
    (mine / "build").mkdir()
    (mine / "build" / "venv.pyc").write_bytes(b"ignored, but mine")
    before = status(mine)

    with pytest.raises(WorkspaceError) as excinfo:
        Workspace(mine)

    message = str(excinfo.value)
    assert f"refusing to use {mine} as a runner's clone" in message
    for line in (" M app.py", "?? notes.txt", "!! build/venv.pyc"):
        assert line in message
    assert f"git clone {upstream.remote('origin').url} {tmp_path / 'mine-runner'}" in message
    assert status(mine) == before
    assert (mine / "app.py").read_text() == "VERSION = 'my edit'\n"
    assert (mine / "build" / "venv.pyc").read_bytes() == b"ignored, but mine"
    assert read_mark(mine / ".git") is None


def test_a_refusal_lists_a_few_files_and_counts_the_rest(upstream, tmp_path):
    mine = tmp_path / "mine"
    git.Repo.clone_from(upstream.remote("origin").url, mine)
    for i in range(SHOWN_FILES + 3):
        (mine / f"untracked-{i}.txt").write_text("mine")

    with pytest.raises(WorkspaceError, match=r"\.\.\. and 3 more") as excinfo:
        Workspace(mine)
    assert str(excinfo.value).count("?? untracked-") == SHOWN_FILES


def test_a_clean_clone_is_marked_as_the_runners_and_kept_after_builds_leave_files(
    upstream, tmp_path
):
    workspace = Workspace.clone(upstream.remote("origin").url, tmp_path / "runner")
    mark = read_mark(workspace.path / ".git")
    assert mark is not None and mark.role == "runner" and mark.host and mark.created
    (workspace.path / "cache.pyc").write_bytes(b"left by a build")

    Workspace(workspace.path)  # a restarted runner takes its own clone again

    assert read_mark(workspace.path / ".git") == mark


def test_a_clone_marked_by_the_observer_is_refused_by_a_runner(upstream, tmp_path):
    clone = tmp_path / "observed"
    git.Repo.clone_from(upstream.remote("origin").url, clone)
    write_mark(clone / ".git", "observer")

    with pytest.raises(WorkspaceError, match="is the observer's clone .*a runner needs a clone"):
        Workspace(clone)
    assert read_mark(clone / ".git").role == "observer"


def test_a_mark_superci_did_not_write_is_refused(workspace):
    (workspace.path / ".git" / MARK_FILE).write_text("{not json")
    with pytest.raises(WorkspaceError, match="cannot read .*superci-owner"):
        Workspace(workspace.path)


def test_a_worktree_without_a_git_folder_of_its_own_is_refused(upstream, tmp_path):
    upstream.git.worktree("add", "--detach", str(tmp_path / "linked"))
    with pytest.raises(WorkspaceError, match="no .git folder of its own"):
        Workspace(tmp_path / "linked")


# a clone that lost its .git: git never reaches an enclosing repository


@pytest.fixture
def nested(tmp_path, upstream):
    """A developer's working copy with work in it, and a runner clone inside it."""
    mine = tmp_path / "mine"
    git.Repo.clone_from(upstream.remote("origin").url, mine)
    (mine / "app.py").write_text("VERSION = 'my edit'\n")
    (mine / "cache.pyc").write_bytes(b"ignored, but mine")
    workspace = Workspace.clone(upstream.remote("origin").url, mine / "ci" / "runner")
    return mine, workspace


def test_a_clone_whose_git_dir_a_build_removed_is_cloned_again_and_the_enclosing_repo_is_untouched(
    upstream, nested
):
    mine, workspace = nested
    before = status(mine), git.Repo(mine).head.commit.hexsha
    sha = commit_file(upstream, "app.py", "VERSION = 2\n")
    upstream.remote("origin").push("main").raise_if_error()
    shutil.rmtree(workspace.path / ".git")
    (workspace.path / "output.bin").write_bytes(b"written by the build")

    workspace.prepare(sha)

    assert git.Repo(workspace.path).head.commit.hexsha == sha
    assert (workspace.path / "app.py").read_text() == "VERSION = 2\n"
    assert not (workspace.path / "output.bin").exists()
    assert not any(p.name.startswith(".superci-repair") for p in workspace.path.iterdir())
    assert read_mark(workspace.path / ".git").role == "runner"
    assert (status(mine), git.Repo(mine).head.commit.hexsha) == before
    assert (mine / "app.py").read_text() == "VERSION = 'my edit'\n"
    assert (mine / "cache.pyc").read_bytes() == b"ignored, but mine"


def test_a_git_dir_git_cannot_read_is_cloned_again(upstream, workspace):
    sha = upstream.head.commit.hexsha
    shutil.rmtree(workspace.path / ".git")
    (workspace.path / ".git").mkdir()  # there, but empty

    workspace.prepare(sha)

    assert git.Repo(workspace.path).head.commit.hexsha == sha


def test_a_lost_git_dir_with_the_remote_unreachable_is_broken_and_the_clone_kept(upstream, nested):
    mine, workspace = nested
    before = status(mine)
    sha = upstream.head.commit.hexsha
    shutil.rmtree(workspace.path / ".git")
    shutil.rmtree(upstream.remote("origin").url)  # the remote is gone too

    with pytest.raises(WorkspaceBroken) as excinfo:
        workspace.prepare(sha)

    message = str(excinfo.value)
    assert f"the runner's clone {workspace.path} lost its .git and cannot be repaired" in message
    assert "this runner cannot build" in message and "git clone" in message
    assert (workspace.path / "app.py").read_text() == "VERSION = 1\n"  # nothing deleted
    assert [p.name for p in workspace.path.iterdir() if p.name.startswith(".superci")] == []
    # Without its .git the clone's files show up one by one; the developer's are as they were.
    assert mine_only(status(mine)) == mine_only(before)
    assert (mine / "app.py").read_text() == "VERSION = 'my edit'\n"


def mine_only(status: str) -> list[str]:
    return [line for line in status.splitlines() if not line[3:].startswith("ci/")]


# a build cannot change what the next checkout writes or runs


def clone_git(workspace: Workspace, *args: str) -> str:
    """git as a build runs it: in the clone, with nothing of superci's pinning."""
    return git.Git(workspace.path).execute(["git", *args])


def test_a_replace_ref_a_build_records_does_not_swap_the_next_commit(upstream, workspace):
    first = upstream.head.commit.hexsha
    second = commit_file(upstream, "app.py", "VERSION = 2\n")
    upstream.remote("origin").push("main").raise_if_error()
    workspace.prepare(first)
    clone_git(workspace, "fetch", "--quiet", "origin")
    clone_git(workspace, "replace", second, first)  # "second is first", says the build
    workspace.prepare(second)
    assert (workspace.path / "app.py").read_text() == "VERSION = 2\n"


@pytest.mark.parametrize("flag", ["--skip-worktree", "--assume-unchanged"])
def test_a_tracked_file_a_build_edits_and_hides_in_the_index_is_written_again(
    upstream, workspace, flag
):
    sha = upstream.head.commit.hexsha
    workspace.prepare(sha)
    (workspace.path / "app.py").write_text("VERSION = 9\n")  # same size, new content
    clone_git(workspace, "update-index", flag, "app.py")
    workspace.prepare(sha)
    assert (workspace.path / "app.py").read_text() == "VERSION = 1\n"


def test_an_untracked_gitattributes_a_build_leaves_does_not_change_the_next_checkout(
    upstream, workspace
):
    first = upstream.head.commit.hexsha
    second = commit_file(upstream, "app.py", "VERSION = 2\n")
    upstream.remote("origin").push("main").raise_if_error()
    workspace.prepare(first)
    (workspace.path / ".gitattributes").write_text("*.py text eol=crlf\n")
    workspace.prepare(second)
    assert (workspace.path / "app.py").read_bytes() == b"VERSION = 2\n"


def test_files_of_the_git_dir_a_build_changes_are_put_back_before_the_next_checkout(
    upstream, workspace, tmp_path
):
    sha = upstream.head.commit.hexsha
    workspace.prepare(sha)
    dot_git = workspace.path / ".git"
    config = (dot_git / "config").read_bytes()
    clone_git(workspace, "config", "alias.checkout", "!touch pwned")
    clone_git(workspace, "config", "core.pager", "touch pwned")
    clone_git(workspace, "config", "include.path", str(tmp_path / "evil.cfg"))
    (dot_git / "info").mkdir(exist_ok=True)
    (dot_git / "info" / "attributes").write_text("* filter=evil\n")
    (dot_git / "modules" / "planted").mkdir(parents=True)
    (dot_git / "modules" / "planted" / "HEAD").write_text("ref: refs/heads/main\n")
    workspace.prepare(sha)
    assert (dot_git / "config").read_bytes() == config
    assert not (dot_git / "info" / "attributes").exists()
    assert not (dot_git / "modules" / "planted").exists()
    assert (workspace.path / "app.py").read_text() == "VERSION = 1\n"


def test_a_git_dir_file_a_build_turns_into_a_symlink_is_replaced_and_its_target_untouched(
    upstream, workspace, tmp_path
):
    sha = upstream.head.commit.hexsha
    workspace.prepare(sha)
    dot_git = workspace.path / ".git"
    config = (dot_git / "config").read_bytes()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "attributes").write_text("someone's file\n")
    (dot_git / "config").unlink()
    (dot_git / "config").symlink_to(precious / "attributes")
    shutil.rmtree(dot_git / "info", ignore_errors=True)
    (dot_git / "info").symlink_to(precious)
    workspace.prepare(sha)
    assert (dot_git / "config").read_bytes() == config and not (dot_git / "config").is_symlink()
    assert (precious / "attributes").read_text() == "someone's file\n"
