"""A runner is who it says it is: its name is bound to a secret of its own, so knowing a
name, a build id and an attempt (all shown by ``status``) gives nothing, a second runner
with the same name is refused, and a restarted runner still takes its place at once.
Through the in-process dispatcher on real TCP and through the real programs."""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FAILING_TEST, PASSING_TEST, Process, Repo, Superci
from helpers import HARNESS_SETTINGS, FakeRunner, Harness, async_test
from support import E2E_WAIT, eventually, wait_until

from superci import client, identity, protocol
from superci.errors import ConfigError, RemoteError

SHA = "f0" * 20


async def status_document(h: Harness) -> dict:
    """What any token holder reads with ``superci status``."""
    assert h.address is not None
    reply = await client.request(h.address, protocol.Query(what="status"))
    assert isinstance(reply, protocol.Reply)
    return json.loads(reply.document)


async def refused(h: Harness, name: str, **claim) -> RemoteError:
    assert h.address is not None
    with pytest.raises(RemoteError) as error:
        await FakeRunner.connect(h.address, name, **claim)
    return error.value


# --- through the in-process dispatcher --------------------------------------------------


@async_test()
async def test_lease_hijack_with_the_names_status_shows_is_refused_and_the_real_result_recorded(
    tmp_path: Path,
):
    async with Harness(tmp_path) as h:
        assert h.address is not None and h.dispatcher is not None
        real, _ = await FakeRunner.connect(h.address, "build-box", host="build-box.lan")
        await h.submit(SHA)
        build = await real.expect(protocol.Build)

        shown = await status_document(h)
        (runner,) = shown["runners"]
        (listed,) = [b for b in shown["builds"] if b["sha"] == SHA]
        name, lease = runner["name"], (listed["build_id"], listed["attempt"])
        assert (name, lease) == ("build-box", (build.build_id, build.attempt))

        stranger = secrets.token_hex(16)
        for guess in (None, identity.new_secret()):  # no identity, or a made-up one
            error = await refused(h, name, lease=lease, identity=guess, instance=stranger)
            assert error.code == "name-taken"
            assert "'build-box.lan'" in str(error) and "--name" in str(error)

        # Under a name of its own, the lease it names is not its own either.
        forger, _ = await FakeRunner.connect(h.address, "forger")
        ack = await forger.result(build, "passed")
        assert not ack.accepted
        assert h.result_json(SHA) is None

        ack = await real.result(build, "failed")
        assert ack.accepted
        assert h.result_json(SHA)["status"] == "failed"
        assert [d["status"] for d in h.results.for_sha(SHA)] == ["failed"]
        for fake in (real, forger):
            await fake.close()


@async_test()
async def test_copy_of_a_runner_machine_identity_included_is_refused_while_the_original_lives(
    tmp_path: Path,
):
    async with Harness(tmp_path, heartbeat_timeout=1.0) as h:
        assert h.address is not None and h.dispatcher is not None
        original, registered = await FakeRunner.connect(h.address, "vm-image", host="vm.lan")
        assert registered.identity is not None
        copy = {"identity": registered.identity, "instance": secrets.token_hex(16)}

        error = await refused(h, "vm-image", **copy)
        assert error.code == "identity-in-use"
        assert "'vm.lan'" in str(error) and "same identity" in str(error)
        await original.round_trip()  # still in the pool, not evicted
        assert h.dispatcher.scheduler.runners["vm-image"].host == "vm.lan"

        h.clock.advance(1.5)  # the original falls silent: declared dead
        await eventually(lambda: "vm-image" not in h.dispatcher.scheduler.runners)
        successor, registered = await FakeRunner.connect(h.address, "vm-image", **copy)
        assert registered.identity is None  # it proved the name's identity: none issued
        for fake in (original, successor):
            await fake.close()


@async_test()
async def test_restarted_runner_takes_its_place_at_once_and_readopts_its_build(tmp_path: Path):
    async with Harness(tmp_path, heartbeat_timeout=60.0) as h:
        assert h.address is not None
        runner, _ = await FakeRunner.connect(h.address, "r1")
        await h.submit(SHA)
        build = await runner.expect(protocol.Build)
        await runner.output(build, 0, b"before\n")
        await runner.round_trip()

        # Its connection broke on its side only: the dispatcher still holds it, alive.
        lease = (build.build_id, build.attempt)
        again, registered = await FakeRunner.connect(h.address, "r1", lease=lease)
        assert registered.output_offset == len(b"before\n")
        ghost = await runner.closed_by_peer()
        assert any(isinstance(f, protocol.Error) and "replaced" in f.message for f in ghost)

        await again.output(build, 7, b"after\n")
        ack = await again.result(build, "passed", output_bytes=13)
        assert ack.accepted and h.output_log(SHA) == b"before\nafter\n"
        await again.close()


@async_test()
async def test_oversized_report_is_refused_by_the_dispatcher(tmp_path: Path):
    settings = replace(HARNESS_SETTINGS, max_report_bytes=3 * protocol.DATA_CHUNK)
    async with Harness(tmp_path, settings=settings) as h:
        assert h.address is not None
        runner, _ = await FakeRunner.connect(h.address, "liar")
        await h.submit(SHA)
        build = await runner.expect(protocol.Build)
        report = b"<testsuite>" + b"x" * (10 * protocol.DATA_CHUNK)  # past the cap
        for offset, data in protocol.split_data(report):
            await runner.send(
                protocol.Artifact(build_id=build.build_id, attempt=build.attempt,
                                  name="junit.xml", offset=offset, data=data)
            )  # fmt: skip
        ack = await runner.result(build, "failed")
        assert ack.accepted
        assert h.result_json(SHA)["status"] == "failed"
        assert sorted(p.name for p in h.folder(SHA).iterdir()) == ["output.log", "result.json"]
        await runner.close()


# --- the identity file -------------------------------------------------------------------


def test_identity_file_is_written_private_and_read_back(tmp_path: Path):
    kept = identity.IdentityFile(tmp_path / "id")
    assert kept.load() is None
    secret = identity.new_secret()
    kept.save(secret)
    assert stat.S_IMODE((tmp_path / "id").stat().st_mode) == 0o600
    assert kept.load() == secret


@pytest.mark.parametrize("kind", ["fifo", "symlink", "garbage"])
def test_identity_file_that_is_not_a_secret_in_a_file_is_refused_without_blocking(
    tmp_path: Path, kind: str
):
    path = tmp_path / "id"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_text(identity.new_secret())
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.write_text("not a secret\n")
    with pytest.raises(ConfigError, match=rf"identity file {path}.*--identity-file"):
        identity.IdentityFile(path).load()


def test_identity_file_a_build_removed_or_changed_is_written_again(tmp_path: Path):
    kept = identity.IdentityFile(tmp_path / "id")
    secret = identity.new_secret()
    kept.keep(secret)
    (tmp_path / "id").write_text(identity.new_secret())
    kept.keep(secret)
    assert kept.load() == secret
    (tmp_path / "id").unlink()
    kept.keep(secret)
    assert kept.load() == secret


# --- through the real programs -----------------------------------------------------------


def start_runner(superci: Superci, clone: Path, name: str, label: str, *extra: str) -> Process:
    """A runner process; ``label`` names its log, so one name may run more than once."""
    return superci.start(
        "runner", "--dispatcher-server", superci.address, "--name", name,
        "--heartbeat-interval", "0.2", str(clone), *extra,
        name=label,
    )  # fmt: skip


def exit_code(process: Process) -> int:
    return process.popen.wait(timeout=E2E_WAIT)


@pytest.mark.e2e
def test_second_runner_with_the_same_name_is_refused_with_the_first_ones_host(
    repo: Repo, superci: Superci, tmp_path: Path
):
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    superci.dispatcher()
    first = start_runner(superci, repo.clone(tmp_path / "first"), "shared", "first")
    first.wait_for_log("registered with the dispatcher")
    assert "queued" in superci.notify(sha).stdout
    wait_until(lambda: (gate / "started-1").exists(), what="the build to start")

    second = start_runner(superci, repo.clone(tmp_path / "second"), "shared", "second")
    assert exit_code(second) == 1
    assert repr(socket.gethostname()) in second.log and "--name" in second.log
    assert "taken by a runner connected from" in second.log

    (gate / "open").touch()
    result = superci.wait_for_result(sha)
    assert (result["status"], result["runner"], result["attempt"]) == ("passed", "shared", 1)


@pytest.mark.e2e
def test_runner_that_lost_its_identity_file_is_told_to_forget_its_name(
    repo: Repo, superci: Superci, tmp_path: Path
):
    failing = repo.commit({"tests/test_broken.py": FAILING_TEST}, "failing")
    superci.dispatcher()
    clone = repo.clone(tmp_path / "clone")
    first = start_runner(superci, clone, "box", "first")
    first.wait_for_log("registered with the dispatcher")
    kept = clone / ".git" / identity.IDENTITY_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    secret = kept.read_text()

    first.kill()  # SIGKILL: the restarted runner takes its place at once, same identity
    restarted = start_runner(superci, clone, "box", "restarted")
    restarted.wait_for_log("registered with the dispatcher", timeout=15)
    assert superci.notify(failing).returncode == 0
    assert superci.wait_for_result(failing)["status"] == "failed"
    assert kept.read_text() == secret
    assert restarted.stop() == 0

    kept.unlink()
    lost = start_runner(superci, clone, "box", "lost")
    assert exit_code(lost) == 1
    assert "superci forget-runner box" in lost.log and str(kept) in lost.log

    forget = subprocess.run(
        [sys.executable, "-m", "superci", "forget-runner", "box", "--state", str(superci.state)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert forget.returncode == 0, forget.stderr
    assert "runner box forgotten" in forget.stdout
    back = start_runner(superci, clone, "box", "back")
    back.wait_for_log("registered with the dispatcher")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_text() != secret
    passing = repo.commit({"tests/test_ok.py": PASSING_TEST, "tests/test_broken.py": ""})
    assert superci.notify(passing).returncode == 0
    assert superci.wait_for_result(passing)["status"] == "passed"


def test_forget_runner_of_an_unknown_name_or_state_says_so(tmp_path: Path):
    def forget(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "superci", "forget-runner", *args],
            capture_output=True, text=True, timeout=30, cwd=tmp_path,
        )  # fmt: skip

    missing = forget("box", "--state", str(tmp_path / "nothing.db"))
    assert missing.returncode == 1 and "no dispatcher state at" in missing.stderr
    assert not (tmp_path / "nothing.db").exists()
    from superci.store import Store

    Store(tmp_path / "superci.db").close()
    unknown = forget("box", "--state", str(tmp_path / "superci.db"))
    assert unknown.returncode == 1 and "no runner named 'box'" in unknown.stderr
