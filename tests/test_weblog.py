"""The log viewer's windows, on bytes in memory: whole lines, numbered from the start,
bounded reads."""

from superci import weblog
from superci.weblog import FOLLOW_BYTES, Window, last_lines, output_after, with_line_number


def reader(log: bytes, reads: list[int] | None = None) -> weblog.Reader:
    def read(offset: int, limit: int) -> bytes:
        if reads is not None:
            reads.append(limit)
        return log[offset : offset + limit]

    return read


LOG = b"".join(b"line %d\n" % n for n in range(1, 101))


def test_the_last_lines_start_at_a_line_and_are_numbered_from_the_log_s_start():
    window = with_line_number(reader(LOG), last_lines(reader(LOG), len(LOG), lines=10))
    assert window.text.splitlines() == [f"line {n}" for n in range(91, 101)]
    assert window.first_line == 91 and window.end == len(LOG)
    earlier = last_lines(reader(LOG), window.start, lines=10)
    assert earlier.text.splitlines()[0] == "line 81" and earlier.end == window.start


def test_a_window_reads_a_bounded_number_of_bytes_and_skips_the_cut_first_line():
    reads: list[int] = []
    window = last_lines(reader(LOG, reads), len(LOG), lines=1000, limit=50)
    assert reads == [50]
    assert window.text.startswith("line ") and LOG[window.start - 1 : window.start] == b"\n"


def test_a_line_longer_than_the_window_shows_its_end():
    log = b"short\n" + b"x" * 1000
    window = with_line_number(reader(log), last_lines(reader(log), len(log), limit=100))
    assert window.text == "x" * 100 and window.first_line == 2


def test_line_numbers_are_counted_a_chunk_at_a_time():
    reads: list[int] = []
    window = with_line_number(reader(LOG, reads), Window(len(LOG) - 9, len(LOG), "line 100\n"), 64)
    assert window.first_line == 100 and max(reads) == 64


def test_new_output_comes_a_whole_line_at_a_time_until_the_build_ends():
    log = b"one\ntwo\nthr"
    assert output_after(reader(log), 0, len(log), complete=False).text == "one\ntwo\n"
    assert output_after(reader(log), 8, len(log), complete=False) == Window(8, 8, "")
    assert output_after(reader(log), 8, len(log), complete=True).text == "thr"
    huge = b"y" * (FOLLOW_BYTES + 10)
    assert output_after(reader(huge), 0, len(huge), complete=False).end == FOLLOW_BYTES


def test_bytes_that_are_not_utf8_show_as_replacement_characters():
    log = b"caf\xe9\n"
    assert output_after(reader(log), 0, len(log), complete=True).text == "caf\ufffd\n"
