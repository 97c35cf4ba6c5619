"""Commits named the way git names them, in real repositories: the id and the branch
``superci notify`` records."""

import pytest
from conftest import Repo, git

from superci import gitname
from superci.errors import WorkspaceError


@pytest.mark.parametrize(
    ("named", "current", "local", "remote", "chosen"),
    [
        ("feature/x", "main", ["main"], [], "feature/x"),
        (None, "dev", ["a", "dev", "main"], [], "dev"),
        (None, "dev", ["a", "main"], [], "a"),
        (None, None, ["main"], ["refs/remotes/origin/other"], "main"),
        (None, "dev", [], ["refs/remotes/fork/x", "refs/remotes/origin/feature/y"], "feature/y"),
        (None, "dev", [], ["refs/remotes/fork/x"], "x"),
        (None, "dev", [], ["refs/remotes/origin/HEAD"], None),
        (None, None, [], [], None),
    ],
)
def test_choose_branch_prefers_the_named_then_current_then_local_then_origins(
    named, current, local, remote, chosen
):
    assert gitname.choose_branch(named, current, local, remote) == chosen


@pytest.fixture
def clone(tmp_path):
    """upstream: main M0 - M1 (tag v1); feature/x M0 - F; a clone with feature/x checked out."""
    upstream = Repo(tmp_path / "upstream")
    upstream.commit({"a": "0"}, "M0")
    git(upstream.path, "checkout", "--quiet", "-b", "feature/x")
    upstream.commit({"f": "1"}, "F")
    git(upstream.path, "checkout", "--quiet", "main")
    upstream.commit({"m": "1"}, "M1")
    git(upstream.path, "tag", "v1")
    path = upstream.clone(tmp_path / "clone")
    git(path, "checkout", "--quiet", "feature/x")
    return path


def named(path, name):
    repo = gitname.open_clone(path)
    assert repo is not None
    return gitname.resolve(repo, name)


def test_head_records_the_checked_out_branch(clone):
    found = named(clone, "HEAD")
    assert found == gitname.NamedCommit(git(clone, "rev-parse", "HEAD"), "feature/x")


def test_a_short_id_of_a_commit_on_the_current_branch_records_it(clone):
    base = git(clone, "rev-parse", "HEAD~1")  # M0 is on main too: the current branch wins
    assert named(clone, base[:7]) == gitname.NamedCommit(base, "feature/x")


def test_a_tag_off_the_current_branch_records_a_local_branch_holding_it(clone):
    tagged = git(clone, "rev-parse", "v1")
    assert named(clone, "v1") == gitname.NamedCommit(tagged, "main")


def test_a_branch_name_records_that_branch(clone):
    assert named(clone, "main").branch == "main"
    assert named(clone, "origin/feature/x").branch == "feature/x"


def test_a_commit_only_a_remote_tracking_branch_holds_records_it_without_origin(tmp_path, clone):
    git(clone, "branch", "--quiet", "-D", "main")
    git(clone, "checkout", "--quiet", "--detach", "HEAD")
    git(clone, "branch", "--quiet", "-D", "feature/x")
    assert named(clone, "v1").branch == "main"  # from refs/remotes/origin/main


def test_a_commit_on_no_branch_asks_for_one(clone):
    git(clone, "checkout", "--quiet", "--detach", "HEAD")
    git(clone, "commit", "--quiet", "--allow-empty", "-m", "detached")
    with pytest.raises(WorkspaceError) as info:
        named(clone, "HEAD")
    assert "is on no branch of" in str(info.value) and "--branch" in str(info.value)
    repo = gitname.open_clone(clone)
    sha = git(clone, "rev-parse", "HEAD")
    assert gitname.resolve(repo, "HEAD", "hotfix") == gitname.NamedCommit(sha, "hotfix")


@pytest.mark.parametrize("name", ["nope", "HEAD~99", "-x", "--all", "", "f" * 40])
def test_a_name_git_does_not_know_resolves_to_nothing(clone, name):
    assert named(clone, name) is None


def test_outside_a_clone_there_is_none(tmp_path):
    (tmp_path / "plain").mkdir()
    assert gitname.open_clone(tmp_path / "plain") is None
