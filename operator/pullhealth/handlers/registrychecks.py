"""RegistryCheck handlers: each object's watch events wake its own check loop.

The loop (:mod:`pullhealth.handlers.schedule`) runs :func:`check_when_due` on every event
and when the next check is due. It does nothing unless the spec changed (new generation),
the object was never checked, a ``pullhealth.io/recheck`` annotation asks for a check, or
the retry time read from the status passed (``intervalSeconds``; sooner while failing).
That one rule covers create, update, resume after an operator restart (status is read back,
so no re-check and no duplicate event) and the schedule. No finalizer: deleting a
RegistryCheck never waits for the operator (kopf removes the one older versions added).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from pullhealth import kube, metrics, registrycheck
from pullhealth.handlers.schedule import Logger, Loops
from pullhealth.handlers.state import State
from pullhealth.model import Phase, StepStatus

GROUP, VERSION, PLURAL = "pullhealth.io", "v1alpha1", "registrychecks"
STARTUP_DELAY = 1.0
INVALID_RETRY = 300
MAX_REMEMBERED = 10000


@kopf.on.event(GROUP, VERSION, PLURAL)
async def registry_check_event(
    *,
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    name: str | None,
    uid: str | None,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Start, wake or stop the object's check loop."""
    key = uid or f"{namespace}/{name}"
    if event.get("type") == "DELETED":
        # Drop the metric series for good (even if a run is in flight: it is cancelled).
        LOOPS.stop(key)
        State.last_run.pop(key, None)
        metrics.forget_registry_check(namespace or "default", name or "", key)
        return
    LOOPS.poke(key, body, logger)


@kopf.on.cleanup()
async def stop_check_loops(**_: Any) -> None:
    """Operator shut-down: no check loop outlives it."""
    await LOOPS.stop_all()


async def check_when_due(body: Mapping[str, Any], logger: Logger) -> float | None:
    """Run the check when due; write status; emit an Event when the result changes.

    Returns:
        Seconds until this should run again, or None for "only on the next event".
    """
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    uid = str(meta.get("uid") or f"{namespace}/{name}")
    generation = int(meta.get("generation") or 0)
    previous = dict(body.get("status") or {})
    now = datetime.now(UTC)
    if State.kube is None or State.status is None:
        return STARTUP_DELAY  # start-up has not finished
    try:
        parsed, image = registrycheck.parse_spec(dict(body.get("spec") or {}))
    except registrycheck.InvalidSpec as exc:
        metrics.export_registry_check(namespace, name, uid, None, None, previous)
        if previous.get("phase") == Phase.INVALID.value and previous.get("observedGeneration") == generation:
            return None  # already reported for this generation: no retry storm
        if _ran_recently(uid, generation, None) is not None:
            return INVALID_RETRY
        _remember(uid, generation, None, INVALID_RETRY)
        new = registrycheck.invalid_status(str(exc), previous, generation, registrycheck.now_rfc3339(now))
        if await _write(namespace, name, new, logger):
            kopf.event(_ref(body), type="Warning", reason="InvalidSpec", message=str(exc)[:1024])
        logger.warning("invalid spec: %s", exc)
        return INVALID_RETRY
    recheck = registrycheck.recheck_requested(meta.get("annotations"), previous)
    wait = registrycheck.seconds_until_due(previous, generation, parsed.interval_seconds, now)
    left = None if wait > 0 and recheck is None else _ran_recently(uid, generation, recheck)
    if left is not None and not parsed.suspend:
        # Ran already; the status this event carries is older than the run (or the write
        # failed): wait for the run's own retry time rather than probe again (and keep the
        # gauges on the newer result).
        return left
    # Level-triggered metrics: the gauges say what the status says, from the first event
    # after a restart on (no re-check needed to bring them back).
    scheduled = None if parsed.suspend else parsed.interval_seconds
    metrics.export_registry_check(namespace, name, uid, parsed.registry, scheduled, previous)
    if parsed.suspend:
        return None
    if wait > 0 and recheck is None:
        return wait
    _remember(uid, generation, recheck, parsed.interval_seconds)
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
    new = registrycheck.build_status(
        diagnosis, previous, generation, registrycheck.now_rfc3339(finished), recheck=recheck
    )
    metrics.record_registry_check_run(
        namespace,
        name,
        uid,
        diagnosis.code.value,
        {c.name: c.duration_ms / 1000 for c in diagnosis.checks if c.status is not StepStatus.SKIPPED},
    )
    if not await _write(namespace, name, new, logger):
        # The gauges keep the status' values: an unwritten result is not shown anywhere.
        return parsed.interval_seconds
    metrics.export_registry_check(namespace, name, uid, parsed.registry, parsed.interval_seconds, new)
    retry = registrycheck.retry_after(new, parsed.interval_seconds)
    _remember(uid, generation, recheck, retry)
    # One log line per result change (the Event's twin), nothing per unchanged check.
    if registrycheck.result_changed(previous, new):
        if diagnosis.healthy:
            kopf.event(_ref(body), type="Normal", reason="CheckSucceeded", message=diagnosis.summary[:1024])
        else:
            kopf.event(
                _ref(body),
                type="Warning",
                reason="CheckFailed",
                message=f"{diagnosis.code.value}: {diagnosis.summary}"[:1024],
            )
        logger.info("check %s: %s", diagnosis.code.value, diagnosis.summary)
    else:
        logger.debug("check %s (unchanged), next in %ds", diagnosis.code.value, retry)
    return float(retry)


LOOPS = Loops(check_when_due)


def _ref(body: Mapping[str, Any]) -> kopf.Body:
    return body if isinstance(body, kopf.Body) else kopf.Body(dict(body))  # type: ignore[arg-type]


def _ran_recently(uid: str, generation: int, recheck: str | None) -> float | None:
    """Seconds left before the last run here (same generation and recheck) may be repeated."""
    last = State.last_run.get(uid)
    if last is None or (last[0], last[1]) != (generation, recheck):
        return None
    left = last[2] - time.monotonic()
    return left if left > 0 else None


def _remember(uid: str, generation: int, recheck: str | None, wait: float) -> None:
    if len(State.last_run) > MAX_REMEMBERED:
        State.last_run.clear()
    State.last_run[uid] = (generation, recheck, time.monotonic() + wait)


async def _write(
    namespace: str, name: str, status: dict[str, Any], logger: Logger, *, quiet: bool = False
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
