"""A commit's .superci.toml as its submitter reads it from git, to send with the build
request: the dispatcher never has the repository, yet must know what a build needs
(runner labels) before it picks a runner.

Read from the commit's tree, not the work tree, and bounded: its size is known before a
byte is read. The runner still reads the file in its own checkout and goes by that (see
superci.config); what is sent here only chooses the runner.
"""

from __future__ import annotations

import logging

import git

from superci import defaults

log = logging.getLogger(__name__)

#: Git's modes of a regular file (plain and executable).
REGULAR_FILE_MODES = (0o100644, 0o100755)


def config_at(repo: git.Repo, sha: str) -> str | None:
    """The text of ``sha``'s .superci.toml; "" when it has none. None when it cannot be
    sent as it is (not a regular file, larger than MAX_CONFIG_BYTES, not UTF-8, or a
    commit this repository lacks): the runner then finds out by itself what it needs."""
    try:
        tree = repo.commit(sha).tree
    except (ValueError, git.BadName, git.BadObject, git.GitCommandError) as e:
        log.debug("cannot read %s of %s: %s", defaults.CONFIG_FILE, sha[:12], e)
        return None
    try:
        entry = tree / defaults.CONFIG_FILE
    except KeyError:
        return ""
    if entry.type != "blob" or entry.mode not in REGULAR_FILE_MODES:
        return None  # a symlink or a folder: the runner's checkout says what it is
    if entry.size > defaults.MAX_CONFIG_BYTES:
        return None  # the runner reports it as too large
    try:
        return bytes(entry.data_stream.read()).decode("utf-8")
    except UnicodeDecodeError:
        return None
