"""The web page in a real browser (Debian's chromium, driven by Selenium through its
chromedriver) against the real dispatcher and runner programs: live updates without a
reload, a log that follows a running build, the cancel button, and a 16 MiB log that
opens with no more than 2,000 lines in the page. A failed test leaves a screenshot and
the page's HTML in ``test-artifacts/``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import ARTIFACTS, Repo, Superci, failed
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from support import E2E_WAIT, file_text, have_chromium, start_chromium, wait_until

from superci.weblog import TAIL_LINES

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not have_chromium(),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver; .ci/run does)",
    ),
]

T = TypeVar("T")


@pytest.fixture
def browser(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WebDriver]:
    """A headless chromium with a fresh profile; its page is saved if the test fails."""
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager never downloads a driver
    driver = start_chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        if failed(request):
            save_page(driver, request.node.name)
        driver.quit()


def save_page(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    (ARTIFACTS / f"{name}.html").write_text(driver.page_source, encoding="utf-8")


def web_page(superci: Superci, *extra: str) -> str:
    """Start the dispatcher with its web page on a free port; returns the page's URL."""
    process = superci.dispatcher(0, "--web", "127.0.0.1:0", *extra)
    return process.wait_for_log(r"web page at (http://\S+/)").group(1)


def eventually(driver: WebDriver, check: Callable[[WebDriver], T], what: str) -> T:
    """``check``'s first true value, polled in the browser (bounded by the e2e wait)."""
    wait = WebDriverWait(
        driver, E2E_WAIT, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    )  # an element can go between finding and reading it when the page is replaced
    return wait.until(check, message=f"gave up waiting for {what}")


def row_status(driver: WebDriver, sha: str) -> Any:
    """The status a build of ``sha`` has on the builds page (None without a row)."""
    return driver.execute_script(
        "const link = document.querySelector(`#builds a[href='/commit/${arguments[0]}']`);"
        "return link && link.closest('tr').querySelector('.c-status').textContent;",
        sha,
    )


def script_errors(driver: WebDriver) -> list[str]:
    """What the page's scripts logged as errors (none, when they work)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def log_lines(driver: WebDriver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#log .l')].map(l => l.id + ' ' + "
        "l.querySelector('.t').textContent)"
    )


def test_a_build_goes_queued_running_passed_on_the_builds_page_without_a_reload(
    repo: Repo, superci: Superci, browser: WebDriver, tmp_path: Path
):
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    clone = repo.clone(tmp_path / "runner-1")
    browser.get(web_page(superci))
    browser.execute_script("window.notReloaded = true")

    assert "queued" in superci.notify(sha).stdout
    eventually(browser, lambda d: row_status(d, sha) == "queued", "the new build's row")
    eventually(browser, lambda d: d.find_element(By.ID, "queued").text == "1", "a queue of 1")
    queue = browser.find_element(By.ID, "queue").text
    assert sha[:12] in queue and "no runner connected; next in line" in queue, queue
    superci.runner(clone, "runner-1")
    eventually(browser, lambda d: row_status(d, sha) == "running", "the build to run")
    eventually(browser, lambda d: d.find_element(By.ID, "queued").text == "0", "an empty queue")
    assert browser.find_element(By.ID, "queue").text.endswith("empty")
    (gate / "open").touch()
    eventually(browser, lambda d: row_status(d, sha) == "passed", "the build to pass")
    row = browser.find_element(By.CSS_SELECTOR, f"#builds a[href='/commit/{sha}']")
    cells = row.find_element(By.XPATH, "ancestor::tr").text
    assert "runner-1" in cells and "1 passed" in cells
    assert browser.execute_script("return window.notReloaded === true"), "never reloaded"
    assert script_errors(browser) == []


def test_a_line_the_build_prints_appears_in_the_commit_page_s_log_while_it_runs(
    repo: Repo, superci: Superci, browser: WebDriver, tmp_path: Path
):
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    clone = repo.clone(tmp_path / "runner-1")
    url = web_page(superci)
    superci.notify(sha)
    browser.get(f"{url}commit/{sha}")  # queued: nothing printed yet
    assert browser.find_element(By.ID, "f-status").text == "queued"
    superci.runner(clone, "runner-1")

    line = "before the gate, attempt 1"
    eventually(browser, lambda d: any(line in t for t in log_lines(d)), "the printed line")
    assert browser.find_element(By.ID, "f-status").text == "running"
    assert not (gate / "finished-1").exists(), "the build still waits for the test"
    numbered = next(t for t in log_lines(browser) if line in t)
    number = superci.output(sha).splitlines().index(line) + 1
    assert numbered.startswith(f"L{number} "), "numbered as in the log file"

    (gate / "open").touch()
    eventually(browser, lambda d: d.find_element(By.ID, "f-status").text == "passed", "pass")
    eventually(browser, lambda d: any("after the gate" in t for t in log_lines(d)), "the end")
    shown = [t.split(" ", 1)[1] for t in log_lines(browser)]
    assert shown == superci.output(sha).splitlines(), "every line once, in order"
    assert script_errors(browser) == []


def test_cancel_from_the_commit_page_stops_a_running_build_and_rebuild_runs_it_again(
    repo: Repo, superci: Superci, browser: WebDriver, tmp_path: Path
):
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    clone = repo.clone(tmp_path / "runner-1")
    url = web_page(superci)
    superci.runner(clone, "runner-1")
    superci.notify(sha)
    wait_until(lambda: file_text(gate / "started-1"), what="the build to start")
    browser.get(f"{url}commit/{sha}")
    assert browser.find_element(By.ID, "f-status").text == "running"
    assert not browser.find_element(By.ID, "rebuild").is_displayed()

    browser.find_element(By.CSS_SELECTOR, "#cancel button").click()
    eventually(browser, lambda d: "said=" in d.current_url, "the page after the cancel")
    eventually(browser, lambda d: d.find_element(By.ID, "f-status").text == "cancelled", "it")
    assert superci.wait_for_result(sha)["status"] == "cancelled"
    assert not (gate / "finished-1").exists(), "the build never got past the gate"
    assert browser.find_element(By.ID, "rebuild").is_displayed()

    browser.find_element(By.CSS_SELECTOR, "#rebuild button").click()  # and build it again
    eventually(browser, lambda d: "said=queued" in d.current_url, "the page after the rebuild")
    assert browser.find_element(By.CLASS_NAME, "note").text == "Rebuild queued."
    assert browser.find_element(By.ID, "f-build").text != "1"
    (gate / "open").touch()
    eventually(browser, lambda d: d.find_element(By.ID, "f-status").text == "passed", "pass")
    assert script_errors(browser) == []


def test_the_runners_page_shows_a_runner_join_and_take_a_build_without_a_reload(
    repo: Repo, superci: Superci, browser: WebDriver, tmp_path: Path
):
    gate = tmp_path / "gate"
    sha = repo.commit_gated(gate)
    clone = repo.clone(tmp_path / "runner-1")
    browser.get(web_page(superci) + "runners")
    assert browser.find_element(By.ID, "runners").text.endswith("no runners")

    def row(driver: WebDriver) -> dict[str, str]:
        """The first runner's cells by what they show (read at once: rows are replaced)."""
        return driver.execute_script(
            "const row = document.querySelector('#runners tbody tr:not(.none)');"
            "return row ? Object.fromEntries([...row.cells].map("
            "  c => [c.className.slice(2), c.textContent])) : {};"
        )

    superci.runner(clone, "runner-1")
    eventually(browser, lambda d: row(d).get("state") == "idle", "the runner to join")
    assert row(browser)["name"] == "runner-1"
    superci.notify(sha)
    eventually(browser, lambda d: row(d).get("state") == "busy", "the runner to take the build")
    assert row(browser)["build"] == sha[:12]
    (gate / "open").touch()
    eventually(browser, lambda d: row(d).get("state") == "idle", "the runner to be free again")
    assert row(browser)["build"] == ""
    assert script_errors(browser) == []


COLOURED_TEST = """\
import pathlib
import time
import unittest


class Coloured(unittest.TestCase):
    def test_prints_colours(self):
        print("\\x1b[31mred <script>window.pwned = 1</script>\\x1b[0m plain", flush=True)
        while not pathlib.Path({gate!r}).exists():
            time.sleep(0.02)
"""


def test_colours_of_a_log_show_and_markup_in_it_stays_text_live_and_reloaded(
    repo: Repo, superci: Superci, browser: WebDriver, tmp_path: Path
):
    gate = tmp_path / "open"
    sha = repo.commit({"tests/test_coloured.py": COLOURED_TEST.format(gate=str(gate))})
    clone = repo.clone(tmp_path / "runner-1")
    url = web_page(superci)
    superci.notify(sha)
    browser.get(f"{url}commit/{sha}")
    superci.runner(clone, "runner-1")

    def coloured(driver: WebDriver) -> Any:
        return driver.execute_script(
            "for (const s of document.querySelectorAll('#log .t span')) {"
            "  if (s.textContent.startsWith('red'))"
            "    return [s.textContent, getComputedStyle(s).color];"
            "} return null;"
        )

    live = eventually(browser, coloured, "the coloured line, live")
    gate.touch()
    eventually(browser, lambda d: d.find_element(By.ID, "f-status").text == "passed", "pass")
    browser.refresh()
    assert coloured(browser) == live == ["red <script>window.pwned = 1</script>", "rgb(187, 0, 0)"]
    assert browser.execute_script("return window.pwned === undefined"), "the script never ran"
    assert script_errors(browser) == []


BIG_LOG_TEST = """\
import sys
import unittest


class Big(unittest.TestCase):
    def test_prints_a_big_log(self):
        for n in range({lines}):
            sys.stdout.write(f"line {{n + 1:07d}} " + "x" * 50 + "\\n")
"""
#: Bytes of each line the big test prints.
BIG_LINE = len("line 0000001 ") + 50 + 1


def test_a_16_mib_log_opens_with_at_most_2000_lines_and_loads_earlier_ones(
    repo: Repo, superci: Superci, browser: WebDriver, tmp_path: Path
):
    lines = 16 * 1024 * 1024 // BIG_LINE
    sha = repo.commit({"tests/test_big.py": BIG_LOG_TEST.format(lines=lines)}, "big log")
    clone = repo.clone(tmp_path / "runner-1")
    url = web_page(superci, "--max-log-bytes", str(64 * 1024 * 1024))
    superci.runner(clone, "runner-1")
    superci.notify(sha)
    assert superci.wait_for_result(sha)["status"] == "passed"
    log = (superci.results / sha / "output.log").read_bytes()
    assert len(log) >= 16 * 1024 * 1024
    total = log.count(b"\n")

    browser.get(f"{url}commit/{sha}")
    shown = log_lines(browser)
    assert len(shown) == TAIL_LINES
    assert shown[-1].startswith(f"L{total} ")
    assert shown[0].startswith(f"L{total - TAIL_LINES + 1} ")
    browser.find_element(By.ID, "earlier").click()
    eventually(browser, lambda d: len(log_lines(d)) == 2 * TAIL_LINES, "earlier lines")
    first = log_lines(browser)[0]
    number = total - 2 * TAIL_LINES + 1
    assert first == f"L{number} " + log.splitlines()[number - 1].decode()

    wanted = total - TAIL_LINES - 10  # a link to a line before the last 2,000
    browser.get("about:blank")
    browser.get(f"{url}commit/{sha}#L{wanted}")
    eventually(browser, lambda d: d.find_elements(By.ID, f"L{wanted}"), "the linked line")
    assert len(log_lines(browser)) == 2 * TAIL_LINES, "one window more, not the whole log"
    assert script_errors(browser) == []
