"""The tested repository's .superci.toml: what is read, and what is refused."""

from pathlib import Path

import pytest

from superci import defaults
from superci.config import (
    AUTO_PARALLEL,
    MAX_PARALLEL,
    BuildConfig,
    load_build_config,
    parse_build_config,
    split_width,
)
from superci.errors import ConfigError


def write_config(workdir: Path, text: str) -> Path:
    path = workdir / defaults.CONFIG_FILE
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_file_gives_defaults(tmp_path):
    config = load_build_config(tmp_path)
    assert config == BuildConfig()
    assert config.command is None  # the runner picks the tool the repository uses
    assert config.timeout is None
    assert config.junit is None
    assert config.allow_no_tests is False


def test_empty_file_gives_defaults(tmp_path):
    write_config(tmp_path, "")
    assert load_build_config(tmp_path) == BuildConfig()


def test_command_timeout_and_junit_are_read(tmp_path):
    write_config(
        tmp_path,
        'command = "pytest -q --junitxml=reports/junit.xml"\n'
        "timeout = 90\n"
        'junit = "reports/junit.xml"\n',
    )
    config = load_build_config(tmp_path)
    assert config == BuildConfig(
        command="pytest -q --junitxml=reports/junit.xml", timeout=90.0, junit="reports/junit.xml"
    )
    assert isinstance(config.timeout, float)


def test_fractional_timeout_is_kept(tmp_path):
    write_config(tmp_path, "timeout = 2.5\n")
    assert load_build_config(tmp_path).timeout == 2.5


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('command = "unterminated\n', "not valid TOML"),
        ("command = 42\n", "'command' must be a non-empty string"),
        ('command = "   "\n', "'command' must be a non-empty string"),
        ('command = ["pytest"]\n', "'command' must be a non-empty string"),
        ('timeout = "60"\n', "'timeout' must be a number"),
        ("timeout = true\n", "'timeout' must be a number"),
        ("timeout = 0\n", "'timeout' must be a positive number"),
        ("timeout = -5\n", "'timeout' must be a positive number"),
        ("timeout = inf\n", "'timeout' must be a positive number"),
        ("timeout = nan\n", "'timeout' must be a positive number"),
        ("junit = 1\n", "'junit' must be a non-empty relative path"),
        ('junit = ""\n', "'junit' must be a non-empty relative path"),
        ('junit = "/tmp/junit.xml"\n', "absolute path"),
        ('junit = "C:\\\\reports\\\\junit.xml"\n', "absolute path"),
        ('junit = "."\n', "'junit' must name a file"),
        ('junit = "a\\u0000b.xml"\n', "NUL byte"),
        ('junit = "../outside.xml"\n', "must stay inside the repository"),
        ('junit = "reports/../../outside.xml"\n', "must stay inside the repository"),
        ('junit = "reports\\\\..\\\\..\\\\outside.xml"\n', "must stay inside the repository"),
        ('allow_no_tests = "yes"\n', "'allow_no_tests' must be true or false"),
        ("allow_no_tests = 1\n", "'allow_no_tests' must be true or false"),
        ("[command]\nrun = 'make'\n", "'command' must be a non-empty string"),
    ],
)
def test_invalid_file_gives_config_error_naming_file_and_problem(tmp_path, text, problem):
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        load_build_config(tmp_path)
    message = str(excinfo.value)
    assert str(path) in message
    assert problem in message


def test_undecodable_file_gives_config_error(tmp_path):
    path = tmp_path / defaults.CONFIG_FILE
    path.write_bytes(b'command = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="cannot be read") as excinfo:
        load_build_config(tmp_path)
    assert str(path) in str(excinfo.value)


def test_a_misspelt_key_is_an_error_naming_it_and_the_key_meant(tmp_path):
    path = write_config(tmp_path, 'command = "make test"\ncomand = "typo"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_build_config(tmp_path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "unknown key 'comand', did you mean 'command'?" in message


def test_an_unknown_key_with_no_near_miss_lists_the_known_keys(tmp_path):
    write_config(tmp_path, "shards = true\n[tool.something]\nx = 1\n")
    with pytest.raises(ConfigError) as excinfo:
        load_build_config(tmp_path)
    message = str(excinfo.value)
    assert "unknown key 'shards'" in message and "unknown key 'tool'" in message
    assert "did you mean" not in message
    assert "known keys: command, timeout, junit, allow_no_tests" in message


def test_allow_no_tests_is_read(tmp_path):
    write_config(tmp_path, "allow_no_tests = true\n")
    assert load_build_config(tmp_path) == BuildConfig(allow_no_tests=True)


def test_a_command_with_a_nul_character_is_refused(tmp_path):
    (tmp_path / ".superci.toml").write_text('command = "echo a\\u0000b"\n')
    with pytest.raises(ConfigError, match="NUL"):
        load_build_config(tmp_path)


def test_needs_are_read_as_lowercase_labels_with_true_for_a_boolean(tmp_path):
    write_config(tmp_path, 'needs = {os = "Linux", gpu = true, python = "3.12"}\n')
    assert load_build_config(tmp_path).needs == {"os": "linux", "gpu": "true", "python": "3.12"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('needs = "linux"', "'needs' must be a table"),
        ("needs = {python = 3.10}", 'write the value as a string in quotes (such as "3.10")'),
        ('needs = {"bad key" = "x"}', "label key 'bad key' must be"),
        ('needs = {os = "linux mint"}', "label os: value 'linux mint' must be"),
        ('needs = {os = ""}', "label os: value '' must be"),
    ],
)
def test_bad_needs_are_an_error_naming_the_key_and_what_is_wrong(tmp_path, text, problem):
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_build_config(tmp_path)
    assert str(path) in str(info.value) and problem in str(info.value)


def test_the_same_text_parses_alike_from_a_file_and_from_a_submission(tmp_path):
    text = 'command = "make test"\nneeds = {gpu = "true"}\n'
    write_config(tmp_path, text)
    assert parse_build_config(text) == load_build_config(tmp_path)
    with pytest.raises(ConfigError, match=r"^\.superci\.toml: unknown key 'nedds'"):
        parse_build_config("nedds = {}")


def test_parallel_is_a_number_of_runners_or_auto():
    assert parse_build_config("parallel = 4\n").parallel == 4
    assert parse_build_config('parallel = "auto"\n').parallel == AUTO_PARALLEL
    assert split_width(4) == 4 and split_width(AUTO_PARALLEL) == MAX_PARALLEL
    assert parse_build_config("").parallel is None


@pytest.mark.parametrize("value", ["1", "17", "true", "2.5", '"all"', "0"])
def test_a_parallel_that_is_not_2_to_16_or_auto_is_refused_saying_what_is_allowed(value):
    with pytest.raises(ConfigError, match="'parallel' must be a number of runners from 2 to 16"):
        parse_build_config(f"parallel = {value}\n")


def test_parallel_with_a_command_of_its_own_is_refused_saying_why():
    with pytest.raises(ConfigError, match="'parallel' splits a suite superci runs itself"):
        parse_build_config('command = "make test"\nparallel = 2\n')
