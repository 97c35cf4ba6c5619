"""Names people use for a commit, resolved against a real state database."""

import pytest

from superci import names
from superci.errors import AmbiguousCommit, UnknownBuild
from superci.status import BuildStatus
from superci.store import Store

TWIN_1 = "abcdef0123" + "1" * 30
TWIN_2 = "abcdef0123" + "2" * 30
LONE = "0123456789" + "a" * 30
HEXY = "deadbeef" + "0" * 32


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "superci.db")
    yield s
    s.close()


@pytest.fixture
def builds(store):
    """Two commits sharing ten characters, one alone, on named branches; LONE built twice."""
    lone = store.add_build(LONE, "release-1", now=1.0)
    store.finish(lone.id, BuildStatus.PASSED, now=2.0)
    return {
        "twin_1": store.add_build(TWIN_1, "main", now=3.0),
        "twin_2": store.add_build(TWIN_2, "feature/x", now=4.0),
        "lone_first": lone,
        "lone": store.add_build(LONE, "release-1", now=5.0),
    }


@pytest.mark.parametrize("name", [LONE, LONE[:7], LONE[:12], "release-1"])
def test_full_id_short_id_and_branch_name_the_newest_build(store, builds, name):
    assert names.resolve(store, name) == builds["lone"]


def test_a_branch_names_its_latest_build(store, builds):
    assert names.resolve(store, "feature/x") == builds["twin_2"]
    assert names.resolve(store, "main") == builds["twin_1"]


def test_an_ambiguous_prefix_lists_each_candidate_by_a_telling_short_id_and_branch(store, builds):
    with pytest.raises(AmbiguousCommit) as info:
        names.resolve(store, "abcdef0")
    message = str(info.value)
    assert message.startswith("abcdef0 is ambiguous")
    assert f"{TWIN_2[:12]} (feature/x)" in message and f"{TWIN_1[:12]} (main)" in message
    assert "give more of the commit id" in message
    assert names.resolve(store, TWIN_1[:11]) == builds["twin_1"]


def test_candidates_sharing_more_than_a_short_id_are_shown_long_enough_to_tell_apart():
    assert names.short_id_length([TWIN_1, TWIN_2]) == 12
    assert names.short_id_length(["a" * 20 + "1" * 20, "a" * 20 + "2" * 20]) == 21
    assert names.short_id_length([LONE]) == names.SHORT_ID


def test_an_ambiguous_prefix_with_many_candidates_lists_ten_and_says_there_are_more(store):
    for i in range(12):
        store.add_build(f"fedcba9{i:02x}" + "0" * 31, "main", now=float(i))
    with pytest.raises(AmbiguousCommit) as info:
        names.resolve(store, "fedcba9")
    assert str(info.value).count("(main)") == names.MAX_CANDIDATES
    assert "and more" in str(info.value)


def test_a_name_that_is_hex_and_a_branch_means_a_known_commit_first_else_the_branch(store):
    commit = store.add_build(HEXY, "main", now=1.0)
    branch = store.add_build(LONE, "deadbeef", now=2.0)
    assert names.resolve(store, "deadbeef") == commit
    assert names.resolve(store, "0123456") == branch  # a commit, not the branch
    other = store.add_build(TWIN_1, "0123abc", now=3.0)
    assert names.resolve(store, "0123abc") == other  # no commit starts so: the branch


@pytest.mark.parametrize("name", ["ffffffff", "nope", "feature/y", "f" * 40])
def test_an_unknown_name_says_so(store, builds, name):
    with pytest.raises(UnknownBuild) as info:
        names.resolve(store, name)
    assert str(info.value) == f"no build of {name} is known"


def test_a_prefix_too_short_to_be_an_id_says_how_long_one_must_be(store, builds):
    with pytest.raises(UnknownBuild) as info:
        names.resolve(store, "abcdef")
    assert "a commit id prefix needs at least 7 characters" in str(info.value)


def test_a_build_id_names_an_earlier_build_of_the_same_commit_only(store, builds):
    earlier = names.resolve(store, LONE[:7], builds["lone_first"].id)
    assert (earlier.id, earlier.status) == (builds["lone_first"].id, BuildStatus.PASSED)
    assert names.resolve(store, "release-1", builds["lone"].id) == builds["lone"]
    with pytest.raises(UnknownBuild) as info:
        names.resolve(store, LONE[:7], builds["twin_1"].id)
    assert f"build {builds['twin_1'].id} is not a build of {LONE[:12]}" in str(info.value)
    with pytest.raises(UnknownBuild):
        names.resolve(store, LONE, 999)
