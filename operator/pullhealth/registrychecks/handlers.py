"""RegistryCheck handlers: each object's watch events wake its own check loop.

The loop (:mod:`pullhealth.registrychecks.schedule`) runs :func:`check_when_due` on every event
and when the next check is due. It does nothing unless the spec changed (new generation),
the object was never checked, a ``pullhealth.io/recheck`` annotation asks for a check, or
the retry time read from the status passed (``intervalSeconds``; sooner while failing).
That one rule covers create, update, resume after an operator restart (status is read back,
so no re-check and no duplicate event) and the schedule. No finalizer: deleting a
RegistryCheck never waits for the operator (kopf removes the one older versions added).

One writer per run, one Event per result: a run is claimed in the status (conditional on the
resourceVersion read) before probing; the Event (deterministic name) is posted before the
status that records the result, which is written only while the claim is still ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from pullhealth import metrics
from pullhealth.domain.model import Phase, StepStatus
from pullhealth.kube import events, kubeapi
from pullhealth.registrychecks import registrycheck
from pullhealth.registrychecks.fairness import FairLimiter
from pullhealth.registrychecks.schedule import Logger, Loops
from pullhealth.runtime import startup
from pullhealth.runtime.leader import STANDBY_RECHECK, outranked
from pullhealth.runtime.state import State, report_other_writer

GROUP, VERSION, PLURAL = "pullhealth.io", "v1alpha1", "registrychecks"
STARTUP_DELAY = 1.0
INVALID_RETRY = 300
# After a lost claim, a conflict or an API outage: look again soon (an event may come first).
RETRY_SOON = 5.0
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


@kopf.on.startup()
async def watch_for_standby(**_: Any) -> None:
    """With leader election: withdraw the RegistryCheck and failing-pod series as soon as
    this replica is outranked (its check loops sleep until their next check is due, up to a
    day, and a paused replica sees no pod events: what it exported would go stale)."""
    global _standby_watch
    _standby_watch = asyncio.create_task(_withdraw_while_standby())


@kopf.on.cleanup()
async def stop_check_loops(**_: Any) -> None:
    """Operator shut-down: no check loop outlives it."""
    if _standby_watch is not None:
        _standby_watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _standby_watch
    await LOOPS.stop_all()


_standby_watch: asyncio.Task[None] | None = None


async def _withdraw_while_standby() -> None:
    while True:
        await asyncio.sleep(STANDBY_RECHECK)
        if State.peering is None:
            continue  # no leader election (or start-up still running)
        exported = metrics.exported_registry_check_namespaces() | metrics.POD_FAILURES.namespaces()
        for namespace in sorted(exported):
            try:
                standby = await outranked(namespace)
            except Exception:  # an outage (the check loops report it): try again later
                break
            if standby:
                metrics.withdraw_registry_checks(namespace)
                metrics.POD_FAILURES.withdraw(namespace)


async def check_when_due(body: Mapping[str, Any], logger: Logger) -> float | None:
    """Run the check when due; write status; emit an Event when the result changes.

    Returns:
        Seconds until this should run again, or None for "only on the next event".
    """
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    uid = str(meta.get("uid") or f"{namespace}/{name}")
    generation = int(meta.get("generation") or 0)
    version = str(meta.get("resourceVersion") or "")
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
        try:
            if await _emit(registrycheck.invalid_event(body, previous, generation, str(exc)), logger):
                await _write(namespace, name, new, logger, resource_version=version, strict=True)
        except (kubeapi.Conflict, kubeapi.Unreachable):
            # Changed since read (an edit, another writer), or an outage (logged once): read
            # it fresh and write again; the Event's name makes the repeat a no-op.
            State.last_run.pop(uid, None)
            return RETRY_SOON
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
    if await outranked(namespace):
        # kopf paused this replica (a live peer outranks it) but our loops are our own
        # tasks: the active replica runs the check and exports its series (the status this
        # loop holds stops being updated while paused: exporting it would mask the truth).
        metrics.withdraw_registry_check(namespace, name)
        State.last_run.pop(uid, None)
        return RETRY_SOON
    # Level-triggered metrics: the gauges say what the status says, from the first event
    # after a restart on (no re-check needed to bring them back).
    scheduled = None if parsed.suspend else parsed.interval_seconds
    metrics.export_registry_check(namespace, name, uid, parsed.registry, scheduled, previous)
    if parsed.suspend:
        return None
    if wait > 0 and recheck is None:
        return wait
    holder = State.instance
    ttl = registrycheck.claim_ttl(parsed)
    other = registrycheck.foreign_claim(previous, holder, now, ttl)
    if other is not None:
        # Another operator runs this check now: it writes the result and the Event.
        if not State.leader_election:
            report_other_writer(logger, f"RegistryCheck {namespace}/{name} is being checked by {other}")
        return float(ttl)
    _remember(uid, generation, recheck, parsed.interval_seconds)
    # One operator-wide limit on running chains, shared round-robin by namespaces: the
    # slot is taken before the claim, so a queued run does not hold a claim while it waits.
    async with CHAINS.slot(namespace):
        # Claim the run before probing, conditional on the version read (Pending too on first
        # sight: kubectl shows it while the first chain runs): of two operators only one probes.
        claim = registrycheck.claim_status(holder, previous, registrycheck.now_rfc3339(now))
        try:
            claimed = await _write(namespace, name, claim, logger, resource_version=version, strict=True)
        except (kubeapi.Conflict, kubeapi.Unreachable):
            # Changed since read (another operator's claim, an edit), or the API server is down
            # (logged once per outage): look again with a fresh object.
            State.last_run.pop(uid, None)
            return RETRY_SOON
        if claimed is None:
            return parsed.interval_seconds  # refused (logged) or deleted

        diagnosis = await registrycheck.run_registry_check(
            parsed,
            image,
            namespace,
            State.kube,
            State.env,
            # A recheck asks for a fresh probe, not a result shared from the last 20 s.
            State.registry_check_cache if recheck is None else None,
            metrics.count_probe_request,
        )
    finished = datetime.now(UTC)
    new = registrycheck.build_status(
        diagnosis, previous, generation, registrycheck.now_rfc3339(finished), recheck=recheck
    )
    new[registrycheck.CLAIM] = None  # released with the result
    metrics.record_registry_check_run(
        namespace,
        name,
        uid,
        diagnosis.code.value,
        {c.name: c.duration_ms / 1000 for c in diagnosis.checks if c.status is not StepStatus.SKIPPED},
    )
    changed = registrycheck.result_changed(previous, new)
    # The Event first (deterministic name: a retry after a crash finds it), then the status
    # that records the result, only while our claim still stands.
    try:
        if changed and not await _emit(registrycheck.result_event(body, previous, diagnosis), logger):
            return parsed.interval_seconds
        written = await _write(
            namespace, name, new, logger, resource_version=claimed, still_ours=registrycheck.held_by(holder)
        )
    except kubeapi.Unreachable:
        State.last_run.pop(uid, None)  # our claim stands: run again once the API answers
        return RETRY_SOON
    except kubeapi.Conflict:
        report_other_writer(logger, f"RegistryCheck {namespace}/{name}'s claim was taken by another writer")
        return parsed.interval_seconds
    if written is None:
        # The gauges keep the status' values: an unwritten result is not shown anywhere.
        return parsed.interval_seconds
    metrics.export_registry_check(namespace, name, uid, parsed.registry, parsed.interval_seconds, new)
    retry = registrycheck.retry_after(new, parsed.interval_seconds)
    _remember(uid, generation, recheck, retry)
    # One log line per result change (the Event's twin), nothing per unchanged check.
    if changed:
        logger.info("check %s: %s", diagnosis.code.value, diagnosis.summary)
    else:
        logger.debug("check %s (unchanged), next in %ds", diagnosis.code.value, retry)
    return float(retry)


LOOPS = Loops(check_when_due, metrics.SCHEDULE_WAKEUPS.inc)
CHAINS = FairLimiter(lambda: startup.OPTIONS.registry_check_workers)


async def _emit(event: events.EventSpec, logger: Logger) -> bool:
    """Post the Event; False when the API server failed (write nothing after it: retried).

    Refused by RBAC: logged and counted, and the status is written anyway.

    Raises:
        kubeapi.Unreachable: the API server did not answer (the outage is logged once).
    """
    assert State.kube is not None
    try:
        await State.kube.emit(event, State.instance)
    except kubeapi.Forbidden as exc:
        metrics.PATCH_FORBIDDEN.labels("events").inc()
        logger.error(
            "cannot post the %s Event (RBAC): %s; grant create on events.k8s.io events to the "
            "operator's service account",
            event.reason,
            exc,
        )
    except kubeapi.Unreachable:
        raise
    except ApiException as exc:
        logger.warning("cannot post the %s Event (HTTP %s); retried after the check interval",
                       event.reason, exc.status)
        return False
    return True


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
    namespace: str,
    name: str,
    status: dict[str, Any],
    logger: Logger,
    *,
    resource_version: str | None = None,
    still_ours: Any = None,
    strict: bool = False,
) -> str | None:
    """Write the status conditionally; the new resourceVersion, or None when not written.

    A refused write is logged and counted, never retried in a loop.

    Raises:
        kubeapi.Conflict: another writer changed the object first (with ``strict`` or
            ``still_ours``; otherwise logged and None).
        kubeapi.Unreachable: the API server did not answer (the outage is logged once).
    """
    assert State.status is not None
    try:
        return await State.status.patch_status(
            GROUP,
            VERSION,
            PLURAL,
            namespace,
            name,
            status,
            resource_version=resource_version,
            still_ours=still_ours,
        )
    except kubeapi.Forbidden as exc:
        metrics.PATCH_FORBIDDEN.labels("registrychecks/status").inc()
        logger.error(
            "cannot write the status (RBAC): %s; grant patch on registrychecks/status to the "
            "operator's service account. Retried after the check interval.",
            exc,
        )
        return None
    except kubeapi.Conflict:
        if strict or still_ours is not None:
            raise
        logger.info("status not written: the RegistryCheck changed meanwhile")
        return None
    except kubeapi.Unreachable:
        raise
    except ApiException as exc:
        logger.warning("status write failed (HTTP %s); retried after the check interval", exc.status)
        return None
