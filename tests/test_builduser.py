"""Builds run as a dedicated user (--build-user): real users, made with useradd."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Repo, Superci, git
from support import wait_until

from superci import builduser
from superci.builduser import BuildUser, processes_of
from superci.errors import ConfigError

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("useradd"),
    reason="builds as another user need Linux, root and useradd (CI runs as root)",
)


@pytest.fixture
def build_user() -> Iterator[BuildUser]:
    """A fresh user of its own, removed (with its home) after the test."""
    name = f"sci-b{secrets.token_hex(4)}"
    made = subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"this machine does not let us create users: {made.stderr.strip()}")
    try:
        yield BuildUser.lookup(name)
    finally:
        entry = pwd.getpwnam(name)
        for pid in processes_of(entry.pw_uid):
            os.kill(pid, 9)
        subprocess.run(["userdel", "-r", name], capture_output=True)


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder others may enter (unlike pytest's tmp_path), for the runner's files: the
    build user is kept out by the files' own modes, not by a private parent."""
    folder = Path(tempfile.mkdtemp(prefix="superci-open-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stray_process(user: BuildUser) -> subprocess.Popen[bytes]:
    """A process of ``user`` the runner did not start (once it runs as ``user``)."""
    stray = subprocess.Popen(
        ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
         "sleep", "60"],
    )  # fmt: skip
    wait_until(lambda: stray.pid in processes_of(user.uid), what="the stray process")
    return stray


HOSTILE = """\
echo "uid=$(id -u)"
cat {token} && echo READ-''TOKEN
cat {identity} && echo READ-''IDENTITY
touch {clone}/.git/hooks/pre-commit && echo WROTE-''GIT
kill -0 {runner_pid} || echo CANNOT-''SIGNAL
env | sort
echo planted > planted
nohup sleep 300 >/dev/null 2>&1 &
exit 1
"""


def superci_toml(command: str) -> str:
    return f"command = {json.dumps(command)}\n"


def test_a_build_user_runs_the_build_and_cannot_touch_the_runner(
    superci: Superci, repo: Repo, build_user: BuildUser, open_folder: Path
):
    token = open_folder / "token"
    token.write_text(secrets.token_hex(16))
    token.chmod(0o600)
    clone = repo.clone(open_folder / "clone")
    superci.dispatcher(0, "--token-file", str(token))
    runner = superci.runner(clone, "r-isolated", "--token-file", str(token),
                            "--build-user", build_user.name, "--kill-grace", "0.5")  # fmt: skip
    runner.wait_for_log("registered with the dispatcher")
    identity = clone / ".git" / "superci-identity"
    assert identity.is_file()
    assert clone.stat().st_mode & 0o777 == 0o700  # made private: its .git is out of reach

    hostile = repo.commit({".superci.toml": superci_toml(HOSTILE.format(
        token=token, identity=identity, clone=clone, runner_pid=runner.popen.pid,
    ))})  # fmt: skip
    superci.notify(hostile, "--token-file", str(token))
    first = superci.wait_for_result(hostile)
    out = superci.output(hostile)
    assert first["status"] == "failed", out
    assert f"uid={build_user.uid}" in out
    assert f"running as build user {build_user.name}" in out
    secrets_of_runner = (token.read_text(), identity.read_text().strip())
    for forbidden in ("READ-TOKEN", "READ-IDENTITY", "WROTE-GIT", "SUPERCI_TOKEN",
                      *secrets_of_runner):  # fmt: skip
        assert forbidden not in out
    assert "CANNOT-SIGNAL" in out and "kill: Operation not permitted" in out  # EPERM
    assert "HOME=" in out and "CI=true" in out and f"USER={build_user.name}" in out
    assert not (clone / ".git" / "hooks" / "pre-commit").exists()
    assert processes_of(build_user.uid) == []  # the nohup sleep went with the build

    clean = repo.commit({".superci.toml": superci_toml("test ! -e planted && id -u")})
    superci.notify(clean, "--token-file", str(token))
    second = superci.wait_for_result(clean)
    assert second["status"] == "passed", superci.output(clean)

    status = subprocess.run(
        [sys.executable, "-m", "superci", "status", "--json", "--dispatcher-server",
         superci.address, "--token-file", str(token)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    runners = json.loads(status.stdout)["runners"]
    assert [(r["name"], r["isolated"]) for r in runners] == [("r-isolated", True)]

    stray = stray_process(build_user)
    try:
        third = repo.commit({"README": "more"})
        superci.notify(third, "--token-file", str(token))
        refused = superci.wait_for_result(third)
        assert refused["status"] == "error"
        assert "a build user must be dedicated" in refused["message"]
        assert f"pids {stray.pid}" in refused["message"]
    finally:
        stray.kill()
        stray.wait()

    stubborn = repo.commit({".superci.toml": superci_toml(
        "trap '' TERM; (setsid sleep 300 &); sleep 300") + "timeout = 1\n"})  # fmt: skip
    superci.notify(stubborn, "--token-file", str(token))
    timed_out = superci.wait_for_result(stubborn)
    assert timed_out["status"] == "timeout", timed_out
    assert processes_of(build_user.uid) == []


def test_a_runner_refuses_root_as_its_build_user(superci: Superci, repo: Repo):
    clone = repo.clone(superci.root / "clone")
    refused = subprocess.run(
        [sys.executable, "-m", "superci", "runner", "--build-user", "root", str(clone)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "refusing build user 'root': it is root" in refused.stderr


def test_a_build_user_that_is_the_runners_own_user_is_refused(
    build_user: BuildUser, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(builduser.os, "geteuid", lambda: build_user.uid)
    with pytest.raises(ConfigError, match="it is the runner's own user.*must be dedicated"):
        BuildUser.lookup(build_user.name)


def test_an_unknown_build_user_is_an_error_that_says_how_to_make_one():
    with pytest.raises(ConfigError, match="no user named 'sci-nobody-here'.*useradd"):
        BuildUser.lookup("sci-nobody-here")


def test_a_build_user_with_a_process_the_runner_did_not_start_is_refused(
    build_user: BuildUser,
):
    build_user.check_dedicated()
    stray = stray_process(build_user)
    try:
        with pytest.raises(ConfigError, match=rf"owns processes the runner did not start "
                           rf"\(pids {stray.pid}\).*must be dedicated"):  # fmt: skip
            build_user.check_dedicated()
    finally:
        stray.kill()
        stray.wait()


def test_the_tree_handed_over_belongs_to_the_build_user_and_has_no_git_dir(
    build_user: BuildUser, repo: Repo, tmp_path: Path, open_folder: Path
):
    (repo.path / "run.sh").write_text("#!/bin/sh\n")
    (repo.path / "run.sh").chmod(0o755)
    repo.commit({"a.txt": "a", "sub/b.txt": "b"})
    clone = repo.clone(tmp_path / "clone")
    scratch = open_folder / "scratch"
    scratch.mkdir(mode=0o700)

    folders = build_user.hand_over(clone, scratch)

    assert scratch.stat().st_mode & 0o777 == 0o711
    assert (scratch / "builds").stat().st_mode & 0o7777 == 0o1733  # nobody lists it
    assert folders.root.parent == scratch / "builds"
    assert sorted(p.name for p in folders.tree.iterdir()) == ["a.txt", "run.sh", "sub"]
    assert (folders.tree / "sub" / "b.txt").read_text() == "b"
    assert os.access(folders.tree / "run.sh", os.X_OK)
    owners = {p.lstat().st_uid for p in folders.root.rglob("*")} | {folders.root.stat().st_uid}
    assert owners == {build_user.uid}
    assert folders.root.stat().st_mode & 0o777 == 0o711
    assert folders.home.stat().st_mode & 0o777 == 0o700
    assert git(clone, "status", "--porcelain") == ""

    (folders.tree / "sub").chmod(0)  # whatever modes a build leaves, the folder goes
    build_user.remove(folders)
    assert not folders.root.exists()
