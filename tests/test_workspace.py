"""A runner's clone: each prepare leaves exactly the asked-for commit and nothing else."""

import logging
import shutil
from pathlib import Path

import git
import pytest

from superci.errors import WorkspaceError
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
