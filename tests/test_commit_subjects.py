"""A commit's subject and author, carried from whoever has git (observer, ``notify`` in a
clone, the runner that checks it out) to the store, ``status``, ``show``, result.json
and the web page, where they are text, never markup."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import git as gitpython
import pytest
from conftest import PASSING_TEST, Repo, Superci
from helpers import FakeRunner, Harness, async_test
from support import WAIT, wait_until

from superci import protocol
from superci.gitname import Description, describe
from superci.status import BuildStatus
from superci.store import MIGRATIONS, Store

SHA = "5e" * 20
OTHER = "0f" * 20
HOSTILE = "<script>alert(1)</script> & friends"


# --- the parts ----------------------------------------------------------------------------


def test_git_describes_a_commit_by_its_first_line_and_author_cut_to_the_protocol_s_bounds(
    repo: Repo,
):
    long = "Make the parser accept empty input " * 10
    sha = repo.commit({"a.txt": "1"}, f"{long}\n\nThe body is not the subject.")
    described = describe(gitpython.Repo(repo.path), sha)
    assert described is not None
    assert described.author == "Test Author"
    assert len(described.subject) == protocol.MAX_SUBJECT and described.subject.endswith("…")
    assert described.subject.startswith("Make the parser accept empty input Make")
    assert describe(gitpython.Repo(repo.path), "1" * 40) is None  # a commit git lacks


def test_a_database_from_before_subjects_opens_and_takes_them(tmp_path: Path):
    path = tmp_path / "superci.db"
    old = sqlite3.connect(path)
    MIGRATIONS[0](old)  # schema 1, as the release before wrote it
    old.execute("PRAGMA user_version = 1")
    old.execute(
        "INSERT INTO builds (sha, branch, status, queued_at) VALUES (?, 'main', 'queued', 1.0)",
        (SHA,),
    )
    old.commit()
    old.close()

    store = Store(path)
    try:
        before = store.latest_for(SHA)
        assert before is not None and (before.subject, before.author) == (None, None)
        store.describe(before.id, "Fix the parser", "Ada")
        store.describe(before.id, "another subject", "someone else")  # the first one stands
        after = store.latest_for(SHA)
        assert after is not None and (after.subject, after.author) == ("Fix the parser", "Ada")
        new = store.add_build(OTHER, "main", 2.0, "Add tests", "Grace")
        assert store.get(new.id) == new
    finally:
        store.close()


# --- through the dispatcher -----------------------------------------------------------------


@async_test()
async def test_what_the_submitter_says_is_shown_and_the_runner_fills_in_what_it_did_not(
    tmp_path: Path,
):
    async with Harness(tmp_path) as h:
        assert h.address is not None and h.dispatcher is not None
        said = Description(HOSTILE, "Ada <ada@example.com>")
        from superci import client

        await client.submit_async(h.address, SHA, "main", described=said)
        await h.submit(OTHER, "main")  # a full id from outside a clone: nothing said
        status = json.loads(h.dispatcher.query(protocol.Query(what="status")).document)
        by_sha = {b["sha"]: b for b in status["builds"]}
        assert (by_sha[SHA]["subject"], by_sha[SHA]["author"]) == (HOSTILE, said.author)
        assert (by_sha[OTHER]["subject"], by_sha[OTHER]["author"]) == (None, None)

        runner, _ = await FakeRunner.connect(h.address, "runner-1")
        for _ in range(2):
            build = await runner.expect(protocol.Build)
            await runner.result(build, "passed", subject="the runner's view", author="Runner")
        await h.results.wait(SHA)
        await h.results.wait(OTHER)
        await runner.close()

        shown = json.loads(h.dispatcher.query(protocol.Query(what="show", commit=SHA)).document)
        assert (shown["subject"], shown["author"]) == (HOSTILE, said.author)  # as submitted
        filled = h.result_json(OTHER)
        assert filled is not None
        assert (filled["subject"], filled["author"]) == ("the runner's view", "Runner")
        record = h.dispatcher.store.latest_for(OTHER)
        assert record is not None and record.subject == "the runner's view"

        await h.submit(OTHER, "main", rebuild=True)  # a rebuild keeps what is known
        again = h.dispatcher.store.latest_for(OTHER)
        assert again is not None and again.id != record.id
        assert (again.status, again.subject) == (BuildStatus.QUEUED, "the runner's view")


@async_test()
async def test_the_web_page_and_its_json_show_a_hostile_subject_as_text(tmp_path: Path):
    async with Harness(tmp_path) as h:
        assert h.address is not None and h.dispatcher is not None
        from superci import client

        said = Description(HOSTILE, "<b>Mallory</b>")
        await client.submit_async(h.address, SHA, "main", described=said)
        address = await h.dispatcher.start_web("127.0.0.1", 0)
        base = f"http://127.0.0.1:{address.port}"
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with aiohttp.ClientSession(base, timeout=timeout) as session:
            for path in ("/", f"/commit/{SHA[:7]}"):
                async with session.get(path) as response:
                    page = await response.text()
                assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends" in page
                assert "&lt;b&gt;Mallory&lt;/b&gt;" in page
                assert "<script>" not in page and "<b>Mallory" not in page
            async with session.get(f"/api/commit/{SHA}") as response:
                document = await response.json()
            assert (document["subject"], document["author"]) == (HOSTILE, said.author)
            async with session.get("/api/builds") as response:
                builds = (await response.json())["builds"]
            assert builds[0]["subject"] == HOSTILE


# --- the real programs ------------------------------------------------------------------------


def status_json(superci: Superci) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "superci", "status", "--json",
         "--dispatcher-server", superci.address],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


@pytest.mark.e2e
def test_notify_in_a_clone_says_the_subject_and_the_runner_says_it_for_a_bare_id(
    repo: Repo, superci: Superci, tmp_path: Path
):
    inside = repo.commit({"tests/test_math.py": PASSING_TEST}, "Add <em>math</em> tests")
    outside = repo.commit({"tests/test_more.py": PASSING_TEST}, "Second commit\n\nbody")
    superci.dispatcher()
    in_clone = subprocess.run(
        [sys.executable, "-m", "superci", "notify", "--dispatcher-server", superci.address,
         inside[:10]],
        capture_output=True, text=True, timeout=30, cwd=repo.path,
    )  # fmt: skip
    assert in_clone.returncode == 0, in_clone.stderr
    assert superci.notify(outside).returncode == 0  # from a folder that is no clone

    queued = {b["sha"]: b for b in status_json(superci)["builds"]}
    assert (queued[inside]["subject"], queued[inside]["author"]) == (
        "Add <em>math</em> tests", "Test Author",
    )  # fmt: skip
    assert queued[outside]["subject"] is None
    assert "no runner connected; next in line" in [
        q["waiting"] for q in status_json(superci)["queue"]
    ]

    superci.runner(repo.clone(tmp_path / "runner-a"), "runner-a")
    result = superci.wait_for_result(outside)
    assert (result["subject"], result["author"]) == ("Second commit", "Test Author")
    shown = subprocess.run(
        [sys.executable, "-m", "superci", "show", "--dispatcher-server", superci.address,
         outside],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "subject  Second commit\nauthor   Test Author\n" in shown


@pytest.mark.e2e
def test_the_observer_sends_each_commit_s_subject_and_author(
    repo: Repo, superci: Superci, tmp_path: Path
):
    sha = repo.commit({"a.txt": "1"}, "Observed <i>commit</i>")
    superci.dispatcher()
    superci.observer(repo.clone(tmp_path / "watched"))

    def described() -> tuple[str, str] | None:
        builds = {b["sha"]: b for b in status_json(superci)["builds"]}
        build = builds.get(sha)
        return None if build is None else (build["subject"], build["author"])

    assert wait_until(described, what="the observed build") == (
        "Observed <i>commit</i>", "Test Author",
    )  # fmt: skip
