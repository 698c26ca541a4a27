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

from pullhealth import metrics, registrycheck
from pullhealth.handlers.state import State
from pullhealth.model import Phase, StepStatus

GROUP, VERSION, PLURAL = "pullhealth.io", "v1alpha1", "registrychecks"
TICK_SECONDS = 5.0


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS)
async def registry_check_tick(
    *,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Run the check when due; write status; emit an Event when the result changes."""
    namespace = namespace or "default"
    generation = int(meta.get("generation") or 0)
    previous = dict(status)
    now = datetime.now(UTC)
    try:
        parsed, image = registrycheck.parse_spec(dict(spec))
    except registrycheck.InvalidSpec as exc:
        if previous.get("phase") == Phase.INVALID.value and previous.get("observedGeneration") == generation:
            return  # already reported for this generation: no retry storm
        new = registrycheck.invalid_status(str(exc), previous, generation, registrycheck.now_rfc3339(now))
        patch.status.update(new)
        kopf.event(body, type="Warning", reason="InvalidSpec", message=str(exc)[:1024])
        logger.warning("invalid spec: %s", exc)
        return
    if parsed.suspend:
        return
    if not registrycheck.is_due(previous, generation, parsed.interval_seconds, now):
        return
    if State.kube is None:
        raise kopf.TemporaryError("the operator has not finished starting", delay=5)

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
    patch.status.update(new)
    metrics.record_registry_check(
        namespace,
        name,
        parsed.registry,
        diagnosis.code.value,
        diagnosis.healthy,
        {c.name: c.duration_ms / 1000 for c in diagnosis.checks if c.status is not StepStatus.SKIPPED},
        time.time(),
    )
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


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def registry_check_deleted(*, namespace: str | None, name: str, **_: Any) -> None:
    """Drop the deleted RegistryCheck's metric series."""
    metrics.forget_registry_check(namespace or "default", name)
