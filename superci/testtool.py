"""Which test tool a repository without its own ``command`` uses, and whether it is there.

pytest when the repository configures it or its tests are written for it (unittest would
find none of them and pass with nothing run), else unittest as in the original design.
The tests are read with :mod:`ast`, never imported, and within bounds: big files, git's
folder and virtualenvs are skipped, only so many files are read, and only regular files
inside the checkout (:mod:`superci.safefile`).
"""

from __future__ import annotations

import ast
import configparser
import logging
import os
import stat
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superci import defaults
from superci.builduser import BuildUser
from superci.errors import UnsafeFile
from superci.safefile import read_inside

log = logging.getLogger(__name__)

PYTEST_COMMAND = "python -m pytest"  # through python, so the build's interpreter runs it
UNITTEST_ANYWHERE_COMMAND = "python -m unittest discover"
#: Test files read at most, and the largest one read (bytes).
MAX_FILES = 200
MAX_FILE_BYTES = 256 * 1024
#: Folders never searched: git's, caches, and installed packages.
SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".tox", ".nox", ".venv", "venv", "env", "__pycache__", "node_modules",
     "site-packages", "build", "dist", ".eggs"}
)  # fmt: skip
#: Seconds allowed to ask an interpreter whether a module is installed.
CHECK_TIMEOUT = 60.0


@dataclass(frozen=True)
class TestTool:
    """The command to run, the module it needs, and why it was chosen (for the log)."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    name: str
    command: str
    module: str
    reason: str


def choose(root: Path) -> TestTool:
    """The tool the repository at ``root`` uses."""
    root = Path(root)
    reason = _pytest_configured(root) or _pytest_style_tests(root)
    if reason is not None:
        return TestTool("pytest", PYTEST_COMMAND, "pytest", reason)
    if (root / "tests").is_dir():
        return TestTool(
            "unittest", defaults.TEST_COMMAND, "unittest",
            "no pytest configuration or pytest-style tests; tests/ is searched",
        )  # fmt: skip
    return TestTool(
        "unittest", UNITTEST_ANYWHERE_COMMAND, "unittest",
        "no pytest configuration or pytest-style tests, and no tests/ folder",
    )  # fmt: skip


def _pytest_configured(root: Path) -> str | None:
    if (root / "pytest.ini").is_file():
        return "pytest.ini configures pytest"
    for conftest in (root / "conftest.py", root / "tests" / "conftest.py"):
        if conftest.is_file():
            return f"{conftest.relative_to(root)} is pytest's"
    tool = _toml(root, "pyproject.toml").get("tool")
    if (
        isinstance(tool, dict)
        and isinstance(tool.get("pytest"), dict)
        and ("ini_options" in tool["pytest"])
    ):
        return "pyproject.toml has [tool.pytest.ini_options]"
    for name, section in (("setup.cfg", "tool:pytest"), ("tox.ini", "pytest")):
        if _has_section(root, name, section):
            return f"{name} has [{section}]"
    return None


def _read(root: Path, name: str | Path) -> bytes | None:
    """A file of the checkout, if it is a regular one inside it and not too big to read
    (a FIFO or a link to /dev/zero named like a test must not wedge the runner)."""
    try:
        return read_inside(root, name, MAX_FILE_BYTES)
    except UnsafeFile as e:
        log.warning("not read to choose the test tool: %s", e)
        return None


def _toml(root: Path, name: str) -> dict[str, Any]:
    data = _read(root, name)
    try:
        return tomllib.loads(data.decode("utf-8")) if data is not None else {}
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _has_section(root: Path, name: str, section: str) -> bool:
    data = _read(root, name)
    if data is None:
        return False
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(data.decode("utf-8", errors="replace"))
    except configparser.Error:
        return False
    return parser.has_section(section)


def _pytest_style_tests(root: Path) -> str | None:
    for path in _test_files(root):
        data = _read(root, path.relative_to(root))
        try:
            tree = ast.parse(data, filename=str(path)) if data is not None else None
        except (SyntaxError, ValueError):
            continue
        if tree is None:
            continue
        found = _pytest_style(tree)
        if found is not None:
            return f"{path.relative_to(root)} has pytest-style tests ({found})"
    return None


def _test_files(root: Path) -> Iterator[Path]:
    """test_*.py and *_test.py files, in a stable order, at most MAX_FILES of them."""
    count = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d for d in dirs
            if d not in SKIPPED_DIRS and not d.startswith(".")
            and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))
        )  # fmt: skip
        for name in sorted(files):
            if not name.endswith(".py") or not (
                name.startswith("test_") or name.endswith("_test.py")
            ):
                continue
            path = Path(folder, name)
            try:  # lstat: a link is read (or refused) by _read, never stat'ed through
                info = path.lstat()
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode) or info.st_size > MAX_FILE_BYTES:
                continue
            count += 1
            if count > MAX_FILES:
                return
            yield path


def _pytest_style(tree: ast.Module) -> str | None:
    """What in a module only pytest would run: a test function, or a Test class that
    does not derive from anything (unittest's need a TestCase base)."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            return f"def {node.name}"
        if (
            isinstance(node, ast.ClassDef)
            and node.name.startswith("Test")
            and all(isinstance(b, ast.Name) and b.id == "object" for b in node.bases)
        ):
            return f"class {node.name}"
    return None


def missing_module(
    python: str | None,
    module: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    user: BuildUser | None = None,
) -> str | None:
    """Why ``module`` cannot be run with ``python -m`` by ``python``; None if it can.

    Asked of the interpreter itself, in the build's folder, as the build will run it
    (as ``user`` when builds run as a build user).
    """
    if python is None:
        return "there is no 'python' on the build's PATH"
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"
    argv: list[str] = [python, "-c", probe, module]
    options: dict[str, Any] = {"env": None if env is None else dict(env)}
    if user is not None:  # in a session of its own, as the build: no terminal for sudo
        argv, options = user.command(argv, os.environ if env is None else env)
        options["start_new_session"] = True
    try:
        done = subprocess.run(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=CHECK_TIMEOUT, **options,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot ask {python} whether {module} is installed: {e}"
    if done.returncode == 1 and not done.stderr:
        return f"{module} is not installed for {python}"
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return f"{python} failed (exit code {done.returncode}) when asked for {module}: {said[0]}"
    return None
