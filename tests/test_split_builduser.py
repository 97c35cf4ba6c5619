"""A split build on runners that run their builds as build users (``--build-user``): the
real CLI, real users, each test noting who ran it."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_builduser
from conftest import Process, Repo, Superci
from support import wait_until
from test_builduser import hold_folder, in_reach, new_user, runners_files, sudo_runner
from test_split_e2e import SPLIT_WAIT, host_of, junit_cases

from superci.builduser import BuildUser, processes_of

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("useradd"),
    reason="builds as another user need Linux, root and useradd (CI runs as root)",
)

# The fixtures of test_builduser.py used here too: real users, a runner that is not root.
build_user = test_builduser.build_user
open_folder = test_builduser.open_folder
runner_launch = test_builduser.runner_launch
runner_user = test_builduser.runner_user
sudo_rule = test_builduser.sudo_rule

#: A test that notes, in a file of its own in the folder ``marks``, which participant ran
#: it and as which user, then waits (bounded) until a participant of another runner has
#: noted one too, so that every runner surely takes part.
NOTING_TEST = """\
def test_{n}():
    import getpass, os, pathlib, time
    marks = pathlib.Path({marks!r})
    who = [os.environ["SUPERCI_SPLIT_PARTICIPANT"], str(os.getuid()), getpass.getuser()]
    (marks / ".test_{n}").write_text(" ".join(who))
    (marks / ".test_{n}").rename(marks / "test_{n}")
    deadline = time.monotonic() + 30
    while len(set(
        p.read_text().split()[0].rpartition(".")[0] for p in marks.glob("test_*")
    )) < 2:
        assert time.monotonic() < deadline, "no other runner took part"
        time.sleep(0.02)
    time.sleep(0.2)


"""
#: A uid of nobody's, for asking what a build user may run.
SOME_UID = 64997


def noted_suite(marks: Path, tests: list[str]) -> dict[str, str]:
    """A pytest project of ``tests`` split two ways, each noting who ran it in ``marks``."""
    marks.mkdir()
    marks.chmod(0o1777)  # each build user writes its tests' notes here
    return {
        ".superci.toml": "parallel = 2\n",
        "pytest.ini": "[pytest]\n",
        "tests/test_noted.py": "".join(NOTING_TEST.format(n=n, marks=str(marks)) for n in tests),
    }


def assert_noted_by_build_users(
    marks: Path, tests: list[str], users: dict[str, tuple[int, str]]
) -> None:
    """Each test ran, as the build user (uid, name) of the runner of its participant, and
    each runner ran some."""
    notes = {n: (marks / f"test_{n}").read_text().split() for n in tests}
    for n, (participant, uid, user) in notes.items():
        runner = participant.rpartition(".")[0]
        assert (int(uid), user) == users[runner], (n, notes[n])
    assert {note[0].rpartition(".")[0] for note in notes.values()} == set(users)


@pytest.fixture
def build_users() -> Iterator[dict[str, pwd.struct_passwd]]:
    """A build user for each of the runners r1 and r2 (one user per runner: a runner
    ends every process of its build user when a build ends)."""
    with new_user("sci-s1") as first, new_user("sci-s2") as second:
        yield {"r1": first, "r2": second}


@pytest.fixture
def root_launch() -> Iterator[list[str]]:
    """What starts a runner (as root) where its build user may run this interpreter and
    pytest (skips, saying why, where that cannot be)."""
    with hold_folder() as hold:
        launch = in_reach([], hold)
        probe = subprocess.run(
            [*launch, "setpriv", f"--reuid={SOME_UID}", f"--regid={SOME_UID}",
             "--clear-groups", sys.executable, "-c", "import pytest"],
            capture_output=True, text=True, timeout=60, cwd="/",
        )  # fmt: skip
        if probe.returncode != 0:
            pytest.skip(f"NOT TESTED: a build user cannot run {sys.executable} with pytest "
                        f"here: {probe.stderr.strip()[-300:]}")  # fmt: skip
        yield launch


def root_runner(
    superci: Superci, launch: list[str], clone: Path, name: str, user: str, *extra: str
) -> Process:
    runner = Process(
        ["runner", "--dispatcher-server", superci.address, "--name", name,
         "--heartbeat-interval", "0.2", str(clone), "--build-user", user,
         "--kill-grace", "0.5", *extra],
        superci.root / f"{name}.log", superci.root, launch,
    )  # fmt: skip
    superci.processes.append(runner)
    return runner


@pytest.mark.e2e
def test_a_split_build_runs_its_tests_as_each_runners_build_user_and_leaves_nothing_behind(
    repo: Repo, superci: Superci, tmp_path: Path, open_folder: Path,
    build_users: dict[str, pwd.struct_passwd], root_launch: list[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    marks, tests = open_folder / "marks", [f"{n:02}" for n in range(10)]
    sha = repo.commit(noted_suite(marks, tests))
    runners_tmp = open_folder / "tmp"  # where the runners make their folders: only ours
    runners_tmp.mkdir()
    runners_tmp.chmod(0o755)
    monkeypatch.setenv("TMPDIR", str(runners_tmp))
    superci.dispatcher()
    runners = {
        name: root_runner(superci, root_launch, repo.clone(tmp_path / name), name, user.pw_name)
        for name, user in build_users.items()
    }  # fmt: skip
    for process in runners.values():
        process.wait_for_log("registered")
    assert superci.notify(sha, cwd=repo.path).returncode == 0

    result = superci.wait_for_result(sha, SPLIT_WAIT)
    log = superci.output(sha)
    assert result["status"] == "passed", log
    assert result["tests"]["passed"] == 10 and set(result["split"]) == {"r1", "r2"}, result
    assert len(junit_cases(superci, sha)) == 10
    assert "running as build user" in log and "--- end of seat 1: done" in log
    assert_noted_by_build_users(
        marks, tests, {name: (u.pw_uid, u.pw_name) for name, u in build_users.items()}
    )

    for user in build_users.values():  # nothing of the split left running or on disk
        wait_until(lambda u=user: processes_of(u.pw_uid) == [], what=f"{user.pw_name}'s end")
    assert not list(runners_tmp.glob("sci-split-*"))
    for process in runners.values():
        assert process.stop() == 0, process.log
    assert list(runners_tmp.iterdir()) == []  # their scratch folders went with them


@pytest.mark.e2e
def test_a_runner_that_is_not_root_hosts_a_split_as_its_build_user_through_the_sudo_rule(
    superci: Superci, tmp_path: Path, open_folder: Path,
    runner_launch: list[str], runner_user: pwd.struct_passwd, build_user: BuildUser,
    sudo_rule: str, root_launch: list[str],
):  # fmt: skip
    upstream, clone, token = runners_files(open_folder, runner_user)
    marks, tests = open_folder / "marks", [f"{n:02}" for n in range(8)]
    sha = upstream.commit(noted_suite(marks, tests))
    superci.dispatcher(0, "--token-file", str(token))
    sudo_runner(superci, clone, token, build_user, open_folder, runner_launch)
    assert superci.notify(sha, "--token-file", str(token)).returncode == 0
    wait_until(lambda: host_of(superci, sha), SPLIT_WAIT, "the build to start")
    assert host_of(superci, sha) == "r-sudo"  # it hosts: it alone was there

    with new_user("sci-s3") as seat_user:  # a seat, on a runner that is root
        seat = root_runner(superci, root_launch, upstream.clone(tmp_path / "r-root"),
                           "r-root", seat_user.pw_name, "--token-file", str(token))  # fmt: skip
        result = superci.wait_for_result(sha, SPLIT_WAIT)
        log = superci.output(sha)
        assert result["status"] == "passed", log
        assert set(result["split"]) == {"r-sudo", "r-root"}, result
        assert_noted_by_build_users(marks, tests, {
            "r-sudo": (build_user.uid, build_user.name),
            "r-root": (seat_user.pw_uid, seat_user.pw_name),
        })  # fmt: skip
        assert seat.stop() == 0, seat.log
    wait_until(lambda: processes_of(build_user.uid) == [], what="the build user's end")
    left = [p for p in Path(tempfile.gettempdir()).glob("sci-split-*")
            if p.lstat().st_uid == runner_user.pw_uid]  # fmt: skip
    assert left == []
