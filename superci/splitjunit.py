"""One JUnit XML report for a whole split, written from its results.

Written from :attr:`superci.split.Split.results` rather than by merging the reports the
participants' test processes wrote: a participant that was killed writes none (the tests
it reported before would vanish), a test that crashed its process is in none, and a
batch run again could appear twice. The split holds exactly one result per collected
test, so this report has every collected test exactly once (who ran what goes in
``result.json``: xunit2 has no place for it per test). Standard library ElementTree, no I/O.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from superci.split import Split, TestOutcome, TestResult

#: The JUnit element of each outcome that is not a pass.
ELEMENTS = {
    TestOutcome.FAILED: "failure",
    TestOutcome.ERROR: "error",
    TestOutcome.SKIPPED: "skipped",
}


def case_names(test: str) -> tuple[str, str]:
    """(classname, name) of a test id, as pytest's and unittest's own reports name it:
    ``tests/test_a.py::TestX::test_y[1]`` is (``tests.test_a.TestX``, ``test_y[1]``),
    ``test_u.T.test_a`` is (``test_u.T``, ``test_a``)."""
    if "::" in test:
        base, bracket, parameters = test.partition("[")  # parameters may hold "::"
        path, *inner = base.split("::")
        module = path.removesuffix(".py").replace("/", ".")
        return ".".join([module, *inner[:-1]]), inner[-1] + bracket + parameters
    classname, _, name = test.rpartition(".")
    return classname, name


def junit_xml(split: Split, suite_name: str = "superci") -> bytes:
    """The report: one ``testcase`` per collected test, in collection order."""
    results = [split.results.get(t) or _missing(t) for t in split.tests]
    counts = split.summary().summary.counts
    suites = ElementTree.Element("testsuites")
    suite = ElementTree.SubElement(
        suites, "testsuite", name=suite_name, tests=str(len(results)),
        failures=str(counts["failed"]), errors=str(counts["errors"] + _unfinished(split)),
        skipped=str(counts["skipped"]), time=f"{sum(r.duration for r in results):.3f}",
    )  # fmt: skip
    for result in results:
        _case(suite, result)
    ElementTree.indent(suites)
    report: bytes = ElementTree.tostring(suites, encoding="utf-8", xml_declaration=True)
    return report


def _missing(test: str) -> TestResult:
    return TestResult(test, TestOutcome.ERROR, 0.0, f"{test}: no result (the split is not over)")


def _unfinished(split: Split) -> int:
    return sum(1 for t in split.tests if t not in split.results)


def _case(suite: ElementTree.Element, result: TestResult) -> None:
    classname, name = case_names(result.test)
    case = ElementTree.SubElement(
        suite, "testcase", classname=classname, name=name, time=f"{result.duration:.3f}"
    )
    element = ELEMENTS.get(result.outcome)
    if element is not None:
        first = result.message.strip().splitlines()[:1]
        detail = ElementTree.SubElement(case, element, message=first[0] if first else "")
        detail.text = result.message
