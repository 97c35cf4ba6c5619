"""The README stays true: every environment variable superci reads is in its table, and
the LAN set-up works when its commands are run as written (on 127.0.0.1)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from conftest import PASSING_TEST, Repo
from support import free_port, wait_until

from superci import auth
from superci.cli import main

README = Path(__file__).resolve().parent.parent / "README.rst"


def section(title: str) -> str:
    """The text of one README section, from its title to the next title of any level."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{title}\n") + 1
    following = re.search(r"\n[^\n]+\n([=\-~])\1{3,}\n", text[start + len(title) + 2 :])
    end = start + len(title) + 2 + following.start() if following else len(text)
    return text[start:end]


def read_envvars() -> dict[str, tuple[set[str], set[str]]]:
    """Variable → (its options, the commands that read it), from the click commands."""
    found: dict[str, tuple[set[str], set[str]]] = {}
    for name, command in main.commands.items():
        for param in command.params:
            envvars = [param.envvar] if isinstance(param.envvar, str) else param.envvar or []
            for envvar in envvars:
                options, commands = found.setdefault(envvar, (set(), set()))
                options.add(max(param.opts, key=len) if isinstance(param, click.Option) else "")
                commands.add(name)
    # load_token reads the token itself wherever a --token-file could be given.
    found[auth.TOKEN_ENV] = ({"(the token itself)"}, set(found["SUPERCI_TOKEN_FILE"][1]))
    return found


def table_rows(text: str) -> dict[str, tuple[str, set[str]]]:
    """Variable → (option, commands) from the README's simple table of variables."""
    lines = text.splitlines()
    borders = [i for i, line in enumerate(lines) if re.fullmatch(r"=+( +=+)+", line)]
    assert len(borders) == 3, "expected one simple table: border, header, border, rows, border"
    starts = [m.start() for m in re.finditer(r"=+", lines[borders[0]])]
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in lines[borders[1] + 1 : borders[2]]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        variable, option, commands = (cell.strip("`") for cell in cells)
        named = re.sub(r"\(.*?\)", "", commands)
        rows[variable] = (option, {c.strip() for c in named.split(",") if c.strip()})
    return rows


def test_readme_lists_every_environment_variable_with_its_option_and_commands():
    rows = table_rows(section("Environment variables"))
    envvars = read_envvars()
    assert set(rows) == set(envvars), "README's table and the variables superci reads differ"
    for envvar, (options, commands) in envvars.items():
        option, listed = rows[envvar]
        assert {option} == options, f"{envvar}: README says {option}, the CLI {options}"
        assert listed == commands, f"{envvar}: README says {listed}, the CLI {commands}"


def test_readme_and_errors_give_the_same_owner_only_token_recipe():
    assert auth.TOKEN_RECIPE in section("Security")
    assert auth.TOKEN_RECIPE in section("On a LAN: three terminals")


# --- the LAN set-up, as written -------------------------------------------------------


def lan_commands() -> list[str]:
    """The shell lines of the LAN section's literal blocks, in order."""
    blocks = re.findall(r"::\n\n((?:    .*\n|\n)+)", section("On a LAN: three terminals"))
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


class Shell:
    """Runs README lines with ``sh`` in a home folder of the test's own, the LAN's names
    replaced by this machine's, and the programs by the code under test."""

    def __init__(self, home: Path, replacements: dict[str, str]) -> None:
        self.home = home
        self.replacements = replacements
        self.env = {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def line(self, line: str) -> str:
        for old, new in self.replacements.items():
            line = re.sub(rf"(?<![\w./-]){re.escape(old)}(?![\w.-])", new, line)
        return line

    def run(self, line: str) -> None:
        done = subprocess.run(
            ["sh", "-c", self.line(line)], cwd=self.home, env=self.env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, f"{line}\n{done.stderr}"

    def start(self, line: str, log: Path) -> None:
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                ["sh", "-c", "exec " + self.line(line)], cwd=self.home, env=self.env,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.processes.append((popen, log))

    def stop_all(self) -> None:
        for popen, _ in reversed(self.processes):
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
                try:
                    popen.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait(timeout=10)


@pytest.fixture
def shell(tmp_path: Path, repo: Repo) -> Iterator[Shell]:
    home = tmp_path / "home"
    home.mkdir()
    superci = f"{shlex.quote(sys.executable)} -m superci"
    stack = Shell(
        home,
        {
            "python": shlex.quote(sys.executable),
            "dispatcher": f"{superci} dispatcher",
            "test_runner": f"{superci} runner",
            "repo_observer": f"{superci} observer",
            "192.168.1.10": "127.0.0.1",
            "8888": str(free_port()),
            "/srv/superci/test_results": str(tmp_path / "test_results"),
            "ssh://git.example.lan/project.git": str(repo.path),
        },
    )
    try:
        yield stack
    finally:
        stack.stop_all()


@pytest.mark.e2e
def test_the_lan_set_up_works_when_followed_as_written(shell: Shell, repo: Repo, tmp_path: Path):
    sha = repo.commit({"tests/test_math.py": PASSING_TEST}, "passing")
    commands = lan_commands()
    assert len(commands) == 6, commands  # token, dispatcher, clone + runner, clone + observer
    for line in commands:
        program = line.split()[0]
        if program in ("dispatcher", "test_runner", "repo_observer"):
            assert "--token-file" in line, f"the README leaves the token out of: {line}"
            shell.start(line, tmp_path / f"{program}.log")
        else:
            shell.run(line)

    token_file = shell.home / "superci.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    result = tmp_path / "test_results" / sha / "result.json"
    wait_until(result.exists, what="the README set-up to build the commit")
    assert '"status": "passed"' in result.read_text()
    for _, log in shell.processes:
        assert "Traceback" not in log.read_text()


def test_every_test_the_guarantees_name_exists():
    """A promise whose test was renamed or removed would point at nothing."""
    named = re.findall(r"``(test_\w+\.py)(?:::(\w+))?``", section("Guarantees"))
    assert len(named) > 50
    tests = README.parent / "tests"
    missing = [
        f"{file}::{name}" if name else file
        for file, name in named
        if not (tests / file).is_file()
        or (name and not re.search(rf"def {name}\b", (tests / file).read_text(encoding="utf-8")))
    ]
    assert missing == []


def test_the_design_document_has_a_line_for_every_module():
    design = (README.parent / "docs" / "design.rst").read_text(encoding="utf-8")
    modules = {p.name for p in (README.parent / "superci").glob("*.py")} - {
        "__init__.py",
        "__main__.py",
    }
    assert sorted(m for m in modules if f"``{m}``" not in design) == []
