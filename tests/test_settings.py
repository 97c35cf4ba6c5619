"""One frozen settings object per process, built by the CLI from options, SUPERCI_…
variables and superci.defaults, and the only way a process's tunables reach it."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import Repo

from superci import defaults
from superci.cli import (
    dispatcher_command,
    main,
    observer_command,
    runner_command,
    settings_from,
)
from superci.dispatcher import Dispatcher
from superci.observer import Observer
from superci.results import ResultsFolder
from superci.settings import (
    DispatcherSettings,
    ObserverSettings,
    RunnerSettings,
    with_given,
)
from superci.store import Store


@pytest.fixture(autouse=True)
def no_superci_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the variables a test sets reach the commands."""
    for name in os.environ:
        if name.startswith("SUPERCI_"):
            monkeypatch.delenv(name)


def parsed(command: click.Command, args: list[str]) -> dict[str, object]:
    """What click makes of a command line (options, SUPERCI_… variables, defaults)."""
    with command.make_context(command.name or "superci", args) as context:
        return dict(context.params)


def test_without_options_every_setting_is_its_default_from_superci_defaults():
    assert settings_from(DispatcherSettings, parsed(dispatcher_command, [])) == (
        DispatcherSettings()
    )
    assert DispatcherSettings().handshake_timeout == defaults.HANDSHAKE_TIMEOUT
    assert DispatcherSettings().heartbeat_check_interval == defaults.HEARTBEAT_CHECK_INTERVAL
    assert RunnerSettings().output_drain_timeout == defaults.OUTPUT_DRAIN_TIMEOUT
    assert ObserverSettings().fetch_timeout == defaults.FETCH_TIMEOUT


def test_the_dispatcher_settings_come_from_its_options():
    params = parsed(
        dispatcher_command,
        ["--max-attempts", "5", "--heartbeat-timeout", "3", "--log-idle-timeout", "9"],
    )
    assert settings_from(DispatcherSettings, params) == dataclasses.replace(
        DispatcherSettings(), max_attempts=5, heartbeat_timeout=3.0, log_idle_timeout=9.0
    )


def test_the_dispatcher_settings_come_from_superci_variables_and_options_win(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("SUPERCI_MAX_LOG_BYTES", "4096")
    monkeypatch.setenv("SUPERCI_BUILD_TIMEOUT", "120")
    settings = settings_from(
        DispatcherSettings, parsed(dispatcher_command, ["--build-timeout", "60"])
    )
    assert (settings.max_log_bytes, settings.build_timeout) == (4096, 60.0)


def test_the_runner_settings_come_from_its_options_and_superci_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("SUPERCI_KILL_GRACE", "2.5")
    params = parsed(runner_command, ["--timeout", "30", str(tmp_path)])
    assert settings_from(RunnerSettings, params) == dataclasses.replace(
        RunnerSettings(), build_timeout=30.0, kill_grace=2.5
    )


def test_the_observer_settings_come_from_its_options_and_superci_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("SUPERCI_MAX_BACKLOG", "7")
    params = parsed(observer_command, ["--interval", "0.5", str(tmp_path)])
    assert settings_from(ObserverSettings, params) == ObserverSettings(interval=0.5, max_backlog=7)


def test_the_runner_command_hands_its_settings_to_the_runner(repo: Repo, tmp_path: Path):
    """The real command: a limit from a SUPERCI_ variable and one from an option meet in
    the runner, which refuses them together."""
    from superci.workspace import Workspace

    repo.commit({"README": "a project\n"})
    clone = Workspace.clone(str(repo.path), tmp_path / "clone").path
    result = CliRunner().invoke(
        main, ["runner", "--timeout", "100", str(clone)], env={"SUPERCI_MAX_TIMEOUT": "50"}
    )
    assert result.exit_code == 1, result.output
    assert "timeout of 100 seconds (--timeout) is above its limit of 50 seconds" in result.output


@pytest.mark.parametrize("kind", [DispatcherSettings, RunnerSettings, ObserverSettings])
def test_a_settings_object_is_frozen(kind: type):
    settings = kind()
    name = dataclasses.fields(settings)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, name, 1)


def test_the_older_keywords_fold_into_the_settings(tmp_path: Path, repo: Repo):
    base = DispatcherSettings(handshake_timeout=0.2)
    store = Store(tmp_path / "superci.db")
    try:
        dispatcher = Dispatcher(
            store, ResultsFolder(tmp_path / "results"), settings=base, max_attempts=2
        )
        assert dispatcher.settings == dataclasses.replace(base, max_attempts=2)
        assert dispatcher.scheduler.max_attempts == 2
    finally:
        store.close()
    repo.commit({"README": "a project\n"})
    clone = repo.clone(tmp_path / "clone")
    observer = Observer(clone, lambda sha, branch: None, max_backlog=3)
    assert observer.settings == ObserverSettings(max_backlog=3)


def test_the_dispatcher_hands_its_settings_to_each_part_and_its_limits_to_the_scheduler(
    tmp_path: Path,
):
    settings = DispatcherSettings(
        heartbeat_timeout=3.0, max_attempts=4, build_timeout=90.0, max_handbacks=6,
        deadline_margin=1.5, bench_after=2, bench_time=8.0, bench_max=20.0,
    )  # fmt: skip
    store = Store(tmp_path / "superci.db")
    try:
        dispatcher = Dispatcher(store, ResultsFolder(tmp_path / "results"), settings=settings)
    finally:
        store.close()
    for part in (dispatcher.listener, dispatcher.sessions, dispatcher.requests):
        assert part.settings is settings
    scheduler = dispatcher.scheduler
    assert (
        scheduler.heartbeat_timeout, scheduler.max_attempts, scheduler.build_timeout,
        scheduler.max_handbacks, scheduler.deadline_margin, scheduler.bench_after,
        scheduler.bench_time, scheduler.bench_max,
    ) == (3.0, 4, 90.0, 6, 1.5, 2, 8.0, 20.0)  # fmt: skip
    assert scheduler.stop_grace == defaults.KILL_GRACE + 1.5


def test_with_given_keeps_fields_given_as_none_and_refuses_unknown_ones():
    settings = RunnerSettings(kill_grace=1.0)
    assert with_given(settings, kill_grace=None, leave_timeout=0.5) == dataclasses.replace(
        settings, leave_timeout=0.5
    )
    with pytest.raises(TypeError):
        with_given(settings, no_such_setting=1)
