"""What `superci status` and `superci show` print, rendered from their documents."""

from __future__ import annotations

from superci.tables import result_summary, status_tables, table

SHA_A = "a1" * 20
SHA_B = "b2" * 20
SHA_C = "c3" * 20
WAITING = "the only matching runner, runner-a, is busy"

STATUS = {
    "runners": [
        {"name": "runner-a", "host": "box-1", "state": "busy", "build": SHA_A,
         "since_heartbeat": 0.4, "isolated": True, "labels": {"gpu": "true", "os": "linux"},
         "exclusive": True},
        {"name": "runner-b", "host": "box-2", "state": "idle", "build": None,
         "since_heartbeat": 1.25},
    ],
    "queue": [{"build_id": 7, "sha": SHA_B, "branch": "feature/x", "attempt": 0,
               "needs": {"gpu": "true"}, "waiting": WAITING}],
    "builds": [
        {"build_id": 7, "sha": SHA_B, "branch": "feature/x", "status": "queued",
         "duration": None, "runner": None, "attempt": 0},
        {"build_id": 6, "sha": SHA_A, "branch": "main", "status": "running",
         "duration": None, "runner": "runner-a", "attempt": 1},
        {"build_id": 5, "sha": SHA_C, "branch": "main", "status": "failed",
         "subject": "Refactor", "author": "Ada",
         "duration": 3.214, "runner": "runner-b", "attempt": 2,
         "tests": {"run": 3, "passed": 1, "failed": 0, "errors": 2, "skipped": 0}},
    ],
}  # fmt: skip


def section(text: str, title: str) -> list[list[str]]:
    """The rows (split into cells) of one section of the status output, header included."""
    block = next(b for b in text.split("\n\n") if b.startswith(title))
    return [line.split() for line in block.splitlines()[1:]]


def test_status_lists_each_runner_with_host_state_build_and_heartbeat_age():
    rows = section(status_tables(STATUS), "Runners (2)")

    assert rows[0] == ["NAME", "HOST", "STATE", "BUILD", "HEARTBEAT", "ISOLATED", "LABELS"]
    assert rows[1] == ["runner-a", "box-1", "busy", SHA_A[:12], "0.4s", "yes",
                       "gpu=true", "os=linux", "(exclusive)"]  # fmt: skip
    assert rows[2] == ["runner-b", "box-2", "idle", "-", "1.2s", "no", "-"]


def test_status_lists_the_queue_and_the_last_builds_with_dashes_for_missing_values():
    text = status_tables(STATUS)

    assert section(text, "Queue (1)") == [
        ["BUILD", "COMMIT", "JOB", "BRANCH", "ATTEMPTS", "NEEDS", "WAITING"],
        ["7", SHA_B[:12], "-", "feature/x", "0", "gpu=true", *WAITING.split()],
    ]
    assert section(text, "Last builds") == [
        ["BUILD", "COMMIT", "JOB", "BRANCH", "SUBJECT", "AUTHOR", "STATUS", "DURATION",
         "RUNNER", "ATTEMPT", "TESTS", "REASON"],
        ["7", SHA_B[:12], "-", "feature/x", "-", "-", "queued", "-", "-", "0", "-", "-"],
        ["6", SHA_A[:12], "-", "main", "-", "-", "running", "-", "runner-a", "1", "-", "-"],
        ["5", SHA_C[:12], "-", "main", "Refactor", "Ada", "failed", "3.2s", "runner-b", "2",
         *"1 passed, 0 failed, 2 errors, 0 skipped".split(), "-"],
    ]  # fmt: skip


def test_status_of_an_empty_system_still_shows_every_section():
    text = status_tables({"runners": [], "queue": [], "builds": []})

    assert [block.splitlines()[0] for block in text.split("\n\n")] == [
        "Runners (0)",
        "Queue (0)",
        "Last builds",
    ]
    assert section(text, "Runners (0)") == [
        ["NAME", "HOST", "STATE", "BUILD", "HEARTBEAT", "ISOLATED", "LABELS"]
    ]


def test_table_columns_line_up_under_their_headers():
    lines = table(["A", "LONGER"], [("wide value", 1), (None, "x")]).splitlines()

    assert lines == ["A           LONGER", "wide value  1", "-           x"]
    assert lines[1].index("1") == lines[0].index("LONGER")


def test_result_summary_shows_status_message_counts_and_every_failing_test():
    result = {
        "sha": SHA_C, "branch": "main", "build_id": 5, "status": "failed",
        "message": "tests failed (exit code 1)", "runner": "runner-b", "attempt": 2,
        "duration": 3.214,
        "tests": {"run": 4, "passed": 2, "failed": 1, "errors": 1, "skipped": 0},
        "failures": ["test_parser.ParserTest.test_empty", "test_io.IOTest.test_read"],
    }  # fmt: skip
    lines = result_summary(result).splitlines()

    assert lines[0].split() == ["commit", SHA_C, "(main)"]
    assert lines[1] == "status   failed: tests failed (exit code 1)"
    assert lines[2] == "build    5, attempt 2 on runner-b"
    assert lines[3] == "duration 3.2s"
    assert lines[4] == "tests    2 passed, 1 failed, 1 error, 0 skipped"
    assert lines[5:] == [
        "failing  (2)",
        "  test_parser.ParserTest.test_empty",
        "  test_io.IOTest.test_read",
    ]


def test_result_summary_of_a_build_not_run_yet_uses_dashes_and_omits_counts():
    queued = {
        "sha": SHA_B, "branch": "feature/x", "build_id": 7, "status": "queued",
        "message": "", "runner": None, "attempt": 0, "duration": None,
    }  # fmt: skip
    lines = result_summary(queued).splitlines()

    assert lines == [
        f"commit   {SHA_B} (feature/x)",
        "status   queued",
        "build    7, attempt 0 on -",
        "duration -",
    ]


def test_result_summary_says_what_a_build_needs_why_it_waits_and_its_runners_labels():
    queued = {
        "sha": SHA_B, "branch": "main", "build_id": 7, "status": "queued", "message": "",
        "runner": None, "attempt": 0, "duration": None, "needs": {"python": "3.13"},
        "waiting": "no connected runner has python=3.13",
    }  # fmt: skip
    assert result_summary(queued).splitlines()[4:6] == [
        "needs    python=3.13",
        "waiting  no connected runner has python=3.13",
    ]
    running = {**queued, "status": "running", "runner": "gpu-1", "attempt": 1, "waiting": None,
               "runner_labels": {"gpu": "true", "python": "3.12,3.13"}}  # fmt: skip
    assert result_summary(running).splitlines()[2] == (
        "build    7, attempt 1 on gpu-1 (gpu=true python=3.12,3.13)"
    )


def test_status_table_counts_the_whole_queue_when_only_its_head_is_listed():
    document = {
        "runners": [],
        "queue": [{"build_id": 1, "sha": "a" * 40, "branch": "main", "attempt": 0}],
        "queued": 5000,
        "builds": [],
    }
    text = status_tables(document)
    assert "Queue (5000)" in text and "aaaaaaaaaaaa" in text


def test_status_gives_the_reason_of_a_build_that_did_not_pass_shortened_to_fit():
    long = "runner lost on 3 attempts, the limit (a, b, c); last: no heartbeat for 10.2s"
    builds = [
        {"build_id": 9, "sha": SHA_A, "branch": "main", "status": "error", "duration": None,
         "runner": None, "attempt": 3, "message": long},
        {"build_id": 8, "sha": SHA_B, "branch": "main", "status": "error", "duration": 0.5,
         "runner": "r", "attempt": 1, "message": "no tests ran (exit code 5)"},
        {"build_id": 7, "sha": SHA_C, "branch": "main", "status": "passed", "duration": 0.5,
         "runner": "r", "attempt": 1, "message": "tests passed (exit code 0)"},
    ]  # fmt: skip
    lines = status_tables({"runners": [], "queue": [], "builds": builds}).splitlines()
    rows = lines[lines.index("Last builds") + 2 :]
    assert rows[0].endswith(long[:59] + "…")
    assert rows[1].endswith("no tests ran (exit code 5)")
    assert rows[2].endswith("-")


def test_status_says_under_the_runners_why_a_benched_runner_gets_no_builds():
    reason = "checkouts of 3 different commits failed in a row, no builds for 300s; last: x"
    benched = {"name": "runner-c", "host": "box-3", "state": "benched", "build": None,
               "since_heartbeat": 0.1, "reason": f"{reason} (299s left)"}  # fmt: skip
    text = status_tables({**STATUS, "runners": [*STATUS["runners"], benched]})

    block = next(b for b in text.split("\n\n") if b.startswith("Runners (3)"))
    lines = block.splitlines()
    assert lines[4].split() == ["runner-c", "box-3", "benched", "-", "0.1s", "no", "-"]
    assert lines[5:] == [f"runner-c is benched: {reason} (299s left)"]


def test_status_cuts_long_subjects_and_show_prints_them_whole_without_escape_sequences():
    subject = "Make the parser accept every kind of empty input \x1b[2Jand say so" * 2
    build = {"build_id": 4, "sha": SHA_A, "branch": "main", "status": "passed",
             "subject": subject, "author": "Grace \x1b]0;owned\x07Hopper", "duration": 1.0,
             "runner": "r", "attempt": 1, "message": "", "tests": {}}  # fmt: skip
    text = status_tables({"runners": [], "queue": [], "builds": [build]})
    assert "\x1b" not in text and "\x07" not in text
    assert "Make the parser accept every kind of em…" in text

    lines = result_summary(build).splitlines()
    assert lines[1] == "subject  " + subject.replace("\x1b[2J", "")
    assert lines[2] == "author   Grace Hopper"
