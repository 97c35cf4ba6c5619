"""output.log on disk: verbatim under the cap, head + marker + tail past it, offsets in
bytes of the runner's output (not of the file), and resumable by a restarted dispatcher."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from superci.buildlog import BuildLog, read
from superci.errors import StorageError

CAP = 4096
MARKER_RE = re.compile(
    rb"\n\[superci: (\d+) bytes of output dropped here to keep this log under (\d+) bytes\]\n"
)


def numbered_lines(first: int, count: int) -> bytes:
    """Distinct, recognisable lines, so a kept or dropped piece can be located."""
    return b"".join(b"line %06d of the build output\n" % i for i in range(first, first + count))


def marker(content: bytes) -> re.Match[bytes]:
    found = list(MARKER_RE.finditer(content))
    assert len(found) == 1, f"expected exactly one marker, found {len(found)}"
    return found[0]


def dropped_count(content: bytes) -> int:
    return int(marker(content).group(1))


def without_marker(content: bytes) -> bytes:
    m = marker(content)
    return content[: m.start()] + content[m.end() :]


@pytest.fixture
def open_log(tmp_path: Path) -> Iterator[Callable[..., BuildLog]]:
    """Open ``output.log`` in tmp_path (capped at CAP); every log is closed afterwards."""
    opened: list[BuildLog] = []

    def open_(*, fresh: bool = True) -> BuildLog:
        opened.append(BuildLog(tmp_path / "output.log", CAP, fresh=fresh))
        return opened[-1]

    yield open_
    for log in opened:
        with contextlib.suppress(ValueError):  # already closed by the test
            log.close()


def write_all(log: BuildLog, data: bytes, chunk: int) -> None:
    for start in range(0, len(data), chunk):
        log.append(log.raw, data[start : start + chunk])


def test_output_under_the_cap_is_written_verbatim_with_raw_counting_every_byte(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    path = tmp_path / "output.log"
    log = open_log()
    output = numbered_lines(0, 40)
    assert len(output) < CAP

    write_all(log, output, 100)

    assert read(path) == output
    assert log.raw == len(output)
    assert log.dropped == 0
    assert not MARKER_RE.search(read(path))


def test_output_past_the_cap_keeps_head_and_tail_around_one_marker_with_the_dropped_count(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    path = tmp_path / "output.log"
    log = open_log()
    output = b"superci: building abc\n" + numbered_lines(0, 2000) + b"Ran 5 tests in 0.01s\n\nOK\n"

    write_all(log, output, 1000)

    content = read(path)
    assert len(content) <= CAP
    m = marker(content)
    assert int(m.group(2)) == CAP
    head, tail = content[: m.start()], content[m.end() :]
    assert output.startswith(head) and len(head) == CAP // 4
    assert output.endswith(tail) and len(tail) >= CAP // 4
    assert tail.endswith(b"Ran 5 tests in 0.01s\n\nOK\n")
    assert content.startswith(b"superci: building abc\n")
    # Every byte of output is either in the file or counted as dropped.
    assert int(m.group(1)) == log.dropped == len(output) - len(head) - len(tail)
    assert log.raw == len(output)


def test_repeated_cuts_keep_the_log_bounded_with_one_marker_whose_count_grows(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    path = tmp_path / "output.log"
    log = open_log()
    counts = []

    for round_ in range(6):
        write_all(log, numbered_lines(round_ * 500, 500), 700)
        content = read(path)
        assert len(content) <= CAP
        counts.append(dropped_count(content))
        assert len(without_marker(content)) + counts[-1] == log.raw

    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert read(path).startswith(numbered_lines(0, 1)[:40])
    assert read(path).endswith(numbered_lines(2999, 1))


def test_a_short_head_followed_by_a_huge_chunk_and_more_output_still_has_a_single_marker(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    """The head is the first quarter of the cap, whatever the chunks; one marker follows it."""
    path = tmp_path / "output.log"
    log = open_log()
    first = b"superci: building abc\n"
    log.append(0, first)
    log.append(log.raw, b"a" * (3 * CAP))
    log.append(log.raw, b"b" * (3 * CAP))
    log.append(log.raw, b"the end\n")

    content = read(path)
    assert len(content) <= CAP
    assert content.startswith(first + b"a" * (CAP // 4 - len(first)) + marker(content).group(0))
    assert content.endswith(b"b" * 100 + b"the end\n")
    assert len(without_marker(content)) + dropped_count(content) == log.raw


def test_raw_offsets_keep_counting_across_cuts_so_a_resend_adds_nothing(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    path = tmp_path / "output.log"
    log = open_log()
    output = numbered_lines(0, 1000)
    write_all(log, output, 512)
    assert log.raw == len(output) > CAP
    before = read(path)

    assert log.append(0, output[:512]) == b""  # a resend from the start
    assert log.append(len(output) - 512, output[-512:]) == b""  # a resend of the last chunk
    assert read(path) == before and log.raw == len(output)

    more = numbered_lines(1000, 3)
    overlapping = output[-10:] + more  # a resend that also carries new bytes
    assert log.append(len(output) - 10, overlapping) == more
    assert log.raw == len(output) + len(more)
    assert read(path).endswith(output[-50:] + more)
    assert output[-10:] + output[-10:] not in read(path)


def test_output_past_what_was_received_is_refused_as_a_gap(open_log: Callable[..., BuildLog]):
    log = open_log()
    log.append(0, b"0123456789")
    with pytest.raises(StorageError, match="gap in the output"):
        log.append(11, b"x")
    assert log.raw == 10


def test_a_restarted_dispatcher_resumes_a_cut_log_at_the_same_raw_offset(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    path = tmp_path / "output.log"
    log = open_log()
    output = numbered_lines(0, 1000)
    write_all(log, output, 600)
    raw, dropped = log.raw, log.dropped
    log.close()  # the dispatcher stops; the build is still running on its runner

    resumed = open_log(fresh=False)

    assert resumed.raw == raw and resumed.dropped == dropped
    assert resumed.append(raw - 600, output[-600:]) == b""  # the runner resends its last chunk
    tail = numbered_lines(1000, 200)
    write_all(resumed, tail, 600)
    content = read(path)
    assert len(content) <= CAP
    assert content.endswith(tail[-CAP // 4 :])
    assert len(without_marker(content)) + dropped_count(content) == len(output) + len(tail)
    assert dropped_count(content) > dropped


def test_a_restarted_dispatcher_resumes_an_uncut_log_at_its_size(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    path = tmp_path / "output.log"
    log = open_log()
    log.append(0, b"first line\n")
    log.close()

    resumed = open_log(fresh=False)
    resumed.append(resumed.raw, b"second line\n")

    assert resumed.raw == len(b"first line\nsecond line\n")
    assert read(path) == b"first line\nsecond line\n"


def test_a_fresh_log_forgets_an_earlier_attempt_and_its_cut(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    path = tmp_path / "output.log"
    log = open_log()
    write_all(log, numbered_lines(0, 1000), 600)
    log.close()

    again = open_log()
    again.append(0, b"attempt 2\n")
    again.finish()

    assert read(path) == b"attempt 2\n"
    resumed = open_log(fresh=False)
    assert resumed.raw == len(b"attempt 2\n")


def test_finish_makes_output_log_the_whole_log_and_its_resume_point_is_kept(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    path = tmp_path / "output.log"
    log = open_log()
    write_all(log, numbered_lines(0, 1000), 600)
    view = read(path)
    assert len(path.read_bytes()) == CAP // 4  # the head; the tail is in segments

    log.finish()

    assert path.read_bytes() == view and len(view) <= CAP
    assert [p.name for p in tmp_path.iterdir() if ".tail." in p.name] == []
    resumed = open_log(fresh=False)  # e.g. a result that could not be written, resent
    assert resumed.raw == log.raw and resumed.append(0, b"old") == b""


# --- bounded work, crashes, short writes --------------------------------------------------


def test_a_big_build_writes_each_byte_about_once_and_keeps_the_disk_bounded(
    tmp_path: Path, open_log: Callable[..., BuildLog], monkeypatch: pytest.MonkeyPatch
):
    import superci.buildlog as module

    written = []
    real_write = os.write
    monkeypatch.setattr(
        module.os, "write", lambda fd, b: written.append(len(b)) or real_write(fd, b)
    )
    log = open_log()
    output = numbered_lines(0, 5000)  # ~40 times the cap
    write_all(log, output, 512)

    assert sum(written) == len(output)  # nothing rewritten while the build runs
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk <= CAP
    log.finish()
    assert sum(written) <= len(output) + CAP  # finishing copies the kept tail once


def test_a_crash_mid_cut_then_the_resend_fills_exactly_what_is_missing(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    """SIGKILL leaves whatever the files hold: a new segment half written, or an older one
    not yet deleted; the raw offset comes from the files, and the resend completes them."""
    path = tmp_path / "output.log"
    output = numbered_lines(0, 1000)
    log = open_log()
    write_all(log, output[:20000], 700)
    newest = max(p for p in tmp_path.iterdir() if ".tail." in p.name)
    with open(newest, "ab") as f:  # a chunk the crash cut short: 7 bytes of the next one
        f.write(output[log.raw : log.raw + 7])
    # no close(): the process died

    resumed = open_log(fresh=False)

    assert resumed.raw == 20007
    write_all(resumed, output[20007:], 700)  # the runner resends from the offset it is told
    resumed.finish()
    content = path.read_bytes()
    assert len(without_marker(content)) + dropped_count(content) == len(output)
    assert output.endswith(content[marker(content).end() :])
    assert output.startswith(content[: marker(content).start()])


def test_a_crash_while_finishing_is_undone_and_finished_again(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    path = tmp_path / "output.log"
    output = numbered_lines(0, 1000)
    log = open_log()
    write_all(log, output, 700)
    expected = read(path)
    with open(path, "ab") as f:  # finish() died after appending part of the tail
        f.write(expected[CAP // 4 : CAP // 2])

    resumed = open_log(fresh=False)

    assert resumed.raw == len(output) and read(path) == expected
    resumed.finish()
    assert path.read_bytes() == expected


def test_short_writes_on_a_nearly_full_disk_leave_no_hole(
    tmp_path: Path, open_log: Callable[..., BuildLog], monkeypatch: pytest.MonkeyPatch
):
    import superci.buildlog as module

    path = tmp_path / "output.log"
    real_write = os.write
    room = [5000]

    def nearly_full(fd: int, data: bytes) -> int:  # writes what fits, then ENOSPC
        if room[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        take = min(len(data), room[0], 333)
        room[0] -= take
        return real_write(fd, bytes(data[:take]))

    monkeypatch.setattr(module.os, "write", nearly_full)
    output = numbered_lines(0, 300)
    log = open_log()
    with pytest.raises(StorageError, match="No space left"):
        log.append(0, output)
    assert log.raw == 5000  # what was written is accounted, nothing more

    room[0] = 10**9  # the disk was grown; the runner resends from where the log is
    log.append(0, output)
    log.finish()
    content = path.read_bytes()
    assert len(without_marker(content)) + dropped_count(content) == len(output)
    assert output.startswith(content[: marker(content).start()])
    assert output.endswith(content[marker(content).end() :])


def test_bytes_a_runner_no_longer_has_are_counted_as_dropped_when_it_says_so(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    path = tmp_path / "output.log"
    log = open_log()
    log.append(0, b"head\n")
    with pytest.raises(StorageError, match="gap"):
        log.append(1000, b"late\n")
    assert log.append(1000, b"late\n", skipped=True) == b"late\n"
    assert log.raw == 1005 and log.dropped == 995
    assert read(path) == b"head\n" + MARKER_RE.search(read(path)).group(0) + b"late\n"  # type: ignore[union-attr]
    assert dropped_count(read(path)) == 995


def test_read_returns_a_bounded_range_of_head_marker_and_tail(
    tmp_path: Path, open_log: Callable[..., BuildLog]
):
    path = tmp_path / "output.log"
    log = open_log()
    write_all(log, numbered_lines(0, 1000), 700)
    whole = read(path)
    assert b"".join(read(path, start, 100) for start in range(0, len(whole), 100)) == whole
    assert read(path, len(whole)) == b""
