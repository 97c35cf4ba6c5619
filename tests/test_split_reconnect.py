"""A split's host that connects to the dispatcher again (after a restart): what was lost
on the way is asked for again, and the seats' work comes back uncounted."""

import asyncio

from helpers import async_test

from superci import protocol
from superci.split import Batch, Split
from superci.splitbuild import HostedSplit
from superci.splittunnel import HostTunnels, SeatOutput, SplitLink

SHA = "0123456789abcdef0123456789abcdef01234567"


def hosting(tmp_path) -> tuple[SplitLink, list[protocol.Message]]:
    sent: list[protocol.Message] = []

    async def send(message: protocol.Message) -> None:
        sent.append(message)

    build = protocol.Build(build_id=3, attempt=1, sha=SHA, branch="main")
    link = SplitLink(build, send)
    link.host = HostTunnels(tmp_path / "batches.sock", link)
    return link, sent


@async_test()
async def test_a_reconnected_host_asks_again_what_went_unanswered_and_for_seats_after_its_own(
    tmp_path,
):
    link, sent = hosting(tmp_path)
    link.seats = {1: SeatOutput("r2"), 2: SeatOutput("r3", ended="done")}
    await link.want_seats(3)
    asking = asyncio.create_task(link.known(["t::a", "t::b"], timeout=10.0))
    await asyncio.sleep(0)
    (request,) = [m for m in sent if isinstance(m, protocol.SplitTests)]

    sent.clear()
    await link.reconnected()
    assert sent == [request, protocol.SplitSeats(build_id=3, attempt=1, width=3, next_seat=3)]
    assert link.seats[1].ended and "reconnected" in link.seats[1].ended
    assert link.seats[2].ended == "done"

    link.receive(protocol.SplitDurations(build_id=3, attempt=1, request=request.request,
                                         durations={"t::a": 2.0}))  # fmt: skip
    known = await asyncio.wait_for(asking, 5.0)
    assert known.durations == {"t::a": 2.0} and known.kept == {}
    await link.host.close()


@async_test()
async def test_a_reconnected_host_takes_back_its_seats_work_uncounted_and_opens_seats_again(
    tmp_path,
):
    link, sent = hosting(tmp_path)
    assert link.host is not None
    split = Split([f"t{i}" for i in range(8)], {}, width=2)
    backend = HostedSplit(split, link, link.host, "r1")
    assert await backend.join("r1.1") and await backend.join("r2.1")
    held = await backend.next_batch("r2.1", wait=False)
    assert isinstance(held, Batch)
    await backend.started("r2.1", held.id, held.tests[0])
    await backend.close_seats(force=True)
    link.on_reconnect = backend.reconnected

    sent.clear()
    await link.reconnected()
    assert split.participants == ("r1.1",)
    again = await backend.next_batch("r1.1", wait=False)
    assert isinstance(again, Batch)
    assert again.tests == held.tests  # whole: no test is suspect of killing its process
    assert again.attempts == 0  # the host cut the seat off: not the tests' fault
    assert sent[-1] == protocol.SplitSeats(build_id=3, attempt=1, width=2, next_seat=1)
    await link.host.close()
