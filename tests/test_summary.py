"""parse_summary on output produced by really running unittest and pytest."""

import os
import subprocess
import sys
import textwrap

import pytest

from superci.summary import Summary, parse_summary

UNITTEST_MODULE = textwrap.dedent(
    """
    import sys
    import unittest


    class Sample(unittest.TestCase):
        def test_passes(self):
            self.assertEqual(1, 1)

        def test_also_passes(self):
            # a line that looks like a pytest summary, before the real (unittest) one
            print("3 passed in 0.01s", file=sys.stderr, flush=True)

        def test_fails(self):
            self.assertEqual(1, 2)

        def test_errors(self):
            raise RuntimeError("boom")

        @unittest.skip("not today")
        def test_skipped(self):
            pass

        @unittest.expectedFailure
        def test_known_bug(self):
            self.assertEqual(1, 2)
    """
)

UNITTEST_PASSING_MODULE = textwrap.dedent(
    """
    import unittest


    class Fine(unittest.TestCase):
        def test_one(self):
            pass

        def test_two(self):
            pass

        @unittest.skip("later")
        def test_three(self):
            pass
    """
)

PYTEST_MODULE = textwrap.dedent(
    """
    import pytest


    @pytest.fixture
    def broken():
        raise RuntimeError("fixture broke")


    def test_ok():
        assert True


    def test_bad():
        assert 1 == 2


    def test_uses_broken(broken):
        pass


    @pytest.mark.skip(reason="later")
    def test_skip():
        pass


    @pytest.mark.xfail(reason="known bug")
    def test_known_bug():
        assert False


    @pytest.mark.parametrize("text", ["a b", "c"])
    def test_param(text):
        assert text == "c"


    class TestGroup:
        def test_in_class(self):
            assert [1] == [2]
    """
)


def start(args: list[str], cwd) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, str]:
    """The real output of each tool and form, run side by side to keep this fast."""
    folder = tmp_path_factory.mktemp("summary")
    (folder / "test_sample.py").write_text(UNITTEST_MODULE)
    (folder / "test_fine.py").write_text(UNITTEST_PASSING_MODULE)
    (folder / "test_native.py").write_text(PYTEST_MODULE)
    pytest_args = ["-m", "pytest", "-p", "no:cacheprovider", "test_native.py"]
    runs = {
        "unittest": ["-m", "unittest", "test_sample"],
        "unittest -v": ["-m", "unittest", "-v", "test_sample"],
        "unittest ok": ["-m", "unittest", "test_fine"],
        "pytest -q": [*pytest_args, "-q"],
        "pytest -v": [*pytest_args, "-v"],
    }
    processes = {form: start(args, folder) for form, args in runs.items()}
    outputs = {}
    for form, process in processes.items():
        outputs[form], _ = process.communicate(timeout=60)
        assert process.returncode in (0, 1), outputs[form]
    return outputs


@pytest.mark.parametrize("form", ["unittest", "unittest -v"])
def test_unittest_counts_and_failing_tests(outputs, form):
    output = outputs[form]
    assert "Ran 6 tests" in output  # the real thing, not a guess at it
    assert "3 passed in 0.01s\n" in output
    summary = parse_summary(output)
    assert summary.counts == {"run": 6, "passed": 2, "failed": 1, "errors": 1, "skipped": 2}
    assert sorted(summary.failures) == [
        "test_sample.Sample.test_errors",
        "test_sample.Sample.test_fails",
    ]


def test_unittest_ok_with_a_skip(outputs):
    output = outputs["unittest ok"]
    assert "OK (skipped=1)" in output
    summary = parse_summary(output)
    assert summary.counts == {"run": 3, "passed": 2, "failed": 0, "errors": 0, "skipped": 1}
    assert summary.failures == []


@pytest.mark.parametrize("form", ["pytest -q", "pytest -v"])
def test_pytest_counts_and_failing_tests(outputs, form):
    output = outputs[form]
    assert "3 failed, 2 passed, 1 skipped, 1 xfailed, 1 error" in output
    summary = parse_summary(output)
    assert summary.counts == {"run": 8, "passed": 2, "failed": 3, "errors": 1, "skipped": 2}
    assert sorted(summary.failures) == [
        "test_native.py::TestGroup::test_in_class",
        "test_native.py::test_bad",
        "test_native.py::test_param[a b]",  # a parametrize id with a space, kept whole
        "test_native.py::test_uses_broken",
    ]


def test_only_the_tail_of_the_output_is_enough(outputs):
    tail = outputs["pytest -q"][-600:]
    assert parse_summary(tail).counts["failed"] == 3


def test_the_last_of_several_unittest_runs_counts():
    output = "Ran 4 tests in 0.1s\n\nFAILED (failures=2)\n...\n----\nRan 1 test in 0.0s\n\nOK\n"
    summary = parse_summary(output)
    assert summary.counts == {"run": 1, "passed": 1, "failed": 0, "errors": 0, "skipped": 0}


def test_unittest_failure_in_the_pre_3_11_format_is_named_fully():
    output = (
        "FAIL: test_x (pkg.mod.Case)\n----\nTraceback...\n\n"
        "Ran 2 tests in 0.001s\n\nFAILED (failures=1)\n"
    )
    assert parse_summary(output).failures == ["pkg.mod.Case.test_x"]


def test_pytest_summary_with_warnings_and_a_long_duration():
    output = "=== 4 passed, 2 warnings in 75.10s (0:01:15) ===\n"
    assert parse_summary(output).counts == {
        "run": 4, "passed": 4, "failed": 0, "errors": 0, "skipped": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "output",
    [
        "",
        "HEAD is now at 0123456 Fix the thing\nbuilding...\ndone\n",
        "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'x'\n",
        "make: *** [all] Error 2\n",
        "we shipped 3 features today\n",
    ],
)
def test_output_without_a_summary_gives_empty_counts(output):
    assert parse_summary(output) == Summary()
    assert parse_summary(output).counts == {}
    assert parse_summary(output).failures == []


@pytest.mark.parametrize(
    "output",
    [
        "collected 0 items\n\n============================ no tests ran in 0.40s ======\n",
        "\nno tests ran in 0.01s\n",
        "=== 3 passed in 0.1s ===\n... a second run ...\n=== no tests ran in 0.01s ===\n",
    ],
)
def test_pytest_saying_no_tests_ran_gives_zero_counts(output):
    summary = parse_summary(output)
    assert summary.counts == {"run": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}


def test_a_pytest_run_after_one_that_ran_no_tests_counts_its_tests():
    output = "=== no tests ran in 0.01s ===\n=== 2 passed in 0.1s ===\n"
    assert parse_summary(output).counts["passed"] == 2


def test_unittest_finding_no_test_gives_zero_counts():
    output = (
        "\n----------------------------------------------------------------------\n"
        "Ran 0 tests in 0.000s\n\nOK\n"
    )
    assert parse_summary(output).counts == {
        "run": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0,
    }  # fmt: skip
