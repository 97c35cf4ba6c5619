"""Tunables, each with why it has the value it has. Command-line options override them."""

#: Dispatcher address. Loopback so a fresh install is not reachable from the LAN by accident.
HOST = "127.0.0.1"
#: Dispatcher TCP port; 8888 as in the original design.
PORT = 8888

#: A runner sends a heartbeat this often (seconds), also while it builds.
HEARTBEAT_INTERVAL = 2.0
#: A runner silent this long (seconds) is dead: five missed heartbeats, so one slow
#: network moment is not mistaken for a crash.
HEARTBEAT_TIMEOUT = 10.0
#: How often the dispatcher looks for silent runners (seconds).
HEARTBEAT_CHECK_INTERVAL = 0.5
#: A build is tried on this many runners before it ends as an error ("runner lost").
MAX_ATTEMPTS = 3
#: A build whose runners leave on purpose (stopped, Ctrl-C) goes back to the queue without
#: using an attempt; after this many such hand-backs it ends as an error, so a build that
#: keeps sending its runners away cannot circulate for ever.
MAX_HANDBACKS = 20

#: Observer poll period (seconds): fast enough to feel live, slow enough to be no load.
POLL_INTERVAL = 5.0
#: Most new commits of one branch the observer sends in one poll, newest kept: a force
#: push of a rewritten history builds its new tip, not hundreds of commits nobody asked for.
MAX_BACKLOG = 50
#: An observer's fetch is killed after this long (seconds), so a hung remote cannot stall it.
FETCH_TIMEOUT = 120.0

#: Reconnect backoff (seconds): first wait, cap, and +/- jitter fraction, so that many
#: runners restarting together do not hammer a dispatcher that comes back.
BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 5.0
BACKOFF_JITTER = 0.2

#: A dispatcher that is too busy to let a client in (a flood of connections) is asked
#: again after this long (seconds), doubling up to the cap, until the client's time limit.
BUSY_RETRY_INITIAL = 0.05
BUSY_RETRY_MAX = 1.0

#: Time limit for one connect + handshake + reply of a short client command (seconds).
CLIENT_TIMEOUT = 10.0
#: A peer must finish the opening handshake within this time (seconds).
HANDSHAKE_TIMEOUT = 5.0

#: Largest frame accepted on the wire (bytes). Output travels in chunks far below this.
MAX_FRAME_BYTES = 1024 * 1024
#: Size of one output chunk a runner sends (bytes).
OUTPUT_CHUNK_BYTES = 64 * 1024

#: Test command when the tested repository has no .superci.toml (the original design:
#: tests live in tests/).
TEST_COMMAND = "python -m unittest discover -s tests"
#: Time limit for one build (seconds) when .superci.toml names none.
BUILD_TIMEOUT = 3600.0
#: No build may run longer (seconds), whatever its .superci.toml asks for: a runner's
#: --max-timeout and a dispatcher's --build-timeout, so a commit cannot hold a runner for ever.
MAX_TIMEOUT = 6 * 3600.0
#: After SIGTERM, a build's process group gets this long before SIGKILL (seconds).
KILL_GRACE = 10.0
#: The repository's own configuration file.
CONFIG_FILE = ".superci.toml"
#: Most jobs one commit may have, counting every cell of every matrix.
MAX_JOBS = 64
#: The job a .superci.toml without [jobs] defines (see superci.jobs).
DEFAULT_JOB = "default"
#: The longest job key (``tests (python=3.12)``) a commit may give a job.
MAX_JOB_KEY = 256
#: Most cells a matrix may have before its exclude entries are applied.
MAX_MATRIX_CELLS = 1024
#: Most exclude entries a matrix may have.
MAX_MATRIX_EXCLUDES = 256

#: Where results go and the name of the dispatcher's database inside its parent.
RESULTS_DIR = "test_results"
STATE_FILE = "superci.db"

#: A git fetch or submodule update in a runner's clone is killed after this long
#: (seconds), so an unreachable remote cannot wedge a runner forever.
GIT_TIMEOUT = 300.0
#: After a build's process group is gone, its output pipe gets this long (seconds) to
#: reach end-of-file; longer means a process escaped the group and holds it open.
OUTPUT_DRAIN_TIMEOUT = 2.0

#: A peer that does not take a frame within this time (seconds) is disconnected, so a
#: client that stops reading cannot make the dispatcher buffer without bound.
SEND_TIMEOUT = 10.0
#: Unsent bytes the dispatcher keeps for one peer before it gives up on that peer.
MAX_SEND_BUFFER = 4 * 1024 * 1024
#: Events queued for one watcher of the event bus (``superci watch``, ``logs --follow``)
#: before it counts as fallen behind and is dropped with a resync; its output bytes are
#: bounded by MAX_SEND_BUFFER as well.
EVENT_QUEUE_EVENTS = 10_000
#: A ``logs --follow`` reader is sent an empty piece of log this often (seconds) while
#: the build says nothing, so both ends know the other is still there.
LOG_KEEPALIVE_INTERVAL = 15.0
#: A ``logs --follow`` of a build that says nothing this long (seconds; queued, or silent)
#: is ended with a note, so abandoned readers do not hold connections for ever.
LOG_IDLE_TIMEOUT = 3600.0
#: A client connection (notify, status) idle this long (seconds) is closed.
CLIENT_IDLE_TIMEOUT = 60.0
#: Extra time (seconds) the dispatcher allows beyond a build's limit and kill grace before
#: it stops the build itself: room for the runner's own timeout to fire and report first.
DEADLINE_MARGIN = 5.0
#: Largest output.log kept per build (bytes); past it the middle is dropped with a marker,
#: keeping the start and the tail (where test summaries are). Protects the dispatcher's disk.
MAX_LOG_BYTES = 16 * 1024 * 1024
#: A database write waits this long (seconds) for another process's lock before it is
#: retried later: short, so a locked database never stalls heartbeats and logs.
DB_BUSY_TIMEOUT = 0.05
#: A submit is retried this long (seconds) while the database is locked, then refused;
#: below CLIENT_TIMEOUT, so the submitter hears why.
STORE_RETRY_LIMIT = 8.0
#: First wait (seconds) before such a retry; it doubles up to one second.
STORE_RETRY_INITIAL = 0.05
#: Largest spool a runner keeps of one build's output (bytes), head and tail as the log:
#: twice the log's cap, so a dispatcher that reconnects asks only for bytes it still has.
MAX_SPOOL_BYTES = 2 * MAX_LOG_BYTES
#: Largest JUnit report a runner sends with a result (bytes).
MAX_REPORT_BYTES = 8 * 1024 * 1024
#: Largest .superci.toml a runner reads (bytes): a few settings, never megabytes.
MAX_CONFIG_BYTES = 64 * 1024
#: A file of the checkout (.superci.toml, a report, the files that choose the test tool)
#: not read within this time (seconds) is an error: a hung disk must not wedge a runner.
FILE_READ_TIMEOUT = 30.0
#: Connections allowed at once in their opening handshake (not yet authenticated), so a
#: flood of idle sockets cannot exhaust the dispatcher.
MAX_UNAUTHENTICATED = 128
#: Connections open at once (runners and clients); beyond it new ones get "busy".
MAX_CONNECTIONS = 4096
#: A runner whose checkouts failed for this many different commits in a row gets no
#: builds for a while ("benched"): its clone or its network is at fault, not the commits.
#: Different commits, so that one commit missing upstream, rebuilt again and again, never
#: benches a healthy runner.
BENCH_AFTER = 3
#: How long (seconds) a runner is benched the first time; each bench that follows without
#: a good checkout between doubles it, up to BENCH_MAX. A runner that registers again
#: (restarted, presumably mended) starts with a clean record.
BENCH_TIME = 300.0
BENCH_MAX = 3600.0
#: Pending connections the kernel queues for the dispatcher (a burst of runners and clients).
LISTEN_BACKLOG = 1024
#: A runner that leaves on purpose waits this long (seconds) for the dispatcher to take
#: note before it goes anyway.
LEAVE_TIMEOUT = 3.0
#: On shutdown, open connections get this long (seconds) to wind down.
SHUTDOWN_GRACE = 2.0
#: A ``/events`` stream of the web page gets a comment this often (seconds) when nothing
#: happens, so proxies and browsers keep the connection open.
WEB_KEEPALIVE_INTERVAL = 15.0
#: Events the web page keeps for browsers that reconnect with ``Last-Event-ID``; one
#: that missed more is told to read the page again (a ``resync`` event).
WEB_EVENT_RING = 10_000
#: Builds on one page of the web page's list.
WEB_PAGE_SIZE = 50
#: ``superci up`` serves the web page on the first free port from this one (8080, where
#: people look for a local web page), trying this many ports before it gives up.
UP_WEB_PORT = 8080
UP_WEB_PORT_TRIES = 100
#: Wrong tokens one address may give the web page's login in a window of this many
#: seconds; past them it is refused (429) until the window moves on.
WEB_LOGIN_FAILURES = 5
WEB_LOGIN_WINDOW = 60.0
#: Build environments a runner machine keeps (see superci.environments); the least
#: recently used beyond it are removed. Ten covers a few projects with a few Pythons each.
ENV_CACHE_SIZE = 10
#: Weight of a test's newest measured duration in the average a split orders tests by:
#: a half follows a test that became slower within two builds, and one slow run (a busy
#: machine) moves it only halfway.
DURATION_WEIGHT = 0.5
