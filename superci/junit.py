"""JUnit XML reports: where the runner asks pytest to write one, and what it says.

Counts and failing test names from a report are exact, so they are preferred to what
:mod:`superci.summary` reads from the output. Parsed with the standard library's
ElementTree (the report comes from the tested repository's own test run, on the
runner, which already runs that repository's code).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from superci.summary import Summary

log = logging.getLogger(__name__)


def pytest_junit_option(path: Path, existing: str = "") -> str:
    """``PYTEST_ADDOPTS`` that also writes a JUnit report to ``path`` (other tools ignore it)."""
    return f"{existing} --junitxml={path} -o junit_family=xunit2".strip()


def parse_junit_bytes(report: bytes) -> Summary | None:
    """Counts and failing tests of a JUnit XML report; None if there is none or it is
    not valid XML."""
    if not report:
        return None
    try:
        root = ElementTree.fromstring(report)
    except ElementTree.ParseError as e:
        log.warning("cannot read the JUnit report: %s", e)
        return None
    counts = {"run": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures: list[str] = []
    last: dict[str, str] = {}  # each test's outcome in its last testcase
    for case in root.iter("testcase"):
        counts["run"] += 1
        outcome = _outcome(case)
        counts[outcome] += 1
        if outcome in ("failed", "errors"):
            failures.append(_name(case))
        # pytest writes a second testcase for a test that failed and then errored in
        # teardown; tools that run a test again write one per run.
        if not (outcome == "errors" and last.get(_name(case)) == "failed"):
            last[_name(case)] = outcome
    failing = sum(outcome in ("failed", "errors") for outcome in last.values())
    return Summary(counts, list(dict.fromkeys(failures)), failing)


def _outcome(case: ElementTree.Element) -> str:
    if case.find("failure") is not None:
        return "failed"
    if case.find("error") is not None:
        return "errors"
    if case.find("skipped") is not None:
        return "skipped"
    return "passed"


def _name(case: ElementTree.Element) -> str:
    classname, name = case.get("classname", ""), case.get("name", "?")
    return f"{classname}.{name}" if classname else name
