"""Why a queued build waits, in words, from the scheduler's view of the pool (no I/O).

People looking at a queue want to know whether to wait, start a runner or mend one: "no
runner connected" asks for a runner, "all 3 runners busy" for patience, a benched runner
for a look at its clone. :func:`why_waiting` is the one place that says it, for
``superci status`` and the web page alike; a new reason (a label no runner has) goes
there, ahead of the general ones.
"""

from __future__ import annotations

from superci.scheduler import PoolView, RunnerView
from superci.status import RunnerState


def why_waiting(pool: PoolView, position: int, now: float) -> str:
    """Why the build at ``position`` (0: next) of ``pool.queue`` has no runner yet."""
    return f"{_pool_reason(pool.runners, now)}; {_place(position)}"


def _pool_reason(runners: tuple[RunnerView, ...], now: float) -> str:
    connected = [r for r in runners if r.state is not RunnerState.DISCONNECTED]
    if not connected:
        return "no runner connected"
    if any(r.state is RunnerState.IDLE for r in connected):
        return "being handed to an idle runner"
    busy = sum(r.state is RunnerState.BUSY for r in connected)
    benched = [r for r in connected if r.state is RunnerState.BENCHED]
    parts = [_busy(busy, len(connected))] if busy else []
    parts += [_benched(r, now) for r in benched]
    return ", ".join(parts)


def _busy(busy: int, connected: int) -> str:
    if busy == connected:
        return "the runner is busy" if busy == 1 else f"all {busy} runners busy"
    return f"{busy} runner{'s' if busy > 1 else ''} busy"


def _benched(runner: RunnerView, now: float) -> str:
    if runner.benched_until is None:
        return f"runner {runner.name} benched"
    return f"runner {runner.name} benched ({max(0.0, runner.benched_until - now):.0f}s left)"


def _place(position: int) -> str:
    if position == 0:
        return "next in line"
    return f"{position} build{'s' if position > 1 else ''} ahead"
