"""Names people use for a commit — its full id, a unique prefix of 7 or more hex
characters, or a branch (meaning that branch's latest build) — resolved to a build the
dispatcher knows. A name that is both a prefix and a branch (``deadbeef``) means a known
commit first, else the branch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from superci.errors import AmbiguousCommit, ProtocolError, UnknownBuild
from superci.protocol import MIN_PREFIX, PREFIX_RE, check_branch
from superci.store import BuildRecord, Store

#: Shortest id shown for a commit (longer where two candidates share more).
SHORT_ID = 12
#: Candidates listed for an ambiguous prefix.
MAX_CANDIDATES = 10


def resolve(store: Store, name: str, build_id: int | None = None) -> BuildRecord:
    """The newest build of the commit ``name`` names, or its build ``build_id``; raises
    :class:`UnknownBuild` or :class:`AmbiguousCommit` with a message for people."""
    record = _newest(store, name)
    if build_id is None or build_id == record.id:
        return record
    build = store.get(build_id)
    if build is None or build.sha != record.sha:
        raise UnknownBuild(f"build {build_id} is not a build of {record.sha[:SHORT_ID]} ({name})")
    return build


def _newest(store: Store, name: str) -> BuildRecord:
    if PREFIX_RE.fullmatch(name):
        commits = store.latest_by_prefix(name, MAX_CANDIDATES + 1)
        if len(commits) == 1:
            return commits[0]
        if commits:
            raise AmbiguousCommit(ambiguity(name, commits))
    if is_branch(name) and (record := store.latest_on_branch(name)) is not None:
        return record
    raise UnknownBuild(unknown(name))


def is_branch(name: str) -> bool:
    """True for a valid branch name (git's rules), without saying what is wrong."""
    try:
        check_branch(name)
    except ProtocolError:
        return False
    return True


def unknown(name: str) -> str:
    """Why nothing answers to ``name``, with a hint where a prefix was too short."""
    hint = ""
    if len(name) < MIN_PREFIX and all(c in "0123456789abcdef" for c in name):
        hint = f" (a commit id prefix needs at least {MIN_PREFIX} characters)"
    return f"no build of {name} is known{hint}"


def ambiguity(name: str, candidates: Sequence[BuildRecord]) -> str:
    """The commits a prefix could mean, each by a short id and its branch."""
    shown = candidates[:MAX_CANDIDATES]
    width = short_id_length([c.sha for c in shown])
    listed = ", ".join(f"{c.sha[:width]} ({c.branch})" for c in shown)
    more = " and more" if len(candidates) > MAX_CANDIDATES else ""
    return f"{name} is ambiguous: it could be {listed}{more}; give more of the commit id"


def short_id_length(shas: Sequence[str]) -> int:
    """How many characters tell these commit ids apart (at least :data:`SHORT_ID`)."""
    shared = max((len(os.path.commonprefix([a, b])) for a in shas for b in shas if a != b),
                 default=0)  # fmt: skip
    return max(SHORT_ID, shared + 1)
