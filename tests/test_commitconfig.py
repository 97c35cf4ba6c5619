"""A commit's .superci.toml as a submitter reads it from git (superci.commitconfig)."""

from __future__ import annotations

import os

import git
from conftest import Repo

from superci import defaults
from superci.commitconfig import config_at


def test_the_text_is_the_commits_own_not_the_work_trees(repo: Repo):
    first = repo.commit({".superci.toml": 'needs = {gpu = "true"}\n'})
    second = repo.commit({".superci.toml": 'needs = {os = "linux"}\n'})
    (repo.path / ".superci.toml").write_text("not committed")
    clone = git.Repo(repo.path)
    assert config_at(clone, first) == 'needs = {gpu = "true"}\n'
    assert config_at(clone, second) == 'needs = {os = "linux"}\n'


def test_a_commit_without_the_file_says_so_with_empty_text(repo: Repo):
    sha = repo.commit({"README": "hello"})
    assert config_at(git.Repo(repo.path), sha) == ""


def test_what_cannot_be_sent_as_it_is_is_left_to_the_runner(repo: Repo, tmp_path):
    clone = git.Repo(repo.path)
    too_large = repo.commit({".superci.toml": "#" * (defaults.MAX_CONFIG_BYTES + 1)})
    (repo.path / ".superci.toml").unlink()
    os.symlink("elsewhere.toml", repo.path / ".superci.toml")
    linked = repo.commit({"elsewhere.toml": 'needs = {gpu = "true"}\n'})
    (repo.path / ".superci.toml").unlink()
    undecodable = repo.path / ".superci.toml"
    undecodable.write_bytes(b"\xff\xfe")
    latin = repo.commit({})
    assert config_at(clone, too_large) is None
    assert config_at(clone, linked) is None
    assert config_at(clone, latin) is None
    assert config_at(clone, "0" * 40) is None  # a commit this clone lacks
