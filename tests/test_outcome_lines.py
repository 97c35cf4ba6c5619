"""Every line that tells how a build ended counts errors and skipped tests too, in the
same words: `superci up`'s line, `status`, `show` and the dispatcher's log."""

from __future__ import annotations

from superci.report import counts_text
from superci.up import format_outcome

ERRORS_ONLY = {"run": 2, "passed": 0, "failed": 0, "errors": 2, "skipped": 0}


def test_counts_name_passed_failed_errors_and_skipped_even_when_zero():
    assert counts_text(ERRORS_ONLY) == "0 passed, 0 failed, 2 errors, 0 skipped"
    assert counts_text({"run": 7, "passed": 3, "failed": 1, "errors": 2, "skipped": 1}) == (
        "3 passed, 1 failed, 2 errors, 1 skipped"
    )


def test_one_error_is_singular():
    assert counts_text({"passed": 1, "errors": 1}) == "1 passed, 0 failed, 1 error, 0 skipped"


def test_no_counts_read_gives_no_text():
    assert counts_text({}) == "" and counts_text(None) == ""


def test_ups_line_counts_erroring_tests_and_gives_the_reason():
    line = format_outcome({
        "status": "failed", "sha": "ab" * 20, "branch": "main", "duration": 1.25,
        "tests": ERRORS_ONLY, "runner": "runner-1", "message": "tests failed (exit code 1)",
    })  # fmt: skip
    assert line == (
        f"FAILED    {'ab' * 6} (main) in 1.2s [0 passed, 0 failed, 2 errors, 0 skipped]"
        " on runner-1: tests failed (exit code 1)"
    )


def test_ups_line_of_an_error_without_counts_says_why():
    line = format_outcome({
        "status": "error", "sha": "cd" * 20, "branch": "main", "duration": None, "tests": {},
        "runner": "runner-1", "message": "no tests ran (exit code 0)",
    })  # fmt: skip
    assert line == f"ERROR     {'cd' * 6} (main) on runner-1: no tests ran (exit code 0)"
