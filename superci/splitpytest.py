"""A pytest plugin (``-p superci.splitpytest``) that runs the tests a batch source hands out.

With :data:`~superci.splitclient.SOCKET_ENV` set, pytest collects as usual once, then
runs batch after batch of node ids pulled from the source until it says done: start-up
and session fixtures are paid once per participant, not once per batch. Each test goes
through the ``pytest_runtest_protocol`` hook, as in pytest's own loop and
pytest-xdist's worker, so plugins that wrap it (timeouts, reruns) still work, with the
test that runs after it as ``nextitem`` so fixtures tear down exactly when they must.
Before a test runs, the source is told it started: a test that kills the process is the
one blamed for it. An id that this process did not collect is reported as an error.

With :data:`~superci.splitclient.COLLECT_ENV` set, it writes the collected node ids as a
JSON document to that file and runs nothing: the ids come from pytest's own collection
objects, exactly as a participant will look them up, where parsing ``--collect-only -q``
would depend on its output format, warnings and quoting.

Imports nothing of superci but :mod:`superci.splitclient` (standard library only): it
runs in the tested repository's interpreter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from superci.splitclient import (
    COLLECT_ENV,
    MAX_MESSAGE,
    SOCKET_ENV,
    BatchClient,
    feed,
    participant_name,
)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(COLLECT_ENV):
        config.pluginmanager.register(Collector(Path(os.environ[COLLECT_ENV])), "superci-collect")
    elif os.environ.get(SOCKET_ENV):
        config.pluginmanager.register(Participant(os.environ[SOCKET_ENV]), "superci-split")


class Collector:
    """Writes the collected ids (and what failed to collect) instead of running tests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.errors: list[dict[str, str]] = []

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.errors.append({"node": report.nodeid, "message": str(report.longrepr)})

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        document = {"tests": [item.nodeid for item in session.items], "errors": self.errors}
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(document, indent=1), encoding="utf-8")
        partial.replace(self.path)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        return True  # collecting only, whatever the command line says


class Participant:
    """The loop that replaces pytest's: pull, run, report."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.current: str | None = None
        self.reports: list[pytest.TestReport] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid == self.current:
            self.reports.append(report)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        if session.config.option.collectonly:
            return None
        items = {item.nodeid: item for item in session.items}
        with BatchClient(self.path, participant_name()) as client:
            if client.hello():
                self._run(session, items, client)
            client.bye()
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        return True

    def _run(self, session: pytest.Session, items: dict[str, Any], client: BatchClient) -> None:
        for slot in feed(client):
            item = items.get(slot.test)
            if item is None:
                client.result(
                    slot.batch, slot.test, "error", 0.0,
                    f"{slot.test}: asked for, but this test process did not collect it",
                )  # fmt: skip
                continue
            nextitem = items.get(slot.next_test) if slot.next_test is not None else None
            self.current, self.reports = item.nodeid, []
            client.started(slot.batch, slot.test)
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            self.current = None
            if self.reports:  # none: the batch's end reports it as never reported
                outcome, message = combined(self.reports)
                duration = sum(r.duration for r in self.reports)
                client.result(slot.batch, slot.test, outcome, duration, message)
            if session.shouldfail or session.shouldstop:
                return  # what this process held goes back to the others


def combined(reports: list[pytest.TestReport]) -> tuple[str, str]:
    """One outcome from a test's setup, call and teardown reports, as JUnit counts it: a
    failure outside the call is an error, a skip (or expected failure) a skip."""
    for report in reports:
        if report.failed and report.when != "call":
            return "error", f"{report.when} failed: {report.longreprtext}"[:MAX_MESSAGE]
    for report in reports:
        if report.failed:
            return "failed", report.longreprtext[:MAX_MESSAGE]
    for report in reports:
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            return "skipped", str(getattr(report, "wasxfail", "") or reason)[:MAX_MESSAGE]
    if not any(r.when == "call" for r in reports):
        return "error", "pytest reported no call of this test"
    return "passed", ""
