"""A split build on runners that run their builds as build users (``--build-user``): the
real CLI, real users, each test noting who ran it."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Process, Repo, Superci
from support import wait_until
from test_builduser import hold_folder, in_reach, new_user, open_folder  # noqa: F401
from test_split_e2e import SPLIT_WAIT, junit_cases

from superci.builduser import processes_of

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="builds as another user need Linux and root (CI runs as root)",
)

#: A test that notes, in a file of its own in the folder ``marks``, which participant ran
#: it and as which user, then sleeps.
NOTING_TEST = """\
def test_{n}():
    import getpass, os, pathlib, time
    who = [os.environ["SUPERCI_SPLIT_PARTICIPANT"], str(os.getuid()), getpass.getuser()]
    pathlib.Path({marks!r}, "test_{n}").write_text(" ".join(who))
    time.sleep(0.3)


"""


@pytest.fixture
def build_users() -> Iterator[dict[str, pwd.struct_passwd]]:
    """A build user for each of the runners r1 and r2 (one user per runner: a runner
    ends every process of its build user when a build ends)."""
    with new_user("sci-s1") as first, new_user("sci-s2") as second:
        yield {"r1": first, "r2": second}


@pytest.fixture
def in_reach_of_builds(build_users: dict[str, pwd.struct_passwd]) -> Iterator[list[str]]:
    """What starts a runner where its build user may run this interpreter and pytest
    (skips, saying why, where that cannot be)."""
    with hold_folder() as hold:
        launch = in_reach([], hold)
        user = build_users["r1"]
        probe = subprocess.run(
            [*launch, "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
             "--init-groups", sys.executable, "-c", "import pytest"],
            capture_output=True, text=True, timeout=60, cwd="/",
        )  # fmt: skip
        if probe.returncode != 0:
            pytest.skip(f"NOT TESTED: a build user cannot run {sys.executable} with pytest "
                        f"here: {probe.stderr.strip()[-300:]}")  # fmt: skip
        yield launch


@pytest.mark.e2e
def test_a_split_build_runs_its_tests_as_each_runners_build_user_and_leaves_nothing_behind(
    repo: Repo, superci: Superci, tmp_path: Path, open_folder: Path,  # noqa: F811
    build_users: dict[str, pwd.struct_passwd], in_reach_of_builds: list[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    marks = open_folder / "marks"
    marks.mkdir()
    marks.chmod(0o1777)  # each build user writes its tests' notes here
    tests = [f"{n:02}" for n in range(10)]
    sha = repo.commit({
        ".superci.toml": "parallel = 2\n",
        "pytest.ini": "[pytest]\n",
        "tests/test_noted.py": "".join(NOTING_TEST.format(n=n, marks=str(marks)) for n in tests),
    })  # fmt: skip
    runners_tmp = open_folder / "tmp"  # where the runners make their folders: only ours
    runners_tmp.mkdir()
    runners_tmp.chmod(0o755)
    monkeypatch.setenv("TMPDIR", str(runners_tmp))
    superci.dispatcher()
    runners = {}
    for name, user in build_users.items():
        runners[name] = Process(
            ["runner", "--dispatcher-server", superci.address, "--name", name,
             "--heartbeat-interval", "0.2", str(repo.clone(tmp_path / name)),
             "--build-user", user.pw_name, "--kill-grace", "0.5"],
            superci.root / f"{name}.log", superci.root, in_reach_of_builds,
        )  # fmt: skip
        superci.processes.append(runners[name])
    for process in runners.values():
        process.wait_for_log("registered")
    assert superci.notify(sha, cwd=repo.path).returncode == 0

    result = superci.wait_for_result(sha, SPLIT_WAIT)
    log = superci.output(sha)
    assert result["status"] == "passed", log
    assert result["tests"]["passed"] == 10 and set(result["split"]) == {"r1", "r2"}, result
    assert len(junit_cases(superci, sha)) == 10
    assert "running as build user" in log and "--- end of seat 1: done" in log

    notes = {n: (marks / f"test_{n}").read_text().split() for n in tests}
    for n, (participant, uid, user) in notes.items():
        runner = participant.rpartition(".")[0]
        expected = build_users[runner]
        assert (int(uid), user) == (expected.pw_uid, expected.pw_name), (n, notes[n])
    assert {note[0].rpartition(".")[0] for note in notes.values()} == {"r1", "r2"}

    for user in build_users.values():  # nothing of the split left running or on disk
        wait_until(lambda u=user: processes_of(u.pw_uid) == [], what=f"{user.pw_name}'s end")
    assert not list(runners_tmp.glob("sci-split-*"))
    for name, process in runners.items():
        assert process.stop() == 0, process.log
    assert list(runners_tmp.iterdir()) == []  # their scratch folders went with them
