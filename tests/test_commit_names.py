"""Names people use for a commit — short ids, branch names, git's names in a clone — and
earlier builds of a rebuilt commit, through the real CLI against a real dispatcher."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PASSING_TEST, Repo, Superci, git
from support import wait_until

pytestmark = pytest.mark.e2e

#: Two commit ids that share nine characters (the dispatcher never asks git about them).
TWIN_1 = "abcdef012" + "1" * 31
TWIN_2 = "abcdef012" + "2" * 31
ALONE = "1234567" + "9" * 33


def cli(superci: Superci, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """One client command of the real CLI, run in ``cwd`` (default: outside any clone)."""
    command, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "superci", command, "--dispatcher-server", superci.address, *rest],
        capture_output=True, text=True, timeout=30, cwd=cwd or superci.root,
    )  # fmt: skip


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def shown(superci: Superci, *args: str) -> dict:
    return json.loads(ok(cli(superci, "show", "--json", *args)))


def test_short_ids_and_branch_names_work_for_show_logs_cancel_and_rebuild(superci: Superci):
    superci.dispatcher()  # no runner: every build stays queued until cancelled
    assert "queued" in ok(cli(superci, "notify", ALONE, "--branch", "feature/a"))

    for name in (ALONE[:7], ALONE[:12], ALONE.upper()[:9], "feature/a"):
        document = shown(superci, name)
        assert (document["sha"], document["branch"], document["build_id"]) == (
            ALONE, "feature/a", 1
        )  # fmt: skip
    assert f"commit   {ALONE} (feature/a)" in ok(cli(superci, "show", ALONE[:7]))
    assert ok(cli(superci, "logs", ALONE[:7])) == ""  # queued: no output yet

    assert "build 1 cancelled" in ok(cli(superci, "cancel", ALONE[:7]))
    assert superci.result(ALONE)["status"] == "cancelled"  # type: ignore[index]

    # Outside a clone, the dispatcher resolves a short id or a branch for --rebuild.
    assert f"queued {ALONE} (feature/a) as build 2" in ok(
        cli(superci, "notify", "--rebuild", ALONE[:12])
    )
    assert "build 2 cancelled" in ok(cli(superci, "cancel", "feature/a"))
    assert f"queued {ALONE} (feature/a) as build 3" in ok(
        cli(superci, "notify", "--rebuild", "feature/a")
    )
    assert "build 3 cancelled" in ok(cli(superci, "cancel", ALONE[:12]))

    assert shown(superci, "feature/a")["build_id"] == 3
    for build_id in (1, 2):
        earlier = shown(superci, ALONE[:7], "--build", str(build_id))
        assert (earlier["build_id"], earlier["status"]) == (build_id, "cancelled")
        assert (superci.results / ALONE / "builds" / str(build_id) / "result.json").exists()
    assert superci.result(ALONE)["build_id"] == 3  # type: ignore[index]


def test_an_ambiguous_prefix_lists_the_candidates_and_an_unknown_name_says_so(
    superci: Superci,
):
    superci.dispatcher()
    ok(cli(superci, "notify", TWIN_1, "--branch", "main"))
    ok(cli(superci, "notify", TWIN_2, "--branch", "feature/b"))

    for args in (("show", "abcdef0"), ("logs", "abcdef012"), ("notify", "--rebuild", "abcdef0")):
        done = cli(superci, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "is ambiguous" in done.stderr, done.stderr
        assert f"{TWIN_1[:12]} (main)" in done.stderr
        assert f"{TWIN_2[:12]} (feature/b)" in done.stderr
    cancel = cli(superci, "cancel", "abcdef01")
    assert cancel.returncode == 1
    assert f"{TWIN_1[:12]} (main)" in cancel.stdout
    assert f"{TWIN_2[:12]} (feature/b)" in cancel.stdout
    assert shown(superci, TWIN_2[:10])["branch"] == "feature/b"  # a longer prefix is unique

    for command in ("show", "logs", "cancel"):
        unknown = cli(superci, command, "nope")
        assert unknown.returncode == 1
        assert "no build of nope is known" in unknown.stdout + unknown.stderr
    bad = cli(superci, "show", "../x")
    assert bad.returncode == 1 and "not a commit name: '../x'" in bad.stderr
    missing = cli(superci, "notify", "--rebuild", "feature/none")
    assert missing.returncode == 1 and "no build of feature/none is known" in missing.stderr


@pytest.fixture
def project(repo: Repo) -> dict[str, str]:
    """main: M0 - M1 (tag v1); feature/x: M0 - F. Every commit passes its test."""
    shas = {"M0": repo.commit({"tests/test_math.py": PASSING_TEST}, "M0")}
    git(repo.path, "checkout", "--quiet", "-b", "feature/x")
    shas["F"] = repo.commit({"tests/test_math.py": PASSING_TEST + "# feature\n"}, "F")
    git(repo.path, "checkout", "--quiet", "main")
    shas["M1"] = repo.commit({"tests/test_math.py": PASSING_TEST + "# M1\n"}, "M1")
    git(repo.path, "tag", "v1")
    return shas


def test_git_names_in_a_clone_record_the_commits_branch_and_a_rebuild_keeps_the_first_build(
    repo: Repo, superci: Superci, tmp_path: Path, project: dict[str, str]
):
    feature = project["F"]
    mine = repo.clone(tmp_path / "mine")
    git(mine, "checkout", "--quiet", "feature/x")
    superci.dispatcher()
    superci.runner(repo.clone(tmp_path / "runner-a"), "runner-a", "--timeout", "60")

    assert f"queued {feature} (feature/x) as build 1" in ok(
        cli(superci, "notify", "HEAD", cwd=mine)
    )
    assert superci.wait_for_result(feature)["branch"] == "feature/x"
    assert "already known" in ok(cli(superci, "notify", feature[:7], cwd=mine))
    assert f"queued {project['M1']} (main)" in ok(cli(superci, "notify", "v1", cwd=mine))
    assert superci.wait_for_result(project["M1"])["branch"] == "main"

    first_log = superci.output(feature)
    assert "passing test ran" in first_log
    for name in (feature[:7], feature[:12], "feature/x"):
        assert (shown(superci, name)["build_id"], shown(superci, name)["status"]) == (1, "passed")
        assert ok(cli(superci, "logs", name)) == first_log

    # Rebuild from outside the clone by its short id: the dispatcher knows its branch.
    assert f"queued {feature} (feature/x) as build 3" in ok(
        cli(superci, "notify", "--rebuild", feature[:7])
    )
    wait_until(lambda: (superci.result(feature) or {}).get("build_id") == 3, 60, "the rebuild")

    folder = superci.results / feature
    assert shown(superci, feature[:7])["build_id"] == 3
    first = shown(superci, feature[:7], "--build", "1")
    assert (first["build_id"], first["status"], first["branch"]) == (1, "passed", "feature/x")
    assert "build    1, attempt 1" in ok(cli(superci, "show", "feature/x", "--build", "1"))
    assert json.loads((folder / "builds" / "1" / "result.json").read_text())["build_id"] == 1
    assert (folder / "builds" / "1" / "output.log").read_text() == first_log
    assert ok(cli(superci, "logs", feature[:7], "--build", "1")) == first_log
    assert "passing test ran" in superci.output(feature)  # the newest build's, in place

    other = cli(superci, "show", feature[:7], "--build", "2")  # build 2 is M1's
    assert other.returncode == 1 and f"build 2 is not a build of {feature[:12]}" in other.stderr

    log_mode = stat.S_IMODE((folder / "output.log").stat().st_mode)
    assert stat.S_IMODE((folder / "result.json").stat().st_mode) == log_mode


def test_notify_in_a_clone_refuses_a_name_git_does_not_know_and_a_commit_on_no_branch(
    repo: Repo, superci: Superci, tmp_path: Path, project: dict[str, str]
):
    mine = repo.clone(tmp_path / "mine")
    superci.dispatcher()

    unknown = cli(superci, "notify", "no-such-thing", cwd=mine)
    assert unknown.returncode == 1
    assert "no build of no-such-thing is known" in unknown.stderr
    assert f"nor does git know it in {mine}" in unknown.stderr
    bad = cli(superci, "notify", "HEAD~99", cwd=mine)
    assert bad.returncode == 1
    assert "not a commit name: 'HEAD~99'" in bad.stderr and "git know it in" in bad.stderr

    # A full id git does not have (yet) is sent as it is, as outside a clone.
    assert f"queued {'e' * 40} (main) as build 1" in ok(cli(superci, "notify", "e" * 40, cwd=mine))
    hook = cli(superci, "notify", "d" * 40, "--branch", "release", cwd=mine)
    assert f"queued {'d' * 40} (release) as build 2" in ok(hook)

    git(mine, "checkout", "--quiet", "--detach", "HEAD")
    git(mine, "commit", "--quiet", "--allow-empty", "-m", "on no branch")
    nowhere = cli(superci, "notify", "HEAD", cwd=mine)
    assert nowhere.returncode == 1
    assert "is on no branch of" in nowhere.stderr and "--branch" in nowhere.stderr
    detached = git(mine, "rev-parse", "HEAD")
    told = cli(superci, "notify", "HEAD", "--branch", "hotfix", cwd=mine)
    assert f"queued {detached} (hotfix) as build 3" in ok(told)
