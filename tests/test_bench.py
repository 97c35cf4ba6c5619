"""scripts/bench.py's exit status, which .ci/run reads: a broken scenario is told apart
from a missed target (a figure this machine did not reach)."""

import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

from superci.jobs import expand_jobs

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench", module)  # its dataclasses look themselves up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "raise_fd_limit", lambda: None)  # not this process's
    return module


def _met(bench_module):
    return lambda _bench: [bench_module.Row("t", "latency", 1.0, "ms", target=2.0)]


def _missed(bench_module):
    return lambda _bench: [bench_module.Row("t", "latency", 3.0, "ms", target=2.0)]


def _broken(_bench):
    raise TimeoutError("gave up waiting for the result")


@pytest.mark.parametrize(
    ("scenarios", "status"),
    [
        (lambda b: [_met(b)], 0),
        (lambda b: [_met(b), _missed(b)], 1),
        (lambda b: [_missed(b), _broken], 2),
        (lambda b: [_broken, _met(b)], 2),
    ],
    ids=["met", "missed", "missed-and-broken", "broken"],
)
def test_bench_exits_2_for_a_broken_scenario_and_1_for_a_missed_target(
    bench, monkeypatch, capsys, scenarios, status
):
    monkeypatch.setattr(bench, "SCENARIOS", {"t": scenarios(bench)})
    assert bench.main(["--only", "t"]) == status
    out, err = capsys.readouterr()
    assert "latency" in out
    assert ("broken (no figures): _broken" in err) == (status == 2)


def test_the_envs_matrix_is_two_jobs_that_sleep_their_known_times(bench):
    jobs = expand_jobs(tomllib.loads(bench.MATRIX_TOML), ".superci.toml")
    assert [dict(job.cell) for job in jobs] == [{"seconds": s} for s in bench.MATRIX_SLEEPS]
    assert [job.config.command for job in jobs] == [
        f"python -c 'import time; time.sleep({s})'" for s in bench.MATRIX_SLEEPS
    ]
