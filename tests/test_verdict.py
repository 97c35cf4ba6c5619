"""The verdict of a build: exit code and test counts together, never the exit code alone."""

from __future__ import annotations

import pytest

from superci.execute import Execution
from superci.status import BuildStatus
from superci.summary import Summary
from superci.verdict import decide


def ended(exit_code: int | None, *, timed_out: bool = False, cancelled: bool = False):
    return Execution(exit_code=exit_code, timed_out=timed_out, cancelled=cancelled, duration=1.0)


def counts(run: int, passed: int = 0, failed: int = 0, errors: int = 0, skipped: int = 0):
    return Summary(
        {"run": run, "passed": passed, "failed": failed, "errors": errors, "skipped": skipped}
    )


def test_tests_that_ran_and_passed_pass():
    assert decide(ended(0), counts(3, passed=3), timeout=60) == (
        BuildStatus.PASSED,
        "tests passed (exit code 0)",
    )


def test_a_failing_exit_code_with_tests_that_ran_fails():
    assert decide(ended(1), counts(2, passed=1, failed=1), timeout=60) == (
        BuildStatus.FAILED,
        "tests failed (exit code 1)",
    )


def test_zero_tests_with_exit_code_0_is_an_error_that_says_how_to_allow_it():
    status, message = decide(ended(0), counts(0), timeout=60)
    assert status is BuildStatus.ERROR
    assert message.startswith("no tests ran (exit code 0)")
    assert "allow_no_tests = true" in message


def test_every_test_skipped_is_no_test_ran():
    status, message = decide(ended(0), counts(4, skipped=4), timeout=60)
    assert status is BuildStatus.ERROR
    assert message.startswith("no tests ran (4 skipped, exit code 0)")


@pytest.mark.parametrize("summary", [Summary(), counts(0)], ids=["unreadable", "zero"])
def test_pytest_exit_code_5_is_no_test_ran_even_with_unreadable_counts(summary):
    status, message = decide(ended(5), summary, timeout=60)
    assert status is BuildStatus.ERROR
    assert message.startswith("no tests ran (exit code 5)")


def test_exit_code_5_with_tests_that_ran_is_a_plain_failure():
    assert decide(ended(5), counts(2, passed=1, failed=1), timeout=60)[0] is BuildStatus.FAILED


@pytest.mark.parametrize(
    ("execution", "summary"),
    [(ended(0), counts(0)), (ended(5), Summary()), (ended(0), counts(2, skipped=2))],
)
def test_allow_no_tests_passes_a_build_in_which_no_test_ran(execution, summary):
    status, message = decide(execution, summary, timeout=60, allow_no_tests=True)
    assert status is BuildStatus.PASSED
    assert message.startswith("no tests ran")
    assert "allows" in message


def test_no_tests_and_a_failing_command_is_an_error_or_with_allow_no_tests_a_failure():
    status, message = decide(ended(2), counts(0), timeout=60)
    assert (status, message) == (
        BuildStatus.ERROR,
        "no tests ran (exit code 2): the test command failed",
    )
    assert decide(ended(2), counts(0), timeout=60, allow_no_tests=True)[0] is BuildStatus.FAILED


def test_exit_code_0_with_unreadable_counts_passes_but_says_counts_were_not_read():
    status, message = decide(ended(0), Summary(), timeout=60)
    assert status is BuildStatus.PASSED
    assert "could not read test counts" in message


def test_a_failing_command_with_unreadable_counts_fails():
    assert decide(ended(2), Summary(), timeout=60) == (
        BuildStatus.FAILED,
        "tests failed (exit code 2)",
    )


def test_timeout_and_cancel_are_decided_before_any_count():
    assert decide(ended(None, timed_out=True), counts(0), timeout=1.5) == (
        BuildStatus.TIMEOUT,
        "timed out after the limit of 1.5s",
    )
    assert decide(ended(None, cancelled=True), Summary(), timeout=60) == (
        BuildStatus.CANCELLED,
        "cancelled",
    )


@pytest.mark.parametrize("failing", [1, 2])
def test_a_report_of_failures_fails_the_build_even_when_the_command_exited_0(failing):
    summary = counts(5, passed=5 - failing, failed=failing)
    summary.failing = failing  # exact: from a JUnit report
    status, message = decide(ended(0), summary, timeout=60)
    assert status is BuildStatus.FAILED
    assert message.startswith(f"{failing} test")
    assert "by the JUnit report, although the test command exited 0" in message


def test_failures_read_from_the_output_alone_leave_exit_code_0_passed_saying_so():
    status, message = decide(ended(0), counts(3, passed=2, failed=1), timeout=60)
    assert status is BuildStatus.PASSED
    assert "the output's last summary says 1 failed or errored" in message


def test_a_report_whose_failures_passed_when_run_again_passes():
    summary = counts(3, passed=2, failed=1)
    summary.failing = 0  # the report's last run of each test passed
    assert decide(ended(0), summary, timeout=60) == (BuildStatus.PASSED,
                                                     "tests passed (exit code 0)")  # fmt: skip
