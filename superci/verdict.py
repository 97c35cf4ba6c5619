"""How a build ended, decided from the evidence: the exit code *and* the test counts.

An exit code of 0 alone is no proof that anything was tested: a typo in a command, a
test folder with nothing in it or a discovery pattern that matches no file all exit 0.
So a build in which the counts show that no test ran is an error, unless the repository
says that is expected (``allow_no_tests = true``); and one whose JUnit report shows
tests that failed in their last run has failed, whatever its exit code (counts read from
the output, which a test may print to, only say they disagree). Pure: no I/O, tested on its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from superci.execute import Execution
from superci.status import BuildStatus
from superci.summary import Summary

#: pytest exits with 5 when it collected no test (and unittest does since Python 3.12).
NO_TESTS_EXIT_CODE = 5

ALLOW_HINT = "set allow_no_tests = true in .superci.toml if that is expected"


def decide(
    execution: Execution, summary: Summary, *, timeout: float, allow_no_tests: bool = False
) -> tuple[BuildStatus, str]:
    """The build's status and the message that says why."""
    if execution.timed_out:
        return BuildStatus.TIMEOUT, f"timed out after the limit of {timeout:g}s"
    if execution.cancelled:
        return BuildStatus.CANCELLED, "cancelled"
    code = execution.exit_code
    skipped = _skipped_if_nothing_ran(summary.counts, code)
    if skipped is not None:
        details = ([f"{skipped} skipped"] if skipped else []) + [f"exit code {code}"]
        nothing = f"no tests ran ({', '.join(details)})"
        if code not in (0, NO_TESTS_EXIT_CODE):
            status = BuildStatus.FAILED if allow_no_tests else BuildStatus.ERROR
            return status, f"{nothing}: the test command failed"
        if allow_no_tests:
            return BuildStatus.PASSED, f"{nothing}, which .superci.toml allows (allow_no_tests)"
        return BuildStatus.ERROR, f"{nothing}; {ALLOW_HINT}"
    if code != 0:
        return BuildStatus.FAILED, f"tests failed (exit code {code})"
    if summary.failing:  # `pytest || true`, a wrapper that drops the code: the report tells
        return BuildStatus.FAILED, (
            f"{summary.failing} test{'s' if summary.failing != 1 else ''} failed or errored "
            "by the JUnit report, although the test command exited 0"
        )
    said = summary.counts.get("failed", 0) + summary.counts.get("errors", 0)
    if said and summary.failing is None:  # read from the output, which a test may print
        return BuildStatus.PASSED, (
            f"tests passed (exit code 0), though the output's last summary says {said} "
            "failed or errored: without a JUnit report superci goes by the exit code"
        )
    if not summary.counts:
        return BuildStatus.PASSED, (
            "tests passed (exit code 0), but superci could not read test counts from the output"
        )
    return BuildStatus.PASSED, "tests passed (exit code 0)"


def _skipped_if_nothing_ran(counts: Mapping[str, int], exit_code: int | None) -> int | None:
    """How many tests were skipped if the evidence says no test ran; None if tests ran
    (or nothing says they did not)."""
    if not counts:
        # Unreadable counts: only pytest's (and unittest's) own exit code for it tells.
        return 0 if exit_code == NO_TESTS_EXIT_CODE else None
    run, skipped = counts.get("run", 0), counts.get("skipped", 0)
    return skipped if run - skipped <= 0 else None
