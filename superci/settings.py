"""One frozen settings object per process: what the CLI's options, the ``SUPERCI_…``
variables and :mod:`superci.defaults` say about how that process behaves.

The CLI builds it once (click has already merged options, environment and defaults) and
hands it down, so the dispatcher, a runner and the observer read their tunables from one
value instead of from parameters threaded through every layer or from module globals. A
test sets a tunable with :func:`dataclasses.replace` on its own copy, never by patching
:mod:`superci.defaults`, which stays the one place where default values and the reasons
for them are written.

What a process is *for* (the address it serves or connects to, its folders, its name,
its credentials) stays an explicit argument; settings say *how* it behaves: timeouts,
intervals and limits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from superci import defaults

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

S = TypeVar("S", bound="DataclassInstance")


@dataclass(frozen=True)
class DispatcherSettings:
    """How the dispatcher treats runners, clients and strangers."""

    #: Seconds of silence after which a runner is dead.
    heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT
    #: How often the watchdog looks for silent runners and overdue builds.
    heartbeat_check_interval: float = defaults.HEARTBEAT_CHECK_INTERVAL
    #: Runners a build may lose before it ends as an error.
    max_attempts: int = defaults.MAX_ATTEMPTS
    #: Hand-backs (runners leaving on purpose) before a build ends as an error.
    max_handbacks: int = defaults.MAX_HANDBACKS
    #: Added to a build's deadline and to the time a runner may take to stop it (seconds).
    deadline_margin: float = defaults.DEADLINE_MARGIN
    #: Failed checkouts of different commits in a row after which a runner is benched.
    bench_after: int = defaults.BENCH_AFTER
    #: A runner's first bench (seconds), doubled by each one after it up to ``bench_max``.
    bench_time: float = defaults.BENCH_TIME
    bench_max: float = defaults.BENCH_MAX
    #: Longest a build may run (seconds), and the cap on what a runner says.
    build_timeout: float = defaults.MAX_TIMEOUT
    #: Largest output.log kept per build (bytes).
    max_log_bytes: int = defaults.MAX_LOG_BYTES
    #: Largest report (junit.xml) accepted from a runner (bytes).
    max_report_bytes: int = defaults.MAX_REPORT_BYTES
    #: A ``logs --follow`` of a silent build is ended after this long (seconds).
    log_idle_timeout: float = defaults.LOG_IDLE_TIMEOUT
    #: Keep-alive period of a ``logs --follow`` reader (seconds).
    log_keepalive_interval: float = defaults.LOG_KEEPALIVE_INTERVAL
    #: Time a peer has to finish its opening handshake (seconds).
    handshake_timeout: float = defaults.HANDSHAKE_TIMEOUT
    #: An idle client connection is closed after this long (seconds).
    client_idle_timeout: float = defaults.CLIENT_IDLE_TIMEOUT
    #: A peer that takes no frame for this long is disconnected (seconds).
    send_timeout: float = defaults.SEND_TIMEOUT
    #: Connections open at once; beyond it newcomers hear "busy".
    max_connections: int = defaults.MAX_CONNECTIONS
    #: Connections in their opening handshake at once.
    max_unauthenticated: int = defaults.MAX_UNAUTHENTICATED
    #: Pending connections the kernel queues.
    listen_backlog: int = defaults.LISTEN_BACKLOG
    #: Time open connections get to wind down on shutdown (seconds).
    shutdown_grace: float = defaults.SHUTDOWN_GRACE
    #: How long a submit is retried while the database is locked, and its first wait.
    store_retry_limit: float = defaults.STORE_RETRY_LIMIT
    store_retry_initial: float = defaults.STORE_RETRY_INITIAL
    #: Keep-alive comment period of the web page's ``/events`` stream (seconds).
    web_keepalive_interval: float = defaults.WEB_KEEPALIVE_INTERVAL
    #: Events the web page keeps for a browser's ``Last-Event-ID`` resume.
    web_event_ring: int = defaults.WEB_EVENT_RING
    #: Builds on one page of the web page's list.
    web_page_size: int = defaults.WEB_PAGE_SIZE
    #: Wrong tokens one address may give the web page's login per window (seconds).
    web_login_failures: int = defaults.WEB_LOGIN_FAILURES
    web_login_window: float = defaults.WEB_LOGIN_WINDOW


@dataclass(frozen=True)
class RunnerSettings:
    """How a runner heartbeats, bounds its builds and reads what a commit holds."""

    #: Seconds between heartbeats.
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL
    #: A build's time limit when its .superci.toml names none (seconds).
    build_timeout: float = defaults.BUILD_TIMEOUT
    #: The longest time limit a .superci.toml may ask for (seconds).
    max_timeout: float = defaults.MAX_TIMEOUT
    #: Seconds between SIGTERM and SIGKILL of a stopped build.
    kill_grace: float = defaults.KILL_GRACE
    #: Largest local copy of a build's output (bytes).
    max_spool_bytes: int = defaults.MAX_SPOOL_BYTES
    #: Largest JUnit report sent with a result (bytes).
    max_report_bytes: int = defaults.MAX_REPORT_BYTES
    #: A file of the checkout not read within this long is an error (seconds).
    file_read_timeout: float = defaults.FILE_READ_TIMEOUT
    #: After a build's process group is gone, its output pipe gets this long (seconds).
    output_drain_timeout: float = defaults.OUTPUT_DRAIN_TIMEOUT
    #: A git fetch or submodule update in the runner's clone is killed after this long.
    git_timeout: float = defaults.GIT_TIMEOUT
    #: Time the dispatcher has to answer a registration (seconds).
    register_timeout: float = defaults.CLIENT_TIMEOUT
    #: Time the dispatcher has to take note of a runner leaving (seconds).
    leave_timeout: float = defaults.LEAVE_TIMEOUT
    #: The dedicated user builds run as (see :mod:`superci.builduser`); None: the runner's.
    build_user: str | None = None
    #: Where build environments are cached (see :mod:`superci.environments`); None: the
    #: default place (environments.default_root).
    env_cache: Path | None = None
    #: Build environments kept in that cache, least recently used removed first.
    env_cache_size: int = defaults.ENV_CACHE_SIZE


@dataclass(frozen=True)
class ObserverSettings:
    """How often the observer looks, how much it sends and how long a fetch may take."""

    #: Seconds between two polls.
    interval: float = defaults.POLL_INTERVAL
    #: Most new commits of a branch sent in one poll, newest kept.
    max_backlog: int = defaults.MAX_BACKLOG
    #: A fetch is killed after this long (seconds).
    fetch_timeout: float = defaults.FETCH_TIMEOUT


def with_given(settings: S, **values: Any) -> S:
    """``settings`` with each value that is not None put in its field: how the older
    keyword arguments (``Dispatcher(..., max_attempts=2)``) fold into a settings object."""
    given = {name: value for name, value in values.items() if value is not None}
    return replace(settings, **given) if given else settings
