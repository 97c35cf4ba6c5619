"""test_results/<sha>/: the live log and the atomically written result, on a real disk."""

import pytest

from superci.errors import ProtocolError, StorageError
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
