"""Builds run as a dedicated user (--build-user): real users, made with useradd."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Process, Repo, Superci, git
from support import file_text, wait_until

from superci import builduser
from superci.builduser import BuildUser, processes_of
from superci.errors import ConfigError, WorkspaceError

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("useradd"),
    reason="builds as another user need Linux, root and useradd (CI runs as root)",
)


@contextlib.contextmanager
def new_user(prefix: str) -> Iterator[pwd.struct_passwd]:
    """A fresh user of its own, removed (with its home and processes) afterwards."""
    name = f"{prefix}{secrets.token_hex(4)}"
    made = subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"this machine does not let us create users: {made.stderr.strip()}")
    entry = pwd.getpwnam(name)
    try:
        yield entry
    finally:  # its processes gone before its uid can be another test's new user's
        for pid in processes_of(entry.pw_uid):
            os.kill(pid, 9)
        wait_until(lambda: not processes_of(entry.pw_uid), what=f"the end of {name}'s processes")
        subprocess.run(["userdel", "-r", name], capture_output=True)


@pytest.fixture
def build_user() -> Iterator[BuildUser]:
    """A fresh user for builds."""
    with new_user("sci-b") as entry:
        yield BuildUser.lookup(entry.pw_name)


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
echo '[core] hooksPath = /tmp' >> {clone}/.git/config && echo WROTE-''CONFIG
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
    for forbidden in ("READ-TOKEN", "READ-IDENTITY", "WROTE-GIT", "WROTE-CONFIG",
                      "SUPERCI_TOKEN", *secrets_of_runner):  # fmt: skip
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


def test_a_scratch_folder_the_build_user_cannot_reach_is_an_error_that_says_why(
    build_user: BuildUser, repo: Repo, tmp_path: Path
):
    repo.commit({"a.txt": "a"})
    clone = repo.clone(tmp_path / "clone")
    scratch = tmp_path / "scratch"  # pytest's tmp_path is closed to other users
    scratch.mkdir()
    with pytest.raises(WorkspaceError, match=rf"cannot hand the checkout to build user "
                       rf"{build_user.name}: the unpacking as {build_user.name} failed "
                       r"\(exit code 1\): mktemp: .*Permission denied"):  # fmt: skip
        build_user.hand_over(clone, scratch)
    assert build_user.processes() == []


@pytest.mark.parametrize(
    ("options", "hidden"),
    [("rw", False), ("rw,hidepid=0", False), ("rw,hidepid=2", True),
     ("rw,hidepid=invisible", True), ("rw,hidepid=off", False)],
)  # fmt: skip
def test_a_proc_that_hides_other_users_processes_is_noticed(options: str, hidden: bool):
    mountinfo = f"22 27 0:21 / /proc rw,relatime - proc proc {options}\n"
    assert builduser.proc_hides_processes(mountinfo) is hidden


# --- a runner that is not root, with the sudo rule of the README -----------------------

#: The sudo rule as README.rst gives it: an indented line of a literal block.
README_RULE = re.compile(r"^    (\S+) ALL=\((\S+)\) NOPASSWD: (.+)$", re.MULTILINE)


def readme_sudo_rule(runner: str, build_user: str) -> str:
    """The README's rule for these users (the README and this test cannot drift)."""
    readme = (Path(__file__).parent.parent / "README.rst").read_text()
    found = README_RULE.search(readme)
    assert found, "README.rst gives no sudo rule for a runner that is not root"
    assert found.group(0).strip() == builduser.SUDO_RULE.format(
        runner=found.group(1), build_user=found.group(2)
    )  # the rule the runner prints when it is missing is the README's
    return f"{runner} ALL=({build_user}) NOPASSWD: {found.group(3)}"


@pytest.fixture
def runner_user() -> Iterator[pwd.struct_passwd]:
    with new_user("sci-r") as entry:
        yield entry


@pytest.fixture
def sudo_rule(runner_user: pwd.struct_passwd, build_user: BuildUser) -> Iterator[str]:
    """The README's rule in a sudoers file of this test's own, checked by visudo."""
    if not (shutil.which("sudo") and shutil.which("visudo")):
        pytest.skip("sudo is not installed (.ci/run installs it)")
    rule = readme_sudo_rule(runner_user.pw_name, build_user.name)
    name = f"superci-test-{secrets.token_hex(4)}"
    draft = Path("/etc/sudoers.d") / f".{name}"  # sudo ignores names with a dot
    draft.write_text(rule + "\n")
    draft.chmod(0o440)
    checked = subprocess.run(["visudo", "-cf", str(draft)], capture_output=True, text=True)
    try:
        assert checked.returncode == 0, checked.stdout + checked.stderr
        draft.rename(draft.with_name(name))
        yield rule
    finally:
        draft.unlink(missing_ok=True)
        draft.with_name(name).unlink(missing_ok=True)


def closed_folders(paths: list[str]) -> dict[str, set[str]]:
    """Folders on the way to ``paths`` that others may not enter (/root here and on CI),
    each with the names in it that lead to one of ``paths``."""
    closed: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(os.path.realpath(path)).parts
        for depth in range(1, len(parts) - 1):
            folder = os.path.join(*parts[:depth])
            if not os.stat(folder).st_mode & 0o001:
                closed.setdefault(folder, set()).add(parts[depth])
    return closed


def as_runner_user(user: pwd.struct_passwd, env: dict[str, str], hold: Path) -> list[str]:
    """What runs this interpreter and superci as ``user``, with exactly ``env`` (each step
    execs the next: signals reach the program), within :func:`in_reach`."""
    drop = [
        "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
        "env", "-i", *(f"{key}={value}" for key, value in env.items()),
    ]  # fmt: skip
    return in_reach(drop, hold)


def in_reach(then: list[str], hold: Path) -> list[str]:
    """What runs ``then`` (a prefix that execs the program that follows it) where other
    users may run this interpreter, pytest and superci: when a folder on the way to them
    is closed to others, in a mount namespace of its own where that folder is a tmpfs
    showing only the ways to them (the machine's folders keep their modes); ``hold``: a
    folder for the namespace's mounts."""
    import click
    import git as gitpython

    import superci

    modules = (superci, click, gitpython, pytest)
    needed = [sys.executable, sys.prefix, sys.base_prefix, *sys.path,
              *(os.path.dirname(m.__file__ or "") for m in modules)]  # fmt: skip
    closed = closed_folders([path for path in needed if path and os.path.exists(path)])
    if not closed:
        return then
    steps = ["set -e"]
    for i, (folder, names) in enumerate(sorted(closed.items())):  # outer folders first
        keep, at = shlex.quote(str(hold / str(i))), shlex.quote(folder)
        steps += [f"mkdir -p {keep}", f"mount --bind {at} {keep}",
                  f"mount -t tmpfs -o mode=0711 superci-test {at}"]  # fmt: skip
        for name in names:
            inner, original = shlex.quote(f"{folder}/{name}"), f"{keep}/{shlex.quote(name)}"
            make = f"mkdir {inner}" if os.path.isdir(f"{folder}/{name}") else f"touch {inner}"
            steps += [make, f"mount --rbind {original} {inner}"]
    steps.append('exec "$@"')
    script = "\n".join(steps)
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
            "sh", *then]  # fmt: skip


@pytest.fixture
def runner_launch(runner_user: pwd.struct_passwd, open_folder: Path) -> Iterator[list[str]]:
    """How to start superci as the runner user (skips, saying why, where it cannot)."""
    gitconfig = open_folder / "runner-gitconfig"
    gitconfig.write_text("[safe]\n\tdirectory = *\n")  # the test's repositories are root's
    gitconfig.chmod(0o644)
    env = {
        "PATH": os.environ.get("PATH", os.defpath), "HOME": runner_user.pw_dir,
        "GIT_CONFIG_GLOBAL": str(gitconfig), "GIT_CONFIG_NOSYSTEM": "1",
        "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    with hold_folder() as hold:
        launch = as_runner_user(runner_user, env, hold)
        probe = subprocess.run(
            [*launch, sys.executable, "-c", "import superci.cli, superci.runner"],
            capture_output=True, text=True, timeout=60, cwd=open_folder,
        )  # fmt: skip
        if probe.returncode != 0:  # e.g. no mount namespace for a closed /root
            how = "directly" if launch[0] == "setpriv" else "in a mount namespace"
            pytest.skip(f"NOT TESTED: a runner that is not root; user {runner_user.pw_name} "
                        f"cannot run {sys.executable} with superci {how} here: "
                        f"{probe.stderr.strip()[-300:]}")  # fmt: skip
        yield launch


@contextlib.contextmanager
def hold_folder() -> Iterator[Path]:
    """A folder for the mounts of :func:`in_reach`'s namespaces, removed afterwards."""
    hold = Path(tempfile.mkdtemp(prefix="superci-hold-"))
    try:
        yield hold
    finally:  # rmdir, never rmtree: were a mount of the namespace here, it stays whole
        for mountpoint in hold.iterdir():
            with contextlib.suppress(OSError):
                mountpoint.rmdir()
        with contextlib.suppress(OSError):
            hold.rmdir()


def runners_files(folder: Path, user: pwd.struct_passwd) -> tuple[Repo, Path, Path]:
    """An upstream repository (root's), and the runner user's clone of it and token."""
    upstream = Repo(folder / "upstream")
    upstream.commit({"README": "hello"})
    clone = upstream.clone(folder / "clone")
    token = folder / "token"
    token.write_text(secrets.token_hex(16))
    token.chmod(0o600)
    for path in (clone, *clone.rglob("*"), token):
        os.lchown(path, user.pw_uid, user.pw_gid)
    return upstream, clone, token


def sudo_runner(
    superci: Superci, clone: Path, token: Path, build_user: BuildUser, open_folder: Path,
    runner_launch: list[str],
) -> Process:  # fmt: skip
    """The runner ``r-sudo``, run as the runner user (not root) with ``build_user``, once
    it has registered."""
    runner = Process(
        ["runner", "--dispatcher-server", superci.address, "--name", "r-sudo",
         "--heartbeat-interval", "0.2", str(clone), "--token-file", str(token),
         "--build-user", build_user.name, "--kill-grace", "0.5"],
        superci.root / "r-sudo.log", open_folder, runner_launch,
    )  # fmt: skip
    superci.processes.append(runner)
    runner.wait_for_log("registered with the dispatcher")
    return runner


def test_a_runner_that_is_not_root_without_the_sudo_rule_refuses_and_prints_the_rule(
    runner_launch: list[str], runner_user: pwd.struct_passwd, build_user: BuildUser,
    open_folder: Path,
):  # fmt: skip
    _, clone, _ = runners_files(open_folder, runner_user)
    refused = subprocess.run(
        [*runner_launch, sys.executable, "-m", "superci", "runner", "--build-user",
         build_user.name, str(clone)],
        capture_output=True, text=True, timeout=60, cwd=open_folder,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    rule = readme_sudo_rule(runner_user.pw_name, build_user.name)
    assert f"runs as {runner_user.pw_name}, not root" in refused.stderr
    assert rule in refused.stderr


def test_a_runner_with_the_readmes_sudo_rule_runs_builds_as_the_build_user(
    superci: Superci, runner_launch: list[str], runner_user: pwd.struct_passwd,
    build_user: BuildUser, sudo_rule: str, open_folder: Path,
):  # fmt: skip
    upstream, clone, token = runners_files(open_folder, runner_user)
    superci.dispatcher(0, "--token-file", str(token))
    runner = sudo_runner(superci, clone, token, build_user, open_folder, runner_launch)
    identity = clone / ".git" / "superci-identity"
    assert identity.stat().st_uid == runner_user.pw_uid
    assert clone.stat().st_mode & 0o777 == 0o700
    assert processes_of(runner_user.pw_uid)  # the runner is not root

    def build(command: str, timeout: str = "") -> tuple[str, dict[str, object], str]:
        sha = upstream.commit({".superci.toml": superci_toml(command) + timeout})
        done = superci.notify(sha, "--token-file", str(token))
        assert done.returncode == 0, done.stderr
        return sha, superci.wait_for_result(sha), superci.output(sha)

    hostile, first, out = build(HOSTILE.format(
        token=token, identity=identity, clone=clone, runner_pid=runner.popen.pid,
    ))  # fmt: skip
    assert first["status"] == "failed", out
    assert f"uid={build_user.uid}" in out and f"USER={build_user.name}" in out
    secrets_of_runner = (token.read_text(), identity.read_text().strip())
    for forbidden in ("READ-TOKEN", "READ-IDENTITY", "WROTE-GIT", "WROTE-CONFIG",
                      "SUPERCI_TOKEN", *secrets_of_runner):  # fmt: skip
        assert forbidden not in out
    assert "CANNOT-SIGNAL" in out and "kill: Operation not permitted" in out
    assert not (clone / ".git" / "hooks" / "pre-commit").exists()
    assert processes_of(build_user.uid) == []  # the nohup sleep went with the build

    _, second, out = build("test ! -e planted && id -u")
    assert second["status"] == "passed", out
    assert f"\n{build_user.uid}\n" in out

    chosen = upstream.commit({".superci.toml": "", "pytest.ini": "[pytest]\n",
                              "tests/test_one.py": "def test_one():\n    pass\n"})  # fmt: skip
    assert superci.notify(chosen, "--token-file", str(token)).returncode == 0
    pytest_run = superci.wait_for_result(chosen)  # the tool asked for, its report read
    assert pytest_run["status"] == "passed", superci.output(chosen)
    assert pytest_run["tests"]["passed"] == 1, pytest_run
    assert 'name="test_one"' in (superci.results / chosen / "junit.xml").read_text()

    _, timed_out, out = build("trap '' TERM; (setsid sleep 300 &); sleep 300", "timeout = 1\n")
    assert timed_out["status"] == "timeout", out
    assert processes_of(build_user.uid) == []

    def started(command: str) -> str:
        """A commit whose build runs ``command`` after printing STARTED-2 (the command
        line superci prints does not hold that)."""
        sha = upstream.commit({".superci.toml": superci_toml(f"echo STARTED-$((1+1)); {command}")})
        assert superci.notify(sha, "--token-file", str(token)).returncode == 0
        log = superci.results / sha / "output.log"
        wait_until(lambda: "STARTED-2" in (file_text(log) or ""), what="the build to start")
        return sha

    cancelled = started("trap '' TERM; nohup sleep 300 >/dev/null 2>&1 & sleep 300")
    cancel = subprocess.run(
        [sys.executable, "-m", "superci", "cancel", "--dispatcher-server", superci.address,
         "--token-file", str(token), cancelled],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert superci.wait_for_result(cancelled)["status"] == "cancelled"
    assert processes_of(build_user.uid) == []

    _, last, out = build("id -u")
    assert last["status"] == "passed", out  # the next commit's verdict is its own

    started("nohup sleep 300 >/dev/null 2>&1 & sleep 300")
    runner.kill()  # SIGKILL: its guard, not root either, ends the build user's processes
    wait_until(lambda: processes_of(build_user.uid) == [], what="the build user's end")
