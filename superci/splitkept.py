"""A split's results as the fields of :class:`~superci.protocol.KeptResults`, and back.

A host sends the results its split records (:class:`~superci.protocol.SplitKept`) so
that the dispatcher keeps them with the build; should the host be lost, the next
attempt's host gets them back with its durations and runs only the other tests. Only
results a participant reported travel: an error the split made up itself (a lost batch,
the end of the build) says nothing about the test, which the next attempt runs again.
Parts stay well inside a frame: at most ``MAX_LIST`` tests and about ``PART_BYTES``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from superci import protocol
from superci.split import TestOutcome, TestResult

#: Bytes of results one message carries at most (a frame holds 1 MiB).
PART_BYTES = 256 * 1024
#: Bytes of kept results in the answer to one request (with at most 100 tests' durations,
#: which take a few KiB): 100 messages of 4 KiB each fit; what does not is run again.
ANSWER_BYTES = 512 * 1024
#: Characters of a test's message kept (the protocol's text limit).
MAX_KEPT_MESSAGE = protocol.MAX_TEXT


def worth_keeping(result: TestResult) -> bool:
    """Whether a result says something about its test: a participant reported it, and its
    id is one the protocol carries."""
    return bool(result.participant) and len(result.test) <= protocol.MAX_STRING


def fields(results: Iterable[TestResult], budget: int = PART_BYTES) -> dict[str, Any]:
    """The fields of one message holding ``results``, as many as ``budget`` bytes hold
    (the rest are left out: their tests run again)."""
    return next(parts(results, budget), _empty())


def parts(results: Iterable[TestResult], budget: int = PART_BYTES) -> Iterator[dict[str, Any]]:
    """The fields of as many messages as ``results`` (those worth keeping) need."""
    part, size = _empty(), 0
    for result in results:
        if not worth_keeping(result):
            continue
        message = result.message[:MAX_KEPT_MESSAGE]
        cost = _cost(result.test, message, result.participant)
        full = size + cost > budget or len(part["outcomes"]) >= protocol.MAX_LIST
        if part["outcomes"] and full:
            yield part
            part, size = _empty(), 0
        if cost > budget:
            continue
        part["outcomes"][result.test] = str(result.outcome)
        part["seconds"][result.test] = max(result.duration, 0.0)
        if message:
            part["messages"][result.test] = message
        part["participants"][result.test] = result.participant[: protocol.MAX_STRING]
        size += cost
    if part["outcomes"]:
        yield part


def results(message: protocol.KeptResults) -> list[TestResult]:
    """The results a message carries, one per test its ``outcomes`` names."""
    return [
        TestResult(test, TestOutcome(outcome), message.seconds.get(test, 0.0),
                   message.messages.get(test, ""), message.participants.get(test, ""))
        for test, outcome in message.outcomes.items()
    ]  # fmt: skip


def _cost(test: str, message: str, participant: str) -> int:
    """Bytes one result adds to a frame: its id is a key in each of the four fields."""
    size = len(json.dumps([message, participant], ensure_ascii=False).encode("utf-8"))
    return 4 * len(json.dumps(test, ensure_ascii=False).encode("utf-8")) + size + 64


def _empty() -> dict[str, Any]:
    return {"outcomes": {}, "seconds": {}, "messages": {}, "participants": {}}
