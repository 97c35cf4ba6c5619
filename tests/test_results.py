"""test_results/<sha>/: the live log and the atomically written result, on a real disk."""

import os
import stat

import pytest

from superci.errors import ProtocolError, ReportTooLarge, StorageError
from superci.results import LOG_FILE, RESULT_FILE, ResultsFolder

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER = "f" * 40


@pytest.fixture
def root(tmp_path):
    return tmp_path / "test_results"


@pytest.fixture
def results(root):
    folder = ResultsFolder(root)
    yield folder
    for sha in list(folder._logs):
        folder.close_log(sha)


def log_of(root, sha=SHA) -> bytes:
    return (root / sha / LOG_FILE).read_bytes()


# --- the live log -------------------------------------------------------------------


def test_start_log_creates_an_empty_log(results, root):
    results.start_log(SHA)
    assert log_of(root) == b""
    assert results.log_size(SHA) == 0


def test_start_log_truncates_the_previous_attempts_output(results, root):
    results.start_log(SHA)
    results.append_output(SHA, 0, b"attempt one\n")
    results.start_log(SHA)
    assert log_of(root) == b""
    results.append_output(SHA, 0, b"attempt two\n")
    results.close_log(SHA)
    assert log_of(root) == b"attempt two\n"


def test_append_output_appends_in_order(results, root):
    results.start_log(SHA)
    results.append_output(SHA, 0, b"hello ")
    results.append_output(SHA, 6, b"world\n")
    assert results.log_size(SHA) == 12
    assert log_of(root) == b"hello world\n"  # unbuffered: visible while it runs


def test_resent_output_after_a_reconnect_duplicates_nothing(results, root):
    results.start_log(SHA)
    results.append_output(SHA, 0, b"abcdef")
    results.append_output(SHA, 0, b"abcdef")  # wholly old
    results.append_output(SHA, 3, b"def")  # wholly old, from the middle
    results.append_output(SHA, 4, b"efghij")  # partly old
    assert log_of(root) == b"abcdefghij"
    assert results.log_size(SHA) == 10


def test_output_with_a_gap_is_refused_and_nothing_is_written(results, root):
    results.start_log(SHA)
    results.append_output(SHA, 0, b"abc")
    with pytest.raises(StorageError) as info:
        results.append_output(SHA, 5, b"fgh")
    assert "gap" in str(info.value) and "3" in str(info.value) and "5" in str(info.value)
    assert log_of(root) == b"abc"


def test_logs_of_two_commits_are_kept_apart(results, root):
    results.start_log(SHA)
    results.start_log(OTHER)
    results.append_output(SHA, 0, b"one")
    results.append_output(OTHER, 0, b"two")
    assert log_of(root, SHA) == b"one"
    assert log_of(root, OTHER) == b"two"


def test_fresh_results_folder_continues_an_existing_log(root):
    # the previous dispatcher wrote part of the log, then stopped without closing it
    before = ResultsFolder(root)
    before.start_log(SHA)
    before.append_output(SHA, 0, b"line 1\n")

    after = ResultsFolder(root)  # the restarted dispatcher adopts the build
    assert after.log_size(SHA) == 7
    after.append_output(SHA, 0, b"line 1\nline 2\n")  # the runner resends from its last ack
    after.append_output(SHA, 14, b"line 3\n")
    after.close_log(SHA)
    before.close_log(SHA)
    assert log_of(root) == b"line 1\nline 2\nline 3\n"


def test_log_size_of_a_commit_without_a_log_is_zero(results, root):
    assert results.log_size(SHA) == 0
    assert not root.exists()


def test_close_log_keeps_the_content_and_can_be_repeated(results, root):
    results.start_log(SHA)
    results.append_output(SHA, 0, b"done\n")
    results.close_log(SHA)
    results.close_log(SHA)
    assert results.log_size(SHA) == 5
    assert log_of(root) == b"done\n"


# --- the result ---------------------------------------------------------------------


def test_write_result_is_readable_and_leaves_no_temporary_files(results, root):
    result = {"status": "passed", "counts": {"run": 3, "passed": 3}, "runner": "r1"}
    path = results.write_result(SHA, result)
    assert path == root / SHA / RESULT_FILE
    assert results.read_result(SHA) == result
    assert sorted(p.name for p in (root / SHA).iterdir()) == [RESULT_FILE]


def test_write_result_replaces_an_older_result(results, root):
    results.write_result(SHA, {"status": "error", "attempts": 1})
    results.write_result(SHA, {"status": "passed", "attempts": 2})
    assert results.read_result(SHA) == {"status": "passed", "attempts": 2}
    assert sorted(p.name for p in (root / SHA).iterdir()) == [RESULT_FILE]


def test_write_result_closes_the_log_first(results, root):
    results.start_log(SHA)
    results.append_output(SHA, 0, b"all output\n")
    results.write_result(SHA, {"status": "passed"})
    assert SHA not in results._logs
    assert sorted(p.name for p in (root / SHA).iterdir()) == [LOG_FILE, RESULT_FILE]
    assert log_of(root) == b"all output\n"


def test_read_result_of_a_commit_without_one_is_none(results):
    assert results.read_result(SHA) is None


def test_failed_write_leaves_no_temporary_file(results, root):
    (root / SHA / RESULT_FILE).mkdir(parents=True)  # rename onto a folder must fail
    with pytest.raises(StorageError) as info:
        results.write_result(SHA, {"status": "passed"})
    assert str(root / SHA) in str(info.value)
    assert sorted(p.name for p in (root / SHA).iterdir()) == [RESULT_FILE]


# --- unsafe commit ids and unwritable folders --------------------------------------


BAD_SHAS = ["../x", "../../etc", "..", SHA.upper(), SHA[:-1], f"{SHA[:-2]}/x", ""]


@pytest.mark.parametrize("sha", BAD_SHAS)
def test_bad_sha_is_refused_before_any_path_is_made(tmp_path, sha):
    root = tmp_path / "test_results"
    results = ResultsFolder(root)
    calls = [
        lambda: results.folder(sha),
        lambda: results.start_log(sha),
        lambda: results.append_output(sha, 0, b"x"),
        lambda: results.log_size(sha),
        lambda: results.write_result(sha, {"status": "passed"}),
        lambda: results.read_result(sha),
    ]
    for call in calls:
        with pytest.raises(ProtocolError):
            call()
    assert list(tmp_path.iterdir()) == []  # not even the root, let alone ../x
    assert results._logs == {}


def test_unwritable_root_gives_storage_error_for_the_log(tmp_path):
    blocker = tmp_path / "test_results"
    blocker.write_text("a file where the results folder should be")
    results = ResultsFolder(blocker)
    with pytest.raises(StorageError) as info:
        results.start_log(SHA)
    assert str(blocker / SHA) in str(info.value)
    with pytest.raises(StorageError):
        results.append_output(SHA, 0, b"x")


def test_unwritable_root_gives_storage_error_for_the_result(tmp_path):
    blocker = tmp_path / "test_results"
    blocker.write_text("a file where the results folder should be")
    with pytest.raises(StorageError) as info:
        ResultsFolder(blocker).write_result(SHA, {"status": "passed"})
    assert str(blocker / SHA) in str(info.value)


# --- earlier builds of a commit -----------------------------------------------------


def finish_build(results, build_id: int, output: bytes, report: bytes | None = None) -> None:
    """One whole build of SHA: its log, maybe a JUnit report, its result."""
    results.start_log(SHA, build_id)
    results.append_output(SHA, 0, output)
    if report is not None:
        results.append_artifact(SHA, "junit.xml", 0, report)
    results.write_result(SHA, {"build_id": build_id, "status": "passed"})


def test_a_new_build_moves_the_earlier_builds_files_to_builds_its_id(results, root):
    finish_build(results, 1, b"first build\n", b"<testsuite name='one'/>")
    results.start_log(SHA, 2)
    results.append_output(SHA, 0, b"second build\n")

    earlier = root / SHA / "builds" / "1"
    assert sorted(p.name for p in earlier.iterdir()) == sorted([RESULT_FILE, "junit.xml", LOG_FILE])
    assert (earlier / LOG_FILE).read_bytes() == b"first build\n"
    assert (earlier / "junit.xml").read_bytes() == b"<testsuite name='one'/>"
    assert log_of(root) == b"second build\n"
    assert results.read_result(SHA) is None  # the newest build has none yet
    assert results.read_result(SHA, 1) == {"build_id": 1, "status": "passed"}

    results.write_result(SHA, {"build_id": 2, "status": "failed"})
    assert results.read_result(SHA) == {"build_id": 2, "status": "failed"}
    assert results.read_result(SHA, 2) == results.read_result(SHA)
    assert b"".join(results.read_log(SHA, 0, 1)) == b"first build\n"
    assert (
        b"".join(results.read_log(SHA, 0, 2))
        == b"".join(results.read_log(SHA))
        == b"second build\n"
    )
    assert sorted(p.name for p in (root / SHA).iterdir()) == sorted(
        ["builds", LOG_FILE, RESULT_FILE]
    )


def test_every_earlier_build_keeps_its_own_folder(results, root):
    for build_id in (3, 5, 9):
        finish_build(results, build_id, f"build {build_id}\n".encode())
    assert sorted(p.name for p in (root / SHA / "builds").iterdir()) == ["3", "5"]
    for build_id in (3, 5, 9):
        assert b"".join(results.read_log(SHA, 0, build_id)) == f"build {build_id}\n".encode()
        assert results.read_result(SHA, build_id)["build_id"] == build_id  # type: ignore[index]


def test_another_attempt_of_the_same_build_replaces_its_log_and_moves_nothing(results, root):
    finish_build(results, 4, b"attempt whose result was written before a crash\n")
    results.start_log(SHA, 4)  # the build runs again: its result was never marked in the db
    assert not (root / SHA / "builds").exists()
    assert log_of(root) == b""


def test_a_build_that_ends_without_starting_keeps_the_earlier_builds_files(results, root):
    finish_build(results, 1, b"first build\n")
    results.write_result(SHA, {"build_id": 2, "status": "cancelled"})  # cancelled in the queue
    assert results.read_result(SHA) == {"build_id": 2, "status": "cancelled"}
    assert results.read_result(SHA, 1) == {"build_id": 1, "status": "passed"}
    assert b"".join(results.read_log(SHA, 0, 1)) == b"first build\n"
    assert b"".join(results.read_log(SHA, 0, 2)) == b""  # it never started
    assert not (root / SHA / LOG_FILE).exists()


def test_a_build_with_no_files_yet_reads_as_none_not_as_another_builds(results):
    finish_build(results, 1, b"first build\n")
    assert results.read_result(SHA, 2) is None  # queued: the folder still holds build 1's
    assert b"".join(results.read_log(SHA, 0, 2)) == b""


def test_a_move_cut_short_by_a_crash_is_finished_by_the_next_start(results, root):
    finish_build(results, 1, b"first build\n")
    earlier = root / SHA / "builds" / "1"
    earlier.mkdir(parents=True)
    (root / SHA / LOG_FILE).rename(earlier / LOG_FILE)  # moved; the result was not yet
    results.start_log(SHA, 2)
    assert sorted(p.name for p in earlier.iterdir()) == sorted([RESULT_FILE, LOG_FILE])
    assert (earlier / LOG_FILE).read_bytes() == b"first build\n"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_result_json_gets_the_same_mode_as_output_log(results, root, umask):
    previous = os.umask(umask)
    try:
        results.start_log(SHA)
        results.append_output(SHA, 0, b"output\n")
        results.write_result(SHA, {"status": "passed"})
    finally:
        os.umask(previous)
    log_mode = stat.S_IMODE((root / SHA / LOG_FILE).stat().st_mode)
    assert log_mode == 0o666 & ~umask
    assert stat.S_IMODE((root / SHA / RESULT_FILE).stat().st_mode) == log_mode


def test_a_report_past_the_cap_is_dropped_whatever_came_before(results, root):
    results.start_log(SHA, 1)
    results.append_artifact(SHA, "junit.xml", 0, b"a" * 60, max_bytes=100)
    with pytest.raises(ReportTooLarge, match="junit.xml .*exceed 100 bytes"):
        results.append_artifact(SHA, "junit.xml", 60, b"b" * 60, max_bytes=100)
    with pytest.raises(ReportTooLarge):  # and everything after it
        results.append_artifact(SHA, "junit.xml", 120, b"c", max_bytes=100)
    results.write_result(SHA, {"build_id": 1, "status": "failed"})
    assert sorted(p.name for p in (root / SHA).iterdir()) == [LOG_FILE, RESULT_FILE]


def test_a_report_at_the_cap_is_kept(results, root):
    results.start_log(SHA, 1)
    results.append_artifact(SHA, "junit.xml", 0, b"a" * 100, max_bytes=100)
    results.write_result(SHA, {"build_id": 1, "status": "passed"})
    assert (root / SHA / "junit.xml").read_bytes() == b"a" * 100
