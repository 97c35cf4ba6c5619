"""Build environments: a real runner makes a virtual environment with uv, runs the
commit's ``install`` in it (offline, from a wheel made here), runs the tests with it first
on PATH, and keeps it in a cache that several runners share.

Every install here is offline: UV_OFFLINE and PIP_NO_INDEX are set, and the only package
installed is ``tinydep``, a wheel this file writes into tmp_path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import PASSING_TEST, Process, Repo, Superci
from helpers import FAST_WATCHDOG, Harness, async_test
from support import eventually, make_wheel, wait_until
from test_builduser import (  # noqa: F401 - fixtures
    build_user,
    open_folder,
    runner_launch,
    runner_user,
    runners_files,
    sudo_rule,
)
from test_runner import BUILD_WAIT, new_runner, running

from superci import client, protocol
from superci.builduser import BuildUser, processes_of
from superci.config import load_build_config, parse_build_config
from superci.environments import EnvCache, EnvKey, InstallFailed, dependency_digest
from superci.errors import ConfigError
from superci.execute import Execution
from superci.installstep import InstallStep, Run
from superci.interpreters import Interpreter, Interpreters, find_interpreters
from superci.runner import RunnerProcess
from superci.settings import RunnerSettings
from superci.tables import result_summary
from superci.workspace import Workspace

#: A test importing the dependency only ``install`` provides.
NEEDS_TINYDEP = (
    "import unittest\n\nimport tinydep\n\n\nclass Dep(unittest.TestCase):\n"
    "    def test_tinydep(self):\n        self.assertEqual(tinydep.VALUE, 42)\n"
)
#: The tests' command: the standard library's, so the environment needs nothing else.
UNITTEST = "python -m unittest discover -v -p 'test_*.py'"
#: Builds that make an environment: uv venv, ensurepip, one pip install, the tests.
ENV_WAIT = 60.0


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No install here may reach the network."""
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    make_wheel(folder, "tinydep", body="VALUE = 42\n")
    return folder


@pytest.fixture
def workspace(repo, tmp_path) -> Workspace:
    repo.commit({"README": "a project\n"}, "start")
    return Workspace.clone(str(repo.path), tmp_path / "runner-clone")


def pip_install(wheels: Path) -> str:
    """The install of tinydep from ``wheels``, offline."""
    return f"pip install --no-index --find-links {shlex.quote(str(wheels))} tinydep"


def superci_toml(wheels: Path, **extra: str) -> str:
    """A .superci.toml installing tinydep from ``wheels`` and running pytest."""
    values = {"install": pip_install(wheels), "command": UNITTEST, **extra}
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def env_runner(h: Harness, workspace: Workspace, cache: Path, **settings):
    return new_runner(h, workspace, settings=RunnerSettings(env_cache=cache, **settings))


def environments(cache: Path) -> list[str]:
    """The environment folders in the cache, complete or not."""
    return sorted(os.listdir(cache / "envs")) if (cache / "envs").exists() else []


# --- with a real runner ------------------------------------------------------------------


@async_test(limit=120)
async def test_a_project_needing_a_dependency_passes_with_install_and_reuses_its_environment(
    tmp_path, repo, workspace, wheels, offline
):
    cache = tmp_path / "envs"
    without = repo.commit({".superci.toml": f"command = {json.dumps(UNITTEST)}\n",
                           "test_dep.py": NEEDS_TINYDEP}, "no install")  # fmt: skip
    first = repo.commit({".superci.toml": superci_toml(wheels)}, "install")
    second = repo.commit({"test_more.py": PASSING_TEST}, "same deps")
    changed = repo.commit({"requirements.txt": "tinydep\n"}, "requirements change")
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        async with running(env_runner(h, workspace, cache)):
            for sha in (without, first, second, changed):
                await h.submit(sha)
                await h.results.wait(sha, ENV_WAIT)

    results = {sha: h.result_json(sha) for sha in (without, first, second, changed)}
    assert results[without]["status"] == "failed", "without install tinydep is missing"
    assert "No module named 'tinydep'" in h.output_log(without).decode()
    assert [results[sha]["status"] for sha in (first, second, changed)] == ["passed"] * 3

    built = h.output_log(first).decode()
    assert "superci: --- install: a new environment" in built
    assert "Successfully installed tinydep-1.0" in built
    assert built.index("--- install: done in") < built.index(f"superci: $ {UNITTEST}")
    assert results[first]["install_seconds"] > 0
    assert results[first]["duration"] >= results[first]["install_seconds"]

    reused = h.output_log(second).decode()
    assert "--- install" not in reused and "Successfully installed" not in reused
    assert "superci: environment reused: Python" in reused
    assert results[second]["install_seconds"] is None

    rebuilt = h.output_log(changed).decode()
    assert "--- install: a new environment" in rebuilt, "a changed requirements.txt rebuilds"
    assert len(environments(cache)) == 2


#: An editable install as ``pip install -e`` makes it: a .pth in site-packages naming
#: the tree's src/ (offline, with no build backend to fetch).
EDITABLE = ("python -c \"import os, site; open(os.path.join(site.getsitepackages()[0], "
            "'proj.pth'), 'w').write(os.path.join(os.getcwd(), 'src'))\"")  # fmt: skip
#: Passes when ``proj`` is the one of the tree the tests run in, with the VALUE given.
IMPORTS_OWN_PROJ = (
    "import os\nimport unittest\n\nimport proj\n\n\nclass Own(unittest.TestCase):\n"
    "    def test_own(self):\n"
    "        self.assertEqual(proj.__file__, os.path.join(os.getcwd(), 'src', 'proj.py'))\n"
    "        self.assertEqual(proj.VALUE, int(open('expected').read()))\n"
)


@async_test(limit=120)
async def test_runners_sharing_a_cache_with_an_editable_install_each_import_their_own_clone(
    tmp_path, repo, workspace, offline
):
    """An editable install names the tree it ran in: another runner's clone gets an
    environment of its own; the same runner's next build reuses its own, and imports the
    code now checked out."""
    cache = tmp_path / "envs"
    toml = superci_toml(tmp_path, install=EDITABLE)
    project = {".superci.toml": toml, "test_own.py": IMPORTS_OWN_PROJ,
               "src/proj.py": "VALUE = 1\n", "expected": "1"}  # fmt: skip
    first = repo.commit(project, "editable")
    other = Workspace.clone(str(repo.path), tmp_path / "other-clone")
    second = repo.commit({"src/proj.py": "VALUE = 2\n", "expected": "2"}, "source change")
    third = repo.commit({"src/proj.py": "VALUE = 3\n", "expected": "3"}, "again")
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        async with running(env_runner(h, workspace, cache)):
            await h.submit(first)
            await h.results.wait(first, ENV_WAIT)
        settings = RunnerSettings(env_cache=cache)
        second_runner = RunnerProcess(h.address, other, "runner-2", settings=settings,
                                      heartbeat_interval=0.2, kill_grace=1.0)  # fmt: skip
        async with running(second_runner):
            for sha in (second, third):
                await h.submit(sha)
                await h.results.wait(sha, ENV_WAIT)

    for sha in (first, second, third):
        assert h.result_json(sha)["status"] == "passed", h.output_log(sha).decode()
    assert "--- install: a new environment" in h.output_log(second).decode(), "its own clone"
    reused = h.output_log(third).decode()
    assert "environment reused" in reused and "--- install" not in reused
    assert len(environments(cache)) == 2


@async_test(limit=120)
async def test_an_install_of_the_project_itself_is_not_reused_by_the_next_commit(
    tmp_path, repo, workspace, offline
):
    """An install of the project's own code from its tree, not editable (here its wheel,
    in the tree: offline, no build backend to fetch) puts the commit's code in the
    environment: the next commit, with only a code change, gets an environment of its own
    and tests its own code."""
    cache = tmp_path / "envs"
    install = "pip install --no-index dist/proj-1.0-py3-none-any.whl"
    needs_value = (
        "import unittest\n\nimport proj\n\n\nclass Own(unittest.TestCase):\n"
        "    def test_value(self):\n"
        "        self.assertEqual(proj.VALUE, int(open('expected').read()))\n"
    )
    make_wheel(repo.path / "dist", "proj", body="VALUE = 1\n")
    first = repo.commit({".superci.toml": superci_toml(tmp_path, install=install),
                         "test_value.py": needs_value, "expected": "1"}, "installed")  # fmt: skip
    make_wheel(repo.path / "dist", "proj", body="VALUE = 2\n")
    second = repo.commit({"expected": "2"}, "code change")
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        async with running(env_runner(h, workspace, cache)):
            for sha in (first, second):
                await h.submit(sha)
                await h.results.wait(sha, ENV_WAIT)

    for sha in (first, second):
        out = h.output_log(sha).decode()
        assert h.result_json(sha)["status"] == "passed", out
        assert "--- install: a new environment" in out
        assert ("install puts the project itself in the environment (not editable: "
                "proj-1.0.dist-info): made for this build only, not kept; use pip install -e "
                "to reuse it") in out  # fmt: skip
    assert environments(cache) == [], "not kept"


@async_test(limit=120)
async def test_an_install_with_uv_pip_uses_the_shared_uv_cache(
    tmp_path, repo, workspace, wheels, offline
):
    cache = tmp_path / "envs"
    install = f"uv pip install --offline --find-links {shlex.quote(str(wheels))} tinydep"
    sha = repo.commit({".superci.toml": superci_toml(wheels, install=install),
                       "test_dep.py": NEEDS_TINYDEP})  # fmt: skip
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        async with running(env_runner(h, workspace, cache)):
            await h.submit(sha)
            result = await h.results.wait(sha, ENV_WAIT)

    assert result["status"] == "passed", h.output_log(sha).decode()
    assert "+ tinydep==1.0" in h.output_log(sha).decode()
    assert any((cache / "uv-cache").iterdir()), "uv kept what it installed in the shared cache"


@async_test(limit=120)
async def test_a_failing_install_is_an_error_showing_its_output_and_leaves_no_environment(
    tmp_path, repo, workspace, wheels, offline
):
    cache = tmp_path / "envs"
    toml = superci_toml(wheels, install="echo installing; pip install --no-index nosuchpkg")
    sha = repo.commit({".superci.toml": toml, "test_x.py": PASSING_TEST})
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        async with running(env_runner(h, workspace, cache)):
            await h.submit(sha)
            result = await h.results.wait(sha, ENV_WAIT)

    assert result["status"] == "error"
    assert result["message"].startswith("install failed (exit code 1)")
    log = h.output_log(sha).decode()
    assert "installing\n" in log and "nosuchpkg" in log, "the install's own output is shown"
    assert "--- install: failed (exit code 1); no environment kept ---" in log
    assert f"superci: $ {UNITTEST}" not in log, "the tests never ran"
    assert environments(cache) == [] and os.listdir(cache / "current") == []


@async_test(limit=120)
async def test_a_build_cancelled_during_its_install_leaves_no_environment(
    tmp_path, repo, workspace, wheels, offline
):
    cache, gate = tmp_path / "envs", tmp_path / "installing"
    install = f"touch {shlex.quote(str(gate))}; sleep 60"
    sha = repo.commit({".superci.toml": superci_toml(wheels, install=install)})
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        async with running(env_runner(h, workspace, cache)):
            await h.submit(sha)
            await eventually(gate.exists, ENV_WAIT, "the install to start")
            assert len(environments(cache)) == 1, "the environment being made"
            await client.request(h.address, protocol.CancelRequest(commit=sha))
            result = await h.results.wait(sha, BUILD_WAIT)

    assert (result["status"], result["message"]) == ("cancelled", "cancelled by request")
    assert "--- install: cancelled; no environment kept ---" in h.output_log(sha).decode()
    assert environments(cache) == []


@pytest.mark.e2e
def test_a_runner_killed_mid_install_leaves_no_environment_its_successor_would_use(
    superci, repo, tmp_path, wheels, monkeypatch
):
    """SIGKILL: the half-made environment is debris, removed by the runner after it."""
    for name, value in (("UV_OFFLINE", "1"), ("PIP_NO_INDEX", "1")):
        monkeypatch.setenv(name, value)
    cache, gate = tmp_path / "envs", tmp_path / "installing"
    stall = f'if [ "$SUPERCI_ATTEMPT" = 1 ]; then touch {shlex.quote(str(gate))}; sleep 60; fi'
    install = f"{stall}; pip install --no-index --find-links {shlex.quote(str(wheels))} tinydep"
    repo.commit({"README": "a project\n"}, "start")
    sha = repo.commit({".superci.toml": superci_toml(wheels, install=install),
                       "test_dep.py": NEEDS_TINYDEP})  # fmt: skip
    clones = {name: repo.clone(tmp_path / name) for name in ("runner-a", "runner-b")}
    superci.dispatcher()
    first = superci.runner(clones["runner-a"], "runner-a", "--env-cache", str(cache))
    first.wait_for_log("registered with the dispatcher")
    superci.notify(sha)
    wait_until(gate.exists, ENV_WAIT, "the install to start")
    [half_made] = environments(cache)
    first.kill()

    second = superci.runner(clones["runner-b"], "runner-b", "--env-cache", str(cache))
    second.wait_for_log("registered with the dispatcher")
    result = superci.wait_for_result(sha, ENV_WAIT * 2)
    assert (result["status"], result["attempt"]) == ("passed", 2), superci.output(sha)
    assert "--- install: a new environment" in superci.output(sha), "nothing half-made reused"
    assert half_made not in environments(cache) and len(environments(cache)) == 1


@async_test(limit=60)
async def test_an_install_past_the_builds_time_limit_is_a_timeout_and_leaves_no_environment(
    tmp_path, repo, workspace, wheels, offline
):
    cache = tmp_path / "envs"
    toml = superci_toml(wheels, install="sleep 60") + "timeout = 2\n"
    sha = repo.commit({".superci.toml": toml})
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        async with running(env_runner(h, workspace, cache)):
            await h.submit(sha)
            result = await h.results.wait(sha, BUILD_WAIT)

    assert result["status"] == "timeout"
    assert result["message"] == "timed out during the install step (limit 2s)"
    assert environments(cache) == []


@async_test(limit=120)
async def test_python_picks_the_interpreter_asked_for(
    tmp_path, repo, workspace, offline, monkeypatch
):
    """A Python of the machine that is not the runner's own, when there is one."""
    own = ".".join(map(str, sys.version_info[:2]))
    others = [v for v in find_interpreters().versions()
              if v != own and tuple(map(int, v.split("."))) >= (3, 8)]  # fmt: skip
    if not others:
        pytest.skip(f"this machine has no Python other than the runner's {own}")
    wanted = others[-1]
    command = "python -c 'import sys; print(\"version\", sys.version)'"
    toml = f'python = "{wanted}"\ncommand = {json.dumps(command)}\nallow_no_tests = true\n'
    sha = repo.commit({".superci.toml": toml})
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        async with running(env_runner(h, workspace, tmp_path / "envs")):
            await h.submit(sha)
            result = await h.results.wait(sha, ENV_WAIT)

    assert result["status"] == "passed", h.output_log(sha).decode()
    assert f"\nversion {wanted}." in h.output_log(sha).decode()


@async_test(limit=120)
async def test_python_picks_a_pyenv_interpreter_and_never_a_shim(
    tmp_path, repo, workspace, offline, monkeypatch
):
    """pyenv's versions folder is looked at; its shims are not run."""
    version = ".".join(map(str, sys.version_info[:3]))
    root = fake_pyenv(tmp_path / "pyenv", version)
    monkeypatch.setenv("PYENV_ROOT", str(root))
    monkeypatch.setenv("PATH", f"{root / 'shims'}{os.pathsep}/usr/bin{os.pathsep}/bin")
    command = 'python -c \'import os, sys; print("version", sys.version, os.environ["PATH"])\''
    toml = f'python = "{version}"\ncommand = {json.dumps(command)}\nallow_no_tests = true\n'
    sha = repo.commit({".superci.toml": toml})
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        async with running(env_runner(h, workspace, tmp_path / "envs")):
            await h.submit(sha)
            result = await h.results.wait(sha, ENV_WAIT)

    log = h.output_log(sha).decode()
    assert result["status"] == "passed", log
    wrapper = root / "versions" / version / "bin" / "python3"
    assert f"--- install: a new environment, Python {version} ({wrapper}) ---" in log
    assert (root / "ran").read_text().strip(), "the wrapper in versions/ was the interpreter"
    assert not (root / "shim-ran").exists(), "a shim is not an interpreter"
    assert f"\nversion {version}" in log
    path = log.split(f"\nversion {version}")[1].splitlines()[0].split()[-1].split(os.pathsep)
    assert path[0].endswith("/bin") and (Path(path[0]) / "python").exists(), "its own first"
    assert os.path.dirname(sys.executable) not in path, "the runner's Python is not on PATH"


@async_test(limit=60)
async def test_a_test_tool_missing_from_the_environment_is_an_error_saying_to_install_it(
    tmp_path, repo, workspace, offline
):
    own = ".".join(map(str, sys.version_info[:2]))
    sha = repo.commit({".superci.toml": f'python = "{own}"\n',
                       "tests/test_plain.py": "def test_x():\n    assert True\n"})  # fmt: skip
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        async with running(env_runner(h, workspace, tmp_path / "envs")):
            await h.submit(sha)
            result = await h.results.wait(sha, ENV_WAIT)

    assert result["status"] == "error"
    assert result["message"].startswith("pytest is not installed for ")
    assert result["message"].endswith(
        "/bin/python: add it to install in .superci.toml, or set command there"
    )


@async_test(limit=60)
async def test_a_python_no_runner_has_waits_uncounted_for_a_runner_that_has_it(
    tmp_path, repo, workspace, offline
):
    """Submitted without its file (so the dispatcher could not know), the build reaches a
    runner that lacks the Python; that runner hands it back rather than failing it."""
    sha = repo.commit({".superci.toml": 'python = "3.99"\n'})
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        async with running(env_runner(h, workspace, tmp_path / "envs")):
            submitted = await h.submit(sha)
            row = await eventually(
                lambda: (r := h.db_build(submitted.build_id)) and r["needs"] != "{}" and r,
                what="the runner to hand the build back with what it needs",
            )
            assert (row["status"], row["lost"], json.loads(row["needs"])) == (
                "queued", 0, {"python": "3.99"},
            )  # fmt: skip
            assert h.dispatcher is not None
            status = json.loads(h.dispatcher.query(protocol.Query(what="status")).document)
            assert status["queue"][0]["waiting"].startswith("no connected runner has python=3.99")


# --- the cache, on its own ------------------------------------------------------------


def key(name: str = "k") -> EnvKey:
    return EnvKey("/usr/bin/python3", "3.11.2", f"install {name}", "files")


def fake_build(log: list[str], exit_code: int = 0):
    """A build that makes a folder look like an environment, and notes each run."""

    async def build(folder: Path) -> Execution:
        log.append(folder.name)
        (folder / "bin").mkdir()
        return Execution(exit_code, False, False, 0.0)

    return build


def never_stopped() -> None:
    return None


@async_test()
async def test_a_failed_build_leaves_nothing_and_the_next_one_builds_again(tmp_path):
    cache, builds = EnvCache(tmp_path, size=3), []
    cache.setup()
    with pytest.raises(InstallFailed) as failed:
        async with cache.use(key(), fake_build(builds, exit_code=2), never_stopped):
            raise AssertionError("a failed build is never used")
    assert failed.value.execution.exit_code == 2
    assert os.listdir(tmp_path / "envs") == [] and os.listdir(tmp_path / "current") == []
    async with cache.use(key(), fake_build(builds), never_stopped) as env:
        assert env.built and os.readlink(tmp_path / "current" / key().digest).endswith(
            env.path.name
        )
    assert len(builds) == 2


@async_test()
async def test_the_least_recently_used_environment_goes_first_beyond_the_size(tmp_path):
    cache, builds = EnvCache(tmp_path, size=2), []
    cache.setup()
    paths = {}
    for n, name in enumerate(("a", "b", "a", "c")):  # b's use is the oldest when c comes
        async with cache.use(key(name), fake_build(builds), never_stopped) as env:
            paths[name] = env.path
            if env.built and name != "c":
                link = tmp_path / "current" / key(name).digest  # its time: its last use
                os.utime(link, (1e9 + n, 1e9 + n), follow_symlinks=False)  # long ago, in order
    assert len(builds) == 3, "a was reused"
    assert not paths["b"].exists() and paths["a"].exists() and paths["c"].exists()
    assert sorted(os.listdir(tmp_path / "current")) == sorted([key("a").digest, key("c").digest])


@async_test()
async def test_an_environment_in_use_is_not_evicted(tmp_path):
    cache, builds = EnvCache(tmp_path, size=1), []
    cache.setup()
    async with cache.use(key("a"), fake_build(builds), never_stopped) as a:
        async with cache.use(key("b"), fake_build(builds), never_stopped) as b:
            assert a.path.exists() and b.path.exists(), "a is held by the build using it"
        cache.tidy(keep=key("a").digest)
        assert not b.path.exists(), "b beyond the size, and no longer used"


@async_test()
async def test_debris_of_a_killed_build_is_removed_once_nobody_holds_its_key(tmp_path):
    cache = EnvCache(tmp_path, size=3)
    cache.setup()
    debris = tmp_path / "envs" / f"{key().digest}-deadbeef"
    (debris / "bin").mkdir(parents=True)
    cache.tidy()
    assert not debris.exists()
    assert os.listdir(tmp_path / "locks") == [], "nor the lock of a key with no environment"


def test_two_runner_processes_asking_for_the_same_environment_build_it_once(tmp_path):
    """Real processes, real flock: the second waits for the first, then reuses."""
    gate, log = tmp_path / "gate", tmp_path / "builds.log"
    script = textwrap.dedent(f"""\
        import asyncio, pathlib, sys
        from superci.environments import EnvCache, EnvKey
        from superci.execute import Execution

        root, gate, log = pathlib.Path({str(tmp_path / "cache")!r}), pathlib.Path(
            {str(gate)!r}), pathlib.Path({str(log)!r})
        said = set()

        def say(what):
            if what not in said:
                said.add(what)
                with open(log, "a") as f:
                    f.write(sys.argv[1] + " " + what + "\\n")

        async def build(folder):
            say("builds")
            while not gate.exists():
                await asyncio.sleep(0.01)
            (folder / "bin").mkdir()
            return Execution(0, False, False, 0.0)

        def stopped():
            say("waits")

        async def main():
            cache = EnvCache(root, 3)
            cache.setup()
            async with cache.use(EnvKey("p", "3", "i", "f"), build, stopped) as env:
                say(f"uses {{env.path.name}} built={{env.built}}")

        asyncio.run(main())
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.Popen([sys.executable, "-c", script, "one"], env=env)
    wait_until(lambda: log.exists() and "one builds" in log.read_text(), 30, "one to build")
    second = subprocess.Popen([sys.executable, "-c", script, "two"], env=env)
    wait_until(lambda: "two waits" in log.read_text(), 30, "two to wait for one's lock")
    gate.touch()
    assert (first.wait(30), second.wait(30)) == (0, 0)

    lines = log.read_text().splitlines()
    assert [line for line in lines if "builds" in line] == ["one builds"]
    uses = sorted(line.split()[2:] for line in lines if " uses " in line)
    assert uses[0][0] == uses[1][0], "both use the one environment"
    assert sorted(u[1] for u in uses) == ["built=False", "built=True"]


# --- what keys an environment ---------------------------------------------------------


def test_the_dependency_files_key_the_environment_and_install_files_overrides_them(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "requirements-dev.txt").write_text("pytest\n")
    (tmp_path / "notes.txt").write_text("not a dependency file\n")
    before = dependency_digest(tmp_path, None)
    (tmp_path / "notes.txt").write_text("changed\n")
    assert dependency_digest(tmp_path, None) == before
    (tmp_path / "requirements-dev.txt").write_text("pytest>=8\n")
    assert dependency_digest(tmp_path, None) != before
    only = dependency_digest(tmp_path, ["notes.txt"])
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    assert dependency_digest(tmp_path, ["notes.txt"]) == only


def test_a_dependency_file_leading_out_of_the_checkout_is_refused(tmp_path):
    (tmp_path / "outside.txt").write_text("secret\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "requirements.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(ConfigError, match=r"dependency file .*requirements.txt leads outside"):
        dependency_digest(tree, None)


@pytest.mark.parametrize(
    ("toml", "error"),
    [
        ('python = ["3.11", "3.12"]\n', "a list of versions is a matrix"),
        ('python = "3"\n', "'python' must be a version such as \"3.12\""),
        ("python = 3.12\n", "'python' must be a version"),
        ('install = ""\n', "'install' must be a non-empty string"),
        ('install_files = "requirements.txt"\n', "'install_files' must be a list"),
        ('install_files = ["../secrets"]\n', "'install_files' must stay inside the repository"),
        ('instal = "pip install ."\n', "unknown key 'instal', did you mean 'install'?"),
    ],
)
def test_bad_environment_settings_are_refused_naming_the_key(tmp_path, toml, error):
    (tmp_path / ".superci.toml").write_text(toml)
    with pytest.raises(ConfigError, match=None) as refused:
        load_build_config(tmp_path)
    assert error in str(refused.value)


def test_environment_settings_are_read(tmp_path):
    (tmp_path / ".superci.toml").write_text(
        'install = "pip install -e .[test]"\npython = "3.12"\ninstall_files = ["req/*.txt"]\n'
    )
    config = load_build_config(tmp_path)
    assert (config.install, config.python, config.install_files) == (
        "pip install -e .[test]", "3.12", ("req/*.txt",)
    )  # fmt: skip
    assert config.wants_environment


# --- the machine's Pythons ------------------------------------------------------------


def fake_pyenv(root: Path, version: str) -> Path:
    """A pyenv root whose versions/VERSION is a wrapper of this interpreter (noting each
    run in root/ran), and whose shims only note that they ran (as a shim that is not an
    interpreter would fail)."""
    wrapper = root / "versions" / version / "bin" / "python3"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\necho x >> {root / "ran"}\nexec {sys.executable} "$@"\n')
    shim = root / "shims" / f"python{version.rsplit('.', 1)[0]}"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\ntouch {root / 'shim-ran'}\nexit 127\n")
    for script in (wrapper, shim):
        script.chmod(0o755)
    return root


def test_interpreters_are_found_on_path_and_in_pyenv_by_asking_each_its_version(tmp_path):
    version = ".".join(map(str, sys.version_info[:3]))
    minor = version.rsplit(".", 1)[0]
    root = fake_pyenv(tmp_path / "pyenv", version)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3.99").write_text("#!/bin/sh\necho not a python\n")  # lies by its name
    (bin_dir / "python3.99").chmod(0o755)
    (bin_dir / f"python{minor}").symlink_to(sys.executable)
    environ = {"PATH": f"{root / 'shims'}{os.pathsep}{bin_dir}", "PYENV_ROOT": str(root),
               "HOME": str(tmp_path)}  # fmt: skip
    found = find_interpreters(environ, uv=str(tmp_path / "no-uv"), include_own=False)

    assert found.find(minor).path == bin_dir / f"python{minor}", "PATH first"
    assert found.find(version) == found.find(minor)
    assert found.find("3.99") is None
    assert found.versions() == [minor]
    assert not (root / "shim-ran").exists()
    alone = find_interpreters(
        {**environ, "PATH": ""}, uv=str(tmp_path / "no-uv"), include_own=False
    )
    assert alone.find(minor).path == root / "versions" / version / "bin" / "python3"


def test_interpreters_uv_knows_are_found_too(tmp_path):
    """uv finds ``python3`` on PATH, which the python3.X scan leaves to it."""
    from uv import find_uv_bin

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    environ = {"PATH": str(bin_dir), "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "none"),
               "UV_PYTHON_INSTALL_DIR": str(tmp_path / "uv-pythons")}  # fmt: skip
    found = find_interpreters(environ, uv=find_uv_bin(), include_own=False)
    version = ".".join(map(str, sys.version_info[:3]))
    assert found.find(version) is not None, found.as_dict()


def test_finding_interpreters_is_bounded_by_its_timeout(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3.98").write_text("#!/bin/sh\nsleep 30\n")
    (bin_dir / "python3.98").chmod(0o755)
    started = time.monotonic()
    environ = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    found = find_interpreters(environ, uv=str(tmp_path / "no-uv"), timeout=0.5, include_own=False)
    assert found.versions() == []
    assert time.monotonic() - started < 10, "its grandchild (sleep) is killed too"


# --- as a build user ------------------------------------------------------------------

#: Tests with real users: root makes them (CI runs as root).
with_real_users = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("useradd"),
    reason="builds as another user need Linux, root and useradd (CI runs as root)",
)
#: And a Python the build user may run (the runner's may be under /root, closed to it).
with_a_python_for_users = pytest.mark.skipif(
    not os.path.isfile("/usr/bin/python3") or not os.stat("/usr/bin/python3").st_mode & 0o001,
    reason="no /usr/bin/python3 that other users may run",
)


def system_python_version() -> str:
    """The major.minor of /usr/bin/python3: a Python any build user may run."""
    ask = "import sys; print('%d.%d' % sys.version_info[:2])"
    return subprocess.run(["/usr/bin/python3", "-c", ask], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def runner_with_build_user(
    superci: Superci, repo: Repo, user: BuildUser, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """A dispatcher and a root runner of ``repo`` with the build user ``user``, seeing only
    the system's Pythons (those under /root are not the user's), and a wheel ``tinydep``
    in ``folder``, where the user may read it; returns the wheels' folder and the runner's
    environment cache."""
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    monkeypatch.setenv("PYENV_ROOT", str(folder / "no-pyenv"))
    wheels, cache = folder / "wheels", folder / "envs"
    make_wheel(wheels, "tinydep", body="VALUE = 42\n")
    wheels.chmod(0o755)
    repo.commit({"README": "a project\n"}, "start")
    clone = repo.clone(folder / "clone")
    superci.dispatcher(0)
    runner = superci.runner(clone, "r-isolated", "--build-user", user.name,
                            "--env-cache", str(cache), "--kill-grace", "0.5")  # fmt: skip
    runner.wait_for_log("registered with the dispatcher")
    return wheels, cache


@pytest.mark.e2e
@with_real_users
@with_a_python_for_users
def test_a_build_users_install_runs_as_it_into_an_environment_of_its_own(
    superci,
    repo,
    build_user,  # noqa: F811 - the fixture imported above
    open_folder,  # noqa: F811 - the fixture imported above
    monkeypatch,
):
    """With --build-user the environment is made, and used, by the build user."""
    wheels, cache = runner_with_build_user(superci, repo, build_user, open_folder, monkeypatch)
    toml = superci_toml(wheels, python=system_python_version(), command=f"id -u && {UNITTEST}")
    sha = repo.commit({".superci.toml": toml, "test_dep.py": NEEDS_TINYDEP})
    superci.notify(sha)
    result = superci.wait_for_result(sha, 120)

    out = superci.output(sha)
    assert result["status"] == "passed", out
    assert "Successfully installed tinydep-1.0" in out
    assert f"\n{build_user.uid}\n" in out
    [env] = environments(cache)
    assert (cache / "envs" / env).stat().st_uid == build_user.uid
    assert (cache / "current").stat().st_uid == 0, "the links stay the runner's"


@pytest.mark.e2e
@with_real_users
@with_a_python_for_users
def test_a_runner_that_is_not_root_has_its_build_user_make_and_reuse_its_environments(
    superci,
    runner_launch,  # noqa: F811 - the fixtures imported above
    runner_user,  # noqa: F811
    build_user,  # noqa: F811
    sudo_rule,  # noqa: F811
    open_folder,  # noqa: F811
):
    """Through the README's sudo rule alone: no chown, the build user's own folders."""
    upstream, clone, token = runners_files(open_folder, runner_user)
    cache, wheels = open_folder / "cache", open_folder / "wheels"
    cache.mkdir()
    os.chown(cache, runner_user.pw_uid, runner_user.pw_gid)  # as install -d -o would
    make_wheel(wheels, "tinydep", body="VALUE = 42\n")
    superci.dispatcher(0, "--token-file", str(token))
    runner = Process(
        ["runner", "--dispatcher-server", superci.address, "--name", "r-sudo-envs",
         "--heartbeat-interval", "0.2", str(clone), "--token-file", str(token),
         "--build-user", build_user.name, "--env-cache", str(cache), "--kill-grace", "0.5"],
        superci.root / "r-sudo-envs.log", open_folder, runner_launch,
    )  # fmt: skip
    superci.processes.append(runner)
    runner.wait_for_log("registered with the dispatcher")
    assert processes_of(runner_user.pw_uid)  # the runner is not root

    def build(files: dict[str, str]) -> tuple[dict[str, object], str]:
        sha = upstream.commit(files)
        assert superci.notify(sha, "--token-file", str(token)).returncode == 0
        return superci.wait_for_result(sha, ENV_WAIT * 2), superci.output(sha)

    python = system_python_version()
    install = f"echo install-uid=$(id -u); {pip_install(wheels)}"
    toml = superci_toml(wheels, python=python, install=install,
                        command=f"echo command-uid=$(id -u) && {UNITTEST}")  # fmt: skip
    first, out = build({".superci.toml": toml, "test_dep.py": NEEDS_TINYDEP})
    assert first["status"] == "passed", out + runner.log
    assert f"install-uid={build_user.uid}\n" in out and f"command-uid={build_user.uid}\n" in out
    assert f"--- install: a new environment, Python {python}." in out
    assert "Successfully installed tinydep-1.0" in out and first["install_seconds"] > 0

    second, out = build({"test_more.py": PASSING_TEST})
    assert second["status"] == "passed", out
    assert "environment reused" in out and "--- install" not in out, out
    assert second["install_seconds"] is None and f"command-uid={build_user.uid}\n" in out

    failing = superci_toml(wheels, python=python, install="echo install-uid=$(id -u); exit 3")
    third, out = build({".superci.toml": failing})
    assert third["status"] == "error", out
    assert f"install-uid={build_user.uid}\n" in out
    assert "--- install: failed (exit code 3); no environment kept ---" in out

    [env] = environments(cache)  # the failed one left nothing
    [link] = os.listdir(cache / "current")
    assert os.readlink(cache / "current" / link).endswith(f"envs/{env}")
    assert (cache / "envs" / env).lstat().st_uid == build_user.uid
    assert not os.path.lexists(cache / "uv-cache"), "no uv cache one build could plant in"
    assert os.listdir(cache / "manifests") == [link]
    for control in ("", "current", f"current/{link}", "locks", "envs", "manifests",
                    f"manifests/{link}"):  # fmt: skip
        assert (cache / control).lstat().st_uid == runner_user.pw_uid, control
    assert (cache / "envs").stat().st_mode & 0o7777 == 0o1733  # nobody lists it
    assert processes_of(build_user.uid) == []


@with_real_users
@async_test(limit=60)
async def test_nothing_a_build_user_plants_in_its_environments_makes_the_runner_trust_or_remove_it(
    tmp_path,
    build_user,  # noqa: F811 - the fixtures imported above
    open_folder,  # noqa: F811
):
    """A build user that swaps its environment for a symlink to the runner's files: the
    runner builds the key again and the build user removes its symlink, as itself."""
    cache, builds = EnvCache(open_folder / "cache", size=1, owner=build_user), []
    runners = tmp_path / "runners-files"  # what a runner as root must not remove
    runners.mkdir()
    (runners / "precious").write_text("keep me\n")

    async def build_as_user(folder: Path) -> Execution:
        builds.append(folder)
        done = await asyncio.to_thread(build_user.run, ["mkdir", str(folder / "bin")])
        return Execution(done.returncode, False, False, 0.0)

    await asyncio.to_thread(cache.setup)
    async with cache.use(key("a"), build_as_user, never_stopped) as env:
        planted = env.path
    assert planted.lstat().st_uid == build_user.uid and planted.stat().st_mode & 0o777 == 0o755
    plant = f'rm -rf "$0" && ln -s {runners} "$0"'
    swap = await asyncio.to_thread(build_user.run, ["/bin/sh", "-c", plant, str(planted)])
    assert swap.returncode == 0 and planted.is_symlink(), swap.stderr

    async with cache.use(key("a"), build_as_user, never_stopped) as again:
        assert again.built and again.path != planted, "a symlink is no environment"
    async with cache.use(key("b"), build_as_user, never_stopped):
        pass  # beyond the size: a's goes
    assert (runners / "precious").read_text() == "keep me\n"
    assert not os.path.lexists(planted), "the build user removed its symlink"
    assert environments(cache.root) == [builds[-1].name]


@with_real_users
@async_test(limit=60)
async def test_an_entry_a_build_user_plants_in_its_environment_has_it_made_anew(
    build_user,  # noqa: F811 - the fixtures imported above
    open_folder,  # noqa: F811
):
    """A .pth planted in site-packages (or any write) after the environment was made: the
    next use finds it differs from its manifest, says so and makes it anew; an untouched
    one is reused."""
    cache, builds, said = EnvCache(open_folder / "cache", size=3, owner=build_user), [], []
    site = "lib/python3/site-packages"

    async def build_as_user(folder: Path) -> Execution:
        builds.append(folder)
        made = f'mkdir -p "$0/{site}" && echo "VALUE = 42" > "$0/{site}/dep.py"'
        done = await asyncio.to_thread(build_user.run, ["/bin/sh", "-c", made, str(folder)])
        return Execution(done.returncode, False, False, 0.0)

    async def say(line: str) -> None:
        said.append(line)

    await asyncio.to_thread(cache.setup)
    async with cache.use(key("a"), build_as_user, never_stopped, say) as made:
        assert made.built
    async with cache.use(key("a"), build_as_user, never_stopped, say) as again:
        assert not again.built and again.path == made.path, "untouched: reused"
    assert said == [] and (cache.manifests / key("a").digest).stat().st_uid == 0

    plant = f'echo "import os" > "$0/{site}/evil.pth"'
    done = await asyncio.to_thread(build_user.run, ["/bin/sh", "-c", plant, str(made.path)])
    assert done.returncode == 0, done.stderr
    async with cache.use(key("a"), build_as_user, never_stopped, say) as anew:
        assert anew.built and anew.path != made.path
    assert said == [f"environment changed since it was made (by a build?): {site} changed; "
                    "made anew"]  # fmt: skip
    assert not os.path.lexists(made.path), "the changed one is gone"

    touch = f'touch "$0/{site}/dep.py"'  # same content, a new time
    done = await asyncio.to_thread(build_user.run, ["/bin/sh", "-c", touch, str(anew.path)])
    assert done.returncode == 0, done.stderr
    async with cache.use(key("a"), build_as_user, never_stopped, say) as third:
        assert third.built
    assert said[-1].endswith(f"{site}/dep.py changed; made anew")
    assert environments(cache.root) == [third.path.name]


@pytest.mark.e2e
@with_real_users
@with_a_python_for_users
def test_a_build_that_rewrites_its_environment_does_not_decide_the_next_commits_verdict(
    superci,
    repo,
    build_user,  # noqa: F811 - the fixture imported above
    open_folder,  # noqa: F811 - the fixture imported above
    monkeypatch,
):
    """Commit 1's command rewrites the installed tinydep; commit 2, innocent, gets an
    environment made anew and passes; commit 3 reuses it untouched, with no install."""
    wheels, cache = runner_with_build_user(superci, repo, build_user, open_folder, monkeypatch)
    python = system_python_version()
    poison = ("python -c \"import tinydep, pathlib; "
              "pathlib.Path(tinydep.__file__).write_text('VALUE = 0')\"")  # fmt: skip
    toml = superci_toml(wheels, python=python, command=f"{poison} && {UNITTEST}")
    first = repo.commit({".superci.toml": toml, "test_dep.py": NEEDS_TINYDEP})
    superci.notify(first)
    assert superci.wait_for_result(first, 120)["status"] == "failed"

    innocent = repo.commit({".superci.toml": superci_toml(wheels, python=python)})
    superci.notify(innocent)
    result, out = superci.wait_for_result(innocent, 120), superci.output(innocent)
    assert result["status"] == "passed", out
    assert "environment changed since it was made (by a build?): " in out
    assert "/site-packages/tinydep/__init__.py changed; made anew" in out
    assert "Successfully installed tinydep-1.0" in out

    again = repo.commit({"test_more.py": PASSING_TEST})
    superci.notify(again)
    result, out = superci.wait_for_result(again, 120), superci.output(again)
    assert result["status"] == "passed", out
    assert "environment reused" in out and "--- install" not in out
    assert "environment changed" not in out
    assert len(environments(cache)) == 1


@with_real_users
def test_a_cache_whose_folders_are_not_the_runners_is_refused_saying_how_to_make_it(
    build_user,  # noqa: F811 - the fixtures imported above
    open_folder,  # noqa: F811
):
    root = open_folder / "cache"
    (root / "current").mkdir(parents=True)
    os.chown(root / "current", build_user.uid, build_user.gid)  # it could swap the links
    with pytest.raises(ConfigError, match=rf"cannot set up the environment cache {root}: "
                       rf"{root}/current is not a folder of the runner's own. It must be a "
                       rf"folder of the runner's user \(root\) that build user {build_user.name} "
                       rf"may enter; make it with: install -d -m 755 -o root {root}"):  # fmt: skip
        EnvCache(root, 3, build_user).setup()


def closed_program(tmp_path: Path, name: str) -> Path:
    """An executable in a folder other users cannot enter (pytest's tmp_path is closed to
    them): what a build user cannot run, however it is asked."""
    closed = tmp_path / "closed"
    closed.mkdir(exist_ok=True)
    program = closed / name
    program.write_text("#!/bin/sh\nexit 1\n")
    program.chmod(0o755)
    return program


@with_real_users
def test_a_runner_with_a_build_user_announces_only_the_pythons_it_may_run(
    tmp_path,
    build_user,  # noqa: F811 - the fixtures imported above
    open_folder,  # noqa: F811
):
    unreachable, reachable = closed_program(tmp_path, "python3.98"), open_folder / "python3.99"
    reachable.write_text("#!/bin/sh\nexit 1\n")
    reachable.chmod(0o755)
    found = Interpreters([Interpreter(unreachable, "3.98.1"), Interpreter(reachable, "3.99.2")])
    settings = RunnerSettings(env_cache=open_folder / "cache")
    assert InstallStep(settings, None, tmp_path / "r", found).offered().versions() == [
        "3.98", "3.99",
    ]  # fmt: skip
    step = InstallStep(settings, build_user, tmp_path / "r", found)
    assert step.offered().versions() == ["3.99"]


@with_real_users
@async_test(limit=60)
async def test_a_uv_the_build_user_cannot_run_is_said_at_start_and_by_the_build(
    tmp_path,
    build_user,  # noqa: F811 - the fixtures imported above
    open_folder,  # noqa: F811
    caplog,
    monkeypatch,
):
    uv = closed_program(tmp_path, "uv")
    monkeypatch.setattr("superci.installstep.uv_binary", lambda: str(uv))
    with caplog.at_level(logging.WARNING, "superci.installstep"):
        step = InstallStep(RunnerSettings(env_cache=open_folder / "cache"), build_user,
                           tmp_path / "record")  # fmt: skip
    assert f"build user {build_user.name} cannot run uv at {uv}" in caplog.text

    async def say(text: str) -> None:
        pass

    run = Run(open_folder, tmp_path, {"PATH": os.defpath}, time.monotonic() + 30,
              asyncio.Event(), say, say)  # type: ignore[arg-type]  # fmt: skip
    with pytest.raises(ConfigError, match="cannot run uv at .*outside /root"):
        async with step.prepared(parse_build_config('python = "3.11"\n'), run):
            pass


@with_real_users
@async_test(limit=60)
async def test_pythons_the_build_user_cannot_run_are_skipped_saying_so(
    tmp_path,
    build_user,  # noqa: F811 - the fixtures imported above
    open_folder,  # noqa: F811
    caplog,
    monkeypatch,
):
    closed = tmp_path / "closed"  # pytest's tmp_path: closed to other users
    closed.mkdir()
    unreachable, reachable = closed / "python3.99", open_folder / "python3.99"
    for fake in (unreachable, reachable):  # asked only whether the user may run them
        fake.write_text("#!/bin/sh\nexit 1\n")
        fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(closed / "python3"))  # the runner's own
    settings = RunnerSettings(env_cache=open_folder / "cache")
    found = Interpreters([Interpreter(unreachable, "3.99.1"), Interpreter(reachable, "3.99.2")])
    with caplog.at_level(logging.WARNING, "superci.installstep"):
        step = InstallStep(settings, build_user, tmp_path / "record", found)
    assert f"build user {build_user.name} cannot run this runner's Python {closed}" in caplog.text
    assert 'set python = "3.x"' in caplog.text, "the start says what to do"

    usable, skipped = await step.usable()
    assert [i.path for i in usable.all()] == [reachable] and usable.find("3.99") is not None
    assert skipped == [found.all()[0]]
    assert f"builds will not use {unreachable} (Python 3.99.1)" in caplog.text

    said: list[str] = []

    async def say(text: str) -> None:
        said.append(text)

    async def emit(output: bytes) -> None:
        said.append(output.decode(errors="replace"))

    tree = open_folder / "tree"
    tree.mkdir()
    run = Run(tree, tmp_path, {"PATH": os.defpath}, time.monotonic() + 30, asyncio.Event(), say,
              emit)  # fmt: skip
    for toml, message in (
        ('install = "pip install ."\n', rf"build user {build_user.name} cannot run this "
         rf"runner's Python {closed}/python3 .*which a build with no python .* uses: set "
         r'python = "3.x" there to a Python .* can run \(it can run 3.99\)'),
        ('python = "3.99.1"\n', rf"python = '3.99.1' in .superci.toml: build user "
         rf"{build_user.name} cannot run this runner's Python 3.99.1 \({unreachable}: a "
         r"folder on the way is closed to it; it can run 3.99\): install Python 3.99.1 where"),
    ):  # fmt: skip
        (tmp_path / ".superci.toml").write_text(toml)
        with pytest.raises(ConfigError, match=message):
            async with step.prepared(load_build_config(tmp_path), run):
                raise AssertionError("no environment with a Python the build user cannot run")
    assert not (open_folder / "cache").exists(), "nothing made for either"

    (tmp_path / ".superci.toml").write_text('python = "3.99"\n')  # the closed one comes first
    with pytest.raises(InstallFailed):  # the one it may run is only a fake
        async with step.prepared(load_build_config(tmp_path), run):
            raise AssertionError("the fake Python makes no environment")
    assert (f"skipped {unreachable} (Python 3.99.1): build user {build_user.name} cannot run "
            f"it; {reachable} instead") in said  # fmt: skip
    assert any(f"a new environment, Python 3.99.2 ({reachable})" in line for line in said)
    assert environments(open_folder / "cache") == []


def test_show_gives_the_install_time_apart_from_the_duration():
    result = {"sha": "ab" * 20, "branch": "main", "build_id": 3, "status": "passed",
              "message": "tests passed (exit code 0)", "runner": "r", "attempt": 1,
              "duration": 5.25, "install_seconds": 4.0}  # fmt: skip
    lines = result_summary(result).splitlines()
    assert lines[3:5] == ["duration 5.2s", "install  4.0s (of the duration)"]
    assert "install" not in result_summary({**result, "install_seconds": None})
