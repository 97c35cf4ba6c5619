"""A live dispatcher fed hostile input while a real runner builds real commits.

The dispatcher runs in this process (so its handshake timeout can be shortened and its
memory traced); the runner is the real ``superci runner`` program in its own git clone.
While the runner holds a running build, the dispatcher is fed random bytes, truncated
frames, huge length prefixes, unknown and randomly assembled messages, forged results,
output and reports for builds the sender does not hold, path-traversal ids in every field
that could become a path, and a flood of idle connections. Afterwards the build and one
submitted after the attack are recorded as their content dictates, the dispatcher's
memory stayed bounded, and no file appeared outside its results folder and database.

The random parts come from one seeded ``random.Random``; the seed is printed, and
``SUPERCI_HOSTILE_SEED=<seed>`` replays the same input.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gc
import itertools
import logging
import os
import random
import resource
import time
import tracemalloc
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import FAILING_TEST, Repo, Superci
from helpers import (
    HARNESS_SETTINGS,
    HELLO_CLIENT,
    HELLO_RUNNER,
    FakeRunner,
    Harness,
    async_test,
    frame,
    frames_until_closed,
)
from support import eventually

from superci import defaults, protocol

pytestmark = pytest.mark.e2e

#: Shortened so that the idle connections are closed within the test.
HANDSHAKE_TIMEOUT = 1.0
#: During the flood: long enough for every idle connection to be opened while the first
#: ones still hold their handshake slots, so exactly the oldest ones are dropped as busy.
FLOOD_HANDSHAKE_TIMEOUT = 3.0
CLIENT_IDLE_TIMEOUT = 2.0
#: Bound for a hostile connection to be answered and closed (seconds).
CLOSE_WAIT = 10.0
#: Bound for the real runner to register, start a build or finish one (seconds).
RUNNER_WAIT = 30.0
#: Hostile connections open at once during the barrage: below MAX_UNAUTHENTICATED, so
#: each one gets an answer about its own input rather than "busy".
BARRAGE_CONCURRENCY = 64
IDLE_SILENT, IDLE_PARTIAL_HELLO = 300, 100
#: Ceiling for what the process allocates during the attack (bytes, tracemalloc peak): it
#: holds about ten half-received 1 MiB frames at once, plus a few KiB per connection.
MEMORY_CEILING = 64 * 1024 * 1024
#: What may stay allocated once every hostile connection is gone (bytes).
MEMORY_LEFT_OVER = 4 * 1024 * 1024

#: Error codes that name what was wrong ("closed": a runner replaced by a newer session of
#: its name); "internal", an unhandled exception in the dispatcher, is never one.
KNOWN_CODES = {
    "bad-message", "unknown-type", "frame-too-large", "handshake", "version", "unexpected",
    "timeout", "closed",
}  # fmt: skip

RUNNER = "runner-a"


def hostile_seed() -> int:
    seed = int(os.environ.get("SUPERCI_HOSTILE_SEED") or random.SystemRandom().randrange(2**32))
    print(f"hostile seed: {seed}")
    return seed


def traversal_ids(escape: Path) -> list[Any]:
    """Commit ids (and report names) that would leave the results folder if used as paths."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    return [
        "../../x", "../" * 13 + "x", "..", ".", "", "/etc/passwd", str(escape),
        str(escape / ("a" * 40)), "..%2F..%2Fx", "%2e%2e%2f%2e%2e%2fx", "..\\..\\x",
        "a" * 39 + "\x00", "\x00" * 40, sha + "\x00", sha[:20] + "\x00" + sha[21:],
        sha + "/../../x", sha[:38] + "/x", "../" + sha[:37], sha.upper(), sha + "\n",
        "~/" + sha[:38], "file:///" + sha[:32], "C:\\" + sha[:37], "a" * 5000, 1, None, [sha],
    ]  # fmt: skip


def is_commit_name(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > protocol.MAX_BRANCH:
        return False
    try:
        protocol.check_commit_name(value)
    except protocol.ProtocolError:
        return False
    return True


def snapshot(root: Path, allowed: list[Path]) -> dict[str, tuple[int, int] | None]:
    """Every file (size, mtime) and folder under ``root``, except where changes are allowed."""
    found: dict[str, tuple[int, int] | None] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d not in allowed]
        found[str(here.relative_to(root))] = None
        for name in files:
            path = here / name
            if path not in allowed:
                stat = path.lstat()
                found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found


class Attack:
    """Hostile connections against one dispatcher, with what came back on each."""

    def __init__(self, h: Harness, rng: random.Random) -> None:
        assert h.address is not None
        self.h = h
        self.address = h.address
        self.rng = rng
        self.codes: list[tuple[str, str | None]] = []  # (what was sent, error code or None)
        self._gate = asyncio.Semaphore(BARRAGE_CONCURRENCY)

    async def raw(self, what: str, data: bytes, *, eof: bool = True) -> list[Any]:
        """Send ``data`` on a new connection (then half-close it, with ``eof``) and read
        until the dispatcher closes; returns the frames that came back."""
        async with self._gate:
            reader, writer = await asyncio.open_connection(self.address.host, self.address.port)
            try:
                writer.write(data)
                if eof:
                    writer.write_eof()
                await writer.drain()
                frames = await frames_until_closed(reader, CLOSE_WAIT)
            except (ConnectionError, protocol.ProtocolError) as e:
                raise AssertionError(f"{what}: {e!r}") from e
            finally:
                writer.close()
        errors = [f for f in frames if isinstance(f, protocol.Error)]
        self.codes.append((what, errors[-1].code if errors else None))
        return frames

    async def expect_error(self, what: str, data: bytes, code: str, *, eof: bool = False) -> None:
        frames = await self.raw(what, data, eof=eof)
        assert frames and isinstance(frames[-1], protocol.Error), f"{what}: {frames}"
        assert frames[-1].code == code, f"{what}: {frames[-1]}"
        assert all(f.type in ("welcome", "registered") for f in frames[:-1]), f"{what}: {frames}"

    async def expect_unknown(self, what: str, data: bytes) -> None:
        frames = await self.raw(what, data)
        replies = [f for f in frames if isinstance(f, protocol.Reply)]
        assert [r.status for r in replies] == ["unknown"], f"{what}: {frames}"

    # --- the barrage ----------------------------------------------------------------

    def random_bytes(self, count: int) -> list[Awaitable[Any]]:
        """Random bytes: raw, after a hello, inside a well-formed frame, after a register."""
        openings = [b"", HELLO_CLIENT, HELLO_RUNNER]
        attacks = []
        for i in range(count):
            junk = self.rng.randbytes(self.rng.randint(1, 4096))
            opening = self.rng.choice(openings)
            if opening == HELLO_RUNNER:
                opening += register("random-runner")
            body = frame(junk) if self.rng.random() < 0.3 else junk
            # Else it stalls, to be closed by a timeout; not once registered: a registered
            # runner's silence is only ended by the heartbeat timeout.
            eof = opening.startswith(HELLO_RUNNER) or self.rng.random() < 0.5
            attacks.append(self.raw(f"random bytes #{i}", opening + body, eof=eof))
        return attacks

    def truncated_frames(self) -> list[Awaitable[Any]]:
        submit = protocol.encode(protocol.Submit(sha="1" * 40, branch="main"))
        hello = HELLO_CLIENT
        big = protocol.HEADER.pack(defaults.MAX_FRAME_BYTES) + b"{" * (512 * 1024)
        return [
            self.raw("half a header", b"\x00\x00"),
            self.raw("half a hello", hello[: len(hello) // 2]),
            self.raw("hello, then half a submit", hello + submit[: len(submit) - 5]),
            self.raw("hello, then a header alone", hello + submit[:4]),
            self.expect_error("half a hello, stalled", hello[:7], "timeout"),
            self.expect_error("half a big frame, stalled in the handshake", big, "timeout"),
            *[
                self.expect_error(f"hello, half a big frame, stalled #{i}", hello + big, "timeout")
                for i in range(8)
            ],
            self.raw(
                "registered, half a big frame, then EOF", HELLO_RUNNER + register("half") + big
            ),
        ]

    def huge_length_prefixes(self) -> list[Awaitable[Any]]:
        attacks = []
        for length in (0xFFFFFFFF, 2**31, defaults.MAX_FRAME_BYTES + 1):
            header = protocol.HEADER.pack(length) + b"{"
            for opening, who in (
                (b"", "before hello"),
                (HELLO_CLIENT, "after a client hello"),
                (HELLO_RUNNER + register(f"huge-{length}"), "after a register"),
            ):
                attacks.append(
                    self.expect_error(f"length {length} {who}", opening + header, "frame-too-large")
                )
        return attacks

    def unknown_types(self) -> list[Awaitable[Any]]:
        kinds: list[Any] = ["launch", "Hello", "SUBMIT", "", "__class__", 5, None, ["submit"]]
        attacks = []
        for kind in kinds:
            for opening in (HELLO_CLIENT, HELLO_RUNNER + register("typeless")):
                attacks.append(
                    self.expect_error(
                        f"type {kind!r}", opening + frame({"type": kind}), "unknown-type"
                    )
                )
        attacks.append(self.expect_error("no type", HELLO_CLIENT + frame({}), "unknown-type"))
        attacks.append(
            self.expect_error("unknown type first", frame({"type": "launch"}), "unknown-type")
        )
        return attacks

    def path_traversal(self, escape: Path) -> list[Awaitable[Any]]:
        """Every field that could become a path, with ids that would escape if used as one."""
        attacks = []
        for i, bad in enumerate(traversal_ids(escape)):
            submit = {"type": "submit", "sha": bad, "branch": "main"}
            attacks.append(
                self.expect_error(f"submit sha #{i}", HELLO_CLIENT + frame(submit), "bad-message")
            )
            # Commit names are looked up, never made into paths: a name git would take as a
            # branch (sha[:38] + "/x") is merely unknown, anything else refused.
            requests = {
                "log_request": {"type": "log_request", "commit": bad, "follow": True},
                "cancel_request": {"type": "cancel_request", "commit": bad},
                "query": {"type": "query", "what": "show", "commit": bad},
            }
            for kind, body in requests.items():
                what, data = f"{kind} commit #{i}", HELLO_CLIENT + frame(body)
                if is_commit_name(bad):
                    attacks.append(self.expect_unknown(what, data))
                else:
                    attacks.append(self.expect_error(what, data, "bad-message"))
            artifact = {"type": "artifact", "build_id": 1, "attempt": 1, "name": bad,
                        "offset": 0, "data": b64(b"<testsuite/>")}  # fmt: skip
            attacks.append(
                self.expect_error(
                    f"artifact name #{i}",
                    HELLO_RUNNER + register(f"traversal-{i}") + frame(artifact),
                    "bad-message",
                )
            )
        for i, branch in enumerate(["../../x", "--upload-pack=touch x", "-x", "/abs", "a\x00b"]):
            body = {"type": "submit", "sha": "2" * 40, "branch": branch}
            attacks.append(
                self.expect_error(f"branch #{i}", HELLO_CLIENT + frame(body), "bad-message")
            )
        return attacks

    def unregistered_forgeries(self, build_id: int) -> list[Awaitable[Any]]:
        """Results, output and reports from connections that hold no lease at all."""
        forged = {
            "result": {"type": "result", "build_id": build_id, "attempt": 1, "status": "failed",
                       "exit_code": 1, "duration": 1.0, "output_bytes": 0},
            "output": {"type": "output", "build_id": build_id, "attempt": 1, "offset": 0,
                       "data": b64(b"FORGED OUTPUT\n")},
            "artifact": {"type": "artifact", "build_id": build_id, "attempt": 1,
                         "name": "junit.xml", "offset": 0, "data": b64(b"<FORGED/>")},
        }  # fmt: skip
        attacks = []
        for kind, body in forged.items():
            attacks += [
                self.expect_error(f"{kind} before hello", frame(body), "handshake"),
                self.expect_error(
                    f"{kind} from a client", HELLO_CLIENT + frame(body), "unexpected"
                ),
                self.expect_error(
                    f"{kind} from an unregistered runner", HELLO_RUNNER + frame(body), "handshake"
                ),
            ]
        return attacks

    def assembled_messages(self, count: int, escape: Path) -> list[Awaitable[Any]]:
        """Messages of every type, with fields picked at random from hostile values."""
        pool: list[Any] = [
            *traversal_ids(escape), 0, -1, 2**53 + 1, 10**400, 1.5, -0.0, True, False,
            {"x": 1}, [1, 2], {"": -(2**60)}, ["a" * 300], "runner-x", "main", "status", "show",
            "passed", "queued", "junit.xml", "runner", "client", "0" * 32,
        ]  # fmt: skip
        kinds = sorted(protocol.MESSAGE_TYPES)
        attacks = []
        for i in range(count):
            kind = self.rng.choice(kinds)
            names = [f.name for f in dataclasses.fields(protocol.MESSAGE_TYPES[kind])]
            body: dict[str, Any] = {"type": kind}
            for name in self.rng.sample(names, self.rng.randint(0, len(names))):
                body[name] = self.rng.choice(pool)
            if self.rng.random() < 0.1:
                body["extra"] = 1
            opening = self.rng.choice([HELLO_CLIENT, HELLO_RUNNER + register(f"fuzz-{i}")])
            attacks.append(self.raw(f"assembled #{i}: {body!r:.300}", opening + frame(body)))
        # Numbers JSON allows but no field can hold: float overflow (inf), overlong integers.
        for field, value in (
            ("timeout", "1e999"),
            ("kill_grace", "-1e999"),
            ("attempt", "9" * 5000),
        ):
            fields = {
                "build_id": "1",
                "attempt": "1",
                "timeout": "1",
                "kill_grace": "1",
                field: value,
            }
            text = ", ".join(f'"{k}": {v}' for k, v in fields.items())
            body = f'{{"type": "started", {text}}}'.encode()
            opening = HELLO_RUNNER + register(f"number-{field}")
            attacks.append(
                self.expect_error(
                    f"number {field}={value[:8]}", opening + frame(body), "bad-message"
                )
            )
        return attacks

    # --- the flood of idle connections ----------------------------------------------

    async def idle(self, partial: bool) -> tuple[str | None, float]:
        """A connection that never completes its handshake: the error it gets and when."""
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(self.address.host, self.address.port)
        try:
            if partial:
                writer.write(HELLO_CLIENT[:7])
            frames = await frames_until_closed(reader, CLOSE_WAIT)
        finally:
            writer.close()
        errors = [f.code for f in frames if isinstance(f, protocol.Error)]
        assert len(frames) == len(errors) == 1, frames
        return errors[0], time.monotonic() - started


def batches(items: list[Any], size: int = 50) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


_REGISTRATIONS = itertools.count(1)


def register(name: str) -> bytes:
    """A registration under a name of its own: a name registered once is bound to the
    identity it was issued, and each attack must reach the dispatcher past registering."""
    unique = f"{name}-{next(_REGISTRATIONS)}"
    return protocol.encode(protocol.Register(name=unique, host="hostile", pid=1))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ErrorLog(logging.Handler):
    """The dispatcher's errors, as text. Records are not kept (pytest's own log capture
    would): their arguments hold exceptions, whose tracebacks hold whole connections, and
    would be counted as memory the dispatcher kept."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, f"{record.levelname} {record.getMessage()}"[:300]))

    @property
    def errors(self) -> list[str]:
        return [line for level, line in self.lines if level >= logging.ERROR]


@pytest.fixture
def error_log(monkeypatch: pytest.MonkeyPatch):
    handler = ErrorLog()
    logger = logging.getLogger("superci")
    monkeypatch.setattr(logger, "propagate", False)
    # Warnings are not even made into records: some pytest versions capture them anyway,
    # and records hold exceptions, which would count as memory the dispatcher kept.
    level = logger.level
    logger.setLevel(logging.ERROR)  # setLevel, not the attribute: it clears loggers' caches
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)
    print(f"{len(handler.lines)} errors logged, the last ones:")
    print("\n".join(line for _, line in handler.lines[-20:]))


@pytest.fixture
def enough_file_descriptors():
    """Hundreds of sockets, each counted twice (our end and the dispatcher's)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 4 * (IDLE_SILENT + IDLE_PARTIAL_HELLO) + 256
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@async_test(limit=120)
async def test_dispatcher_fed_hostile_input_keeps_serving_a_real_runner_within_bounded_memory(
    tmp_path: Path,
    repo: Repo,
    superci: Superci,
    error_log: ErrorLog,
    enough_file_descriptors: None,
):
    settings = replace(
        HARNESS_SETTINGS,
        heartbeat_timeout=10.0,
        handshake_timeout=HANDSHAKE_TIMEOUT,
        client_idle_timeout=CLIENT_IDLE_TIMEOUT,
    )
    rng = random.Random(hostile_seed())
    gate = tmp_path / "gate"
    gated = repo.commit_gated(gate)
    failing = repo.commit({"tests/test_broken.py": FAILING_TEST}, "failing")
    clone = repo.clone(tmp_path / "runner-clone")
    escape = tmp_path / "escaped"

    async with Harness(tmp_path / "srv", settings=settings, clock=time.monotonic) as h:
        assert h.dispatcher is not None and h.address is not None
        superci.address = str(h.address)
        runner = superci.runner(clone, RUNNER, "--kill-grace", "1")
        await eventually(
            lambda: "registered with the dispatcher" in runner.log, RUNNER_WAIT, "registration"
        )
        allowed = [
            h.results_dir, h.db_path, h.db_path.with_name("superci.db-wal"),
            h.db_path.with_name("superci.db-shm"), clone, runner.log_path, gate,
        ]  # fmt: skip
        before = snapshot(tmp_path, allowed)
        building = await h.submit(gated)
        await eventually(lambda: (gate / "started-1").exists(), RUNNER_WAIT, "the build to start")
        tracemalloc.start()
        baseline, _ = tracemalloc.get_traced_memory()

        # 1. The barrage, while the real runner holds a running build.
        attack = Attack(h, rng)
        barrage = [
            *attack.random_bytes(80),
            *attack.truncated_frames(),
            *attack.huge_length_prefixes(),
            *attack.unknown_types(),
            *attack.path_traversal(escape),
            *attack.unregistered_forgeries(building.build_id),
            *attack.assembled_messages(150, escape),
        ]
        rng.shuffle(barrage)
        await asyncio.gather(*barrage, forge_as_another_runner(h, building.build_id, gated))
        assert len(attack.codes) == len(barrage)
        unknown = [(w, c) for w, c in attack.codes if c is not None and c not in KNOWN_CODES]
        assert not unknown, unknown[:5]
        await eventually(lambda: h.dispatcher._unauthenticated == 0, what="handshakes to end")

        # 2. The flood: more idle connections than may be in their handshake at once.
        # Every newcomer is let in and the oldest silent one is dropped with "busy" (see
        # superci.admission), so a real client is never locked out by silent sockets. They
        # are opened in batches smaller than the listen backlog: a burst beyond it would be
        # dropped by the kernel before the dispatcher ever saw it.
        # The listener reads its handshake time limit as each connection comes in: a new
        # settings object from here on gives the flood's connections the longer one.
        h.dispatcher.listener.settings = replace(
            settings, handshake_timeout=FLOOD_HANDSHAKE_TIMEOUT
        )
        kinds = [False] * IDLE_SILENT + [True] * IDLE_PARTIAL_HELLO
        rng.shuffle(kinds)
        slots = settings.max_unauthenticated
        flood_started = time.monotonic()
        holders: list[asyncio.Task[tuple[str | None, float]]] = []
        for batch in batches(kinds[:slots]):
            holders.extend(asyncio.create_task(attack.idle(partial)) for partial in batch)
            opened = len(holders)
            await eventually(
                lambda n=opened: h.dispatcher._unauthenticated == n,
                CLOSE_WAIT,
                f"{opened} connections in their handshake",
            )
        runner_seen = h.dispatcher.scheduler.runners[RUNNER].last_seen
        newcomers = [asyncio.create_task(attack.idle(partial)) for partial in kinds[slots:]]
        held = await asyncio.gather(*holders)  # each dropped as a newcomer came in
        flood_took = time.monotonic() - flood_started
        assert flood_took < FLOOD_HANDSHAKE_TIMEOUT, f"the flood took {flood_took:.1f}s"
        assert h.dispatcher._unauthenticated == slots
        late = await asyncio.gather(*newcomers)
        # The real runner's heartbeats went on arriving while every slot was taken.
        assert h.dispatcher.scheduler.runners[RUNNER].last_seen > runner_seen

        assert [code for code, _ in held] == ["busy"] * slots
        assert (
            sorted(code for code, _ in late) == ["busy"] * (len(late) - slots) + ["timeout"] * slots
        )
        timed_out = [elapsed for code, elapsed in late if code == "timeout"]
        assert min(timed_out) >= FLOOD_HANDSHAKE_TIMEOUT * 0.9
        assert max(timed_out) < FLOOD_HANDSHAKE_TIMEOUT + CLOSE_WAIT
        assert h.dispatcher._unauthenticated == 0

        _, peak = tracemalloc.get_traced_memory()
        gc.collect()  # refused connections' exceptions and frames form cycles: not a leak
        current, _ = tracemalloc.get_traced_memory()
        top = [str(stat) for stat in tracemalloc.take_snapshot().statistics("filename")[:5]]
        tracemalloc.stop()

        # 3. A commit submitted after all this is built too, after the held one.
        after = await h.submit(failing)
        assert after.queued
        (gate / "open").touch()
        passed = await h.results.wait(gated, RUNNER_WAIT)
        failed = await h.results.wait(failing, RUNNER_WAIT)
        sessions = list(h.dispatcher._sessions.values())

    print(f"flood opened in {flood_took:.2f}s")
    print(f"memory: peak {(peak - baseline) / 2**20:.1f} MiB above the start, "
          f"{(current - baseline) / 2**20:.1f} MiB left")  # fmt: skip
    assert peak - baseline < MEMORY_CEILING
    assert current - baseline < MEMORY_LEFT_OVER, top

    assert (passed["status"], passed["attempt"], passed["runner"]) == ("passed", 1, RUNNER)
    assert passed["build_id"] == building.build_id and passed["tests"]["run"] == 1
    assert (failed["status"], failed["attempt"], failed["runner"]) == ("failed", 1, RUNNER)
    assert [d["sha"] for d in h.results.documents] == [gated, failing]
    log_text = h.output_log(gated)
    assert b"FORGED" not in log_text and log_text.count(b"superci: building") == 1
    assert b"after the gate" in log_text
    assert len(sessions) == 1, "only the real runner was still connected"
    assert runner.log.count("registered with the dispatcher") == 1, "it never lost its session"

    # Nothing appeared or changed outside the results folder and the database ...
    assert snapshot(tmp_path, allowed) == before
    assert not escape.exists()
    # ... and inside the results folder, only the two commits' own files.
    assert sorted(p.name for p in h.results_dir.iterdir()) == sorted([gated, failing])
    for sha in (gated, failing):
        assert sorted(p.name for p in (h.results_dir / sha).iterdir()) == [
            "output.log",
            "result.json",
        ]
    assert error_log.errors == [], "the dispatcher logged errors (an internal error?)"


async def forge_as_another_runner(h: Harness, build_id: int, sha: str) -> None:
    """A runner registered under another name sends output, a report, a start and results
    for the build the real runner holds, and one claims that build's lease: all refused."""
    assert h.address is not None and h.dispatcher is not None
    forger, _ = await FakeRunner.connect(h.address, "forger")
    build = protocol.Build(build_id=build_id, attempt=1, sha=sha, branch="main")
    size = len(h.output_log(sha))
    await forger.output(build, 0, b"FORGED OUTPUT AT 0\n")
    await forger.output(build, size, b"FORGED OUTPUT AT THE END\n")
    await forger.send(
        protocol.Artifact(build_id=build_id, attempt=1, name="junit.xml", offset=0,
                          data=b64(b"<FORGED/>"))
    )  # fmt: skip
    await forger.send(protocol.Started(build_id=build_id, attempt=1, timeout=0.0, kill_grace=0.0))
    acks = [
        await forger.result(build, "failed"),
        await forger.result(build, "passed", attempt=2),
        await forger.result(build, "passed", build_id=build_id + 1000),
    ]
    assert not any(ack.accepted or ack.retry for ack in acks), acks

    claimer, registered = await FakeRunner.connect(h.address, "claimer", lease=(build_id, 1))
    cancel = await claimer.expect(protocol.Cancel)
    assert registered.output_offset is None and cancel.build_id == build_id

    job = h.dispatcher.scheduler.jobs[build_id]
    assert (job.runner, job.attempt, job.deadline is not None) == (RUNNER, 1, True)
    assert job.deadline > time.monotonic() + 60, "the forged start moved the deadline"
    for fake in (forger, claimer):
        await fake.close()
    await eventually(
        lambda: not {"forger", "claimer"} & set(h.dispatcher.scheduler.runners),
        what="the forgers to be gone",
    )
    assert not list((h.folder(sha)).glob("*junit*"))
    assert h.result_json(sha) is None
    assert h.db_build(build_id)["status"] == "running"
