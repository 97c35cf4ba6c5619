"""A commit's jobs: named jobs, matrices, exclude, the order ``after`` gives, the cap, and
the commit's one status (superci.jobs, pure)."""

import tomllib

import pytest

from superci import defaults
from superci.config import BuildConfig
from superci.errors import ConfigError
from superci.jobs import (
    DEFAULT_JOB,
    Readiness,
    commit_status,
    expand_jobs,
    folder_name,
    job_name,
    parse_jobs,
    readiness,
    readiness_after,
)
from superci.status import BuildStatus as S


def jobs_of(text: str):
    return expand_jobs(tomllib.loads(text), ".superci.toml")


def keys_of(text: str) -> list[str]:
    return [spec.key for spec in jobs_of(text)]


def test_file_without_jobs_is_one_default_job_with_its_settings():
    (spec,) = jobs_of('command = "make test"\ntimeout = 30\n')
    assert spec.key == spec.name == DEFAULT_JOB
    assert spec.config == BuildConfig(command="make test", timeout=30.0)
    assert spec.environment == {}
    assert spec.after == ()


def test_empty_file_is_one_default_job():
    assert jobs_of("") == expand_jobs({}, "x")
    assert keys_of("") == [DEFAULT_JOB]


def test_named_jobs_keep_file_order_and_inherit_top_level_defaults():
    specs = jobs_of(
        "timeout = 60\n"
        '[jobs.lint]\ncommand = "ruff check ."\n'
        '[jobs.tests]\ncommand = "pytest -q"\ntimeout = 300\n'
        '[jobs.docs]\ncommand = "make docs"\nafter = ["tests"]\n'
    )
    assert [spec.key for spec in specs] == ["lint", "tests", "docs"]
    assert [spec.config.timeout for spec in specs] == [60.0, 300.0, 60.0]
    assert specs[2].after == ("tests",)


def test_each_cell_has_its_axes_in_its_environment_and_its_key():
    specs = jobs_of('[jobs.tests]\ncommand = "echo {django}"\nmatrix = {django = ["4.2", "5.0"]}\n')
    assert [spec.key for spec in specs] == ["tests (django=4.2)", "tests (django=5.0)"]
    assert [spec.config.command for spec in specs] == ["echo 4.2", "echo 5.0"]
    assert [spec.environment for spec in specs] == [
        {"SUPERCI_MATRIX_DJANGO": "4.2"},
        {"SUPERCI_MATRIX_DJANGO": "5.0"},
    ]


def test_matrix_crosses_axes_and_substitutes_them_in_command_only_where_named():
    specs = jobs_of(
        "command = \"pip install django=={django} && awk '{print}' f\"\n"
        '[matrix]\nregion = ["eu", "us"]\ndjango = ["4.2", "5.0"]\n'
    )
    assert [spec.key for spec in specs] == [
        "default (region=eu, django=4.2)",
        "default (region=eu, django=5.0)",
        "default (region=us, django=4.2)",
        "default (region=us, django=5.0)",
    ]
    assert specs[1].config.command == "pip install django==5.0 && awk '{print}' f"
    assert specs[1].environment == {"SUPERCI_MATRIX_REGION": "eu", "SUPERCI_MATRIX_DJANGO": "5.0"}


def test_exclude_removes_the_cells_it_matches():
    keys = keys_of(
        '[matrix]\nos = ["linux", "mac"]\ndb = ["pg", "sqlite"]\n'
        'exclude = [{os = "mac", db = "pg"}]\n'
    )
    assert keys == ["default (os=linux, db=pg)", "default (os=linux, db=sqlite)",
                    "default (os=mac, db=sqlite)"]  # fmt: skip


def test_job_count_is_capped_over_every_job_and_cell():
    axis = ", ".join(f'"v{n}"' for n in range(33))
    with pytest.raises(
        ConfigError, match=f"66 jobs; a commit may have at most {defaults.MAX_JOBS}"
    ):
        jobs_of(f"[jobs.a]\nmatrix = {{x = [{axis}]}}\n[jobs.b]\nmatrix = {{x = [{axis}]}}\n")
    exactly = ", ".join(f'"v{n}"' for n in range(64))
    assert len(jobs_of(f"[matrix]\nx = [{exactly}]\n")) == 64


def test_huge_matrix_is_refused_before_its_cells_are_made():
    axis = ", ".join(f'"v{n}"' for n in range(50))
    with pytest.raises(ConfigError, match="125000 cells"):
        jobs_of(f"[matrix]\na = [{axis}]\nb = [{axis}]\nc = [{axis}]\n")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[matrix]\npython = [3.10]\n", r'write 3.1 as a string \("3.1"\)'),
        ("[matrix]\nx = []\n", "must be a non-empty list"),
        ('[matrix]\nx = ["a", "a"]\n', "repeats a value"),
        ('[matrix]\nX = ["a"]\n', "axis 'X' must be"),
        ('[matrix]\nx = ["a b"]\n', "value 'a b' must be"),
        ('[matrix]\nx = ["a"]\nexclude = [{y = "a"}]\n', "unknown key 'y'"),
        ('[matrix]\nx = ["a", "b"]\nexclude = [{x = "c"}]\n', "x = 'c' is not one of"),
        ('[matrix]\nx = ["a", "b"]\nexclude = [{x = "a"}, {x = "a"}]\n', "matches no job"),
        ('[matrix]\nx = ["a"]\nexclude = [{x = "a"}]\n', "removes every job"),
        ('python = ["3.11"]\n[matrix]\npython = ["3.12"]\n', "both as a list and in"),
        ('timeout = 5\n[matrix]\ntimeout = ["1"]\n', "timeout is both a setting and a matrix"),
        ('after = ["x"]\n', "'after' belongs in a"),
        ('matrix = {x = ["a"]}\n[jobs.a]\n', "put 'matrix' inside each"),
        ("jobs = 3\n", "'jobs' must be tables"),
        ('[jobs."bad name"]\n', "job name 'bad name' must be"),
        ('[jobs.a]\nafter = ["tset"]\n[jobs.test]\n', "unknown key 'tset', did you mean 'test'"),
        ('[jobs.a]\nafter = ["b"]\n[jobs.b]\nafter = ["a"]\n', "'after' makes a cycle"),
        ('[jobs.a]\nafter = ["a"]\n', "'after' makes a cycle: a → a"),
        ('[jobs.a]\nafter = "b"\n[jobs.b]\n', "'after' must be a list of job names"),
        ('[jobs.a]\ncomand = "x"\n', r"\[jobs.a\]: unknown key 'comand', did you mean 'command'"),
        ('[jobs.a]\nmatrx = {x = ["a"]}\n', "did you mean 'matrix'"),
    ],
)
def test_a_config_superci_cannot_expand_is_refused_with_what_to_fix(text, problem):
    with pytest.raises(ConfigError, match=problem):
        jobs_of(text)


TESTS_THEN_DOCS = '[jobs.tests]\nmatrix = {db = ["pg", "sqlite"]}\n[jobs.docs]\nafter = ["tests"]\n'


def test_readiness_waits_for_every_cell_of_the_jobs_named_in_after():
    specs = jobs_of(TESTS_THEN_DOCS)
    docs = specs[-1]
    assert readiness(docs, specs, {}) == Readiness(
        False, waiting_for=("tests (db=pg)", "tests (db=sqlite)")
    )
    half = {"tests (db=pg)": S.PASSED, "tests (db=sqlite)": S.RUNNING}
    assert readiness(docs, specs, half) == Readiness(False, waiting_for=("tests (db=sqlite)",))
    done = {"tests (db=pg)": S.PASSED, "tests (db=sqlite)": S.PASSED}
    assert readiness(docs, specs, done) == Readiness(True)
    assert readiness(specs[0], specs, {}) == Readiness(True)


def test_a_job_after_one_that_did_not_pass_is_skipped_with_the_reason():
    specs = jobs_of(TESTS_THEN_DOCS)
    failed = {"tests (db=pg)": S.FAILED, "tests (db=sqlite)": S.RUNNING}
    assert readiness(specs[-1], specs, failed) == Readiness(
        False, skipped_because="tests (db=pg) did not pass (failed)"
    )


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([S.PASSED, S.PASSED], S.PASSED),
        ([S.PASSED, S.FAILED, S.ERROR], S.FAILED),
        ([S.PASSED, S.ERROR, S.SKIPPED], S.ERROR),
        ([S.PASSED, S.CANCELLED], S.CANCELLED),
        ([S.TIMEOUT, S.ERROR], S.TIMEOUT),
        ([S.QUEUED, S.QUEUED], S.QUEUED),
        ([S.QUEUED, S.PASSED], S.RUNNING),
        ([S.RUNNING, S.FAILED], S.RUNNING),
        ([], S.QUEUED),
    ],
)
def test_commit_status_is_passed_only_when_every_job_passed_else_the_worst(statuses, expected):
    assert commit_status(statuses) is expected


def test_a_python_list_is_an_axis_and_each_cell_asks_for_its_python():
    specs = jobs_of('install = "pip install -r req-{python}.txt"\npython = ["3.11", "3.12"]\n')
    assert [spec.key for spec in specs] == ["default (python=3.11)", "default (python=3.12)"]
    assert [spec.config.python for spec in specs] == ["3.11", "3.12"]
    assert specs[1].config.install == "pip install -r req-3.12.txt"
    assert specs[1].environment == {"SUPERCI_MATRIX_PYTHON": "3.12"}


def test_each_job_key_has_a_folder_of_its_own_that_stays_inside_the_results():
    assert folder_name("tests") == "tests"
    assert folder_name("tests (python=3.12)") == "tests,python=3.12"
    assert folder_name("docs (os=linux, path=a/b)") == "docs,os=linux,path=a%2Fb"
    keys = [  # every key a file can make: names, axes and values hold no space or comma
        *keys_of('[jobs.a]\n[jobs.a.matrix]\nx = ["1", "2"]\ny = ["2", "x-1"]\n'),
        *keys_of("[jobs.a-x-1]\n[jobs.a_x-1]\n[jobs.a]\n"),
    ]
    assert len({folder_name(key) for key in keys}) == len(keys)
    assert all("/" not in folder_name(key) for key in keys)


def test_a_job_may_not_take_the_default_jobs_name_nor_make_a_huge_key():
    with pytest.raises(ConfigError, match=r"\[jobs.default\]: 'default' is the name of the one"):
        jobs_of('[jobs.default]\ncommand = "true"\n')
    axes = "".join(f'a{i} = ["{"v" * 60}"]\n' for i in range(5))
    with pytest.raises(ConfigError, match=r"make a key of \d+ characters.*at most 256"):
        jobs_of(f"[matrix]\n{axes}")


def test_a_file_that_is_not_there_is_one_default_job_and_names_map_back_from_keys():
    [spec] = parse_jobs(None)
    assert (spec.key, spec.config) == (DEFAULT_JOB, BuildConfig())
    assert [s.key for s in parse_jobs('python = ["3.11", "3.12"]\n')] == [
        "default (python=3.11)", "default (python=3.12)"
    ]  # fmt: skip
    assert job_name("tests (python=3.12)") == "tests" and job_name("lint") == "lint"
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_jobs("[jobs\n")


def test_readiness_from_keys_alone_is_what_readiness_of_specs_says():
    specs = jobs_of('[jobs.tests]\npython = ["3.11", "3.12"]\n[jobs.docs]\nafter = ["tests"]\n')
    docs = specs[-1]
    keys = [spec.key for spec in specs]
    for statuses in ({}, {keys[0]: S.PASSED}, {keys[0]: S.PASSED, keys[1]: S.PASSED},
                     {keys[1]: S.TIMEOUT}):  # fmt: skip
        assert readiness_after(docs.after, keys, statuses) == readiness(docs, specs, statuses)


def test_a_job_that_asks_for_a_python_needs_a_runner_that_has_it():
    specs = jobs_of('python = ["3.11", "3.12.1"]\nneeds = {os = "linux"}\n')
    assert [spec.needs for spec in specs] == [
        {"os": "linux", "python": "3.11"},
        {"os": "linux", "python": "3.12"},
    ]
    (pinned,) = jobs_of('python = "3.12"\nneeds = {python = "3.12"}\n')
    assert pinned.needs == {"python": "3.12"}
    (plain,) = jobs_of('command = "make test"\n')
    assert plain.needs == {}
