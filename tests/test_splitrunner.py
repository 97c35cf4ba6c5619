"""The runner's side of a split with real test processes: collection through the copied
plugin package, and one participant whose dead test process is started again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from helpers import async_test
from support import eventually
from test_splitrun import pytest_project, sleeper, unittest_project

from superci import splitrunner, testtool
from superci.errors import ConfigError
from superci.execute import Execution, run_command
from superci.split import Split, TestOutcome
from superci.splitclient import COLLECT_ENV, PARTICIPANT_ENV, SOCKET_ENV
from superci.splitrunner import (
    WatchedSource,
    collect,
    command_for,
    plugin_folder,
    runner_of,
    take_part,
)
from superci.splitsource import LocalSplit

#: Bound for one test process of a few short tests, reached only when broken.
PROCESS_LIMIT = 60.0


def base_environment() -> dict[str, str]:
    """The runner's environment without superci on PYTHONPATH: the test process finds only
    the copied plugin package."""
    drop = {"PYTHONPATH", SOCKET_ENV, COLLECT_ENV, PARTICIPANT_ENV}
    return {k: v for k, v in os.environ.items() if k not in drop}


class Commands:
    """Runs each command for real in the project, keeping its output."""

    def __init__(self, project: Path, cancel: asyncio.Event | None = None) -> None:
        self.project, self.cancel = project, cancel
        self.output = bytearray()
        self.commands: list[str] = []

    async def __call__(self, command: str, env: Mapping[str, str]) -> Execution:
        self.commands.append(command)

        async def out(data: bytes) -> None:
            self.output += data

        return await run_command(command, self.project, env, PROCESS_LIMIT, 1.0, out, self.cancel)


async def in_source(tool, run, env, plugins, socket, backend, name):
    """take_part against a batch source of its own on ``socket``."""
    async with WatchedSource(socket, backend) as source:
        return await take_part(tool, run, env, plugins, source, name)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A short private folder (a unix socket path has at most 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sci-runner-") as folder:
        yield Path(folder)


def test_the_plugin_package_imports_without_superci_installed(scratch):
    folder = plugin_folder(scratch)
    code = "import superci, superci.splitpytest, superci.splitunittest; print(superci.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=scratch,
        env={**base_environment(), "PYTHONPATH": str(folder)},
        capture_output=True, text=True, timeout=PROCESS_LIMIT, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == str(folder / "superci" / "__init__.py")


@async_test()
async def test_a_pytest_suite_is_collected_with_its_collection_errors(tmp_path, scratch):
    project = pytest_project(tmp_path, {"test_a.py": sleeper("test_one", 0)
                                              + sleeper("test_two", 0)})  # fmt: skip
    (project / "tests" / "test_broken.py").write_text("this is not python\n")
    run = Commands(project)
    tool = testtool.choose(project)
    found = await collect(tool, run, base_environment(), plugin_folder(scratch),
                          scratch / "ids.json")  # fmt: skip
    assert found.tests == ("tests/test_a.py::test_one", "tests/test_a.py::test_two")
    assert len(found.errors) == 1 and found.errors[0].startswith("tests/test_broken.py")


@async_test()
async def test_a_unittest_suite_is_collected_as_discovery_finds_it(tmp_path, scratch):
    project = unittest_project(tmp_path)
    tool = testtool.choose(project)
    assert tool.name == "unittest"
    found = await collect(tool, Commands(project), base_environment(), plugin_folder(scratch),
                          scratch / "ids.json")  # fmt: skip
    assert found.tests and all(t.startswith("test_") for t in found.tests), found
    assert found.errors == ()


@async_test()
async def test_a_collection_that_writes_no_ids_is_an_error_saying_so(tmp_path, scratch):
    project = pytest_project(tmp_path, {"test_a.py": sleeper("test_one", 0)})
    env = {**base_environment(), "PYTEST_ADDOPTS": "--no-such-option"}
    with pytest.raises(ConfigError, match="pytest collected no test ids"):
        await collect(testtool.choose(project), Commands(project), env, plugin_folder(scratch),
                      scratch / "ids.json")  # fmt: skip


def plant_outside(into: Path) -> None:
    outside = into.parent.parent / "runners-secret"
    outside.write_text('{"tests": ["runner secret"]}')
    into.symlink_to(outside)


def plant_big(into: Path) -> None:
    into.write_text(json.dumps({"tests": ["t"] * 100}))


@pytest.mark.parametrize(
    ("plant", "refused"),
    [(plant_outside, r"leads outside .*; refusing to read it"),
     (lambda into: os.mkfifo(into), "is a FIFO, not a regular file"),
     (plant_big, "bytes, more than the 256 allowed")],
)  # fmt: skip
@async_test()
async def test_collected_ids_the_test_process_made_unsafe_to_read_are_refused_saying_why(
    tmp_path, scratch, monkeypatch, plant, refused
):
    monkeypatch.setattr(splitrunner, "MAX_IDS_BYTES", 256)
    folder = tmp_path / "report"  # the build's: its test process may write there
    folder.mkdir()

    async def planting(command: str, env: Mapping[str, str]) -> Execution:
        plant(Path(env[COLLECT_ENV]))
        return Execution(0, False, False, 0.1)

    tool = testtool.TestTool("pytest", "python -m pytest", "pytest", "chosen by hand")
    with pytest.raises(ConfigError, match=f"pytest collected no usable test ids: .*{refused}"):
        await collect(tool, planting, base_environment(), plugin_folder(scratch),
                      folder / "split-ids.json")  # fmt: skip


def test_the_plugin_package_is_readable_by_others_and_writable_by_the_runner_alone(scratch):
    old = os.umask(0o077)  # a cautious runner's
    try:
        folder = plugin_folder(scratch)
    finally:
        os.umask(old)
    modes = {p.relative_to(folder): p.stat().st_mode & 0o777 for p in folder.rglob("*")}
    assert modes.pop(Path("superci")) == 0o755 and folder.stat().st_mode & 0o777 == 0o755
    assert set(modes) == {Path("superci", m) for m in ("__init__.py", *splitrunner.PLUGIN_MODULES)}
    assert set(modes.values()) == {0o644}


def test_a_tool_superci_cannot_split_is_refused():
    tool = testtool.TestTool("nose", "nosetests", "nose", "chosen by hand")
    with pytest.raises(ConfigError, match="cannot split a suite run by nose"):
        command_for(tool)


KILLER = "def test_kills():\n    os.kill(os.getpid(), 9)\n\n\n"


@async_test()
async def test_a_dead_test_process_is_started_again_and_its_test_fails_alone(tmp_path, scratch):
    files = {"test_a.py": sleeper("test_one", 0) + KILLER + sleeper("test_two", 0)}
    project = pytest_project(tmp_path, files)
    tool, plugins = testtool.choose(project), plugin_folder(scratch)
    found = await collect(tool, Commands(project), base_environment(), plugins,
                          scratch / "ids.json")  # fmt: skip
    split = Split(found.tests, {}, 1)
    run = Commands(project)
    took = await asyncio.wait_for(
        in_source(
            tool, run, base_environment(), plugins, scratch / "s.sock", LocalSplit(split), "r1"
        ),  # fmt: skip
        PROCESS_LIMIT,
    )
    assert split.done, run.output.decode(errors="replace")
    assert took.problem == ""
    names = [who for who, _ in took.launches]
    assert names[0] == "r1.1" and len(names) >= 3  # died twice on the killer, then ended
    assert all(e.exit_code not in (0, None) for _, e in took.launches[:2])
    outcomes = {t: r.outcome for t, r in split.results.items()}
    assert outcomes == {
        "tests/test_a.py::test_one": TestOutcome.PASSED,
        "tests/test_a.py::test_kills": TestOutcome.ERROR,
        "tests/test_a.py::test_two": TestOutcome.PASSED,
    }
    assert "died while running it, 2 times" in split.results["tests/test_a.py::test_kills"].message


@async_test()
async def test_a_test_process_that_never_joins_is_not_started_again(tmp_path, scratch):
    project = pytest_project(tmp_path, {"test_a.py": sleeper("test_one", 0)})
    split = Split(["tests/test_a.py::test_one"], {}, 1)
    env = {**base_environment(), "PYTEST_ADDOPTS": "--no-such-option"}
    took = await in_source(
        testtool.choose(project), Commands(project), env, plugin_folder(scratch),
        scratch / "s.sock", LocalSplit(split), "r1",
    )  # fmt: skip
    assert len(took.launches) == 1
    assert "without taking part in the split" in took.problem
    assert not split.done and split.participants == ()


@async_test()
async def test_a_cancelled_participant_is_not_started_again_and_hands_its_batch_back(
    tmp_path, scratch
):
    files = {"test_a.py": sleeper("test_slow", 30) + sleeper("test_two", 0)}
    project = pytest_project(tmp_path, files)
    split = Split(["tests/test_a.py::test_slow", "tests/test_a.py::test_two"], {}, 1)
    backend, cancel = LocalSplit(split), asyncio.Event()
    run = Commands(project, cancel)
    part = asyncio.ensure_future(in_source(
        testtool.choose(project), run, base_environment(), plugin_folder(scratch),
        scratch / "s.sock", backend, "r1",
    ))  # fmt: skip
    try:
        await eventually(lambda: split.held("r1.1"), PROCESS_LIMIT, "a batch handed out")
        cancel.set()
        took = await asyncio.wait_for(part, PROCESS_LIMIT)
    finally:
        part.cancel()
    assert took.problem == "its test process was stopped" and len(took.launches) == 1
    assert split.participants == () and split.results == {}


def test_a_participant_is_named_after_its_runner_and_launch():
    assert runner_of("r1.2") == "r1" and runner_of("ci.box.3") == "ci.box"
