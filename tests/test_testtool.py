"""Which test tool a repository without a command of its own gets, and why."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from superci import defaults, testtool
from superci.testtool import PYTEST_COMMAND, UNITTEST_ANYWHERE_COMMAND, choose, missing_module

UNITTEST_STYLE = (
    "import unittest\n\nclass T(unittest.TestCase):\n    def test_x(self):\n        pass\n"
)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"pytest.ini": "[pytest]\n"}, "pytest.ini configures pytest"),
        ({"conftest.py": ""}, "conftest.py is pytest's"),
        ({"tests/conftest.py": ""}, "tests/conftest.py is pytest's"),
        ({"pyproject.toml": "[tool.pytest.ini_options]\naddopts = '-q'\n"},
         "pyproject.toml has [tool.pytest.ini_options]"),
        ({"setup.cfg": "[metadata]\nname = x\n[tool:pytest]\ntestpaths = tests\n"},
         "setup.cfg has [tool:pytest]"),
        ({"tox.ini": "[tox]\nenvlist = py311\n[pytest]\naddopts = -q\n"}, "tox.ini has [pytest]"),
    ],
)  # fmt: skip
def test_a_repository_that_configures_pytest_gets_pytest(tmp_path, files, reason):
    tool = choose(write(tmp_path, {"tests/test_a.py": UNITTEST_STYLE, **files}))
    assert (tool.name, tool.command, tool.reason) == ("pytest", PYTEST_COMMAND, reason)


@pytest.mark.parametrize(
    ("name", "text", "found"),
    [
        ("tests/test_plain.py", "def test_x():\n    assert 1\n", "def test_x"),
        ("pkg/thing_test.py", "async def test_y():\n    pass\n", "def test_y"),
        ("tests/test_cls.py", "class TestThing:\n    def test_z(self):\n        pass\n",
         "class TestThing"),
        ("tests/test_obj.py", "class TestThing(object):\n    pass\n", "class TestThing"),
    ],
)  # fmt: skip
def test_pytest_style_tests_get_pytest(tmp_path, name, text, found):
    tool = choose(write(tmp_path, {name: text}))
    assert tool.name == "pytest"
    assert tool.reason == f"{name} has pytest-style tests ({found})"


def test_unittest_tests_in_tests_get_the_original_default(tmp_path):
    tool = choose(write(tmp_path, {"tests/test_a.py": UNITTEST_STYLE}))
    assert (tool.name, tool.command) == ("unittest", defaults.TEST_COMMAND)
    assert "tests/ is searched" in tool.reason


def test_without_a_tests_folder_unittest_searches_the_whole_repository(tmp_path):
    tool = choose(write(tmp_path, {"test_a.py": UNITTEST_STYLE}))
    assert (tool.name, tool.command) == ("unittest", UNITTEST_ANYWHERE_COMMAND)
    assert "no tests/ folder" in tool.reason


@pytest.mark.parametrize(
    "files",
    [
        {".git/test_x.py": "def test_x(): pass\n"},
        {".venv/lib/test_x.py": "def test_x(): pass\n"},
        {"myenv/pyvenv.cfg": "", "myenv/lib/test_x.py": "def test_x(): pass\n"},
        {"node_modules/test_x.py": "def test_x(): pass\n"},
        {"tests/helpers.py": "def test_x(): pass\n"},  # not a test file by its name
        {"tests/test_broken.py": "def test_x(:\n"},  # not Python: ignored, not fatal
        {"tests/test_base.py": "class TestBase(Base):\n    pass\n"},  # maybe a TestCase
        {"pytest.ini/readme": ""},  # a folder, not a file
    ],
)
def test_files_outside_the_projects_tests_do_not_choose_pytest(tmp_path, files):
    assert choose(write(tmp_path, {"tests/test_a.py": UNITTEST_STYLE, **files})).name == "unittest"


def test_big_files_are_not_read(tmp_path):
    big = "x = 1\n" * (testtool.MAX_FILE_BYTES // 6 + 1) + "def test_x():\n    pass\n"
    assert choose(write(tmp_path, {"tests/test_big.py": big})).name == "unittest"


def test_only_so_many_files_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(testtool, "MAX_FILES", 3)
    files = {f"tests/test_{i}.py": UNITTEST_STYLE for i in range(3)}
    files["tests/test_z.py"] = "def test_x():\n    pass\n"  # the fourth, in sorted order
    assert choose(write(tmp_path, files)).name == "unittest"
    monkeypatch.setattr(testtool, "MAX_FILES", 4)
    assert choose(tmp_path).name == "pytest"


def test_an_installed_module_is_not_missing(tmp_path):
    assert missing_module(sys.executable, "unittest", tmp_path) is None


def test_no_python_on_the_path_is_said(tmp_path):
    assert missing_module(None, "pytest", tmp_path) == "there is no 'python' on the build's PATH"


def test_pytest_missing_from_an_interpreter_is_said(tmp_path):
    venv = tmp_path / "bare"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    python = str(venv / "bin" / "python")
    assert missing_module(python, "pytest", tmp_path) == f"pytest is not installed for {python}"
    assert missing_module(python, "unittest", tmp_path) is None


def test_a_fifo_named_like_a_test_or_a_config_file_does_not_wedge_the_choice(tmp_path):
    (tmp_path / "tests").mkdir()
    os.mkfifo(tmp_path / "tests" / "test_x.py")
    for name in ("pyproject.toml", "setup.cfg", "tox.ini"):
        os.mkfifo(tmp_path / name)
    (tmp_path / "tests" / "test_y.py").write_text("def test_y():\n    pass\n")
    tool = choose_within(tmp_path, seconds=10)
    assert (tool.name, tool.reason) == (
        "pytest",
        "tests/test_y.py has pytest-style tests (def test_y)",
    )


def test_files_linked_to_dev_zero_or_out_of_the_checkout_are_not_read(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "test_out.py").write_text("def test_out():\n    pass\n")
    root = tmp_path / "checkout"
    (root / "tests").mkdir(parents=True)
    (root / "pyproject.toml").symlink_to("/dev/zero")
    (root / "setup.cfg").symlink_to("/dev/zero")
    (root / "tests" / "test_zero.py").symlink_to("/dev/zero")
    (root / "tests" / "test_out.py").symlink_to(outside / "test_out.py")
    tool = choose_within(root, seconds=10)
    assert tool.name == "unittest"  # nothing outside the checkout chose pytest


def choose_within(root, seconds):
    """testtool.choose in a thread, failing the test (not hanging it) if it blocks."""
    found = []
    worker = threading.Thread(target=lambda: found.append(choose(root)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert found, f"choosing the test tool in {root} blocked for {seconds}s"
    return found[0]
