"""The one JUnit report of a split: every collected test exactly once, read back as superci
reads any report."""

import xml.etree.ElementTree as ElementTree

from superci.junit import parse_junit_bytes
from superci.split import Split, TestOutcome, TestResult
from superci.splitjunit import case_names, junit_xml

IDS = [
    "tests/test_a.py::test_ok",
    "tests/test_a.py::TestX::test_bad[1]",
    "tests/test_b.py::test_skip",
    "tests/test_b.py::test_crash",
    "tests/test_b.py::test_never",
]


def finished_split() -> Split:
    split = Split(IDS, {}, width=1, divisor=0.1)
    split.join("r1", 0.0)
    batch = split.next_batch("r1", 0.0)
    assert batch.tests == tuple(IDS)
    split.report(
        "r1", batch.id,
        [
            TestResult(IDS[0], TestOutcome.PASSED, 0.25),
            TestResult(IDS[1], TestOutcome.FAILED, 0.5, "assert 1 == 2\nmore"),
            TestResult(IDS[2], TestOutcome.SKIPPED, 0.0, "not today"),
        ],
        1.0,
    )  # fmt: skip
    split.started("r1", batch.id, IDS[3], 1.0)
    split.lose("r1", 1.0, "exit code 3")
    return split


def test_pytest_and_unittest_ids_are_named_as_their_own_reports_name_them():
    assert case_names("tests/test_a.py::TestX::test_y[a::b]") == (
        "tests.test_a.TestX",
        "test_y[a::b]",
    )
    assert case_names("tests/sub/test_a.py::test_y") == ("tests.sub.test_a", "test_y")
    assert case_names("test_u.T.test_a") == ("test_u.T", "test_a")


def test_every_collected_test_is_in_the_report_exactly_once_with_its_outcome():
    split = finished_split()
    assert not split.done
    report = junit_xml(split)
    cases = ElementTree.fromstring(report).findall(".//testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [case_names(t) for t in IDS]
    bad = cases[1].find("failure")
    assert (
        bad is not None
        and bad.get("message") == "assert 1 == 2"
        and bad.text == "assert 1 == 2\nmore"
    )
    never = cases[4].find("error")
    assert never is not None and never.text == f"{IDS[4]}: no result (the split is not over)"
    summary = parse_junit_bytes(report)
    assert summary is not None
    assert summary.counts == {"run": 5, "passed": 1, "failed": 1, "errors": 2, "skipped": 1}


def test_the_report_of_a_split_that_ended_counts_as_its_summary_does():
    split = finished_split()
    split.end("the time limit was reached", 2.0)
    summary = parse_junit_bytes(junit_xml(split))
    assert summary is not None and summary.counts == split.summary().summary.counts
    root = ElementTree.fromstring(junit_xml(split)).find("testsuite")
    assert root is not None and root.get("errors") == "2" and root.get("time") == "0.750"
