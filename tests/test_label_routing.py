"""Builds routed by runner labels through a real dispatcher on real TCP: the needs a
submission carries, a configuration that does not parse, needs learned from a runner,
and needs kept across a dispatcher restart."""

from __future__ import annotations

import json

from helpers import FAST_WATCHDOG, FakeRunner, Harness, async_test
from support import WAIT

from superci import client, protocol

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"
LINUX = {"facts": {"os": ["linux"], "python": ["3.12"]}}
GPU = {"labels": {"gpu": "true"}, "facts": {"os": ["linux"]}, "exclusive": True}


async def submit(h: Harness, sha: str, config: str | None) -> protocol.Submitted:
    assert h.address is not None
    return await client.submit_async(h.address, sha, "main", timeout=WAIT, config=config)


def status(h: Harness) -> dict:
    assert h.dispatcher is not None
    reply = h.dispatcher.query(protocol.Query(what="status"))
    return json.loads(reply.document)


@async_test()
async def test_a_submitted_configurations_needs_send_the_build_to_the_runner_that_has_them(
    tmp_path,
):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        plain, _ = await FakeRunner.connect(h.address, "plain", **LINUX)
        gpu, _ = await FakeRunner.connect(h.address, "gpu", **GPU)
        needing = await submit(h, SHA, 'command = "x"\nneeds = {gpu = true}\n')
        build = await gpu.expect(protocol.Build)
        assert (build.build_id, build.sha) == (needing.build_id, SHA)
        assert h.db_build(needing.build_id)["needs"] == '{"gpu": "true"}'
        anything = await submit(h, OTHER_SHA, "")  # no needs: not for the exclusive runner
        build = await plain.expect(protocol.Build)
        assert (build.build_id, build.sha) == (anything.build_id, OTHER_SHA)

        runners = {r["name"]: r for r in status(h)["runners"]}
        assert runners["gpu"]["labels"] == {"gpu": "true", "os": "linux"}
        assert runners["gpu"]["exclusive"] is True
        assert runners["plain"]["labels"] == {"os": "linux", "python": "3.12"}


@async_test()
async def test_a_build_nobody_can_take_waits_with_its_reason_then_goes_to_a_runner_that_joins(
    tmp_path,
):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        plain, _ = await FakeRunner.connect(h.address, "plain", **LINUX)
        submitted = await submit(h, SHA, 'needs = {python = "3.13"}')
        [queued] = status(h)["queue"]
        assert queued["needs"] == {"python": "3.13"}
        assert queued["waiting"] == "no connected runner has python=3.13; next in line"
        assert h.dispatcher is not None
        shown = json.loads(h.dispatcher.query(protocol.Query(what="show", commit=SHA)).document)
        assert shown["waiting"] == "no connected runner has python=3.13; next in line"

        late, _ = await FakeRunner.connect(h.address, "late", facts={"python": ["3.13"]})
        build = await late.expect(protocol.Build)
        assert (build.build_id, build.attempt) == (submitted.build_id, 1)
        assert (await late.result(build)).accepted
        assert (await h.results.wait(SHA))["status"] == "passed"
        await plain.round_trip()  # anything sent to it meanwhile is in its inbox now
        assert not any(isinstance(m, protocol.Build) for m in plain.inbox)


@async_test()
async def test_a_configuration_that_does_not_parse_ends_the_build_at_once_as_an_error(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        runner, _ = await FakeRunner.connect(h.address, "plain", **LINUX)
        reply = await submit(h, SHA, "nedds = {gpu = true}\n")
        assert (reply.queued, reply.status) == (True, "error")
        document = await h.results.wait(SHA)
        assert document["status"] == "error" and document["runner"] is None
        assert document["message"].startswith(".superci.toml: unknown key 'nedds', did you mean")
        assert document["message"].endswith("nothing was built")
        assert h.result_json(SHA)["message"] == document["message"]
        await runner.round_trip()
        assert not any(isinstance(m, protocol.Build) for m in runner.inbox)


@async_test()
async def test_needs_a_runner_learns_from_the_commit_are_kept_and_the_build_goes_elsewhere(
    tmp_path,
):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        plain, _ = await FakeRunner.connect(h.address, "plain", **LINUX)
        submitted = await submit(h, SHA, None)  # the submitter could not read its config
        build = await plain.expect(protocol.Build)
        await plain.send(
            protocol.Unsuited(build_id=build.build_id, attempt=build.attempt,
                              needs={"gpu": "true"}, reason="lacks gpu=true")
        )  # fmt: skip
        await plain.round_trip()
        row = h.db_build(submitted.build_id)
        assert (row["status"], row["lost"], json.loads(row["needs"])) == (
            "queued", 0, {"gpu": "true"},
        )  # fmt: skip
        assert "which does not suit the commit: lacks gpu=true" in row["message"]
        assert status(h)["queue"][0]["waiting"] == "no connected runner has gpu=true; next in line"

        gpu, _ = await FakeRunner.connect(h.address, "gpu", **GPU)
        again = await gpu.expect(protocol.Build)
        assert (again.build_id, again.attempt) == (submitted.build_id, 2)


@async_test()
async def test_a_restarted_dispatcher_keeps_each_queued_builds_needs(tmp_path):
    async with Harness(tmp_path, settings=FAST_WATCHDOG) as h:
        needing = await submit(h, SHA, 'needs = {gpu = "true"}')
        plain = await submit(h, OTHER_SHA, "")
        await h.restart()

        runner, _ = await FakeRunner.connect(h.address, "plain", **LINUX)
        build = await runner.expect(protocol.Build)
        assert build.build_id == plain.build_id
        assert [q["build_id"] for q in status(h)["queue"]] == [needing.build_id]
        gpu, _ = await FakeRunner.connect(h.address, "gpu", **GPU)
        build = await gpu.expect(protocol.Build)
        assert build.build_id == needing.build_id
