"""RegistryCheck handlers: a level-triggered timer decides when a check is due.

The timer ticks every few seconds per object and does nothing unless the spec changed
(new generation), the object was never checked, or ``intervalSeconds`` passed since
``status.lastCheckTime``. That one rule covers create, update, resume after an operator
restart (status is read back, so no re-check and no duplicate event) and the schedule.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from pullhealth import kube, metrics, registrycheck
from pullhealth.handlers.state import State
from pullhealth.model import Phase, StepStatus

GROUP, VERSION, PLURAL = "pullhealth.io", "v1alpha1", "registrychecks"
TICK_SECONDS = 5.0
MAX_REMEMBERED = 10000


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS)
async def registry_check_tick(
    *,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    namespace: str | None,
    name: str,
    uid: str | None,
    body: kopf.Body,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Run the check when due; write status; emit an Event when the result changes."""
    namespace = namespace or "default"
    uid = uid or f"{namespace}/{name}"
    generation = int(meta.get("generation") or 0)
    previous = dict(status)
    now = datetime.now(UTC)
    if State.kube is None or State.status is None:
        return  # start-up has not finished; the next tick comes in seconds
    try:
        parsed, image = registrycheck.parse_spec(dict(spec))
    except registrycheck.InvalidSpec as exc:
        metrics.export_registry_check(namespace, name, uid, None, None, previous)
        if previous.get("phase") == Phase.INVALID.value and previous.get("observedGeneration") == generation:
            return  # already reported for this generation: no retry storm
        if _ran_recently(uid, generation, 300):
            return
        new = registrycheck.invalid_status(str(exc), previous, generation, registrycheck.now_rfc3339(now))
        if await _write(namespace, name, new, logger):
            kopf.event(body, type="Warning", reason="InvalidSpec", message=str(exc)[:1024])
        logger.warning("invalid spec: %s", exc)
        return
    # Level-triggered metrics: the gauges say what the status says, from the first tick
    # after a restart on (no re-check needed to bring them back).
    scheduled = None if parsed.suspend else parsed.interval_seconds
    metrics.export_registry_check(namespace, name, uid, parsed.registry, scheduled, previous)
    if parsed.suspend:
        return
    if not registrycheck.is_due(previous, generation, parsed.interval_seconds, now):
        return
    if _ran_recently(uid, generation, parsed.interval_seconds):
        return  # ran, but the status could not be written: wait for the interval
    if not previous.get("phase"):
        # First sight: say so at once (kubectl shows Pending while the first chain runs).
        pending = {"phase": Phase.PENDING.value, "summary": "first check running"}
        await _write(namespace, name, pending, logger, quiet=True)

    diagnosis = await registrycheck.run_registry_check(
        parsed,
        image,
        namespace,
        State.kube,
        State.env,
        State.registry_check_cache,
        metrics.count_probe_request,
    )
    finished = datetime.now(UTC)
    new = registrycheck.build_status(diagnosis, previous, generation, registrycheck.now_rfc3339(finished))
    metrics.record_registry_check_run(
        namespace,
        name,
        uid,
        diagnosis.code.value,
        {c.name: c.duration_ms / 1000 for c in diagnosis.checks if c.status is not StepStatus.SKIPPED},
    )
    if not await _write(namespace, name, new, logger):
        return  # the gauges keep the status' values: an unwritten result is not shown anywhere
    metrics.export_registry_check(namespace, name, uid, parsed.registry, parsed.interval_seconds, new)
    if registrycheck.result_changed(previous, new):
        if diagnosis.healthy:
            kopf.event(body, type="Normal", reason="CheckSucceeded", message=diagnosis.summary[:1024])
        else:
            kopf.event(
                body,
                type="Warning",
                reason="CheckFailed",
                message=f"{diagnosis.code.value}: {diagnosis.summary}"[:1024],
            )
    logger.info("check %s: %s", diagnosis.code.value, diagnosis.summary)


def _ran_recently(uid: str, generation: int, interval: int) -> bool:
    """Remember this run; True when one already ran for this generation within interval."""
    now = time.monotonic()
    last = State.last_run.get(uid)
    if last is not None and last[0] == generation and now - last[1] < interval:
        return True
    if len(State.last_run) > MAX_REMEMBERED:
        State.last_run.clear()
    State.last_run[uid] = (generation, now)
    return False


async def _write(
    namespace: str, name: str, status: dict[str, Any], logger: kopf.Logger, *, quiet: bool = False
) -> bool:
    """Write the status; a refused write is logged and counted, never retried in a loop.

    ``quiet`` (the cosmetic Pending) fails silently: the result write that follows in the
    same tick reports a refusal, once.
    """
    assert State.status is not None
    try:
        await State.status.patch_status(GROUP, VERSION, PLURAL, namespace, name, status)
    except kube.Forbidden as exc:
        if not quiet:
            metrics.PATCH_FORBIDDEN.labels("registrychecks/status").inc()
            logger.error(
                "cannot write the status (RBAC): %s; grant patch on registrychecks/status to the "
                "operator's service account. Retried after the check interval.",
                exc,
            )
        return False
    except ApiException as exc:
        if not quiet:
            logger.warning("status write failed (HTTP %s); retried after the check interval", exc.status)
        return False
    return True


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def registry_check_deleted(*, namespace: str | None, name: str, uid: str | None, **_: Any) -> None:
    """Drop the deleted RegistryCheck's metric series (for good, even if a run is in flight)."""
    namespace = namespace or "default"
    metrics.forget_registry_check(namespace, name, uid or f"{namespace}/{name}")
