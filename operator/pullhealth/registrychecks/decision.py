"""What a RegistryCheck event asks for: a pure decision, no I/O.

:func:`decide` takes the object as kopf delivered it and what the operator knows (the time,
this replica's last run of it, whether a peer outranks it, its own claim name) and returns
one :class:`Decision`; :meth:`RegistryCheckController.check_when_due
<pullhealth.registrychecks.handlers.RegistryCheckController.check_when_due>` carries it out
(metrics, Events, status writes, the chain). The rule, in order:

1. An invalid spec is reported once per generation (an Invalid status and Event), then
   looked at again every ``INVALID_RETRY`` seconds; never probed.
2. A run of this generation and recheck request that this replica made recently wins over
   the status the event carries (it may be older than the run): wait for its retry time.
3. Outranked by a live peer: stand by (the active replica checks and exports).
4. Suspended: nothing until the next event. Not yet due (interval, or a faster retry while
   failing) and no recheck asked: wait until due.
5. Claimed by another live operator instance: wait for the claim to expire.
6. Otherwise: run the check now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pullhealth.domain.model import Phase, RegistryCheckSpec
from pullhealth.domain.reference import ImageReference
from pullhealth.registrychecks import registrycheck

INVALID_RETRY = 300


@dataclass(frozen=True)
class LastRun:
    """This replica's last run of the object: for which generation and recheck request, and
    how many seconds are left before it may be repeated."""

    generation: int
    recheck: str | None
    left: float


@dataclass(frozen=True)
class Export:
    """The gauges to export from the status the event carries (level-triggered)."""

    registry: str | None
    scheduled: int | None


@dataclass(frozen=True)
class Wait:
    """Nothing to do now; look again after ``seconds`` (None: only on the next event)."""

    seconds: float | None
    export: Export | None = None


@dataclass(frozen=True)
class ReportInvalid:
    """Write the Invalid status and Event for this generation."""

    message: str
    export: Export


@dataclass(frozen=True)
class StandBy:
    """A live peer outranks this replica: withdraw the series, forget the last run."""


@dataclass(frozen=True)
class ForeignClaim:
    """Another operator instance runs this check now; look again when its claim expires."""

    holder: str
    ttl: int
    export: Export


@dataclass(frozen=True)
class Run:
    """Run the check now (claim it first)."""

    spec: RegistryCheckSpec
    image: ImageReference | None
    recheck: str | None
    export: Export


Decision = Wait | ReportInvalid | StandBy | ForeignClaim | Run


def decide(
    body: Mapping[str, Any],
    now: datetime,
    last_run: LastRun | None,
    outranked: bool,
    holder: str,
) -> Decision:
    """What to do with the object as it is now (see the module's rule)."""
    meta = body.get("metadata") or {}
    generation = int(meta.get("generation") or 0)
    previous = body.get("status") or {}
    try:
        spec, image = registrycheck.parse_spec(dict(body.get("spec") or {}))
    except registrycheck.InvalidSpec as exc:
        export = Export(None, None)
        if previous.get("phase") == Phase.INVALID.value and previous.get("observedGeneration") == generation:
            return Wait(None, export)  # already reported for this generation: no retry storm
        if _left(last_run, generation, None) is not None:
            return Wait(INVALID_RETRY, export)
        return ReportInvalid(str(exc), export)
    recheck = registrycheck.recheck_requested(meta.get("annotations"), previous)
    wait = registrycheck.seconds_until_due(previous, generation, spec.interval_seconds, now)
    left = None if wait > 0 and recheck is None else _left(last_run, generation, recheck)
    if left is not None and not spec.suspend:
        # Ran already; the status this event carries is older than the run (or the write
        # failed): wait for the run's own retry time rather than probe again (and keep the
        # gauges on the newer result: no export).
        return Wait(left)
    if outranked:
        return StandBy()
    # Level-triggered metrics: the gauges say what the status says, from the first event
    # after a restart on (no re-check needed to bring them back).
    export = Export(spec.registry, None if spec.suspend else spec.interval_seconds)
    if spec.suspend:
        return Wait(None, export)
    if wait > 0 and recheck is None:
        return Wait(wait, export)
    ttl = registrycheck.claim_ttl(spec)
    other = registrycheck.foreign_claim(previous, holder, now, ttl)
    if other is not None:
        return ForeignClaim(other, ttl, export)
    return Run(spec, image, recheck, export)


def _left(last_run: LastRun | None, generation: int, recheck: str | None) -> float | None:
    """Seconds left before the last run (same generation and recheck) may be repeated."""
    if last_run is None or (last_run.generation, last_run.recheck) != (generation, recheck):
        return None
    return last_run.left if last_run.left > 0 else None
