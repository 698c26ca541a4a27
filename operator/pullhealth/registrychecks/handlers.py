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

:class:`RegistryCheckController` is built by the composition root with the runtime; the kopf
handler finds it in the operator's ``memo``.
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
from pullhealth.bounded import BoundedDict
from pullhealth.domain.model import StepStatus
from pullhealth.kube import events, kubeapi
from pullhealth.kube.leader import STANDBY_RECHECK
from pullhealth.registrychecks import decision, registrycheck
from pullhealth.registrychecks.decision import INVALID_RETRY
from pullhealth.registrychecks.fairness import FairLimiter
from pullhealth.registrychecks.schedule import Logger, Loops
from pullhealth.runtime.state import Runtime

GROUP, VERSION, PLURAL = "pullhealth.io", "v1alpha1", "registrychecks"
# After a lost claim, a conflict or an API outage: look again soon (an event may come first).
RETRY_SOON = 5.0
MAX_REMEMBERED = 10000
MEMO_KEY = "registrychecks"


@kopf.on.event(GROUP, VERSION, PLURAL)
async def registry_check_event(
    *,
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: str | None,
    name: str | None,
    uid: str | None,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Start, wake or stop the object's check loop."""
    controller: RegistryCheckController = memo[MEMO_KEY]
    controller.on_event(str(event.get("type") or ""), body, namespace, name, uid, logger)


class RegistryCheckController:
    """Every RegistryCheck's check loop in one operator process."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.loops = Loops(self.check_when_due, metrics.SCHEDULE_WAKEUPS.inc)
        # Chains running at once across the operator, fair across namespaces.
        self.chains = FairLimiter(lambda: runtime.settings.registry_check_workers)
        # RegistryCheck uid -> (generation, recheck request, monotonic time before which it
        # is not run again) of the last check run here: a status write that failed (RBAC,
        # conflict), or an event carrying an older status, must not cause a retry storm
        # against the registry.
        self._last_run: BoundedDict[str, tuple[int, str | None, float]] = BoundedDict(MAX_REMEMBERED)
        self._standby_watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        """With leader election: withdraw the RegistryCheck and failing-pod series as soon as
        this replica is outranked (its check loops sleep until their next check is due, up to
        a day, and a paused replica sees no pod events: what it exported would go stale)."""
        if self.runtime.leader is not None:
            self._standby_watch = asyncio.create_task(self._withdraw_while_standby())

    async def stop(self) -> None:
        """Operator shut-down: no check loop outlives it."""
        if self._standby_watch is not None:
            self._standby_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._standby_watch
        await self.loops.stop_all()

    def on_event(
        self, kind: str, body: Mapping[str, Any], namespace: str | None, name: str | None,
        uid: str | None, logger: Logger,
    ) -> None:
        """A watch event: start, wake or stop the object's loop."""
        key = uid or f"{namespace}/{name}"
        if kind == "DELETED":
            # Drop the metric series for good (even if a run is in flight: it is cancelled).
            self.loops.stop(key)
            self._last_run.pop(key, None)
            metrics.forget_registry_check(namespace or "default", name or "", key)
            return
        self.loops.poke(key, body, logger)

    async def _withdraw_while_standby(self) -> None:
        while True:
            await asyncio.sleep(STANDBY_RECHECK)
            exported = metrics.exported_registry_check_namespaces() | metrics.POD_FAILURES.namespaces()
            for namespace in sorted(exported):
                if await self.runtime.outranked(namespace):
                    metrics.withdraw_registry_checks(namespace)
                    metrics.POD_FAILURES.withdraw(namespace)

    async def check_when_due(self, body: Mapping[str, Any], logger: Logger) -> float | None:
        """Carry out :func:`decision.decide`: run the check when due, write the status, post an
        Event when the result changes.

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
        holder = self.runtime.instance
        chosen = decision.decide(
            body, now, self._last(uid), await self.runtime.outranked(namespace), holder
        )
        export = getattr(chosen, "export", None)
        if export is not None:
            metrics.export_registry_check(namespace, name, uid, export.registry, export.scheduled, previous)
        if isinstance(chosen, decision.Wait):
            return chosen.seconds
        if isinstance(chosen, decision.StandBy):
            # kopf paused this replica (a live peer outranks it) but our loops are our own
            # tasks: the active replica runs the check and exports its series (the status this
            # loop holds stops being updated while paused: exporting it would mask the truth).
            metrics.withdraw_registry_check(namespace, name)
            self._last_run.pop(uid, None)
            return RETRY_SOON
        if isinstance(chosen, decision.ForeignClaim):
            # Another operator runs this check now: it writes the result and the Event.
            if self.runtime.leader is None:
                self.runtime.report_other_writer(
                    logger, f"RegistryCheck {namespace}/{name} is being checked by {chosen.holder}"
                )
            return float(chosen.ttl)
        if isinstance(chosen, decision.ReportInvalid):
            self._remember(uid, generation, None, INVALID_RETRY)
            stamp = registrycheck.now_rfc3339(now)
            new = registrycheck.invalid_status(chosen.message, previous, generation, stamp)
            try:
                event = registrycheck.invalid_event(body, previous, generation, chosen.message)
                if await self._emit(event, logger):
                    await self._write(namespace, name, new, logger, resource_version=version, strict=True)
            except (kubeapi.Conflict, kubeapi.Unreachable):
                # Changed since read (an edit, another writer), or an outage (logged once): read
                # it fresh and write again; the Event's name makes the repeat a no-op.
                self._last_run.pop(uid, None)
                return RETRY_SOON
            logger.warning("invalid spec: %s", chosen.message)
            return INVALID_RETRY
        parsed, image, recheck = chosen.spec, chosen.image, chosen.recheck
        if await self.runtime.outranked(namespace, fresh=True):
            # The watch's view may lag behind a just-started newer replica: the peering
            # object as it is now decides before anything is probed or posted.
            return RETRY_SOON
        self._remember(uid, generation, recheck, parsed.interval_seconds)
        # One operator-wide limit on running chains, shared round-robin by namespaces: the
        # slot is taken before the claim, so a queued run does not hold a claim while it waits.
        async with self.chains.slot(namespace):
            # Claim the run before probing, conditional on the version read (Pending too on first
            # sight: kubectl shows it while the first chain runs): of two operators only one probes.
            claim = registrycheck.claim_status(holder, previous, registrycheck.now_rfc3339(now))
            try:
                claimed = await self._write(
                    namespace, name, claim, logger, resource_version=version, strict=True
                )
            except (kubeapi.Conflict, kubeapi.Unreachable):
                # Changed since read (another operator's claim, an edit), or the API server is down
                # (logged once per outage): look again with a fresh object.
                self._last_run.pop(uid, None)
                return RETRY_SOON
            if claimed is None:
                return parsed.interval_seconds  # refused (logged) or deleted

            diagnosis = await registrycheck.run_registry_check(
                parsed,
                image,
                namespace,
                self.runtime.kube,
                self.runtime.env,
                self.runtime.registry_check_cache,
                metrics.count_probe_request,
                # A recheck asks for a fresh probe, not a result shared from the last 20 s;
                # it still runs through the cache, whose observer exports the registry's
                # budget (a recheck's manifest answer is the newest word on it).
                fresh=recheck is not None,
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
            event = registrycheck.result_event(body, previous, diagnosis)
            if changed and not await self._emit(event, logger):
                return parsed.interval_seconds
            written = await self._write(
                namespace, name, new, logger,
                resource_version=claimed, still_ours=registrycheck.held_by(holder),
            )
        except kubeapi.Unreachable:
            self._last_run.pop(uid, None)  # our claim stands: run again once the API answers
            return RETRY_SOON
        except kubeapi.Conflict:
            self.runtime.report_other_writer(
                logger, f"RegistryCheck {namespace}/{name}'s claim was taken by another writer"
            )
            return parsed.interval_seconds
        if written is None:
            # The gauges keep the status' values: an unwritten result is not shown anywhere.
            return parsed.interval_seconds
        metrics.export_registry_check(namespace, name, uid, parsed.registry, parsed.interval_seconds, new)
        retry = registrycheck.retry_after(new, parsed.interval_seconds)
        self._remember(uid, generation, recheck, retry)
        # One log line per result change (the Event's twin), nothing per unchanged check.
        if changed:
            logger.info("check %s: %s", diagnosis.code.value, diagnosis.summary)
        else:
            logger.debug("check %s (unchanged), next in %ds", diagnosis.code.value, retry)
        return float(retry)

    async def _emit(self, event: events.EventSpec, logger: Logger) -> bool:
        """Post the Event; False when the API server failed (write nothing after it: retried).

        Refused by RBAC: logged and counted, and the status is written anyway.

        Raises:
            kubeapi.Unreachable: the API server did not answer (the outage is logged once).
        """
        posted = await self.runtime.kube.post(
            event, self.runtime.instance, logger, retried="retried after the check interval",
            refused="The status is written without it.",
        )
        if posted is kubeapi.Posted.UNREACHABLE:
            raise kubeapi.Unreachable("posting an Event")
        if posted is kubeapi.Posted.REFUSED:
            metrics.PATCH_FORBIDDEN.labels("events").inc()
        return posted is not kubeapi.Posted.FAILED

    def _last(self, uid: str) -> decision.LastRun | None:
        """This replica's last run of the object, with the seconds left before a repeat."""
        last = self._last_run.get(uid)
        if last is None:
            return None
        return decision.LastRun(last[0], last[1], last[2] - time.monotonic())

    def _remember(self, uid: str, generation: int, recheck: str | None, wait: float) -> None:
        self._last_run[uid] = (generation, recheck, time.monotonic() + wait)


    async def _write(
        self,
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
        try:
            return await self.runtime.status.patch_status(
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
