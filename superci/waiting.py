"""Why a queued build waits, in one sentence for people, from the build's needs and the
scheduler's view of the pool (no I/O).

People looking at a queue want to know whether to wait, start a runner or mend one: "no
runner connected" asks for a runner, "no connected runner has gpu=true" for the right
one, "all 3 runners busy" for patience, a benched runner for a look at its clone.
:func:`why_waiting` is the one place that says it, for ``superci status``, ``show`` and
the web page alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from superci import labels
from superci.scheduler import RunnerView
from superci.status import RunnerState


def why_waiting(
    needs: Mapping[str, str], runners: Iterable[RunnerView], position: int, now: float,
    after: Sequence[str] = (),
) -> str:  # fmt: skip
    """Why a build that needs ``needs``, at ``position`` of the queue (0: next), has no
    runner yet, given the pool ``runners``; ``after``: the jobs of its commit it waits
    for (it runs once they passed)."""
    if after:
        return f"after {', '.join(after)}"
    return f"{_pool_reason(needs, list(runners), now)}; {_place(position)}"


def _pool_reason(needs: Mapping[str, str], runners: list[RunnerView], now: float) -> str:
    connected = [r for r in runners if r.state is not RunnerState.DISCONNECTED]
    if not connected:
        return "no runner connected"
    takers = [r for r in connected if r.offer.takes(needs)]
    if not takers:
        return _nobody_takes(needs, connected)
    matching = "matching runner" if needs else "runner"
    idle = [r for r in takers if r.state is RunnerState.IDLE]
    if len(idle) == 1:
        return f"about to start on {idle[0].name}"
    if idle:
        return f"about to start ({len(idle)} {matching}s idle)"
    busy = [r for r in takers if r.state is RunnerState.BUSY]
    if len(takers) == 1 and busy:
        return f"the only {matching}, {busy[0].name}, is busy"
    parts = [_busy(len(busy), len(takers), matching)] if busy else []
    parts += [_benched(r, now) for r in takers if r.state is RunnerState.BENCHED]
    return ", ".join(parts)


def _busy(busy: int, takers: int, matching: str) -> str:
    if busy == takers:
        return f"all {busy} {matching}s busy"
    return f"{busy} {matching}{'s' if busy > 1 else ''} busy"


def _benched(runner: RunnerView, now: float) -> str:
    if runner.benched_until is None:
        return f"runner {runner.name} benched"
    return f"runner {runner.name} benched ({max(0.0, runner.benched_until - now):.0f}s left)"


def _nobody_takes(needs: Mapping[str, str], connected: list[RunnerView]) -> str:
    """No connected runner takes the build: say which need nobody has, or that the
    runners that have them all are exclusive."""
    missing = {
        key: value
        for key, value in needs.items()
        if not any(r.offer.has(key, value) for r in connected)
    }
    if missing:
        reason = f"no connected runner has {labels.text(missing)}"
    elif needs:
        reason = f"no connected runner has all of {labels.text(needs)}"
    else:
        reason = "every connected runner is exclusive"
    refusing = [r.name for r in connected if r.offer.exclusive and not r.offer.missing(needs)]
    if refusing:
        names = ", ".join(refusing)
        reason += f" (exclusive runners {names} take only builds that need their own labels)"
    return reason


def _place(position: int) -> str:
    if position == 0:
        return "next in line"
    return f"{position} build{'s' if position > 1 else ''} ahead"
