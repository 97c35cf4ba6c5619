"""The test process's side of the batch protocol: ask for tests, say what ran, one at a time.

One JSON object per line over a unix socket (the runner hosts the other end,
:class:`superci.splitsource.BatchSource`)::

    -> {"type": "hello", "participant": "r1:4242"}
    <- {"type": "welcome"} | {"type": "done"}           (done: the split is full or over)
    -> {"type": "next", "wait": true}
    <- {"type": "batch", "id": 3, "tests": [..]} | {"type": "done"}
       | {"type": "none"}                               (only if wait is false)
    -> {"type": "started", "batch": 3, "test": "t"}      (no answer: if the process dies now,
                                                          the test is the suspect)
    -> {"type": "result", "batch": 3, "test": "t", "outcome": "passed",
        "duration": 0.2, "message": ""}                 (no answer)
    -> {"type": "finished", "batch": 3}                 (no answer: unreported tests are errors)
    -> {"type": "bye"}                                  (leaving on purpose; EOF alone is a loss)

Blocking and standard library only, because it runs inside the tested repository's own
interpreter (the pytest plugin, the unittest loader), which has none of superci's
dependencies.
"""

from __future__ import annotations

import json
import os
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: The unix socket of the batch source; set by the runner for the test process.
SOCKET_ENV = "SUPERCI_SPLIT_SOCKET"
#: The participant's name in the split (default: host:pid).
PARTICIPANT_ENV = "SUPERCI_SPLIT_PARTICIPANT"
#: Where a collecting test process writes the ids it collected (JSON), instead of running.
COLLECT_ENV = "SUPERCI_SPLIT_COLLECT"
#: A test's message is cut to this many characters: the log has the rest.
MAX_MESSAGE = 8000
#: The longest line either side accepts (bytes): a batch of a few thousand long ids.
MAX_LINE = 4 * 1024 * 1024
OUTCOMES = ("passed", "failed", "error", "skipped")


class SourceGone(Exception):
    """The batch source closed the connection or answered something unexpected."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def participant_name() -> str:
    return os.environ.get(PARTICIPANT_ENV) or f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Slot:
    """One test to run now, its batch, and the test that runs after it (None if unknown)."""

    batch: int
    test: str
    next_test: str | None


class BatchClient:
    """A connection to the batch source."""

    def __init__(self, path: str, participant: str) -> None:
        self.participant = participant
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._lines = self._sock.makefile("rb")

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._lines.close()
        self._sock.close()

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._sock.sendall(encode(message))
        except OSError as e:
            raise SourceGone(f"the batch source is gone: {e}") from e

    def _answer(self, *expected: str) -> dict[str, Any]:
        line = self._lines.readline(MAX_LINE)
        if not line:
            raise SourceGone("the batch source closed the connection")
        answer = json.loads(line)
        if not isinstance(answer, dict) or answer.get("type") not in expected:
            raise SourceGone(f"the batch source answered {line[:200]!r}, not {expected}")
        return answer

    def hello(self) -> bool:
        """Join the split; False if it is full or over."""
        self._send({"type": "hello", "participant": self.participant})
        return bool(self._answer("welcome", "done")["type"] == "welcome")

    def next(self, wait: bool) -> tuple[int, list[str]] | bool:
        """The next batch (id, tests); False when the split is done; True when ``wait``
        is false and there is nothing yet."""
        self._send({"type": "next", "wait": wait})
        answer = self._answer("batch", "done", *(() if wait else ("none",)))
        if answer["type"] == "batch":
            return int(answer["id"]), [str(t) for t in answer["tests"]]
        return bool(answer["type"] == "none")

    def started(self, batch: int, test: str) -> None:
        self._send({"type": "started", "batch": batch, "test": test})

    def result(
        self, batch: int, test: str, outcome: str, duration: float, message: str = ""
    ) -> None:
        self._send({
            "type": "result", "batch": batch, "test": test, "outcome": outcome,
            "duration": duration, "message": message[:MAX_MESSAGE],
        })  # fmt: skip

    def finished(self, batch: int) -> None:
        self._send({"type": "finished", "batch": batch})

    def bye(self) -> None:
        self._send({"type": "bye"})


def feed(client: BatchClient) -> Iterator[Slot]:
    """Every test the source hands this participant, one slot at a time, each knowing the
    test after it: the next batch is asked for (without waiting) before the last test of
    the current one runs, so fixtures both share are not torn down in between. A batch is
    reported finished once its last test has run (the caller runs each slot before
    asking for the next one)."""
    queue: deque[tuple[int, str]] = deque()
    over = False
    while True:
        if not queue:
            if over:
                return
            got = client.next(wait=True)
            if got is False:
                return
            if isinstance(got, tuple):
                queue.extend((got[0], t) for t in got[1])
            continue
        if len(queue) == 1 and not over:
            got = client.next(wait=False)
            if got is False:
                over = True
            elif isinstance(got, tuple):
                queue.extend((got[0], t) for t in got[1])
        batch, test = queue.popleft()
        yield Slot(batch, test, queue[0][1] if queue else None)
        if not queue or queue[0][0] != batch:
            client.finished(batch)
