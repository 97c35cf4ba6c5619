"""The wire protocol, fed bytes directly: framing, every message type, every refusal."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superci import defaults, protocol
from superci.errors import FrameTooLarge, ProtocolError
from superci.protocol import (
    HEADER,
    MAX_BRANCH,
    MAX_LIST,
    MAX_STRING,
    MAX_TEXT,
    NEED_DATA,
    PROTOCOL_VERSION,
    Build,
    Cancel,
    Decoder,
    Error,
    Heartbeat,
    Hello,
    Output,
    Register,
    Registered,
    Result,
    ResultAck,
    Submit,
    Submitted,
    Welcome,
    check_branch,
    check_hello,
    check_name,
    check_sha,
    encode,
    error_for,
)

SHA = "0123456789abcdef0123456789abcdef01234567"

#: One representative instance per message type, every optional field set to a
#: non-default value so that the round trip has to carry it.
SAMPLES: dict[str, protocol.Message] = {
    "hello": Hello(version=PROTOCOL_VERSION, role="runner"),
    "welcome": Welcome(version=PROTOCOL_VERSION, server="superci 1.0 on ci-box"),
    "error": Error(code="bad-message", message="frame is not UTF-8 JSON — ünïcode kept"),
    "register": Register(
        name="runner-1",
        host="build.lan",
        pid=4242,
        build_id=7,
        attempt=2,
        identity="5e" * 32,
        instance="1a" * 16,
        isolated=True,
        labels={"gpu": "true", "os": "linux"},
        facts={"os": ["linux"], "arch": ["x86_64"], "python": ["3.11", "3.12"]},
        exclusive=True,
    ),  # fmt: skip
    "registered": Registered(output_offset=1234, identity="c0" * 32),
    "heartbeat": Heartbeat(),
    "leaving": protocol.Leaving(reason="runner stopped (SIGTERM)"),
    "build": Build(build_id=7, attempt=3, sha=SHA, branch="feature/x-1"),
    "output": Output(build_id=7, attempt=3, offset=65536, data="aGVsbG8gd29ybGQK"),
    "result": Result(
        build_id=7,
        attempt=3,
        status="failed",
        exit_code=1,
        duration=12.5,
        output_bytes=70000,
        message="1 test failed",
        counts={"run": 3, "passed": 2, "failed": 1},
        failures=["tests/test_x.py::test_y"],
    ),
    "result_ack": ResultAck(build_id=7, attempt=3, accepted=False, retry=True, reason="busy"),
    "cancel": Cancel(build_id=7, attempt=2, reason="lease expired"),
    "submit": Submit(
        sha=SHA,
        branch="release-1.2",
        rebuild=True,
        subject="Fix <b> parsing",
        author="Ada",
        config='needs = {os = "linux"}\n',
    ),
    "unsuited": protocol.Unsuited(
        build_id=7, attempt=2, needs={"gpu": "true"}, reason="this runner lacks gpu=true"
    ),
    "submitted": Submitted(build_id=9, sha=SHA, queued=False, status="passed"),
    "auth": protocol.Auth(proof="ab" * 32),
    "authenticated": protocol.Authenticated(proof="cd" * 32),
    "started": protocol.Started(build_id=7, attempt=1, timeout=600.0, kill_grace=10.0),
    "artifact": protocol.Artifact(
        build_id=7, attempt=1, name="junit.xml", offset=0, data="PHRlc3RzdWl0ZS8+"
    ),
    "cancel_request": protocol.CancelRequest(commit=SHA),
    "log_request": protocol.LogRequest(commit=SHA, offset=100, follow=True, build_id=3),
    "log_data": protocol.LogData(data="aGVsbG8K"),
    "query": protocol.Query(what="show", commit=SHA, limit=5, build_id=2),
    "reply": protocol.Reply(status="ok", message="done", document='{"runners": []}'),
    "watch": protocol.Watch(),
    "event": protocol.Event(document='{"event": "started", "build_id": 7, "runner": "r-1"}'),
    "split_tests": protocol.SplitTests(build_id=7, attempt=1, request=2, tests=["t.py::a"]),
    "split_durations": protocol.SplitDurations(
        build_id=7,
        attempt=1,
        request=2,
        durations={"t.py::a": 1.5},
        outcomes={"t.py::b": "failed"},
        seconds={"t.py::b": 0.5},
        messages={"t.py::b": "assert 1 == 2"},
        participants={"t.py::b": "r-1.1"},
    ),
    "split_kept": protocol.SplitKept(
        build_id=7,
        attempt=1,
        outcomes={"t.py::a": "passed"},
        seconds={"t.py::a": 0.1},
        participants={"t.py::a": "r-1.1"},
    ),
    "split_seats": protocol.SplitSeats(build_id=7, attempt=1, width=4, next_seat=3),
    "split_measured": protocol.SplitMeasured(build_id=7, attempt=1, durations={"t.py::a": 0.2}),
    **{
        cls.type: cls(build_id=7, attempt=1, seat=2, conn=3, line='{"type": "next"}')
        for cls in (
            protocol.SplitLine,
            protocol.SplitReply,
            protocol.ForwardedLine,
            protocol.ForwardedReply,
        )
    },  # fmt: skip
    **{
        cls.type: cls(build_id=7, attempt=1, seat=2, conn=0, reason="runner lost")
        for cls in (
            protocol.SplitClose,
            protocol.SplitHangUp,
            protocol.ForwardedClose,
            protocol.ForwardedHangUp,
        )
    },  # fmt: skip
    "split_output": protocol.SplitOutput(build_id=7, attempt=1, seat=2, data="aGVsbG8K"),
    "forwarded_output": protocol.ForwardedOutput(
        build_id=7, attempt=1, seat=2, runner="r-2", data="aGVsbG8K"
    ),
    "split_seat_end": protocol.SplitSeatEnd(build_id=7, attempt=1, seat=2, message="done"),
    "forwarded_seat_end": protocol.ForwardedSeatEnd(
        build_id=7, attempt=1, seat=2, runner="r-2", message="done"
    ),
}


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def frame_json(body: object) -> bytes:
    return frame(json.dumps(body).encode("utf-8"))


def body_of(message: protocol.Message) -> dict:
    """The JSON object of a message, to be tampered with."""
    return json.loads(encode(message)[HEADER.size :])


def decode_one(data: bytes, max_frame: int = defaults.MAX_FRAME_BYTES) -> object:
    decoder = Decoder(max_frame=max_frame)
    decoder.feed(data)
    return decoder.next_message()


def refused(body: object) -> ProtocolError:
    """Decode ``body`` as one frame and return the ProtocolError it must raise."""
    with pytest.raises(ProtocolError) as info:
        decode_one(frame_json(body))
    return info.value


def with_field(kind: str, **changes: object) -> dict:
    body = body_of(SAMPLES[kind])
    body.update(changes)
    return body


# --- round trips --------------------------------------------------------------------


def test_every_message_type_has_a_sample():
    assert set(SAMPLES) == set(protocol.MESSAGE_TYPES)
    for kind, message in SAMPLES.items():
        assert type(message) is protocol.MESSAGE_TYPES[kind]


@pytest.mark.parametrize("kind", sorted(protocol.MESSAGE_TYPES))
def test_message_round_trips_fed_whole(kind):
    message = SAMPLES[kind]
    decoder = Decoder()
    decoder.feed(encode(message))
    assert decoder.next_message() == message
    assert decoder.next_message() is NEED_DATA
    assert decoder.buffered == 0


@pytest.mark.parametrize("kind", sorted(protocol.MESSAGE_TYPES))
def test_message_round_trips_fed_one_byte_at_a_time(kind):
    message = SAMPLES[kind]
    data = encode(message)
    decoder = Decoder()
    for byte in data[:-1]:
        decoder.feed(bytes([byte]))
        assert decoder.next_message() is NEED_DATA
    decoder.feed(data[-1:])
    assert decoder.next_message() == message
    assert decoder.next_message() is NEED_DATA


@pytest.mark.parametrize("kind", sorted(protocol.MESSAGE_TYPES))
def test_two_frames_back_to_back_then_a_partial_frame_needs_data(kind):
    message = SAMPLES[kind]
    other = SAMPLES["heartbeat"] if kind != "heartbeat" else SAMPLES["hello"]
    partial = encode(other)[:-1]
    decoder = Decoder()
    decoder.feed(encode(message) + encode(other) + partial)
    assert decoder.next_message() == message
    assert decoder.next_message() == other
    assert decoder.next_message() is NEED_DATA
    assert decoder.buffered == len(partial)
    decoder.feed(encode(other)[-1:])
    assert decoder.next_message() == other


def test_header_alone_needs_data():
    decoder = Decoder()
    decoder.feed(HEADER.pack(10)[:3])
    assert decoder.next_message() is NEED_DATA
    decoder.feed(HEADER.pack(10)[3:])
    assert decoder.next_message() is NEED_DATA
    assert decoder.buffered == HEADER.size


def test_frame_is_big_endian_length_plus_compact_json_object_with_type():
    data = encode(Cancel(build_id=5, attempt=1, reason="x"))
    (length,) = HEADER.unpack_from(data)
    assert data[:4] == length.to_bytes(4, "big")
    assert length == len(data) - 4
    assert json.loads(data[4:]) == {"type": "cancel", "build_id": 5, "attempt": 1, "reason": "x"}


def test_optional_fields_may_be_left_out_on_the_wire():
    message = decode_one(frame_json({"type": "register", "name": "r1", "host": "", "pid": 1}))
    assert message == Register(name="r1", host="", pid=1)
    assert message.build_id is None and message.attempt is None


def test_frame_exactly_at_the_limit_is_accepted():
    data = encode(SAMPLES["result"])
    assert decode_one(data, max_frame=len(data) - HEADER.size) == SAMPLES["result"]


# --- bad frames ---------------------------------------------------------------------


def test_length_above_limit_is_refused_from_the_header_alone():
    decoder = Decoder(max_frame=100)
    decoder.feed(HEADER.pack(101))  # no body at all: it must not wait for one
    with pytest.raises(FrameTooLarge) as info:
        decoder.next_message()
    assert info.value.code == "frame-too-large"
    assert "101" in str(info.value) and "100" in str(info.value)


def test_default_limit_is_the_configured_max_frame():
    decoder = Decoder()
    decoder.feed(HEADER.pack(defaults.MAX_FRAME_BYTES + 1))
    with pytest.raises(FrameTooLarge):
        decoder.next_message()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"type": "heartbeat"', id="truncated-json"),
        pytest.param(b"hello", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-too-deep"),
        pytest.param(b'{"type":"heartbeat","x":' + b"1" * 5000 + b"}", id="int-too-long"),
        pytest.param(b'{"type":"registered","output_offset":NaN}', id="nan"),
        pytest.param(
            b'{"type":"result","build_id":1,"attempt":1,"status":"passed",'
            b'"duration":Infinity,"output_bytes":0}',
            id="infinity",
        ),
    ],
)
def test_payload_that_is_not_utf8_json_is_refused(payload):
    with pytest.raises(ProtocolError) as info:
        decode_one(frame(payload))
    assert info.value.code == "bad-message"
    assert "not UTF-8 JSON" in str(info.value)


@pytest.mark.parametrize("body", [[], "heartbeat", 42, None, [{"type": "heartbeat"}]])
def test_json_that_is_not_an_object_is_refused(body):
    error = refused(body)
    assert error.code == "bad-message"
    assert "JSON object" in str(error)


@pytest.mark.parametrize("body", [{}, {"build_id": 1}, {"type": None}, {"type": 5}])
def test_message_without_a_string_type_is_refused(body):
    error = refused(body)
    assert error.code == "unknown-type"


def test_unknown_type_is_refused_with_unknown_type_code():
    error = refused({"type": "launch_missiles"})
    assert error.code == "unknown-type"
    assert "launch_missiles" in str(error)


def test_unknown_field_is_refused_and_named():
    error = refused(with_field("heartbeat", sneaky=1))
    assert error.code == "bad-message"
    assert "unknown field" in str(error) and "sneaky" in str(error)


@pytest.mark.parametrize(
    ("kind", "missing"),
    [("build", "sha"), ("build", "attempt"), ("hello", "version"), ("result", "status")],
)
def test_missing_required_field_is_refused_and_named(kind, missing):
    body = body_of(SAMPLES[kind])
    del body[missing]
    error = refused(body)
    assert f"missing field {missing!r}" in str(error)


@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        pytest.param("build", {"build_id": "7"}, id="str-for-int"),
        pytest.param("build", {"attempt": True}, id="bool-for-int"),
        pytest.param("build", {"build_id": 7.0}, id="float-for-int"),
        pytest.param("build", {"build_id": None}, id="null-for-int"),
        pytest.param("submit", {"rebuild": 1}, id="int-for-bool"),
        pytest.param("result_ack", {"accepted": "yes"}, id="str-for-bool"),
        pytest.param("result", {"duration": "1.5"}, id="str-for-float"),
        pytest.param("result", {"duration": False}, id="bool-for-float"),
        pytest.param("build", {"sha": 1234}, id="int-for-str"),
        pytest.param("result", {"failures": [1]}, id="list-item-int-for-str"),
        pytest.param("result", {"failures": "tests/test_x.py"}, id="str-for-list"),
        pytest.param("result", {"counts": {"passed": "2"}}, id="dict-value-str-for-int"),
        pytest.param("result", {"counts": {"passed": True}}, id="dict-value-bool-for-int"),
        pytest.param("result", {"counts": [1, 2]}, id="list-for-dict"),
        pytest.param("register", {"build_id": "7"}, id="str-for-optional-int"),
        pytest.param("registered", {"output_offset": 1.5}, id="float-for-optional-int"),
    ],
)
def test_wrong_field_type_is_refused(kind, changes):
    error = refused(with_field(kind, **changes))
    (name,) = changes
    assert error.code == "bad-message"
    assert f"{kind}.{name}: expected" in str(error)


def test_float_field_accepts_an_integer():
    message = decode_one(frame_json(with_field("result", duration=3)))
    assert message.duration == 3


@pytest.mark.parametrize(
    ("kind", "name", "limit"),
    [
        ("error", "code", 64),
        ("error", "message", MAX_TEXT),
        ("welcome", "server", MAX_STRING),
        ("register", "host", MAX_STRING),
        ("result", "message", MAX_TEXT),
        ("output", "data", defaults.OUTPUT_CHUNK_BYTES * 2),
        ("build", "branch", MAX_BRANCH),
        ("submit", "subject", protocol.MAX_SUBJECT),
        ("submit", "author", protocol.MAX_AUTHOR),
        ("result", "subject", protocol.MAX_SUBJECT),
        ("result", "author", protocol.MAX_AUTHOR),
    ],
)
def test_string_over_its_limit_is_refused_and_at_its_limit_accepted(kind, name, limit):
    fill = "b" if name == "branch" else "x"
    at_limit = decode_one(frame_json(with_field(kind, **{name: fill * limit})))
    assert getattr(at_limit, name) == fill * limit
    error = refused(with_field(kind, **{name: fill * (limit + 1)}))
    assert f"{kind}.{name}" in str(error) and "longer than" in str(error)


def test_list_item_over_the_string_limit_is_refused():
    error = refused(with_field("result", failures=["t" * (MAX_STRING + 1)]))
    assert "result.failures: an item is longer than" in str(error)


def test_dict_key_over_the_string_limit_is_refused():
    error = refused(with_field("result", counts={"k" * (MAX_STRING + 1): 1}))
    assert "result.counts: an item is longer than" in str(error)


def test_list_with_too_many_items_is_refused():
    error = refused(with_field("result", failures=["t"] * (MAX_LIST + 1)))
    assert f"more than {MAX_LIST} items" in str(error)


BAD_SHAS = [
    "../../etc",
    "../../../../../../../../../../../../../etc/passwd",
    SHA.upper(),
    SHA[:-1],
    SHA + "0",
    "g" * 40,
    SHA[:-1] + "/",
    SHA + "\n",
    "",
]


@pytest.mark.parametrize("sha", BAD_SHAS)
@pytest.mark.parametrize("kind", ["build", "submit", "submitted"])
def test_sha_that_is_not_40_lowercase_hex_is_refused(kind, sha):
    error = refused(with_field(kind, sha=sha))
    assert f"{kind}.sha" in str(error) and "40-character hex SHA" in str(error)


@pytest.mark.parametrize("sha", BAD_SHAS)
def test_check_sha_refuses_non_hex(sha):
    with pytest.raises(ProtocolError):
        check_sha(sha)


def test_check_sha_accepts_full_lowercase_hex():
    assert check_sha(SHA) == SHA


BAD_NAMES = ["", "-runner", ".runner", "_runner", "a b", "a/b", "../x", "r\n", "é", "r" * 65]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_runner_name_is_refused(name):
    with pytest.raises(ProtocolError):
        check_name(name)
    error = refused(with_field("register", name=name))
    assert "register.name" in str(error)


@pytest.mark.parametrize("name", ["r", "runner-1", "build.lan@host_2", "R" * 64, "0day"])
def test_valid_runner_name_is_accepted(name):
    assert check_name(name) == name
    assert decode_one(frame_json(with_field("register", name=name))).name == name


BAD_BRANCHES = [
    "a..b",
    "-x",
    "x.lock",
    "a b",
    "a~1",
    "@",
    "x/",
    "/x",
    "a@{b",
    ".hidden",
    "a/.b",
    "x.lock/y",
    "a//b",
    "x.",
    "a^b",
    "a:b",
    "a?b",
    "a*b",
    "a[b",
    "a\\b",
    "a\tb",
    "a\x7fb",
    "",
    "b" * (MAX_BRANCH + 1),
]


@pytest.mark.parametrize("branch", BAD_BRANCHES)
def test_invalid_branch_name_is_refused(branch):
    with pytest.raises(ProtocolError) as info:
        check_branch(branch)
    assert "not a valid git branch name" in str(info.value)


@pytest.mark.parametrize("branch", ["a..b", "-x", "x.lock", "@", ".hidden"])
@pytest.mark.parametrize("kind", ["build", "submit"])
def test_message_with_invalid_branch_is_refused(kind, branch):
    error = refused(with_field(kind, branch=branch))
    assert f"{kind}.branch" in str(error)


@pytest.mark.parametrize(
    "branch", ["main", "feature/x-1", "release-1.2", "a@b", "café", "x.lockfile", "v1.0/rc_2"]
)
def test_valid_branch_name_is_accepted(branch):
    assert check_branch(branch) == branch
    assert decode_one(frame_json(with_field("submit", branch=branch))).branch == branch


COMMIT_REQUESTS = ["cancel_request", "log_request", "query"]
BAD_COMMIT_NAMES = ["../../etc", "", "-x", "a..b", "HEAD~1", "v1^{}", SHA + "\n", "a b", "/abs"]


@pytest.mark.parametrize("name", BAD_COMMIT_NAMES)
@pytest.mark.parametrize("kind", COMMIT_REQUESTS)
def test_commit_name_that_is_neither_a_prefix_nor_a_branch_is_refused(kind, name):
    error = refused(with_field(kind, commit=name))
    assert error.code == "bad-message"
    assert f"{kind}.commit: not a commit name" in str(error)
    assert "full 40-character hex SHA" in str(error)


@pytest.mark.parametrize(
    "name", [SHA, SHA[:7], SHA[:12], "main", "feature/x-1", "deadbeef", "ABCDEF1", "abc"]
)
@pytest.mark.parametrize("kind", COMMIT_REQUESTS)
def test_full_id_prefix_or_branch_is_a_commit_name(kind, name):
    assert protocol.check_commit_name(name) == name
    assert decode_one(frame_json(with_field(kind, commit=name))).commit == name


@pytest.mark.parametrize("kind", COMMIT_REQUESTS)
def test_commit_name_longer_than_a_branch_may_be_is_refused(kind):
    error = refused(with_field(kind, commit="b" * (MAX_BRANCH + 1)))
    assert f"{kind}.commit" in str(error) and "longer than" in str(error)


def test_show_without_a_commit_and_status_with_a_build_id_are_refused():
    assert "'show' needs the name of a commit" in str(refused({"type": "query", "what": "show"}))
    error = refused({"type": "query", "what": "status", "build_id": 3})
    assert "only 'show' takes a build id" in str(error)


@pytest.mark.parametrize("kind", ["log_request", "query"])
def test_build_id_zero_in_a_client_request_is_refused(kind):
    error = refused(with_field(kind, build_id=0))
    assert f"{kind}.build_id" in str(error)


@pytest.mark.parametrize("status", ["bogus", "PASSED", "", "finished"])
@pytest.mark.parametrize("kind", ["result", "submitted"])
def test_status_that_is_not_a_build_status_is_refused(kind, status):
    error = refused(with_field(kind, status=status))
    assert f"{kind}.status" in str(error) and "unknown build status" in str(error)


@pytest.mark.parametrize("status", ["passed", "failed", "error", "timeout", "cancelled"])
def test_every_final_build_status_is_accepted_in_a_result(status):
    assert decode_one(frame_json(with_field("result", status=status))).status == status


@pytest.mark.parametrize(
    ("kind", "name", "value"),
    [
        ("output", "offset", -1),
        ("result", "duration", -0.5),
        ("result", "output_bytes", -1),
        ("register", "pid", -1),
    ],
)
def test_negative_offset_duration_size_or_pid_is_refused(kind, name, value):
    error = refused(with_field(kind, **{name: value}))
    assert f"{kind}.{name}" in str(error) and "must not be negative" in str(error)


@pytest.mark.parametrize(
    ("kind", "name"),
    [("build", "attempt"), ("build", "build_id"), ("output", "attempt"), ("result", "attempt")],
)
def test_attempt_or_build_id_zero_is_refused(kind, name):
    error = refused(with_field(kind, **{name: 0}))
    assert f"{kind}.{name}" in str(error) and "at least 1" in str(error)


def test_zero_offset_and_duration_are_accepted():
    assert decode_one(frame_json(with_field("output", offset=0))).offset == 0
    assert decode_one(frame_json(with_field("result", duration=0.0))).duration == 0.0


def test_unknown_role_in_hello_is_refused():
    error = refused(with_field("hello", role="admin"))
    assert "hello.role" in str(error)


# --- a broken decoder stays broken ---------------------------------------------------


def test_decoder_stays_broken_after_an_error():
    decoder = Decoder()
    decoder.feed(frame(b"not json") + encode(SAMPLES["heartbeat"]))
    with pytest.raises(ProtocolError) as first:
        decoder.next_message()
    decoder.feed(encode(SAMPLES["hello"]))
    with pytest.raises(ProtocolError) as second:
        decoder.next_message()
    assert second.value is first.value


def test_decoder_stays_broken_after_frame_too_large():
    decoder = Decoder(max_frame=10)
    decoder.feed(HEADER.pack(11))
    with pytest.raises(FrameTooLarge):
        decoder.next_message()
    decoder.feed(b"x" * 11 + encode(SAMPLES["heartbeat"]))
    with pytest.raises(FrameTooLarge):
        decoder.next_message()


def test_messages_before_a_bad_frame_are_still_delivered():
    decoder = Decoder()
    decoder.feed(encode(SAMPLES["hello"]) + frame_json({"type": "nope"}))
    assert decoder.next_message() == SAMPLES["hello"]
    with pytest.raises(ProtocolError):
        decoder.next_message()


# --- handshake and error frames -----------------------------------------------------


@pytest.mark.parametrize("kind", ["welcome", "heartbeat", "register", "submit"])
def test_check_hello_refuses_a_first_message_that_is_not_hello(kind):
    with pytest.raises(ProtocolError) as info:
        check_hello(SAMPLES[kind])
    assert info.value.code == "handshake"
    assert kind in str(info.value)


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, 99])
def test_check_hello_refuses_another_protocol_version(version):
    with pytest.raises(ProtocolError) as info:
        check_hello(Hello(version=version, role="client"))
    assert info.value.code == "version"
    assert str(version) in str(info.value)


@pytest.mark.parametrize("role", ["runner", "client"])
def test_check_hello_accepts_our_version(role):
    hello = Hello(version=PROTOCOL_VERSION, role=role)
    assert check_hello(hello) is hello


def test_error_for_carries_code_and_message():
    error = error_for(ProtocolError("bad things", code="handshake"))
    assert error == Error(code="handshake", message="bad things")
    assert decode_one(encode(error)) == error


def test_error_for_frame_too_large_uses_its_code():
    assert error_for(FrameTooLarge("too big")).code == "frame-too-large"


def test_error_for_truncates_a_long_message_so_the_frame_stays_valid():
    error = error_for(ProtocolError("x" * (MAX_TEXT + 500)))
    assert len(error.message) == MAX_TEXT
    assert decode_one(encode(error)) == error


# --- properties ---------------------------------------------------------------------


def _drain(decoder: Decoder) -> bool:
    """Take messages until NEED_DATA (True) or a ProtocolError (False)."""
    while True:
        try:
            message = decoder.next_message()
        except ProtocolError:
            with pytest.raises(ProtocolError):  # and it stays broken
                decoder.next_message()
            return False
        if message is NEED_DATA:
            return True
        assert isinstance(message, protocol.Message)


def _feed_in_chunks(data: bytes, sizes: list[int]) -> None:
    decoder = Decoder(max_frame=4096)
    position = 0
    for size in [*sizes, len(data)]:
        chunk = data[position : position + size]
        position += len(chunk)
        decoder.feed(chunk)
        if not _drain(decoder):
            return
        if position >= len(data):
            return


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)

#: Frames worth feeding: raw junk, junk with a plausible length, and JSON objects that
#: name a real message type with arbitrary fields (some of them real field names).
field_names = st.sampled_from(
    sorted({f for cls in protocol.MESSAGE_TYPES.values() for f in cls.__dataclass_fields__})
)
message_like = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(sorted(protocol.MESSAGE_TYPES)),
    st.dictionaries(field_names | st.text(max_size=5), json_values, max_size=6),
)
streams = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=64).map(frame),
        json_values.map(lambda v: frame(json.dumps(v).encode())),
        message_like.map(lambda v: frame(json.dumps(v).encode())),
        st.sampled_from(list(SAMPLES.values())).map(encode),
    ),
    max_size=6,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=streams, sizes=st.lists(st.integers(min_value=1, max_value=64), max_size=20))
def test_arbitrary_bytes_in_any_chunking_give_messages_or_protocol_errors_only(data, sizes):
    _feed_in_chunks(data, sizes)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512), sizes=st.lists(st.integers(1, 32), max_size=20))
def test_raw_binary_gives_messages_or_protocol_errors_only(data, sizes):
    _feed_in_chunks(data, sizes)


shas = st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)
components = st.text(
    alphabet=st.characters(categories=("L", "Nd"), include_characters="_-."),
    min_size=1,
    max_size=16,
).filter(
    lambda c: not c.startswith(("-", ".")) and not c.endswith((".", ".lock")) and ".." not in c
)
branches = (
    st.lists(components, min_size=1, max_size=5)
    .map("/".join)
    .filter(lambda b: b != "@" and "@{" not in b)
)


@settings(max_examples=200, deadline=None)
@given(sha=shas, branch=branches, rebuild=st.booleans(), split=st.integers(min_value=0))
def test_any_valid_submit_round_trips(sha, branch, rebuild, split):
    message = Submit(sha=sha, branch=branch, rebuild=rebuild)
    data = encode(message) * 2
    cut = split % (len(data) + 1)
    decoder = Decoder()
    decoder.feed(data[:cut])
    received = []
    while (item := decoder.next_message()) is not NEED_DATA:
        received.append(item)
    decoder.feed(data[cut:])
    while (item := decoder.next_message()) is not NEED_DATA:
        received.append(item)
    assert received == [message, message]


@pytest.mark.parametrize(
    "body",
    [
        {"type": "register", "name": "r", "host": "h", "pid": 10**30},
        {"type": "result", "build_id": 1, "attempt": 1, "status": "passed", "duration": 0,
         "output_bytes": 0, "counts": {"run": -(10**20)}},
    ],
)  # fmt: skip
def test_integers_beyond_what_sqlite_and_json_readers_hold_are_refused(body):
    with pytest.raises(ProtocolError, match="out of range"):
        protocol.from_dict(body)


# --- runner identities and test counts -------------------------------------------------


@pytest.mark.parametrize("kind", ["register", "registered"])
@pytest.mark.parametrize(
    "secret",
    ["ab" * 31, "ab" * 33, "AB" * 32, "zz" * 32, ""],
    ids=["short", "long", "upper", "non-hex", "empty"],
)
def test_runner_identity_that_is_not_64_lowercase_hex_is_refused(kind, secret):
    error = refused(with_field(kind, identity=secret))
    assert f"{kind}.identity" in str(error) and "64 lowercase hex" in str(error)


def test_runner_instance_must_be_a_nonce():
    assert "register.instance" in str(refused(with_field("register", instance="pid-42")))


@pytest.mark.parametrize(
    "counts, why",
    [({"passed": 1, "sneaky": 2}, "unknown test count(s) sneaky"),
     ({"failed": -1}, "must not be negative")],
)  # fmt: skip
def test_result_counts_are_the_known_kinds_and_not_negative(counts, why):
    assert why in str(refused(with_field("result", counts=counts)))


def test_every_test_count_a_runner_produces_is_accepted():
    counts = dict.fromkeys(protocol.COUNT_KEYS, 3)
    assert decode_one(frame_json(with_field("result", counts=counts))).counts == counts


# --- roles, query kinds and who may send what -----------------------------------------


def test_a_decoded_hello_and_query_carry_their_role_and_kind_as_enums():
    hello = decode_one(frame_json({"type": "hello", "version": PROTOCOL_VERSION, "role": "runner"}))
    assert hello.role is protocol.Role.RUNNER
    query = decode_one(frame_json({"type": "query", "what": "show", "commit": "main"}))
    assert query.what is protocol.QueryKind.SHOW
    assert encode(query) == encode(protocol.Query(what="show", commit="main"))  # same bytes


def test_the_dispatcher_is_no_role_a_peer_may_take_in_its_hello():
    error = refused(with_field("hello", role="dispatcher"))
    assert "hello.role" in str(error)


def test_every_message_a_peer_sends_after_its_opening_has_one_sender():
    senders = [role for role, kinds in protocol.ALLOWED.items() for _ in kinds]
    kinds = [kind for allowed in protocol.ALLOWED.values() for kind in allowed]
    assert len(kinds) == len(set(kinds)) and set(senders) == set(protocol.Role)


@pytest.mark.parametrize(
    ("role", "kind"),
    [(role, kind) for role, kinds in protocol.ALLOWED.items() for kind in kinds],
)
def test_a_role_may_send_what_the_table_allows_it(role, kind):
    protocol.check_allowed(role, SAMPLES[kind.type])


@pytest.mark.parametrize("role", list(protocol.Role))
@pytest.mark.parametrize(
    "kind", ["hello", "register", "registered", "welcome", "auth", "reply", "submitted", "error"]
)
def test_opening_and_reply_messages_are_unexpected_from_any_role_in_session(role, kind):
    with pytest.raises(ProtocolError, match=f"a {role} cannot send {kind}") as info:
        protocol.check_allowed(role, SAMPLES[kind])
    assert info.value.code == "unexpected"


def test_a_client_cannot_send_what_a_runner_sends_nor_the_other_way_round():
    runner, client = protocol.Role.RUNNER, protocol.Role.CLIENT
    for kind in protocol.ALLOWED[runner]:
        with pytest.raises(ProtocolError, match="a client cannot send"):
            protocol.check_allowed(client, SAMPLES[kind.type])
    for kind in protocol.ALLOWED[client]:
        with pytest.raises(ProtocolError, match="a runner cannot send"):
            protocol.check_allowed(runner, SAMPLES[kind.type])


# --- labels and the commit's configuration ------------------------------------------


def test_a_register_without_labels_offers_none_and_is_not_exclusive():
    message = decode_one(frame_json({"type": "register", "name": "r1", "host": "", "pid": 1}))
    assert (message.labels, message.facts, message.exclusive) == ({}, {}, False)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"labels": {"bad key": "x"}}, "register.labels: label key 'bad key' must be"),
        ({"labels": {"gpu": "a/b"}}, "register.labels: label gpu: value 'a/b' must be"),
        ({"labels": {"gpu": 1}}, "register.labels: expected dict"),
        ({"labels": {f"k{i}": "x" for i in range(33)}}, "at most 32 labels"),
        ({"facts": {"python": "3.12"}}, "register.facts: expected dict"),
        ({"facts": {"python": [f"3.{i}" for i in range(33)]}}, "at most 32 values"),
        ({"facts": {"os": ["linux mint"]}}, "register.facts: label os: value"),
        ({"exclusive": "yes"}, "register.exclusive: expected bool"),
    ],
)
def test_labels_a_runner_announces_are_checked_like_those_it_is_given(changes, problem):
    assert problem in str(refused(with_field("register", **changes)))


def test_needs_a_runner_hands_a_build_back_with_are_checked():
    error = refused(with_field("unsuited", needs={"GPU!": "true"}))
    assert "unsuited.needs: label key" in str(error)


def test_a_submitted_configuration_is_bounded_in_bytes_not_only_characters():
    limit = defaults.MAX_CONFIG_BYTES
    at_limit = decode_one(encode(Submit(sha=SHA, branch="main", config="#" * limit)))
    assert len(at_limit.config) == limit
    error = refused(with_field("submit", config="é" * (limit // 2 + 1)))  # 2 bytes each
    assert f"submit.config: a configuration is at most {limit} bytes" in str(error)
    assert "longer than" in str(refused(with_field("submit", config="#" * (limit + 1))))


def test_a_submit_without_a_configuration_says_it_could_not_be_read():
    message = decode_one(frame_json({"type": "submit", "sha": SHA, "branch": "main"}))
    assert message.config is None


def test_only_a_runner_may_hand_a_build_back():
    protocol.check_allowed(protocol.Role.RUNNER, SAMPLES["unsuited"])
    with pytest.raises(ProtocolError, match="a client cannot send unsuited"):
        protocol.check_allowed(protocol.Role.CLIENT, SAMPLES["unsuited"])


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"outcomes": {"t::a": "flaky"}}, "unknown test outcome"),
        ({"seconds": {"t::a": -1.0}}, "must not be negative"),
        ({"messages": {"t::a": "x" * (protocol.MAX_TEXT + 1)}}, "longer than 4096"),
        ({"participants": {"t::a": "x" * (protocol.MAX_STRING + 1)}}, "longer than 256"),
    ],
)
def test_kept_split_results_that_cannot_be_a_result_are_refused(changes, problem):
    body = {"type": "split_kept", "build_id": 7, "attempt": 1,
            "outcomes": {"t::a": "passed"}, **changes}  # fmt: skip
    with pytest.raises(ProtocolError, match=problem):
        protocol.from_dict(body)
