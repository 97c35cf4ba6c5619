"""Reading a checkout's files: only regular files inside it, within a size cap, and never
blocking on what a commit or its tests left there."""

import asyncio
import os
import threading

import pytest

from superci.errors import UnsafeFile
from superci.safefile import read_inside, read_off_loop


def test_a_regular_file_inside_is_read(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"data")
    assert read_inside(tmp_path, "a.txt", 10) == b"data"


def test_a_missing_file_is_none(tmp_path):
    assert read_inside(tmp_path, "nothing.txt", 10) is None
    assert read_inside(tmp_path, "no/such/folder.txt", 10) is None


def test_a_symlink_that_stays_inside_is_followed(tmp_path):
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "real.toml").write_bytes(b"x = 1\n")
    (tmp_path / "link.toml").symlink_to("ci/real.toml")
    assert read_inside(tmp_path, "link.toml", 100) == b"x = 1\n"


def test_a_fifo_is_refused_at_once_naming_it(tmp_path):
    os.mkfifo(tmp_path / "report.xml")
    with pytest.raises(UnsafeFile, match=r"report\.xml is a FIFO, not a regular file"):
        read_inside(tmp_path, "report.xml", 100)


@pytest.mark.parametrize("target", ["/dev/zero", "/etc/hostname", "/no/such/file"])
def test_a_symlink_out_of_the_folder_is_refused_naming_both_ends(tmp_path, target):
    (tmp_path / "config.toml").symlink_to(target)
    with pytest.raises(UnsafeFile, match=rf"config\.toml leads outside .* \(to {target}\)"):
        read_inside(tmp_path, "config.toml", 100)


def test_a_folder_linked_out_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "report.xml").write_text("<x/>")
    root = tmp_path / "root"
    root.mkdir()
    (root / "reports").symlink_to(outside)
    with pytest.raises(UnsafeFile, match="leads outside"):
        read_inside(root, "reports/report.xml", 100)


def test_a_folder_is_refused(tmp_path):
    (tmp_path / "junit.xml").mkdir()
    with pytest.raises(UnsafeFile, match="is a folder"):
        read_inside(tmp_path, "junit.xml", 100)


def test_an_oversized_file_is_refused_with_its_size_and_the_cap(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 11)
    assert read_inside(tmp_path, "big", 11) == b"x" * 11
    with pytest.raises(UnsafeFile, match="big is 11 bytes, more than the 10 allowed"):
        read_inside(tmp_path, "big", 10)


def test_what_the_file_is_for_is_named(tmp_path):
    os.mkfifo(tmp_path / "junit.xml")
    with pytest.raises(UnsafeFile, match=r"^JUnit report .*junit\.xml is a FIFO"):
        read_inside(tmp_path, "junit.xml", 100, what="JUnit report")


def test_a_read_that_takes_too_long_is_given_up_on_without_stalling_the_loop():
    release = threading.Event()

    def slow() -> bytes:
        release.wait(10)
        return b""

    async def main() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        with pytest.raises(UnsafeFile, match="slow file was not read within 0.2s"):
            await read_off_loop(slow, timeout=0.2, what="slow file")
        release.set()  # the thread may end now (asyncio.run waits for it)
        ticker.cancel()
        return ticks

    try:
        assert asyncio.run(main()) >= 5  # the loop went on while the thread waited
    finally:
        release.set()
