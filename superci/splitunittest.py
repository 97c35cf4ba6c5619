"""unittest's side of a split: ``python -m superci.splitunittest [-s tests] [-t .] [-p test*.py]``.

Discovers the suite as ``python -m unittest discover`` does (superci's unittest command,
see :mod:`superci.testtool`), then either writes the test ids to the file named by
:data:`~superci.splitclient.COLLECT_ENV` or ``--list``, or runs batches pulled from the
batch source named by :data:`~superci.splitclient.SOCKET_ENV` in this one process,
reporting each test. The batches run as one lazily filled suite, so unittest's own class
and module fixtures (``setUpClass``, ``setUpModule``) are set up and torn down as it
would in a whole run. Standard library only: it runs in the tested repository's
interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superci.splitclient import COLLECT_ENV, SOCKET_ENV, BatchClient, feed, participant_name

if TYPE_CHECKING:  # only for the checker: the tested repository's Python may be older
    from types import TracebackType

    ErrInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


def discover(start: str, pattern: str, top: str | None) -> dict[str, unittest.TestCase]:
    """Every test of the suite by id, in discovery order (a module that fails to import
    is a test of its own that reports the import error, as unittest does)."""
    found: dict[str, unittest.TestCase] = {}

    def flatten(suite: unittest.TestSuite | unittest.TestCase) -> None:
        if isinstance(suite, unittest.TestCase):
            found.setdefault(suite.id(), suite)
        else:
            for test in suite:
                flatten(test)

    flatten(unittest.defaultTestLoader.discover(start, pattern, top))
    return found


class ReportingResult(unittest.TextTestResult):
    """unittest's text result that also tells the source each test's start and outcome."""

    client: BatchClient
    batch = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started_ids: set[str] = set()
        self.fixture_error = ""
        self._outcome: tuple[str, str] = ("passed", "")
        self._start = 0.0

    def startTest(self, test: unittest.TestCase) -> None:  # noqa: N802 (unittest's name)
        self.started_ids.add(test.id())
        self._outcome, self._start = ("passed", ""), time.perf_counter()
        self.client.started(self.batch, test.id())
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().stopTest(test)
        outcome, message = self._outcome
        self.client.result(
            self.batch, test.id(), outcome, time.perf_counter() - self._start, message
        )

    def _worse(self, outcome: str, message: str) -> None:
        rank = ("passed", "skipped", "failed", "error")
        if rank.index(outcome) > rank.index(self._outcome[0]):
            self._outcome = (outcome, message)

    def addError(self, test: Any, err: ErrInfo) -> None:  # noqa: N802
        super().addError(test, err)
        text = self.errors[-1][1]  # as unittest formatted it
        if isinstance(test, unittest.TestCase) and test.id() in self.started_ids:
            self._worse("error", text)
        else:  # setUpClass, setUpModule and their teardowns: not a test of their own
            self.fixture_error = f"{test}: {text}"

    def addFailure(self, test: unittest.TestCase, err: ErrInfo) -> None:  # noqa: N802
        super().addFailure(test, err)
        self._worse("failed", self.failures[-1][1])

    def addSubTest(self, test: Any, subtest: Any, err: ErrInfo | None) -> None:  # noqa: N802
        super().addSubTest(test, subtest, err)
        if err is not None and err[0] is not None:
            failed = issubclass(err[0], test.failureException)
            text = (self.failures if failed else self.errors)[-1][1]
            self._worse("failed" if failed else "error", text)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802
        super().addSkip(test, reason)
        self._worse("skipped", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: ErrInfo) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)
        self._worse("skipped", "expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._worse("failed", "unexpected success")


class PulledSuite(unittest.TestSuite):
    """A suite whose tests are pulled from the source as it runs them."""

    _cleanup = False  # its tests are not a list it could drop references from

    def __init__(self, tests: dict[str, unittest.TestCase], client: BatchClient) -> None:
        super().__init__()
        self.known = tests
        self.client = client
        self.result: ReportingResult | None = None

    def run(self, result: unittest.TestResult, debug: bool = False) -> unittest.TestResult:
        assert isinstance(result, ReportingResult)
        self.result = result
        result.client = self.client
        return super().run(result, debug)

    def __iter__(self) -> Iterator[unittest.TestCase]:
        assert self.result is not None
        for slot in feed(self.client):
            test = self.known.get(slot.test)
            if test is None:
                self.client.result(
                    slot.batch, slot.test, "error", 0.0,
                    f"{slot.test}: asked for, but this test process did not discover it",
                )  # fmt: skip
                continue
            self.result.batch = slot.batch
            yield test
            if slot.test not in self.result.started_ids:  # its class or module set-up failed
                self.client.result(
                    slot.batch, slot.test, "error", 0.0,
                    f"{slot.test}: not run: {self.result.fixture_error or 'unittest skipped it'}",
                )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m superci.splitunittest",
        description=f"Run the unittest tests a batch source hands out (${SOCKET_ENV}), "
        f"or list them (--list or ${COLLECT_ENV}).",
    )
    start = "tests" if Path("tests").is_dir() else "."
    parser.add_argument("-s", "--start-directory", default=start)
    parser.add_argument("-p", "--pattern", default="test*.py")
    parser.add_argument("-t", "--top-level-directory", default=None)
    parser.add_argument("--list", metavar="FILE", default=os.environ.get(COLLECT_ENV))
    options = parser.parse_args(argv)
    tests = discover(options.start_directory, options.pattern, options.top_level_directory)
    if options.list:
        Path(options.list).write_text(json.dumps({"tests": list(tests)}, indent=1), "utf-8")
        return 0
    path = os.environ.get(SOCKET_ENV)
    if not path:
        parser.error(f"set {SOCKET_ENV} to the batch source's socket, or give --list FILE")
    with BatchClient(path, participant_name()) as client:
        if not client.hello():
            client.bye()
            return 0
        suite = PulledSuite(tests, client)
        runner = unittest.TextTestRunner(resultclass=ReportingResult, verbosity=2)
        result = runner.run(suite)
        client.bye()
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
