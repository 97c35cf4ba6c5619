"""superci up's decisions about where its files go and whether its port is free."""

import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from superci.errors import ConfigError
from superci.up import check_port_free, default_work_folder, exclude_from_git, first_free_port


def test_the_work_folder_is_under_xdg_state_home_one_per_repository_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    first = default_work_folder(Path("/home/me/project"))
    other = default_work_folder(Path("/home/me/elsewhere/project"))

    assert first.parent == tmp_path / "state" / "superci" / "up"
    assert first.name.startswith("project-") and other.name.startswith("project-")
    assert first != other
    assert default_work_folder(Path("/home/me/project")) == first


def test_the_work_folder_falls_back_to_local_state_when_xdg_state_home_is_relative(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    folder = default_work_folder(Path("/srv/project"))
    assert folder.parent == tmp_path / ".local" / "state" / "superci" / "up"


def test_exclude_appends_one_line_once_and_keeps_what_the_file_had(tmp_path):
    exclude = tmp_path / "info" / "exclude"
    exclude.parent.mkdir()
    exclude.write_text("# mine\n*.swp")  # no final newline

    exclude_from_git(exclude, Path(".ci"))
    exclude_from_git(exclude, Path(".ci"))

    assert exclude.read_text() == "# mine\n*.swp\n/.ci/\n"


def test_exclude_creates_a_missing_info_folder(tmp_path):
    exclude = tmp_path / "info" / "exclude"
    exclude_from_git(exclude, Path("build/superci"))
    assert exclude.read_text() == "/build/superci/\n"


def test_a_port_something_listens_on_is_refused_with_what_to_do():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*--port 0 picks a free one"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again once closed
    check_port_free("127.0.0.1", 0)


def test_a_runner_clone_made_anew_frees_its_name_and_a_kept_one_keeps_it(tmp_path):
    from conftest import Repo

    from superci.store import Store
    from superci.up import Stack

    repo = Repo(tmp_path / "project")
    repo.commit({"README": "hello\n"})
    stack = Stack(repo.path, work=tmp_path / "work")
    (stack.work / "clones").mkdir(parents=True)

    def bind() -> None:
        store = Store(stack.state)
        store.runner_seen("runner-1", "box", 1, 1.0, identity="d" * 64)
        store.close()

    def identity_of_runner_1() -> str | None:
        store = Store(stack.state)
        try:
            known = store.runner("runner-1")
        finally:
            store.close()
        return known.identity if known else None

    bind()
    stack._clone("runner-1", runner=True)  # new clone: no identity file to prove the name
    assert identity_of_runner_1() is None
    bind()
    stack._clone("runner-1", runner=True)  # the same clone, identity file and all
    assert identity_of_runner_1() == "d" * 64


def test_the_web_page_port_is_the_first_free_one_from_the_start_and_stays_held():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        held = first_free_port("127.0.0.1", taken)
        with held:
            assert held.getsockname()[1] > taken
            with socket.socket() as late, pytest.raises(OSError):  # nobody else gets it
                late.bind(("127.0.0.1", held.getsockname()[1]))
        with pytest.raises(ConfigError, match=rf"from {taken} to {taken}.*--web-port"):
            first_free_port("127.0.0.1", taken, tries=1)


@pytest.mark.e2e
def test_up_prints_the_web_page_s_url_first_and_serves_it_past_a_taken_port(tmp_path):
    from conftest import PASSING_TEST, Repo
    from support import wait_until

    repo = Repo(tmp_path / "project")
    sha = repo.commit({"tests/test_math.py": PASSING_TEST}, "Add <b>math</b> tests")
    out = tmp_path / "up.out"
    with socket.socket() as taken, open(out, "w") as stdout:
        taken.bind(("127.0.0.1", 0))  # what the page would have had: some other program's
        taken.listen()
        start = taken.getsockname()[1]
        up = subprocess.Popen(
            [sys.executable, "-m", "superci", "up", "--port", "0", "--runners", "1",
             "--web-port", str(start), "--work", str(tmp_path / "work"), "."],
            stdout=stdout, stderr=subprocess.DEVNULL, cwd=repo.path, start_new_session=True,
        )  # fmt: skip
        try:
            wait_until(lambda: "PASSED" in out.read_text(), what="the first outcome")
            first = out.read_text().splitlines()[0]
            match = re.fullmatch(r"superci: web page at (http://127\.0\.0\.1:(\d+)/)", first)
            assert match is not None, first
            assert int(match.group(2)) > start
            with urllib.request.urlopen(match.group(1), timeout=10) as response:
                page = response.read().decode()
            assert sha[:12] in page and "Add &lt;b&gt;math&lt;/b&gt; tests" in page
            up.send_signal(signal.SIGINT)
            assert up.wait(timeout=30) == 0
        finally:
            if up.poll() is None:
                up.kill()
                up.wait(timeout=10)
