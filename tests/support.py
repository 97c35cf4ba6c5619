"""What the tests and ``scripts/bench.py`` both need to watch real programs from outside:
bounded polling waits, whether a process still runs, a free port, a process's memory and
slow readers of a log.

Plain functions with no pytest in them, so the benchmark imports this file as it is (it
puts ``tests/`` on ``sys.path``): one copy of each, and the benchmark waits exactly as the
tests do. Poll only for what gives no event (a file appearing, a process ending); await
the event where there is one.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from superci import client, protocol
from superci.channel import Address, Channel
from superci.containment import read_process

#: Upper bound for anything an end-to-end test waits on; reached only when broken.
E2E_WAIT = 60.0
#: Bound for one wait on one event inside an in-process test (seconds).
WAIT = 5.0
#: How often a wait that can only poll looks again (seconds).
POLL = 0.01

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = E2E_WAIT, what: str = "", poll: float = POLL
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; an
    AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(poll)


async def eventually(
    condition: Callable[[], T], timeout: float = WAIT, what: str = "condition", poll: float = POLL
) -> T:
    """:func:`wait_until` inside an event loop: the loop keeps running while it polls."""
    try:
        async with asyncio.timeout(timeout):
            while not (value := condition()):
                await asyncio.sleep(poll)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}") from None
    return value


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (dead, not yet reaped, perhaps never by an orphan's
    new parent) does not count. Read from /proc by :func:`superci.containment.read_process`."""
    process = read_process(pid)
    return process is not None and process.alive


def process_gone(pid: int) -> bool:
    """Dead, or a zombie nobody has reaped yet."""
    return not process_alive(pid)


def free_port() -> int:
    """A port nothing listens on right now (bound to port 0 by the kernel, then released),
    for a program that must start later on a port known in advance."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_processes(sha: str) -> list[int]:
    """Pids of live processes (zombies aside) whose environment names the commit ``sha``:
    every process a build of it starts, escaped ones included, inherits SUPERCI_COMMIT."""
    needle = f"SUPERCI_COMMIT={sha}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if needle in environ.split(b"\0") and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def rss_mib(pid: int) -> float:
    """VmRSS of a process in MiB, from /proc/<pid>/status (NaN for one that has none)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


async def slow_readers(
    address: Address, sha: str, count: int, pid: int, seconds: float
) -> tuple[float, int]:
    """``count`` readers of a commit's log, each taking a frame every half second, for
    ``seconds``; returns the peak RSS of process ``pid`` meanwhile and the bytes they got."""
    channels = []
    for _ in range(count):
        channel = await client.connect(address, "client", timeout=WAIT)
        await channel.send(protocol.LogRequest(commit=sha))
        channels.append(channel)
    received = [0]

    async def read_slowly(channel: Channel) -> None:
        while True:
            message = await channel.receive(WAIT)
            if isinstance(message, protocol.Reply):
                return
            received[0] += len(protocol.unpack_data(message.data))
            await asyncio.sleep(0.5)

    readers = [asyncio.create_task(read_slowly(c)) for c in channels]
    peak = rss_mib(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        peak = max(peak, rss_mib(pid))
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return peak, received[0]


def file_text(path: Path) -> str | None:
    """What a file holds, or None while it is missing or still empty (a marker file a
    test process writes: poll for it with :func:`wait_until`)."""
    try:
        return path.read_text() or None
    except FileNotFoundError:
        return None


def make_wheel(folder: Path, name: str, version: str = "1.0", body: str = "") -> Path:
    """A pure-Python wheel of one module ``name`` (its code ``body``) in ``folder``: what
    an install step installs offline (``pip install --no-index --find-links folder``)."""
    import base64
    import hashlib
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": body,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: superci-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


# --- a real browser ------------------------------------------------------------------

#: Debian's chromium and its chromedriver (packages chromium, chromium-driver).
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Headless, and nothing that reaches beyond this machine.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,900",
]  # fmt: skip


def have_chromium() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def start_chromium(profile: Path):  # type: ignore[no-untyped-def]  # selenium: a test extra
    """A headless chromium with a fresh profile in ``profile``, driven through the given
    chromedriver, so Selenium Manager never looks for (or downloads) one."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(E2E_WAIT)
    return driver
