"""scripts/post-receive, installed in a real bare repository and run by a real push, with
``superci`` outside PATH as on a git server: it queues the pushed commits at a real
dispatcher, and when it cannot, the push still succeeds and says notify's reason."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Repo, Superci, git, write_tls_files
from support import free_port

pytestmark = pytest.mark.e2e

HOOK = Path(__file__).resolve().parent.parent / "scripts" / "post-receive"
TOKEN = "a shared token of more than thirty-two characters"


@pytest.fixture
def server(tmp_path: Path) -> Path:
    """A bare repository, as on a git server, with the hook installed."""
    bare = tmp_path / "project.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(bare))
    hook = bare / "hooks" / "post-receive"
    shutil.copy(HOOK, hook)
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    return bare


@pytest.fixture
def wrapper(tmp_path: Path) -> Path:
    """``superci`` as a git server might have it: a program in a folder not on PATH."""
    tools = tmp_path / "opt" / "bin"
    tools.mkdir(parents=True)
    program = tools / "superci"
    program.write_text(f'#!/bin/sh\nexec {sys.executable} -m superci "$@"\n')
    program.chmod(0o755)
    return program


def token_file(tmp_path: Path, token: str = TOKEN, name: str = "superci.token") -> Path:
    path = tmp_path / name
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def push(work: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``git push`` with a PATH that has git and the shell but no superci."""
    path = os.pathsep.join(sorted({str(Path(shutil.which("git") or "git").parent), "/bin"}))
    assert shutil.which("superci", path=path) is None, "superci must not be on the hook's PATH"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SUPERCI_")}
    environment.update(PATH=path, **env)
    return subprocess.run(
        ["git", "-C", str(work), "push", "--quiet", "origin", "main"],
        capture_output=True, text=True, timeout=60, env=environment,
    )  # fmt: skip


def queued(superci: Superci) -> list[tuple[str, str]]:
    """(sha, branch) of every build the dispatcher recorded, in the order they came."""
    with sqlite3.connect(superci.state) as db:
        return db.execute("SELECT sha, branch FROM builds ORDER BY id").fetchall()


def test_post_receive_in_a_bare_repository_queues_every_pushed_commit_oldest_first(
    superci: Superci, server: Path, wrapper: Path, tmp_path: Path
):
    """Everything from git config keys: the command outside PATH, token file, TLS CA."""
    write_tls_files(tmp_path)
    token = token_file(tmp_path)
    superci.dispatcher(
        0, "--token-file", str(token),
        "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"),
    )  # fmt: skip
    for key, value in {
        "superci.command": str(wrapper),
        "superci.dispatcher": superci.address,
        "superci.tokenFile": str(token),
        "superci.tlsCa": str(tmp_path / "ca.pem"),
    }.items():
        git(server, "config", key, value)
    developer = Repo(tmp_path / "developer")
    git(developer.path, "remote", "add", "origin", str(server))

    first = developer.commit({"a.txt": "1"}, "first")
    pushed = push(developer.path)
    assert pushed.returncode == 0, pushed.stderr
    assert f"queued {first} (main) as build" in pushed.stderr  # git shows the hook's output
    later = [developer.commit({"a.txt": str(n)}, f"change {n}") for n in (2, 3)]
    pushed = push(developer.path)
    assert pushed.returncode == 0, pushed.stderr

    assert queued(superci) == [(sha, "main") for sha in (first, *later)]
    assert "could not" not in pushed.stderr
    with sqlite3.connect(superci.state) as db:  # the hook's notify has git: it says them
        described = db.execute("SELECT subject, author FROM builds ORDER BY id").fetchall()
    assert described == [(s, "Test Author") for s in ("first", "change 2", "change 3")]


@pytest.mark.parametrize("trouble", ["dispatcher down", "wrong token"])
def test_a_push_the_hook_cannot_notify_succeeds_and_shows_notifys_reason(
    trouble: str, superci: Superci, server: Path, wrapper: Path, tmp_path: Path
):
    """Everything from the environment this time, as a git server's user could set it."""
    if trouble == "wrong token":
        superci.dispatcher(0, "--token-file", str(token_file(tmp_path)))
        address, reason = superci.address, "does not know our token"
    else:
        address = f"127.0.0.1:{free_port()}"
        reason = f"cannot reach the dispatcher at {address}"
    developer = Repo(tmp_path / "developer")
    git(developer.path, "remote", "add", "origin", str(server))
    sha = developer.commit({"a.txt": "1"}, "first")

    pushed = push(
        developer.path,
        SUPERCI_COMMAND=str(wrapper),
        SUPERCI_DISPATCHER=address,
        SUPERCI_TOKEN_FILE=str(
            token_file(tmp_path, "another token, also long enough: 128 bits", "other")
        ),
    )

    assert pushed.returncode == 0, pushed.stderr
    assert git(server, "rev-parse", "main") == sha
    assert f"superci: could not queue {sha} (main): Error: " in pushed.stderr
    assert reason in pushed.stderr
    if trouble == "wrong token":
        assert queued(superci) == []


def test_the_hook_sends_each_commits_configuration_so_the_dispatcher_knows_its_needs(
    superci: Superci, server: Path, wrapper: Path, tmp_path: Path
):
    superci.dispatcher()
    developer = Repo(tmp_path / "developer")
    git(developer.path, "remote", "add", "origin", str(server))
    sha = developer.commit({".superci.toml": 'needs = {gpu = "true"}\n'}, "needs a gpu")

    pushed = push(developer.path, SUPERCI_COMMAND=str(wrapper), SUPERCI_DISPATCHER=superci.address)

    assert pushed.returncode == 0 and f"queued {sha}" in pushed.stderr, pushed.stderr
    with sqlite3.connect(superci.state) as db:
        [(needs,)] = db.execute("SELECT needs FROM builds WHERE sha = ?", (sha,)).fetchall()
    assert needs == '{"gpu": "true"}'
