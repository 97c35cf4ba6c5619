"""JUnit XML reports: the option the runner gives pytest, and what a real report says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from superci.junit import parse_junit_bytes, pytest_junit_option
from superci.summary import parse_summary

MIXED_PYTEST_FILE = """\
import pytest


@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")


def test_passes():
    assert 1 + 1 == 2


def test_fails():
    assert 1 + 1 == 3


def test_errors_in_setup(broken):
    pass


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass


class TestGroup:
    def test_in_class_passes(self):
        pass

    def test_in_class_fails(self):
        assert False
"""


@pytest.fixture(scope="module")
def real_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """The JUnit report and the output of a real pytest run, asked for the way the runner
    asks (through PYTEST_ADDOPTS)."""
    project = tmp_path_factory.mktemp("project")
    (project / "test_mixed.py").write_text(MIXED_PYTEST_FILE)
    report = tmp_path_factory.mktemp("scratch") / "junit.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTEST_ADDOPTS"] = pytest_junit_option(report)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mixed.py"],
        cwd=project, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    return report.read_bytes(), done.stdout


def test_a_real_pytest_report_gives_exact_counts_and_failing_test_names(
    real_report: tuple[bytes, str],
):
    report, _ = real_report
    summary = parse_junit_bytes(report)

    assert summary is not None
    assert summary.counts == {"run": 6, "passed": 2, "failed": 2, "errors": 1, "skipped": 1}
    assert summary.failing == 3
    assert sorted(summary.failures) == [
        "test_mixed.TestGroup.test_in_class_fails",
        "test_mixed.test_errors_in_setup",
        "test_mixed.test_fails",
    ]


def test_the_report_agrees_with_the_summary_pytest_printed(real_report: tuple[bytes, str]):
    report, output = real_report
    from_report, from_output = parse_junit_bytes(report), parse_summary(output)

    assert from_report is not None
    assert from_report.counts == from_output.counts
    assert len(from_report.failures) == len(from_output.failures) == 3


def test_the_runner_option_keeps_options_already_in_pytest_addopts(tmp_path: Path):
    option = pytest_junit_option(tmp_path / "r.xml", "-x --tb=short")

    assert option.startswith("-x --tb=short ")
    assert f"--junitxml={tmp_path / 'r.xml'}" in option.split()


def test_a_test_reported_twice_is_named_once_among_the_failures():
    """pytest adds a second testcase when a failed test also errors in its teardown."""
    report = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="2">
  <testcase classname="tests.test_x" name="test_a"><failure message="boom"/></testcase>
  <testcase classname="tests.test_x" name="test_a"><error message="teardown"/></testcase>
  <testcase name="test_plain"/>
</testsuite></testsuites>"""
    summary = parse_junit_bytes(report)

    assert summary is not None
    assert summary.failures == ["tests.test_x.test_a"]
    assert summary.counts["passed"] == 1
    assert summary.failing == 1


def test_a_test_that_failed_then_passed_when_run_again_is_not_failing_at_last():
    """Tools that run a failed test again (gotestsum --rerun-fails, Gradle's test-retry)
    write a testcase per run: the last one says how the test ended."""
    report = b"""<testsuite>
  <testcase classname="pkg" name="test_flaky"><failure message="first run"/></testcase>
  <testcase classname="pkg" name="test_flaky"/>
  <testcase classname="pkg" name="test_broken"/>
  <testcase classname="pkg" name="test_broken"><failure message="second run"/></testcase>
</testsuite>"""
    summary = parse_junit_bytes(report)

    assert summary is not None
    assert summary.counts["failed"] == 2 and summary.failing == 1


@pytest.mark.parametrize(
    "report",
    [b"", b"not xml at all", b"<testsuites><testsuite>", b"\xff\xfe<junk"],
    ids=["empty", "text", "truncated", "binary"],
)
def test_a_missing_or_invalid_report_gives_none(report: bytes):
    assert parse_junit_bytes(report) is None
