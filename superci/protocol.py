"""The superci wire protocol: messages, framing and validation, with no I/O.

Every frame is a 4-byte big-endian length followed by that many bytes of a UTF-8 JSON
object with a ``type`` field. Each message type is a frozen dataclass; decoding checks
every field's type, length and format, so code behind the decoder can trust what it
gets. Use :class:`Decoder` (``feed`` bytes, take ``next_message``) to read and
:func:`encode` to write, as in h11: the caller owns the socket.

A conversation opens with the client's :class:`Hello` and the server's :class:`Welcome`;
anything wrong gets an :class:`Error` frame and the connection is closed.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import struct
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final, Union, get_args, get_origin, get_type_hints

from superci import defaults, labels
from superci.errors import ConfigError, FrameTooLarge, ProtocolError
from superci.split import TestOutcome
from superci.status import BuildStatus

#: 4: labels and needs, the commit's subject, author and .superci.toml, install time,
#: jobs, and the messages of a split suite. 5: a split's results kept with its build
#: (``SplitKept``, and with ``SplitDurations``) and ``SplitSeats.next_seat``.
PROTOCOL_VERSION: Final = 5
HEADER: Final = struct.Struct("!I")

SHA_RE: Final = re.compile(r"[0-9a-f]{40}")
#: Shortest prefix of a commit id that names it (git's default abbreviation).
MIN_PREFIX: Final = 7
PREFIX_RE: Final = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},40}}")
NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

#: Longest ordinary string field (characters); output data and free text have their own.
MAX_STRING: Final = 256
MAX_TEXT: Final = 4096
MAX_LIST: Final = 1000
MAX_BRANCH: Final = 200
#: Longest commit subject (its first line) and author name a submission or result carries.
MAX_SUBJECT: Final = 200
MAX_AUTHOR: Final = 100
#: Integers stay within what SQLite and every JSON reader hold exactly.
MAX_INT: Final = 2**53
#: Most rows a status query may ask for (queue and last builds each).
MAX_QUERY_LIMIT: Final = 1000
#: Longest JSON document in a reply (a status table, one result).
MAX_DOCUMENT: Final = 512 * 1024
#: Report files a runner may send along with a result; each becomes test_results/<sha>/<name>.
ARTIFACT_NAMES: Final = ("junit.xml", "split.json")
#: The test counts a result may carry (see superci.summary and superci.junit).
COUNT_KEYS: Final = ("run", "passed", "failed", "errors", "skipped")


class _NeedData:
    """Marker returned by :meth:`Decoder.next_message` when a frame is incomplete."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


# --- field checks -------------------------------------------------------------------


def check_sha(value: str) -> str:
    """A commit id must be a full lowercase hex SHA-1 before it touches a path or git."""
    if not SHA_RE.fullmatch(value):
        raise ProtocolError(f"commit id must be a full 40-character hex SHA, got {value!r:.60}")
    return value


def check_name(value: str) -> str:
    """Runner names go into logs and the database: a safe character set only."""
    if not NAME_RE.fullmatch(value):
        raise ProtocolError(
            f"name must be 1-64 characters of letters, digits and ._@- "
            f"(starting with a letter or digit), got {value!r:.80}"
        )
    return value


def check_commit_name(value: str) -> str:
    """What a person calls a commit: its id, a prefix of 7+ hex characters, or a branch
    (its latest build). Names never become paths: the dispatcher looks them up."""
    if PREFIX_RE.fullmatch(value):
        return value
    try:
        return check_branch(value)
    except ProtocolError:
        raise ProtocolError(
            f"not a commit name: {value!r:.80}; give a full 40-character hex SHA, a prefix "
            f"of one of {MIN_PREFIX} or more characters, or a branch name"
        ) from None


_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def check_branch(value: str) -> str:
    """Branch names follow git's ref-name rules (``git check-ref-format --branch``)."""
    problems = (
        not value
        or len(value) > MAX_BRANCH
        or value.startswith(("-", "/", "."))
        or value.endswith(("/", ".", ".lock"))
        or ".." in value
        or "//" in value
        or "@{" in value
        or value == "@"
        or "/." in value
        or ".lock/" in value
        or _BAD_REF_CHARS.search(value) is not None
    )
    if problems:
        raise ProtocolError(f"not a valid git branch name: {value!r:.80}")
    return value


def _check_status(value: str) -> str:
    try:
        BuildStatus(value)
    except ValueError:
        raise ProtocolError(f"unknown build status {value!r:.40}") from None
    return value


def _check_non_negative(value: int | float) -> int | float:
    if value < 0:
        raise ProtocolError(f"value must not be negative, got {value}")
    return value


def _check_positive(value: int) -> int:
    if value < 1:
        raise ProtocolError(f"value must be at least 1, got {value}")
    return value


def _check_role(value: str) -> str:
    if value not in HELLO_ROLES:
        raise ProtocolError(f"role must be 'runner' or 'client', got {value!r:.40}")
    return value


def _check_artifact_name(value: str) -> str:
    if value not in ARTIFACT_NAMES:
        raise ProtocolError(f"unknown artifact {value!r:.40}; known: {', '.join(ARTIFACT_NAMES)}")
    return value


def _check_nonce(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32,64}", value):
        raise ProtocolError("nonces and proofs are 32-64 lowercase hex characters")
    return value


def _check_secret(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ProtocolError("a runner identity is 64 lowercase hex characters")
    return value


def _check_counts(value: dict[str, int]) -> dict[str, int]:
    unknown = set(value) - set(COUNT_KEYS)
    if unknown:
        raise ProtocolError(f"unknown test count(s) {', '.join(sorted(unknown))[:80]}")
    if any(n < 0 for n in value.values()):
        raise ProtocolError("test counts must not be negative")
    return value


def _check_limit(value: int) -> int:
    if not 1 <= value <= MAX_QUERY_LIMIT:
        raise ProtocolError(f"limit must be between 1 and {MAX_QUERY_LIMIT}, got {value}")
    return value


def _check_query(value: str) -> str:
    if value not in tuple(QueryKind):
        raise ProtocolError(f"query must be 'status' or 'show', got {value!r:.40}")
    return value


def _check_labels(value: dict[str, str]) -> dict[str, str]:
    try:
        return labels.check_labels(value)
    except ConfigError as e:
        raise ProtocolError(str(e)) from None


def _check_facts(value: dict[str, list[str]]) -> dict[str, list[str]]:
    try:
        labels.check_facts(value)
    except ConfigError as e:
        raise ProtocolError(str(e)) from None
    return value


def _check_config(value: str) -> str:
    if len(value.encode("utf-8", "surrogatepass")) > defaults.MAX_CONFIG_BYTES:
        raise ProtocolError(f"a configuration is at most {defaults.MAX_CONFIG_BYTES} bytes")
    return value


def _check_outcomes(value: dict[str, str]) -> dict[str, str]:
    known = set(TestOutcome)
    wrong = sorted({v for v in value.values() if v not in known})
    if wrong:
        raise ProtocolError(f"unknown test outcome(s) {', '.join(wrong)[:80]}")
    return value


def _check_seconds(value: dict[str, float]) -> dict[str, float]:
    if any(seconds < 0 for seconds in value.values()):
        raise ProtocolError("a test's seconds must not be negative")
    return value


def _values_within(limit: int) -> Any:
    """The check that every value of a ``dict[str, str]`` field is at most ``limit`` long."""

    def check(value: dict[str, str]) -> dict[str, str]:
        if any(len(text) > limit for text in value.values()):
            raise ProtocolError(f"a value is longer than {limit}")
        return value

    return check


def _check(fn: Any, max_len: int = MAX_STRING, **default: Any) -> Any:
    return field(**default, metadata={"check": fn, "max_len": max_len})


def _text(max_len: int = MAX_TEXT, default: str | None = "") -> Any:
    return field(default=default, metadata={"max_len": max_len})


# --- vocabulary ---------------------------------------------------------------------


class Role(StrEnum):
    """Who sends a message: a peer says in its hello whether it is a runner or a client."""

    RUNNER = "runner"
    CLIENT = "client"
    DISPATCHER = "dispatcher"  # never in a hello: the other end of every connection


#: The roles a peer may take in its hello.
HELLO_ROLES: Final = (Role.RUNNER, Role.CLIENT)


class QueryKind(StrEnum):
    """What a query asks: the whole picture, or one commit."""

    STATUS = "status"  # the pool, the queue and the last builds
    SHOW = "show"  # one commit: its newest build, or the one asked for


# --- messages -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Message:
    """Base of every message; ``type`` names it on the wire."""

    type: ClassVar[str] = ""


@dataclass(frozen=True, kw_only=True)
class Hello(Message):
    """Client → server, first frame: protocol version and what the client is."""

    type: ClassVar[str] = "hello"
    version: int
    role: Role = _check(_check_role)
    nonce: str | None = _check(_check_nonce, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))  # checked when decoded


@dataclass(frozen=True, kw_only=True)
class Welcome(Message):
    """Server → client: the handshake is accepted; with a token, a challenge the client
    must answer first (see :mod:`superci.handshake`)."""

    type: ClassVar[str] = "welcome"
    version: int
    server: str = _text(MAX_STRING)
    challenge: str | None = _check(_check_nonce, default=None)


@dataclass(frozen=True, kw_only=True)
class Auth(Message):
    """Client → server, after a welcome with a challenge: proof that it knows the token."""

    type: ClassVar[str] = "auth"
    proof: str = _check(_check_nonce)


@dataclass(frozen=True, kw_only=True)
class Authenticated(Message):
    """Server → client, once the client's proof checked out: the server's own proof."""

    type: ClassVar[str] = "authenticated"
    proof: str = _check(_check_nonce)


@dataclass(frozen=True, kw_only=True)
class Error(Message):
    """Either way: why the sender is about to close the connection (or refuse a request)."""

    type: ClassVar[str] = "error"
    code: str = _text(64)
    message: str = _text()


@dataclass(frozen=True, kw_only=True)
class Register(Message):
    """Runner → dispatcher: join the pool; ``build_id``/``attempt`` name a lease it still holds."""

    type: ClassVar[str] = "register"
    name: str = _check(check_name)
    host: str = _text(MAX_STRING)
    pid: int = _check(_check_non_negative)
    build_id: int | None = None
    attempt: int | None = None
    identity: str | None = _check(_check_secret, default=None)  # the runner's own secret
    instance: str | None = _check(_check_nonce, default=None)  # this runner process
    isolated: bool = False  # its builds run as a user of their own (--build-user)
    labels: dict[str, str] = _check(_check_labels, default_factory=dict)  # given: --label
    facts: dict[str, list[str]] = _check(_check_facts, default_factory=dict)  # os, arch, python
    exclusive: bool = False  # it takes only builds that need one of its given labels


@dataclass(frozen=True, kw_only=True)
class Registered(Message):
    """Dispatcher → runner: registered; ``output_offset``: where an adopted build's log
    resumes; ``identity``: the secret issued to a name that joins for the first time."""

    type: ClassVar[str] = "registered"
    output_offset: int | None = _check(_check_non_negative, default=None)
    identity: str | None = _check(_check_secret, default=None)


@dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    """Runner → dispatcher: still alive."""

    type: ClassVar[str] = "heartbeat"


@dataclass(frozen=True, kw_only=True)
class Leaving(Message):
    """Runner → dispatcher: it leaves the pool on purpose (stopped, or it cannot build any
    more); its build goes back to the queue without counting an attempt. The dispatcher
    answers by closing the connection."""

    type: ClassVar[str] = "leaving"
    reason: str = _text()


@dataclass(frozen=True, kw_only=True)
class Build(Message):
    """Dispatcher → runner: build this commit under this lease."""

    type: ClassVar[str] = "build"
    build_id: int = _check(_check_positive)
    attempt: int = _check(_check_positive)
    sha: str = _check(check_sha)
    branch: str = _check(check_branch, MAX_BRANCH)
    #: Which of the commit's jobs (its key, see superci.jobs); the runner reads what it
    #: runs from its own checkout.
    job: str = _text(defaults.MAX_JOB_KEY, defaults.DEFAULT_JOB)
    #: 0: the build itself; n > 0: seat n of its split (see superci.split), a participant
    #: that runs the tests the build's own runner hands out, and sends no result.
    seat: int = _check(_check_non_negative, default=0)


@dataclass(frozen=True, kw_only=True)
class Output(Message):
    """Runner → dispatcher: bytes ``offset``.. of a build's output (base64 in ``data``);
    ``skipped``: the runner's bounded spool no longer has the bytes before ``offset`` that
    the dispatcher lacks, which are then counted as dropped."""

    type: ClassVar[str] = "output"
    build_id: int = _check(_check_positive)
    attempt: int = _check(_check_positive)
    offset: int = _check(_check_non_negative)
    data: str = _text(defaults.OUTPUT_CHUNK_BYTES * 2)
    skipped: bool = False


@dataclass(frozen=True, kw_only=True)
class Result(Message):
    """Runner → dispatcher: how a build ended; ``output_bytes`` is the log's full length."""

    type: ClassVar[str] = "result"
    build_id: int = _check(_check_positive)
    attempt: int = _check(_check_positive)
    status: str = _check(_check_status)
    exit_code: int | None = None
    duration: float = _check(_check_non_negative)
    output_bytes: int = _check(_check_non_negative)
    message: str = _text()
    counts: dict[str, int] = _check(_check_counts, default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: The build ended because the runner could not check the commit out: the scheduler
    #: counts these to bench a runner whose clone keeps failing.
    checkout_failed: bool = False
    #: The commit's subject and author as the runner's checkout has them (recorded when
    #: the submission did not carry them).
    subject: str | None = _text(MAX_SUBJECT, None)
    author: str | None = _text(MAX_AUTHOR, None)
    #: Seconds spent making the build's environment (its install step), apart from
    #: ``duration``'s whole; None when no install ran (none asked, or an environment reused).
    install_seconds: float | None = _check(_check_non_negative, default=None)
    #: A split build: how many tests each runner that took part ran ({} otherwise).
    split: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Unsuited(Message):
    """Runner → dispatcher: the commit's own .superci.toml needs labels this runner does
    not offer (the submission did not say so), so it did not build it. The dispatcher
    learns the needs and queues the build again, uncounted, for a runner that has them."""

    type: ClassVar[str] = "unsuited"
    build_id: int = _check(_check_positive)
    attempt: int = _check(_check_positive)
    needs: dict[str, str] = _check(_check_labels)
    reason: str = _text()


@dataclass(frozen=True, kw_only=True)
class ResultAck(Message):
    """Dispatcher → runner: whether the result was recorded; ``retry``: send it again later."""

    type: ClassVar[str] = "result_ack"
    build_id: int
    attempt: int
    accepted: bool
    retry: bool = False
    reason: str = _text()


@dataclass(frozen=True, kw_only=True)
class Cancel(Message):
    """Dispatcher → runner: stop this build; its lease is gone."""

    type: ClassVar[str] = "cancel"
    build_id: int
    attempt: int
    reason: str = _text()


@dataclass(frozen=True, kw_only=True)
class Submit(Message):
    """Client → dispatcher: build this commit (again, if ``rebuild``)."""

    type: ClassVar[str] = "submit"
    sha: str = _check(check_sha)
    branch: str = _check(check_branch, MAX_BRANCH)
    rebuild: bool = False
    subject: str | None = _text(MAX_SUBJECT, None)  # the commit's first line, if known
    author: str | None = _text(MAX_AUTHOR, None)  # its author's name, if known
    #: The commit's .superci.toml as text ("": it has none), so the dispatcher knows
    #: what the build needs; None: the submitter could not read it.
    config: str | None = _check(_check_config, defaults.MAX_CONFIG_BYTES, default=None)


@dataclass(frozen=True, kw_only=True)
class Submitted(Message):
    """Dispatcher → client: the request is durably stored; ``queued`` is false if already known."""

    type: ClassVar[str] = "submitted"
    build_id: int
    sha: str = _check(check_sha)
    queued: bool = True
    status: str = _check(_check_status)


@dataclass(frozen=True, kw_only=True)
class Started(Message):
    """Runner → dispatcher: the tests started with this time limit, so the dispatcher can
    enforce the deadline even if the runner wedges."""

    type: ClassVar[str] = "started"
    build_id: int = _check(_check_positive)
    attempt: int = _check(_check_positive)
    timeout: float = _check(_check_non_negative)
    kill_grace: float = _check(_check_non_negative)


@dataclass(frozen=True, kw_only=True)
class Artifact(Message):
    """Runner → dispatcher: bytes ``offset``.. of a report file (base64), sent before the result."""

    type: ClassVar[str] = "artifact"
    build_id: int = _check(_check_positive)
    attempt: int = _check(_check_positive)
    name: str = _check(_check_artifact_name)
    offset: int = _check(_check_non_negative)
    data: str = _text(defaults.OUTPUT_CHUNK_BYTES * 2)


@dataclass(frozen=True, kw_only=True)
class CancelRequest(Message):
    """Client → dispatcher: cancel the newest build of this commit (any commit name)."""

    type: ClassVar[str] = "cancel_request"
    commit: str = _check(check_commit_name, MAX_BRANCH)


@dataclass(frozen=True, kw_only=True)
class LogRequest(Message):
    """Client → dispatcher: send a commit's log from ``offset``; with ``follow``, until it
    ends; with ``build_id``, that build's log rather than the newest."""

    type: ClassVar[str] = "log_request"
    commit: str = _check(check_commit_name, MAX_BRANCH)
    offset: int = _check(_check_non_negative, default=0)
    follow: bool = False
    build_id: int | None = _check(_check_positive, default=None)
    job: str | None = _text(defaults.MAX_JOB_KEY, None)  # one job of a commit of several


@dataclass(frozen=True, kw_only=True)
class LogData(Message):
    """Dispatcher → client: a piece of a log (base64)."""

    type: ClassVar[str] = "log_data"
    data: str = _text(defaults.OUTPUT_CHUNK_BYTES * 2)


@dataclass(frozen=True, kw_only=True)
class Query(Message):
    """Client → dispatcher: ``status`` (pool, queue, last builds) or ``show`` (one commit;
    its newest build, or ``build_id``)."""

    type: ClassVar[str] = "query"
    what: QueryKind = _check(_check_query)
    commit: str | None = _check(check_commit_name, MAX_BRANCH, default=None)
    limit: int = _check(_check_limit, default=20)
    build_id: int | None = _check(_check_positive, default=None)
    job: str | None = _text(defaults.MAX_JOB_KEY, None)  # one job of a commit of several

    def __post_init__(self) -> None:
        object.__setattr__(self, "what", QueryKind(self.what))  # checked when decoded
        if self.what == "show" and self.commit is None:
            raise ProtocolError("query: 'show' needs the name of a commit")
        if self.build_id is not None and self.what != "show":
            raise ProtocolError("query: only 'show' takes a build id")


@dataclass(frozen=True, kw_only=True)
class Reply(Message):
    """Dispatcher → client: the answer to a request, as a status word, a sentence for
    people and, for queries, a JSON document (parsed by the client)."""

    type: ClassVar[str] = "reply"
    status: str = _text(64)
    message: str = _text()
    document: str = _text(MAX_DOCUMENT)


@dataclass(frozen=True, kw_only=True)
class Watch(Message):
    """Client → dispatcher: send me every event from now on (see :mod:`superci.events`),
    until I disconnect; nothing else is sent on this connection after it."""

    type: ClassVar[str] = "watch"


@dataclass(frozen=True, kw_only=True)
class Event(Message):
    """Dispatcher → watcher: one event as a JSON object (``event`` names its kind). A
    ``resync`` event is the last: the watcher fell behind and some events were missed."""

    type: ClassVar[str] = "event"
    document: str = _text(MAX_DOCUMENT)


# --- a split build (see superci.split and superci.splittunnel) -----------------------
# The build's own runner (the *host*) holds the split; participants on other runners
# (seats) reach its batch source through the dispatcher, one tunnelled connection per
# test process, so the dispatcher only routes and never decides a test's fate.


@dataclass(frozen=True, kw_only=True)
class SplitMessage(Message):
    """The fields of every message of a split build (never sent alone): the lease of the
    build's runner they belong to."""

    build_id: int = _check(_check_positive)
    attempt: int = _check(_check_positive)


@dataclass(frozen=True, kw_only=True)
class SeatMessage(SplitMessage):
    """The fields of a message of one seat of a split build (never sent alone)."""

    seat: int = _check(_check_positive)


@dataclass(frozen=True, kw_only=True)
class SplitTests(SplitMessage):
    """Host → dispatcher: collected test ids (a part of them), answered by
    :class:`SplitDurations` of the same ``request``."""

    type: ClassVar[str] = "split_tests"
    request: int = _check(_check_non_negative)
    tests: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class KeptResults(Message):
    """The fields of messages that carry a split's results (never sent alone), by test
    id: the outcome (which names the tests), and where known the seconds, the message
    and the participant that ran it (see :mod:`superci.splitkept`)."""

    outcomes: dict[str, str] = _check(_check_outcomes, default_factory=dict)
    seconds: dict[str, float] = _check(_check_seconds, default_factory=dict)
    messages: dict[str, str] = _check(_values_within(MAX_TEXT), default_factory=dict)
    participants: dict[str, str] = _check(_values_within(MAX_STRING), default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SplitDurations(SplitMessage, KeptResults):
    """Dispatcher → host: the known durations of the tests of one request, and the
    results an earlier attempt of the build kept for them (see :class:`SplitKept`)."""

    type: ClassVar[str] = "split_durations"
    request: int = _check(_check_non_negative)
    durations: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SplitKept(SplitMessage, KeptResults):
    """Host → dispatcher: results its split recorded (a part of them), kept with the build
    so that the next attempt's runner, should this one be lost, runs only the rest."""

    type: ClassVar[str] = "split_kept"


@dataclass(frozen=True, kw_only=True)
class SplitSeats(SplitMessage):
    """Host → dispatcher: hand free runners seats of the split, up to ``width``
    participants in all (the host included); 0: no more seats (nothing left to hand out)."""

    type: ClassVar[str] = "split_seats"
    width: int = _check(_check_non_negative)
    #: One above the highest seat number the host has heard of: seats numbered anew after
    #: a dispatcher restart never take the number of one the host still knows.
    next_seat: int = _check(_check_non_negative, default=0)


@dataclass(frozen=True, kw_only=True)
class SplitLine(SeatMessage):
    """Participant → dispatcher: one line of the batch protocol its test process sent on
    connection ``conn`` of seat ``seat``, for the host's batch source."""

    type: ClassVar[str] = "split_line"
    conn: int = _check(_check_positive)
    line: str = _text(MAX_DOCUMENT)


@dataclass(frozen=True, kw_only=True)
class SplitReply(SplitLine):
    """Host → dispatcher: a line of its batch source's answer on a seat's connection."""

    type: ClassVar[str] = "split_reply"


@dataclass(frozen=True, kw_only=True)
class ForwardedLine(SplitLine):
    """Dispatcher → host: a participant's :class:`SplitLine`."""

    type: ClassVar[str] = "forwarded_line"


@dataclass(frozen=True, kw_only=True)
class ForwardedReply(SplitLine):
    """Dispatcher → participant: the host's :class:`SplitReply`."""

    type: ClassVar[str] = "forwarded_reply"


@dataclass(frozen=True, kw_only=True)
class SplitClose(SeatMessage):
    """Participant → dispatcher: connection ``conn`` of the seat ended; the batch source
    counts one that ends without a goodbye as a lost participant."""

    type: ClassVar[str] = "split_close"
    conn: int = _check(_check_non_negative)
    reason: str = _text()


@dataclass(frozen=True, kw_only=True)
class SplitHangUp(SplitClose):
    """Host → dispatcher: its batch source ended a seat's connection."""

    type: ClassVar[str] = "split_hang_up"


@dataclass(frozen=True, kw_only=True)
class ForwardedClose(SplitClose):
    """Dispatcher → host: a seat's connection ended (``conn`` 0: every connection of the
    seat, its runner is gone)."""

    type: ClassVar[str] = "forwarded_close"


@dataclass(frozen=True, kw_only=True)
class ForwardedHangUp(SplitClose):
    """Dispatcher → participant: the host's batch source ended this connection."""

    type: ClassVar[str] = "forwarded_hang_up"


@dataclass(frozen=True, kw_only=True)
class SplitOutput(SeatMessage):
    """Participant → dispatcher: output of a seat (base64), for its section of the
    build's log; ``runner`` is filled in by the dispatcher when it forwards it."""

    type: ClassVar[str] = "split_output"
    runner: str = _text(MAX_STRING)
    data: str = _text(defaults.OUTPUT_CHUNK_BYTES * 2)


@dataclass(frozen=True, kw_only=True)
class ForwardedOutput(SplitOutput):
    """Dispatcher → host: a seat's output, with the name of its runner."""

    type: ClassVar[str] = "forwarded_output"


@dataclass(frozen=True, kw_only=True)
class SplitSeatEnd(SeatMessage):
    """Participant → dispatcher (which frees its runner): the seat is done."""

    type: ClassVar[str] = "split_seat_end"
    runner: str = _text(MAX_STRING)
    message: str = _text()


@dataclass(frozen=True, kw_only=True)
class ForwardedSeatEnd(SplitSeatEnd):
    """Dispatcher → host: a seat ended (its runner said so, or was lost)."""

    type: ClassVar[str] = "forwarded_seat_end"


@dataclass(frozen=True, kw_only=True)
class SplitMeasured(SplitMessage):
    """Host → dispatcher, before its result: tests' measured durations (a part of them),
    folded into the averages the next split orders tests by."""

    type: ClassVar[str] = "split_measured"
    durations: dict[str, float] = field(default_factory=dict)


MESSAGE_TYPES: Final[dict[str, type[Message]]] = {
    cls.type: cls
    for cls in (
        Hello,
        Welcome,
        Auth,
        Authenticated,
        Error,
        Register,
        Registered,
        Heartbeat,
        Leaving,
        Build,
        Output,
        Result,
        Unsuited,
        ResultAck,
        Cancel,
        Submit,
        Submitted,
        Started,
        Artifact,
        CancelRequest,
        LogRequest,
        LogData,
        Query,
        Reply,
        Watch,
        Event,
        SplitTests,
        SplitDurations,
        SplitKept,
        SplitSeats,
        SplitLine,
        SplitReply,
        ForwardedLine,
        ForwardedReply,
        SplitClose,
        SplitHangUp,
        ForwardedClose,
        ForwardedHangUp,
        SplitOutput,
        ForwardedOutput,
        SplitSeatEnd,
        ForwardedSeatEnd,
        SplitMeasured,
    )
}


#: What each side may send once a connection is open (after the handshake, and for a
#: runner its registration): what a runner and a client send the dispatcher, and what the
#: dispatcher sends a runner unasked. Everything else is refused by :func:`check_allowed`.
ALLOWED: Final[dict[Role, frozenset[type[Message]]]] = {
    Role.RUNNER: frozenset(
        {
            Heartbeat,
            Output,
            Started,
            Artifact,
            Result,
            Leaving,
            Unsuited,
            SplitTests,
            SplitKept,
            SplitSeats,
            SplitMeasured,
            SplitLine,
            SplitReply,
            SplitClose,
            SplitHangUp,
            SplitOutput,
            SplitSeatEnd,
        }
    ),  # fmt: skip
    Role.CLIENT: frozenset({Submit, CancelRequest, Query, LogRequest, Watch}),
    Role.DISPATCHER: frozenset(
        {
            Build,
            Cancel,
            ResultAck,
            SplitDurations,
            ForwardedLine,
            ForwardedReply,
            ForwardedClose,
            ForwardedHangUp,
            ForwardedOutput,
            ForwardedSeatEnd,
        }
    ),  # fmt: skip
}


def check_allowed(role: Role, message: Message) -> None:
    """Refuse a message its sender's role may not send (code ``unexpected``)."""
    if type(message) not in ALLOWED[role]:
        raise ProtocolError(f"a {role} cannot send {message.type}", code="unexpected")


# --- encoding and decoding ----------------------------------------------------------


def encode(message: Message) -> bytes:
    """One frame: length prefix plus compact JSON."""
    body = {"type": message.type}  # fields are JSON values as they are: no deep copy needed
    for name in _fields(type(message)):
        body[name] = getattr(message, name)
    payload = _ENCODER.encode(body).encode("utf-8")
    return HEADER.pack(len(payload)) + payload


def from_dict(body: Any) -> Message:
    """Build and validate a message from a decoded JSON object."""
    if not isinstance(body, dict):
        raise ProtocolError("a message must be a JSON object")
    kind = body.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None or not isinstance(kind, str):
        raise ProtocolError(f"unknown message type {kind!r:.40}", code="unknown-type")
    values = {k: v for k, v in body.items() if k != "type"}
    fields = _fields(cls)
    extra = set(values) - set(fields)
    if extra:
        raise ProtocolError(f"{kind}: unknown field(s) {', '.join(sorted(extra))[:80]}")
    hints = _hints(cls)
    for name, f in fields.items():
        if name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{kind}: missing field {name!r}")
            continue
        _validate(kind, f, hints[name], values[name])
    return cls(**values)


def fields_of(cls: type[Message]) -> tuple[str, ...]:
    """The names of a message's fields (what goes on the wire besides ``type``)."""
    return tuple(_fields(cls))


def _hints(cls: type[Message]) -> dict[str, Any]:
    cached = _HINTS.get(cls)
    if cached is None:
        cached = _HINTS[cls] = get_type_hints(cls)
    return cached


_HINTS: dict[type[Message], dict[str, Any]] = {}


def _fields(cls: type[Message]) -> dict[str, dataclasses.Field[Any]]:
    cached = _FIELDS.get(cls)
    if cached is None:
        cached = _FIELDS[cls] = {f.name: f for f in dataclasses.fields(cls)}
    return cached


_FIELDS: dict[type[Message], dict[str, dataclasses.Field[Any]]] = {}


def _validate(kind: str, f: dataclasses.Field[Any], hint: Any, value: Any) -> None:
    where = f"{kind}.{f.name}"
    if not _type_matches(hint, value):
        raise ProtocolError(f"{where}: expected {_type_name(hint)}, got {type(value).__name__}")
    if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
        raise ProtocolError(f"{where}: integer out of range")
    if isinstance(value, str) and len(value) > f.metadata.get("max_len", MAX_STRING):
        raise ProtocolError(f"{where}: longer than {f.metadata.get('max_len', MAX_STRING)}")
    if isinstance(value, list | dict):
        _validate_container(where, value)
    check = f.metadata.get("check")
    if check is not None and value is not None:
        try:
            check(value)
        except ProtocolError as e:
            raise ProtocolError(f"{where}: {e}") from None


def _validate_container(where: str, value: list[Any] | dict[str, Any]) -> None:
    if len(value) > MAX_LIST:
        raise ProtocolError(f"{where}: more than {MAX_LIST} items")
    items = value if isinstance(value, list) else value.keys()
    if any(len(item) > MAX_STRING for item in items):
        raise ProtocolError(f"{where}: an item is longer than {MAX_STRING}")
    if isinstance(value, dict) and any(
        isinstance(v, int) and abs(v) > MAX_INT for v in value.values()
    ):
        raise ProtocolError(f"{where}: integer out of range")


def _type_matches(hint: Any, value: Any) -> bool:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_type_matches(arg, value) for arg in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str or (isinstance(hint, type) and issubclass(hint, StrEnum)):
        return isinstance(value, str)  # an enum's values are checked by its field's check
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(_type_matches(item, v) for v in value)
    if origin is dict:
        key, item = get_args(hint)
        return isinstance(value, dict) and all(
            _type_matches(key, k) and _type_matches(item, v) for k, v in value.items()
        )
    raise TypeError(f"unsupported field type {hint!r}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


class Decoder:
    """Turns a byte stream into messages; sans-IO, so it is tested by feeding bytes.

    After a :class:`ProtocolError` the stream cannot be resynchronised, so the decoder
    refuses everything that follows and the caller closes the connection.
    """

    def __init__(self, max_frame: int = defaults.MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame
        self._broken: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """How many bytes are waiting; lets the caller notice a peer that never finishes."""
        return len(self._buffer)

    def next_message(self) -> Message | _NeedData:
        """The next complete message, or ``NEED_DATA`` until more bytes are fed."""
        if self._broken is not None:
            raise self._broken
        try:
            return self._next()
        except ProtocolError as e:
            self._broken = e
            raise

    def _next(self) -> Message | _NeedData:
        if len(self._buffer) < HEADER.size:
            return NEED_DATA
        (length,) = HEADER.unpack_from(self._buffer)
        if length > self._max_frame:
            raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {self._max_frame}")
        end = HEADER.size + length
        if len(self._buffer) < end:
            return NEED_DATA
        payload = bytes(self._buffer[HEADER.size : end])
        del self._buffer[:end]
        try:
            body = _DECODER.decode(payload.decode("utf-8"))
        except (ValueError, RecursionError) as e:
            # ValueError covers UnicodeDecodeError, JSONDecodeError and the int-digit limit.
            raise ProtocolError(f"frame is not UTF-8 JSON: {e}") from None
        return from_dict(body)


def _refuse_constant(name: str) -> Any:
    """NaN and Infinity are not JSON; refuse them rather than let them reach a result."""
    raise ValueError(f"{name} is not a JSON value")


#: Raw bytes per data frame: base64 makes them 4/3 larger, which fits the data fields.
DATA_CHUNK: Final = defaults.OUTPUT_CHUNK_BYTES * 3 // 4


def pack_data(data: bytes) -> str:
    """Bytes (output, reports) as the text of a data field."""
    return base64.b64encode(data).decode("ascii")


def unpack_data(text: str) -> bytes:
    """The bytes of a data field; anything but valid base64 is a protocol error."""
    try:  # ValueError: non-ASCII text
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError(f"data is not base64: {e}") from None


def split_data(data: bytes) -> Iterator[tuple[int, str]]:
    """``(offset, packed piece)`` for each frame-sized piece of ``data``."""
    for offset in range(0, len(data), DATA_CHUNK):
        yield offset, pack_data(data[offset : offset + DATA_CHUNK])


def _finite_float(text: str) -> float:
    """A number too large for a float (``1e999``) would become infinity: refuse it too."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# One decoder for every frame (json.loads with hooks would build a new one each time).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def error_for(exc: ProtocolError) -> Error:
    """The error frame that tells a peer why its connection is being closed."""
    return Error(code=exc.code, message=str(exc)[:MAX_TEXT])


def check_hello(message: Message) -> Hello:
    """The first frame of a connection must be a Hello of our protocol version."""
    if not isinstance(message, Hello):
        raise ProtocolError(f"expected hello first, got {message.type}", code="handshake")
    if message.version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {message.version} is not supported "
            f"(this dispatcher speaks {PROTOCOL_VERSION}); upgrade superci on both sides",
            code="version",
        )
    return message
