"""The command line: a thin click layer that parses options and starts a process.

``superci dispatcher|runner|observer|notify|up``; the three processes are also installed
as the console scripts ``dispatcher``, ``test_runner`` and ``repo_observer``. Every option
can come from a ``SUPERCI_…`` environment variable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import fields
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from superci import __version__, defaults
from superci.auth import TOKEN_ENV, Credentials, client_tls, is_loopback, load_token, server_tls
from superci.channel import Address, parse_address
from superci.errors import ConfigError, ProtocolError, SuperCIError
from superci.settings import DispatcherSettings, ObserverSettings, RunnerSettings

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from superci.gitname import Description

log = logging.getLogger("superci")

S = TypeVar("S", bound="DataclassInstance")


def settings_from(kind: type[S], params: Mapping[str, Any]) -> S:
    """One process's settings from its command's parsed parameters, where click has
    already merged the options, the ``SUPERCI_…`` variables and the defaults; a field no
    option sets keeps its default from :mod:`superci.defaults`."""
    names = {f.name for f in fields(kind)}
    return kind(**{name: value for name, value in params.items() if name in names})


def _takes_settings(kind: type[Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Hand a command its options that are settings as one ``settings`` object."""
    names = {f.name for f in fields(kind)}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(fn)
        def wrapper(**params: Any) -> Any:
            rest = {name: value for name, value in params.items() if name not in names}
            return fn(settings=settings_from(kind, params), **rest)

        return wrapper

    return decorate


def _setup_logging(verbose: bool, log_file: Path | None = None) -> None:
    """Log to stderr, or to ``log_file`` (appended to) when one is given."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        **({"filename": log_file} if log_file else {"stream": sys.stderr}),
    )


def _verbose_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-v", "--verbose", is_flag=True, envvar="SUPERCI_VERBOSE", help="Log debug details."
    )(fn)


_TOKEN_FILE_HELP = (
    f"File holding the shared token (SUPERCI_TOKEN_FILE); or set {TOKEN_ENV} to the token itself."
)


def _dispatcher_server_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--dispatcher-server plus how to get in (token, TLS), handed on as one ``address``."""

    @wraps(fn)
    def wrapper(
        dispatcher_server: str, token_file: Path | None, tls: bool, tls_ca: Path | None,
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        try:
            credentials = Credentials(
                token=load_token(token_file), ssl=client_tls(tls_ca) if tls or tls_ca else None
            )
            address = parse_address(dispatcher_server, credentials)
        except SuperCIError as e:
            raise click.ClickException(str(e)) from e
        return fn(address=address, **kwargs)

    options = [
        click.option("--dispatcher-server", default=f"{defaults.HOST}:{defaults.PORT}",
                     show_default=True, envvar="SUPERCI_DISPATCHER",
                     help="Where the dispatcher listens, host:port."),
        click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
                     envvar="SUPERCI_TOKEN_FILE", help=_TOKEN_FILE_HELP),
        click.option("--tls", is_flag=True, envvar="SUPERCI_TLS",
                     help="Connect with TLS, trusting the system's certificate store."),
        click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     envvar="SUPERCI_TLS_CA", help="Connect with TLS, trusting this CA bundle."),
    ]  # fmt: skip
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _state_file(results: Path, state: Path | None) -> Path:
    """The dispatcher's database: ``--state``, else beside its results folder."""
    return state or results.resolve().parent / defaults.STATE_FILE


def _reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn superci's own errors into a one-line message and exit code 1, not a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SuperCIError as e:
            raise click.ClickException(str(e)) from e

    return wrapper


def _run_until_signalled(main: Coroutine[Any, Any, None]) -> None:
    """Run a process's main coroutine; SIGINT or SIGTERM cancel it so it cleans up."""

    async def runner() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def stop(sig: signal.Signals) -> None:
            # Ctrl-C reaches a whole process group and `superci up` then sends SIGTERM to
            # its children too: a second signal must not cut short the orderly way out
            # (telling the dispatcher, stopping the build), which is bounded anyway.
            if task.cancelling():
                log.info("%s: already stopping", sig.name)
            else:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig)
        try:
            await main
        except asyncio.CancelledError:
            log.info("stopped")

    asyncio.run(runner())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="superci")
def main() -> None:
    """superci: continuous integration for a team on one LAN.

    Start a dispatcher, one or more runners and an observer (or all of them at once
    with `superci up PATH`); every new commit is tested and its result written under
    test_results/<sha>/.
    """


@main.command("dispatcher")
@click.option(
    "--host",
    default=defaults.HOST,
    show_default=True,
    envvar="SUPERCI_HOST",
    help="Address to listen on.",
)
@click.option(
    "--port",
    default=defaults.PORT,
    show_default=True,
    envvar="SUPERCI_PORT",
    type=click.IntRange(0, 65535),
    help="TCP port (0 picks a free one).",
)
@click.option(
    "--results",
    default=defaults.RESULTS_DIR,
    show_default=True,
    envvar="SUPERCI_RESULTS",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder that receives <sha>/result.json and output.log.",
)
@click.option(
    "--state",
    default=None,
    envvar="SUPERCI_STATE",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"SQLite state file [default: {defaults.STATE_FILE} beside the results folder].",
)
@click.option(
    "--heartbeat-timeout",
    default=defaults.HEARTBEAT_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0.1),
    envvar="SUPERCI_HEARTBEAT_TIMEOUT",
    help="Seconds of silence after which a runner is dead.",
)
@click.option(
    "--max-attempts",
    default=defaults.MAX_ATTEMPTS,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="SUPERCI_MAX_ATTEMPTS",
    help="Runners a build may lose (connection dropped, silent) before it ends as an "
    "error; runners stopped on purpose give their build back without using an attempt.",
)
@click.option(
    "--build-timeout",
    default=defaults.MAX_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0.1),
    envvar="SUPERCI_BUILD_TIMEOUT",
    help="Longest a build may run in seconds: its limit until the runner says which "
    "applies, and the cap on what a runner says.",
)
@click.option(
    "--max-log-bytes",
    default=defaults.MAX_LOG_BYTES,
    show_default=True,
    type=click.IntRange(min=1024),
    envvar="SUPERCI_MAX_LOG_BYTES",
    help="Largest output.log per build; past it the middle is dropped, the tail kept.",
)
@click.option(
    "--log-idle-timeout",
    default=defaults.LOG_IDLE_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0.1),
    envvar="SUPERCI_LOG_IDLE_TIMEOUT",
    help="Seconds a `logs --follow` may wait on a build that prints nothing (queued, "
    "silent) before it is ended with a note.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SUPERCI_TOKEN_FILE",
    help=_TOKEN_FILE_HELP,
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="SUPERCI_TLS_CERT",
    help="Serve TLS with this certificate (chain).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="SUPERCI_TLS_KEY",
    help="The private key of --tls-cert.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Listen beyond loopback without a token (anyone on the network may submit).",
)
@click.option(
    "--web",
    envvar="SUPERCI_WEB",
    metavar="HOST:PORT",
    help="Serve the web page (builds, logs, runners, badges) here; port 0 picks one.",
)
@click.option(
    "--web-public",
    is_flag=True,
    help="With a token, let anyone who reaches --web view the page without logging in "
    "(read-only; badges are always public).",
)
@_verbose_option
@_reports_errors
@_takes_settings(DispatcherSettings)
def dispatcher_command(
    settings: DispatcherSettings,
    host: str,
    port: int,
    results: Path,
    state: Path | None,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
    web: str | None,
    web_public: bool,
    verbose: bool,
) -> None:
    """Accept builds, keep the runner pool and record every result."""
    from superci.dispatcher import run_dispatcher

    _setup_logging(verbose)
    token = load_token(token_file)
    if token is None and not is_loopback(host):
        if not insecure:
            raise click.ClickException(
                f"refusing to listen on {host} without a token: anyone who can reach it could "
                f"run builds and read results. Set {TOKEN_ENV} (or --token-file) on the "
                "dispatcher and every client, or pass --insecure to accept the risk."
            )
        log.warning("listening on %s without a token (--insecure)", host)
    if (tls_cert is None) != (tls_key is None):
        raise click.ClickException("--tls-cert and --tls-key go together")
    tls = server_tls(tls_cert, tls_key) if tls_cert and tls_key else None
    web_address = _web_address(web, token is not None, insecure, web_public)
    state = _state_file(results, state)
    _run_until_signalled(
        run_dispatcher(
            host,
            port,
            results,
            state,
            settings=settings,
            credentials=Credentials(token=token, ssl=tls),
            web=web_address,
            web_public=web_public,
        )
    )


def _web_address(
    web: str | None, has_token: bool, insecure: bool, public: bool
) -> tuple[str, int] | None:
    """Where to serve the web page; beyond loopback only as the TCP rule allows."""
    from superci.web import parse_web_address

    if web is None:
        return None
    try:
        host, port = parse_web_address(web)
    except ProtocolError as e:
        raise click.BadParameter(str(e), param_hint="--web") from None
    if is_loopback(host):
        return host, port
    if not has_token and not insecure:
        raise click.ClickException(
            f"refusing to serve the web page on {host} without a token: anyone who can "
            f"reach it could read every build and log. Set {TOKEN_ENV} (or --token-file) "
            "and the page asks for it, or pass --insecure to accept the risk."
        )
    if not has_token or public:
        log.warning("the web page on %s is open to anyone who can reach it (read-only)", host)
    return host, port
    if not has_token and not insecure:
        raise click.ClickException(
            f"refusing to serve the web page on {host} without a token: anyone who can "
            f"reach it could read every build and log. Set {TOKEN_ENV} (or --token-file), "
            "or pass --insecure to accept the risk."
        )
    if has_token and not public:
        raise click.ClickException(
            f"refusing to serve the web page on {host}: it has no login yet, so anyone who "
            "can reach it could read every build and log. Pass --web-public to allow that "
            "read-only viewing, or keep --web on 127.0.0.1."
        )
    log.warning("the web page on %s is open to anyone who can reach it (read-only)", host)
    return host, port


@main.command("runner")
@_dispatcher_server_option
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--name",
    envvar="SUPERCI_RUNNER_NAME",
    help="Name in the pool [default: host name plus a hash of PATH].",
)
@click.option(
    "--heartbeat-interval",
    default=defaults.HEARTBEAT_INTERVAL,
    show_default=True,
    type=click.FloatRange(min=0.01),
    envvar="SUPERCI_HEARTBEAT_INTERVAL",
    help="Seconds between heartbeats.",
)
@click.option(
    "--timeout",
    "build_timeout",
    default=defaults.BUILD_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0.1),
    envvar="SUPERCI_TIMEOUT",
    help="Build time limit in seconds when .superci.toml sets none.",
)
@click.option(
    "--max-timeout",
    default=defaults.MAX_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0.1),
    envvar="SUPERCI_MAX_TIMEOUT",
    help="Longest time limit in seconds a build's .superci.toml may set; above it the "
    "build is an error.",
)
@click.option(
    "--kill-grace",
    default=defaults.KILL_GRACE,
    show_default=True,
    type=click.FloatRange(min=0),
    envvar="SUPERCI_KILL_GRACE",
    help="Seconds between SIGTERM and SIGKILL of a stopped build.",
)
@click.option(
    "--max-spool-bytes",
    default=defaults.MAX_SPOOL_BYTES,
    show_default=True,
    type=click.IntRange(min=1024),
    envvar="SUPERCI_MAX_SPOOL_BYTES",
    help="Largest local copy of a build's output; past it the middle is dropped.",
)
@click.option(
    "--build-user",
    envvar="SUPERCI_BUILD_USER",
    help="Run every build as this dedicated user, in a copy of the commit of its own and a "
    "clean environment (Linux; the runner runs as root or with the sudo rule the README "
    "gives). Recommended for any runner "
    "that builds branches of people it does not fully trust.",
)
@click.option(
    "--env-cache",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SUPERCI_ENV_CACHE",
    help="Folder of the build environments (install, python in .superci.toml) that the "
    "runners of this machine share [default: ~/.cache/superci/environments; with "
    "--build-user, /var/cache/superci/environments-USER].",
)
@click.option(
    "--env-cache-size",
    default=defaults.ENV_CACHE_SIZE,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="SUPERCI_ENV_CACHE_SIZE",
    help="Build environments kept in --env-cache; the least recently used beyond it are removed.",
)
@click.option(
    "--identity-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SUPERCI_IDENTITY_FILE",
    help="Where the runner keeps the secret that proves its name (mode 0600) "
    "[default: PATH/.git/superci-identity].",
)
@click.option(
    "--label",
    "given_labels",
    multiple=True,
    envvar="SUPERCI_LABELS",
    help="A label of this runner, KEY=VALUE (a bare KEY means KEY=true), which a "
    "commit's `needs` may ask for; repeatable. It replaces a detected fact of the same key "
    "(os, arch, python).",
)
@click.option(
    "--exclusive",
    is_flag=True,
    envvar="SUPERCI_EXCLUSIVE",
    help="Take only builds whose `needs` ask for one of this runner's --label labels.",
)
@_verbose_option
@_reports_errors
@_takes_settings(RunnerSettings)
def runner_command(
    settings: RunnerSettings,
    address: Address,
    path: Path,
    name: str | None,
    identity_file: Path | None,
    given_labels: tuple[str, ...],
    exclusive: bool,
    verbose: bool,
) -> None:
    """Run builds in the clone at PATH for the dispatcher at --dispatcher-server."""
    from superci.labels import parse_labels
    from superci.runner import RunnerProcess, default_runner_name
    from superci.workspace import Workspace

    try:
        labels = parse_labels(given_labels)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--label") from None
    if exclusive and not labels:
        raise click.BadParameter(
            "an exclusive runner takes only builds that need one of its own labels: give "
            "it one with --label", param_hint="--exclusive"
        )  # fmt: skip
    _setup_logging(verbose)
    workspace = Workspace(path, settings.git_timeout)
    runner = RunnerProcess(
        address,
        workspace,
        name or default_runner_name(workspace),
        settings=settings,
        identity_file=identity_file,
        given_labels=labels,
        exclusive=exclusive,
    )
    _run_until_signalled(runner.run_forever())


@main.command("forget-runner")
@click.argument("name")
@click.option(
    "--results",
    default=defaults.RESULTS_DIR,
    show_default=True,
    envvar="SUPERCI_RESULTS",
    type=click.Path(file_okay=False, path_type=Path),
    help="The dispatcher's results folder (its state file is found beside it).",
)
@click.option(
    "--state",
    default=None,
    envvar="SUPERCI_STATE",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"The dispatcher's SQLite state file [default: {defaults.STATE_FILE} beside the "
    "results folder].",
)
@_reports_errors
def forget_runner_command(name: str, results: Path, state: Path | None) -> None:
    """Free the runner name NAME from its identity, so that the next runner to register
    as NAME takes it (for a runner that lost its identity file). Run it where the
    dispatcher runs, with its --results or --state; a runner still connected keeps its
    place until it goes."""
    from superci.store import Store

    state = _state_file(results, state)
    if not state.is_file():
        raise click.ClickException(
            f"no dispatcher state at {state}: give the dispatcher's --state (or --results)"
        )
    store = Store(state)
    try:
        forgotten = store.forget_runner(name)
    finally:
        store.close()
    if not forgotten:
        raise click.ClickException(f"no runner named {name!r} is known in {state}")
    click.echo(f"runner {name} forgotten: the next runner to register as {name} takes the name")


@main.command("observer")
@_dispatcher_server_option
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--interval",
    default=defaults.POLL_INTERVAL,
    show_default=True,
    type=click.FloatRange(min=0.05),
    envvar="SUPERCI_INTERVAL",
    help="Seconds between two fetches.",
)
@click.option(
    "--branch",
    "branches",
    multiple=True,
    envvar="SUPERCI_BRANCHES",
    help="Branch to watch; repeatable [default: the clone's current branch].",
)
@click.option(
    "--max-backlog",
    default=defaults.MAX_BACKLOG,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="SUPERCI_MAX_BACKLOG",
    help="Most new commits of a branch sent in one poll, newest kept (a force push builds "
    "its new tip, not its whole rewritten history).",
)
@_verbose_option
@_reports_errors
@_takes_settings(ObserverSettings)
def observer_command(
    settings: ObserverSettings,
    address: Address,
    path: Path,
    branches: tuple[str, ...],
    verbose: bool,
) -> None:
    """Watch the clone at PATH and ask the dispatcher to build every new commit."""
    from superci import gitname
    from superci.client import submit
    from superci.commitconfig import config_at
    from superci.observer import Observer

    _setup_logging(verbose)
    repo = gitname.open_clone(path)  # to send each commit's .superci.toml with it

    def deliver(sha: str, branch: str) -> None:
        config = None if repo is None else config_at(repo, sha)
        reply = submit(address, sha, branch, described=observer.describe(sha), config=config)
        log.info("commit %s (%s): %s", sha[:12], branch, "queued" if reply.queued else "known")

    observer = Observer(path, deliver, branches, settings=settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    observer.run(settings.interval, stop)


@main.command("notify")
@_dispatcher_server_option
@click.argument("commit")
@click.option(
    "--branch",
    default=None,
    envvar="SUPERCI_BRANCH",
    help="Branch the commit belongs to [default: in a clone, the branch it is on; "
    "else main, or for a short id or branch name the branch of its known build].",
)
@click.option("--rebuild", is_flag=True, help="Build again even if the commit is known.")
@_reports_errors
def notify_command(address: Address, commit: str, branch: str | None, rebuild: bool) -> None:
    """Queue COMMIT, e.g. from a post-receive hook.

    Inside a clone, COMMIT is anything git names a commit by (HEAD, a tag, a short id, a
    branch); elsewhere a full 40-character id, or a short id or branch name the dispatcher
    knows (to build it again with --rebuild).
    """
    from superci.client import submit

    sha, branch = _commit_to_submit(address, commit, branch)
    described, config = _facts_here(sha)
    reply = submit(address, sha, branch, rebuild, described=described, config=config)
    if reply.status == "error":
        click.echo(f"build {reply.build_id} of {sha} ended at once as an error: "
                   f"`superci show {sha[:12]}` says why")  # fmt: skip
    elif reply.queued:
        click.echo(f"queued {sha} ({branch}) as build {reply.build_id}")
    else:
        click.echo(f"already known: {sha} is build {reply.build_id} ({reply.status})")


def _commit_to_submit(address: Address, name: str, branch: str | None) -> tuple[str, str]:
    """The full id and branch of the commit ``name`` means: git's names in a clone first
    (a full id with its branch needs none), then a full id as it is (on main unless
    told), then the dispatcher's names."""
    from superci import protocol
    from superci.client import query

    commit = _commit_name(name)
    if branch is not None and protocol.SHA_RE.fullmatch(commit):
        return commit, branch  # all said: no need to ask git (the post-receive hook)
    clone = ""  # where git was asked, if it was
    if _may_be_in_clone():
        from superci import gitname

        repo = gitname.open_clone()
        if repo is not None:
            found = gitname.resolve(repo, name, branch)
            if found is not None:
                return found.sha, found.branch
            clone = gitname.where(repo)
    try:
        protocol.check_commit_name(commit)
    except SuperCIError as e:
        raise click.ClickException(f"{e}{_unknown_to_git(clone)}") from e
    if protocol.SHA_RE.fullmatch(commit):
        return commit, branch or "main"
    reply = query(address, protocol.QueryKind.SHOW, commit=commit)
    if reply.status in ("unknown", "ambiguous"):
        raise click.ClickException(f"{reply.message}{_unknown_to_git(clone)}")
    known = json.loads(reply.document)
    return known["sha"], branch or known["branch"]


def _facts_here(sha: str) -> tuple[Description | None, str | None]:
    """The commit's subject and author, and its .superci.toml (whose needs choose the
    runner), from the clone (or bare repository, as in the post-receive hook) we are in,
    if it has the commit; else None, and the runner that builds it finds them."""
    if not _may_be_in_clone():
        return None, None
    from superci import gitname
    from superci.commitconfig import config_at

    repo = gitname.open_clone()
    if repo is None:
        return None, None
    return gitname.describe(repo, sha), config_at(repo, sha)


def _unknown_to_git(clone: str) -> str:
    return f" (nor does git know it in {clone})" if clone else ""


def _may_be_in_clone() -> bool:
    """Whether a repository may hold the current folder: a cheap look before loading
    GitPython (tens of milliseconds), which then finds it for certain."""
    here = Path.cwd()
    return "GIT_DIR" in os.environ or any(
        (p / ".git").exists() or ((p / "HEAD").is_file() and (p / "objects").is_dir())
        for p in (here, *here.parents)
    )


def _commit_name(name: str) -> str:
    """Commit ids are lowercase hex; other names (branches) keep their case."""
    return name.lower() if re.fullmatch(r"[0-9a-fA-F]{7,40}", name) else name


@main.command("cancel")
@_dispatcher_server_option
@click.argument("commit")
@_reports_errors
def cancel_command(address: Address, commit: str) -> None:
    """Cancel the newest build of COMMIT (queued: at once; running: its tests are stopped).

    COMMIT is a full id, a unique prefix of 7+ characters, or a branch (its latest build).
    """
    from superci.client import cancel

    reply = cancel(address, _commit_name(commit))
    click.echo(reply.message)
    if reply.status not in ("cancelled", "cancelling"):
        sys.exit(1)


_BUILD_OPTION = click.option(
    "--build",
    "build_id",
    type=click.IntRange(min=1),
    help="That build of the commit (an earlier one) instead of the newest.",
)
_JOB_OPTION = click.option(
    "--job",
    "job",
    help="That job of a commit of several (its name as `show` lists it: 'tests (python=3.12)').",
)


@main.command("logs")
@_dispatcher_server_option
@click.argument("commit")
@click.option("-f", "--follow", is_flag=True, help="Stream the log live until the build ends.")
@_BUILD_OPTION
@_JOB_OPTION
@_reports_errors
def logs_command(
    address: Address, commit: str, follow: bool, build_id: int | None, job: str | None
) -> None:
    """Print the output of the build of COMMIT (a full id, a unique prefix of 7+
    characters, or a branch: its latest build).

    With --follow, the exit code tells the outcome: 0 passed, 1 failed, 2 anything else.
    """
    from superci.client import read_log

    def write(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    try:
        reply = asyncio.run(read_log(address, _commit_name(commit), follow, write, build_id, job))
    except KeyboardInterrupt:
        sys.exit(130)
    if reply.status in ("unknown", "ambiguous", "choose-job"):
        raise click.ClickException(reply.message)
    if follow:
        click.echo(f"superci: {reply.message}" if reply.status == "idle"
                   else f"superci: build {reply.status}", err=True)  # fmt: skip
        sys.exit(OUTCOME_EXIT_CODES.get(reply.status, 2))


#: Exit codes of ``logs --follow``, by how the build ended.
OUTCOME_EXIT_CODES = {"passed": 0, "failed": 1}


@main.command("watch")
@_dispatcher_server_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event, for scripts.")
@_reports_errors
def watch_command(address: Address, as_json: bool) -> None:
    """Print every event live, one line each, until Ctrl-C: builds queued, started,
    printing output, finished or cancelled; runners joining, leaving, busy or idle.

    A watcher too slow to keep up is dropped by the dispatcher: it says so and exits
    with code 2 (events were missed; run it again, and `superci status` for the state).
    """
    from superci.client import watch
    from superci.tables import event_line

    def show(document: dict[str, Any]) -> None:
        click.echo(json.dumps(document) if as_json else event_line(document))

    try:
        asyncio.run(watch(address, show))
    except KeyboardInterrupt:
        sys.exit(130)
    behind = "this watcher fell behind the dispatcher's events and missed some"
    click.echo(f"superci: {behind}; run `superci watch` again (`superci status` shows the state)",
               err=True)  # fmt: skip
    sys.exit(2)


@main.command("status")
@_dispatcher_server_option
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="How many of the last builds to list.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")
@_reports_errors
def status_command(address: Address, limit: int, as_json: bool) -> None:
    """Show the runners, the queue and the last builds."""
    from superci import protocol
    from superci.client import query
    from superci.tables import status_tables

    document = json.loads(query(address, protocol.QueryKind.STATUS, limit=limit).document)
    click.echo(json.dumps(document, indent=2) if as_json else status_tables(document))
    _note_truncated(document)


@main.command("show")
@_dispatcher_server_option
@click.argument("commit")
@_BUILD_OPTION
@_JOB_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_reports_errors
def show_command(
    address: Address, commit: str, build_id: int | None, job: str | None, as_json: bool
) -> None:
    """Show the result of the build of COMMIT and its failing tests (a full id, a unique
    prefix of 7+ characters, or a branch: its latest build); of a commit of several jobs,
    its status and one line per job (--job for one of them)."""
    from superci import protocol
    from superci.client import query
    from superci.tables import commit_summary, result_summary

    reply = query(address, protocol.QueryKind.SHOW, commit=_commit_name(commit),
                  build_id=build_id, job=job)  # fmt: skip
    if reply.status in ("unknown", "ambiguous"):
        raise click.ClickException(reply.message)
    document = json.loads(reply.document)
    if as_json:
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(commit_summary(document) if "jobs" in document else result_summary(document))
    _note_truncated(document)


def _note_truncated(document: dict[str, Any]) -> None:
    """Say on stderr what the dispatcher left out to fit its reply in one frame."""
    if document.get("truncated"):
        left_out = ", ".join(f"{n} {key}" for key, n in document.get("left_out", {}).items())
        click.echo(f"superci: the reply was too long; left out: {left_out or 'some items'}",
                   err=True)  # fmt: skip


@main.command("up")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--runners",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Runners to start, each with its own clone.",
)
@click.option("--host", default=defaults.HOST, show_default=True, help="Dispatcher address.")
@click.option(
    "--port",
    default=defaults.PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Dispatcher port (0 picks a free one).",
)
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    help=f"Results folder [default: {defaults.RESULTS_DIR}/ in the work folder].",
)
@click.option(
    "--work",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the clones, the database and the logs "
    "[default: ~/.local/state/superci/up/<repository>-<hash>, or under $XDG_STATE_HOME].",
)
@click.option(
    "--interval",
    default=defaults.POLL_INTERVAL,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Observer poll period in seconds.",
)
@click.option(
    "--branch",
    "branches",
    multiple=True,
    help="Branch to watch; repeatable [default: PATH's current branch].",
)
@click.option(
    "--web-port",
    default=defaults.UP_WEB_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Serve the web page on 127.0.0.1 at the first free port from this one (0 picks any).",
)
@click.option("--no-web", is_flag=True, help="Serve no web page.")
@_verbose_option
@_reports_errors
def up_command(
    path: Path,
    runners: int,
    host: str,
    port: int,
    results: Path | None,
    work: Path | None,
    interval: float,
    branches: tuple[str, ...],
    web_port: int,
    no_web: bool,
    verbose: bool,
) -> None:
    """Run a dispatcher, runners and an observer for the repository at PATH, here.

    PATH is the repository's top folder or a bare repository; superci writes nothing into
    it. The web page's address is printed first (see --web-port), then each build's
    outcome as it finishes; Ctrl-C stops everything.
    """
    from superci.up import Stack

    if not is_loopback(host):
        raise click.ClickException(
            "superci up runs every part on this machine; keep --host on loopback. For the "
            "LAN, start `superci dispatcher` with a token (see README: On a LAN)."
        )
    stack = Stack(
        path,
        runners=runners,
        host=host,
        port=port,
        results=results,
        work=work,
        interval=interval,
        branches=branches,
        verbose=verbose,
        web_port=None if no_web else web_port,
    )
    stack.prepare()
    _setup_logging(verbose, None if verbose else stack.logs / "up.log")
    _run_until_signalled(stack.run(click.echo))


def _standalone(command: click.Command) -> Callable[[], None]:
    """A console script of its own for one process command (named after the script)."""

    def entry() -> None:
        command.main()

    return entry


dispatcher_main = _standalone(dispatcher_command)
runner_main = _standalone(runner_command)
observer_main = _standalone(observer_command)
