"""Why a queued build waits, in one sentence for people: the single source of that
sentence for ``superci status``, ``show`` and the web page. A plain function of the
build's needs and the pool as the scheduler shows it (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from superci import labels
from superci.scheduler import RunnerView
from superci.status import RunnerState


def why_waiting(needs: Mapping[str, str], runners: Iterable[RunnerView]) -> str:
    """Why a build that needs ``needs`` is not running, given the pool ``runners``."""
    connected = [r for r in runners if r.state is not RunnerState.DISCONNECTED]
    if not connected:
        return "no runner connected"
    takers = [r for r in connected if r.offer.takes(needs)]
    if not takers:
        return _nobody_takes(needs, connected)
    matching = "matching runner" if needs else "runner"
    if len(takers) == 1:
        runner = takers[0]
        if runner.state is RunnerState.IDLE:
            return f"about to start on {runner.name}"
        return f"the only {matching}, {runner.name}, is {runner.state}"
    states = [r.state for r in takers]
    if RunnerState.IDLE in states:
        return f"about to start ({states.count(RunnerState.IDLE)} {matching}s idle)"
    benched = states.count(RunnerState.BENCHED)
    if benched == len(takers):
        return f"all {len(takers)} {matching}s benched"
    return f"all {len(takers)} {matching}s busy" + (f" or benched ({benched})" if benched else "")


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
