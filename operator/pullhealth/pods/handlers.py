"""Failing pods: every pod event is filtered cheaply; failing ones are diagnosed.

Pods come from our own list-and-watch (:mod:`pullhealth.pods.podstream`), filtered on the
reading thread, not through kopf: only failing or annotated pods reach the loop, one
handler at a time per pod. Level-triggered: each event recomputes the diagnosis from the
pod as it is now; the annotations already on the pod decide whether anything must be
written, so repeated events (kubelet back-off retries, our own patch) write nothing and
post no Event. With leader election, an outranked replica holds its pods' newest events
and handles them once it leads.

:class:`PodController` is built by the composition root with the runtime it works with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from pullhealth import metrics
from pullhealth.agent import nodereport
from pullhealth.bounded import BoundedDict
from pullhealth.domain import recovery
from pullhealth.domain.diagnose import vantage_layer
from pullhealth.kube import kubeapi, listwatch
from pullhealth.kube.leader import STANDBY_RECHECK
from pullhealth.pods import kubeletevents, podcheck, podstream, restarts
from pullhealth.registrychecks.registrycheck import now_rfc3339
from pullhealth.registrychecks.schedule import Logger
from pullhealth.runtime.state import Runtime

FORBIDDEN_BACKOFF = 600.0
MAX_FORBIDDEN_REMEMBERED = 10000
MAX_DEFERRED = 50000  # relevant pods held by an outranked replica
MAX_RECHECKED = 10000  # failing pods re-diagnosed on a timer (their cause may be fixed)
RECHECK_WITHOUT_INTERVAL = 10.0  # seconds between rechecks with --pod-interval 0
# Seconds a fresh failure (ErrImagePull) waits for kubelet's Failed Event to reach the
# Event watch before the pod's Events are listed instead (kubelet posts it asynchronously).
EVENT_LAG = 2.0


class PodController:
    """The failing-pod path of one operator process: stream in, diagnosis, write-back out."""

    def __init__(self, runtime: Runtime, kopf_settings: kopf.OperatorSettings) -> None:
        self.runtime = runtime
        self._kopf_settings = kopf_settings
        self._stream: listwatch.ListWatch | None = None
        self._per_pod: podstream.PerPod | None = None
        # Relevant pods held while outranked (the leader handles them; a take-over re-lists anyway).
        self._deferred: BoundedDict[str, tuple[str, Mapping[str, Any]]] = BoundedDict(MAX_DEFERRED)
        self._flusher: asyncio.Task[None] | None = None
        self._forbidden_until: BoundedDict[str, float] = BoundedDict(MAX_FORBIDDEN_REMEMBERED)
        # Failing pods whose cause can be verified fixed (domain.recovery): handled again every
        # pod interval, since kubelet's back-off may not update them for 5 minutes.
        self._rechecks: BoundedDict[str, Mapping[str, Any]] = BoundedDict(MAX_RECHECKED)
        self._rechecker: asyncio.Task[None] | None = None
        settings = runtime.settings
        self.restarts = restarts.Restarter(
            recovery.RestartMode(settings.restart_recovered_pods), settings.restarts_per_minute,
            runtime.kube, runtime.instance,
        )

    def start(self) -> None:
        """Start reading pods (on the running event loop)."""
        self._per_pod = podstream.PerPod(self._handle, asyncio.get_running_loop())
        scopes, in_scope = self.runtime.settings.read_scopes()
        self._stream = podstream.pod_stream(
            self.runtime.kube.api,
            scopes,
            self._per_pod.deliver,
            relevant=podcheck.is_relevant if in_scope is None else _failing_in(in_scope),
        )
        self._stream.start()
        self._flusher = asyncio.create_task(self._flush_deferred())
        self._rechecker = asyncio.create_task(self._recheck())

    async def stop(self) -> None:
        """Operator shut-down: the reading thread ends, no pod handler outlives it."""
        if self._stream is not None:
            self._stream.stop()
        for task in (self._flusher, self._rechecker):
            if task is not None:
                task.cancel()
        if self._per_pod is not None:
            await self._per_pod.stop()

    async def _handle(self, kind: str, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        uid, namespace = str(meta.get("uid") or ""), str(meta.get("namespace") or "")
        if kind != "DELETED" and namespace and await self.runtime.outranked(namespace):
            self._deferred[uid] = (kind, body)
            return
        self._deferred.pop(uid, None)
        logger = kopf.LocalObjectLogger(body=cast(kopf.Body, body), settings=self._kopf_settings)
        await self.pod_event(kind, body, logger)

    async def _flush_deferred(self) -> None:
        """An outranked replica that comes to lead handles the pods it held."""
        while True:
            await asyncio.sleep(STANDBY_RECHECK)
            if not self._deferred or self._per_pod is None:
                continue
            for uid, (kind, body) in list(self._deferred.items()):
                namespace = str((body.get("metadata") or {}).get("namespace") or "")
                if await self.runtime.outranked(namespace):
                    continue
                if self._deferred.pop(uid, None) is not None:
                    self._per_pod.put(kind, body)

    async def _recheck(self) -> None:
        """Failing pods whose cause may be fixed are handled again every pod interval: the
        memo and the chain cache expire by then, so the pod's own path is probed again."""
        # Twice per interval: a pod is re-diagnosed at most one half interval after its
        # memo expires.
        interval = (self.runtime.settings.pod_interval or RECHECK_WITHOUT_INTERVAL) / 2
        while True:
            await asyncio.sleep(max(1.0, interval))
            if self._per_pod is None:
                continue
            for body in list(self._rechecks.values()):
                self._per_pod.nudge("MODIFIED", body)

    async def pod_event(self, kind: str, body: Mapping[str, Any], logger: Logger) -> None:
        """Diagnose a failing pod, or clear a recovered one."""
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if kind == "DELETED":
            metrics.POD_FAILURES.forget(uid)
            self.runtime.pod_memo.forget(uid)
            self._rechecks.pop(uid, None)
            return
        # First sight since start-up: the recorded diagnosis counts until the pod is re-diagnosed.
        metrics.POD_FAILURES.seed_from_annotations(body)
        client = self.runtime.kube
        if not namespace or not name:
            return
        # No worker slot is held here: the pod cache takes one per probe chain, after the
        # registry's own slot, so pods queued behind a slow registry do not block the others.
        failing = podcheck.failing_containers(body)
        # Back-off retries and our own patch change nothing the diagnosis depends on: the
        # last results are reused (no API read, no chain) while younger than the interval.
        results = self.runtime.pod_memo.recall(uid, body, failing) if failing else None
        if results is None:
            results = await self._diagnose(client, body, failing, namespace, uid, logger)
            self.runtime.pod_memo.remember(uid, body, failing, results)
            metrics.POD_FAILURES.set(
                uid, [(namespace, r.registry or "unknown", r.diagnosis.code.value) for r in results]
            )
        diagnoses = [r.diagnosis for r in results]
        if any(recovery.may_recover(d.code.value) for d in diagnoses):
            self._rechecks[uid] = _slim(body)
        else:
            self._rechecks.pop(uid, None)
        recoverable = recovery.all_recoverable(diagnoses, self._failures(namespace, uid))
        plan = podcheck.plan_writeback(
            body, results[0] if results else None, now_rfc3339(),
            recoverable=recoverable,
            retry_by=self._retry_by(namespace, uid, results) if recoverable else None,
        )
        if plan.annotations is None:
            current = meta.get("annotations") or {}
            if recoverable and podcheck.ANN_RECOVERABLE in current and self.restarts.enabled:
                # Announced on an earlier pass (this body carries it): the opt-in restart.
                await self.restarts.consider(body, str(current.get(podcheck.ANN_DIAGNOSIS) or ""), logger)
            return
        if self._forbidden_until.get(uid, 0.0) > time.monotonic():
            return  # already reported; do not hammer the API server
        # The Event first (deterministic name: a retry finds it), then the annotations that
        # mark the diagnosis reported, only if nobody else wrote them meanwhile.
        if plan.event is not None:
            posted = await client.post(
                plan.event, self.runtime.instance, logger,
                retried="retried on the pod's next update", refused="The annotation is written without it.",
            )
            if posted is kubeapi.Posted.REFUSED:
                metrics.PATCH_FORBIDDEN.labels("events").inc()
            elif posted is not kubeapi.Posted.POSTED:
                return  # nothing is written after a failed Event: the next update retries both
        try:
            written = await client.set_pod_annotations(
                namespace,
                name,
                plan.annotations,
                resource_version=str(body.get("metadata", {}).get("resourceVersion") or ""),
                expected=plan.expected or {},
            )
        except kubeapi.Unreachable:
            return  # the outage is logged once; the pod's next event (a re-list) retries
        except kubeapi.Forbidden as exc:
            metrics.PATCH_FORBIDDEN.labels("pods").inc()
            self._forbidden_until[uid] = time.monotonic() + FORBIDDEN_BACKOFF
            logger.error(
                "cannot annotate the pod (RBAC): %s; grant patch on pods to the operator's "
                "service account. Not retried for %ds.",
                exc,
                int(FORBIDDEN_BACKOFF),
            )
            return
        if written is kubeapi.Written.LOST:
            self.runtime.report_other_writer(
                logger, f"pod {namespace}/{name} was annotated by another writer"
            )
            return
        if written is kubeapi.Written.WRITTEN and plan.announces_recovery:
            metrics.POD_RECOVERIES.labels("announced").inc()
            first = results[0]
            logger.info("recoverable %s: %s is fixed", first.container.name, first.diagnosis.code.value)
            return
        if written is kubeapi.Written.WRITTEN and results and plan.event is not None:
            metrics.DIAGNOSES.labels(results[0].diagnosis.code.value).inc()
            for result in results:
                # Cluster-wide: only evidence the operator can attribute to its agent (a note
                # signed with the report key), never a note anyone may write on their own pod.
                if nodereport.node_specific(result.diagnosis, verified_only=True):
                    try:
                        node = await client.node(str((body.get("spec") or {}).get("nodeName") or ""))
                    except ApiException:
                        node = None  # counted under pool "other"
                    labels = ((node or {}).get("metadata") or {}).get("labels")
                    pool = metrics.pool_label(labels)
                    metrics.NODE_PATH_DIAGNOSES.labels(pool, result.diagnosis.code.value).inc()
                layer = vantage_layer(result.diagnosis)
                if layer is not None:
                    metrics.POD_VANTAGE_DIFFERENCES.labels(layer).inc()
            logger.info("diagnosed %s: %s", results[0].container.name, results[0].diagnosis.code.value)


    def _failures(self, namespace: str, uid: str) -> dict[str, datetime]:
        """kubelet's last failed pull per image of the pod (its Failed Events, as watched)."""
        watch = self.runtime.kubelet_failures
        return watch.failed_at(namespace, uid) if watch is not None else {}

    def _retry_by(self, namespace: str, uid: str, results: list[podcheck.PodResult]) -> datetime | None:
        """When kubelet retries the diagnosed container's pull at the latest: its last
        failed pull plus its longest back-off."""
        if not results:
            return None
        return recovery.retry_by(self._failures(namespace, uid).get(results[0].container.image))

    async def _diagnose(
        self,
        client: kubeapi.KubeWriter,
        body: Mapping[str, Any],
        failing: list[podcheck.FailingContainer],
        namespace: str,
        uid: str,
        logger: Logger,
    ) -> list[podcheck.PodResult]:
        """Read what the pod's pull depends on and diagnose every failing container."""
        ready = self.runtime.first_listings_ready
        if failing and ready is not None and not ready.is_set():
            await ready.wait()  # start-up: the first lists of Events, Nodes, accounts are on their way
        watch = self.runtime.kubelet_failures
        watched = None
        if watch is not None and failing:
            # A fresh failure (ErrImagePull): kubelet's Event may trail the pod's update.
            fresh = any(c.reason == "ErrImagePull" for c in failing)
            watched = await watch.messages_soon(namespace, uid, EVENT_LAG if fresh else 0.0)
        messages: list[str] = watched or []
        if failing and not watched:
            # Not known, or nothing kept (not arrived yet, or evicted): list the pod's own Events.
            try:
                messages = await client.kubelet_pull_messages(namespace, uid)
            except ApiException as exc:
                # Without the events, the waiting message still carries kubelet's text.
                logger.warning(
                    "cannot list the pod's events (HTTP %s); using the waiting message", exc.status
                )
        seconds: dict[str, float] = {}
        pulls = self.runtime.kubelet_pulls
        if failing and watch is not None and pulls is not None:
            # How long each failed pull ran: kubelet's Pulling Event to its Failed Event.
            started, failed = pulls.pulling_at(namespace, uid), watch.failed_at(namespace, uid)
            seconds = kubeletevents.pull_seconds(started, failed)
        node_events: list[dict[str, str]] = []
        if failing and self.runtime.settings.node_agent:
            try:
                # The node agent's NodePathChecked Events (none when it is not installed).
                node_events = await client.node_path_events(namespace, uid)
            except ApiException as exc:
                logger.warning("cannot list the pod's NodePathChecked events (HTTP %s)", exc.status)
        context = podcheck.PullContext(
            client if self.runtime.pod_reader is None else self.runtime.pod_reader,
            self.runtime.env,
            self.runtime.pod_settings,
            self.runtime.pod_cache,
            metrics.count_probe_request,
        )
        evidence = podcheck.KubeletEvidence(messages, node_events, seconds)
        return await podcheck.diagnose_pod(body, evidence, context)


def _slim(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod as kept for its rechecks: without ``managedFields`` (often half its size)."""
    meta = {k: v for k, v in (pod.get("metadata") or {}).items() if k != "managedFields"}
    return {**pod, "metadata": meta}


def _failing_in(in_scope: Callable[[Mapping[str, Any]], bool]) -> Callable[[Mapping[str, Any]], bool]:
    """With namespace globs (``--namespace 'team-*'``): one cluster-wide stream, filtered here."""
    return lambda pod: in_scope(pod) and podcheck.is_relevant(pod)
