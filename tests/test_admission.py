"""Which connections may stay in their opening handshake: pure decisions, fake clock."""

import socket

from helpers import FakeClock
from support import wait_until

from superci.admission import Admission, bytes_received


def test_a_newcomer_is_always_let_in_and_the_oldest_silent_one_makes_room():
    admission: Admission[str] = Admission(limit=3, clock=FakeClock())
    for key in ("a", "b", "c"):
        assert admission.admit(key) == []
    admission.heard("a")  # a sent its hello: it is not what a flood looks like
    assert admission.admit("d") == ["b"]
    assert admission.admit("e") == ["c"]
    assert "a" in admission and len(admission) == 3


def test_when_everyone_spoke_the_oldest_makes_room():
    admission: Admission[str] = Admission(limit=2, clock=FakeClock())
    admission.admit("a")
    admission.admit("b")
    admission.heard("a")
    admission.heard("b")
    assert admission.admit("c") == ["a"]


def test_a_connection_that_sent_bytes_outlives_silent_ones_asked_lazily_oldest_first():
    admission: Admission[str] = Admission(limit=3, clock=FakeClock())
    for key in ("tls-client", "flood-1", "flood-2"):
        admission.admit(key)
    asked: list[str] = []

    def spoke(key: str) -> bool:
        asked.append(key)
        return key == "tls-client"

    assert admission.admit("flood-3", spoke) == ["flood-1"]
    assert asked == ["tls-client", "flood-1"]  # only the candidates, oldest first
    asked.clear()
    assert admission.admit("flood-4", spoke) == ["flood-2"]
    assert asked == ["flood-2"]  # the client is remembered as having spoken


def test_running_out_of_files_lowers_the_limit_then_it_recovers():
    clock = FakeClock()
    admission: Admission[int] = Admission(limit=100, floor=8, recovery=10.0, clock=clock)
    for key in range(40):
        admission.admit(key)
    dropped = admission.out_of_files()
    assert dropped == list(range(10)) and admission.limit == 30
    for _ in range(8):
        admission.out_of_files()
    assert admission.limit == 8  # never below the floor
    clock.advance(10.0)
    admission.admit(1000)
    assert admission.limit == 100


def test_the_kernel_counts_what_a_peer_sent_and_nothing_for_a_silent_one():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)), \
             socket.create_connection(("127.0.0.1", port)) as talker:  # fmt: skip
            quiet_end, _ = server.accept()
            talking_end, _ = server.accept()
            with quiet_end, talking_end:
                talker.sendall(b"\x16\x03\x01 a client hello")
                wait_until(lambda: bytes_received(talking_end), 5, "the hello to arrive")
                assert bytes_received(talking_end) == len(b"\x16\x03\x01 a client hello")
                assert bytes_received(quiet_end) == 0
