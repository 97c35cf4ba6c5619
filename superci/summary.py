"""Test counts and failing test names, read from the output of unittest and pytest.

The summary lines are at the end of a run, so callers pass the tail of the output.
Unknown output yields empty counts: a missing summary is not an error of the build.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests? in ", re.M)
_UNITTEST_VERDICT = re.compile(r"^(OK|FAILED)(?: \(([^)]*)\))?\s*$", re.M)
_UNITTEST_FAILURE = re.compile(r"^(?:FAIL|ERROR): (\S+) \(([^)\s]+)\)", re.M)
_PYTEST_SUMMARY = re.compile(
    r"^(?:=+ )?((?:\d+ [a-z]+(?:, )?)+)(?: in [\d.]+s(?: \([^)]*\))?)?(?: =+)?\s*$", re.M
)
_PYTEST_NO_TESTS = re.compile(
    r"^(?:=+ )?no tests ran(?: in [\d.]+s(?: \([^)]*\))?)?(?: =+)?\s*$", re.M
)
# A node id ends at " - <message>" or the end of the line; a parametrize id in [...] may
# hold spaces ("test_x[a b]").
_PYTEST_FAILURE = re.compile(r"^(?:FAILED|ERROR) (\S+::[^\s\[]+(?:\[.*?\])?)(?= - |\s*$)", re.M)
_PYTEST_WORDS = {
    "passed": "passed",
    "failed": "failed",
    "error": "errors",
    "errors": "errors",
    "skipped": "skipped",
    "xfailed": "skipped",
    "xpassed": "passed",
    "deselected": "deselected",
}
_UNITTEST_WORDS = {
    "failures": "failed",
    "errors": "errors",
    "skipped": "skipped",
    "expected failures": "skipped",
    "unexpected successes": "failed",
}


@dataclass
class Summary:
    """Counts (run, passed, failed, errors, skipped) and the names of failing tests;
    ``failing``: from a JUnit report only (exact), how many tests failed or errored in
    their last run (a test run again that then passed is not one)."""

    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    failing: int | None = None


def parse_summary(output: str) -> Summary:
    """Read the last test summary in ``output``, whether pytest or unittest wrote it.

    The one that comes last wins, so a line a test printed that looks like the other
    tool's summary does not replace the real summary after it.
    """
    found = [f for f in (_parse_pytest(output), _parse_unittest(output)) if f is not None]
    return max(found, key=lambda f: f[0])[1] if found else Summary()


def _parse_unittest(output: str) -> tuple[int, Summary] | None:
    ran = list(_UNITTEST_RAN.finditer(output))
    if not ran:
        return None
    tail = output[ran[-1].start() :]
    counts = {"run": int(ran[-1].group(1)), "failed": 0, "errors": 0, "skipped": 0}
    verdict = _UNITTEST_VERDICT.search(tail)
    if verdict and verdict.group(2):
        for part in verdict.group(2).split(","):
            word, _, number = part.strip().partition("=")
            key = _UNITTEST_WORDS.get(word)
            if key and number.isdigit():
                counts[key] += int(number)
    counts["passed"] = max(
        0, counts["run"] - counts["failed"] - counts["errors"] - counts["skipped"]
    )
    failures = [_unittest_name(m) for m in _UNITTEST_FAILURE.finditer(output[: ran[-1].start()])]
    return ran[-1].start(), Summary(counts, _unique(failures))


def _unittest_name(match: re.Match[str]) -> str:
    test, where = match.group(1), match.group(2)
    return where if where.endswith("." + test) else f"{where}.{test}"


def _parse_pytest(output: str) -> tuple[int, Summary] | None:
    lines = [m for m in _PYTEST_SUMMARY.finditer(output) if _is_pytest_counts(m.group(1))]
    nothing = list(_PYTEST_NO_TESTS.finditer(output))
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    if nothing and (not lines or nothing[-1].start() > lines[-1].start()):
        return nothing[-1].start(), Summary({"run": 0, **counts})  # "no tests ran in 0.01s"
    if not lines:
        return None
    for part in lines[-1].group(1).split(", "):
        number, _, word = part.partition(" ")
        key = _PYTEST_WORDS.get(word.strip())
        if key:
            counts[key] = counts.get(key, 0) + int(number)
    counts["run"] = counts["passed"] + counts["failed"] + counts["errors"] + counts["skipped"]
    failures = [m.group(1) for m in _PYTEST_FAILURE.finditer(output)]
    return lines[-1].start(), Summary(counts, _unique(failures))


def _is_pytest_counts(text: str) -> bool:
    words = [part.strip().partition(" ")[2] for part in text.split(",") if part.strip()]
    return bool(words) and all(
        w in _PYTEST_WORDS or w == "warnings" or w == "warning" for w in words
    )


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))
