"""Failing pods: every pod event is filtered cheaply; failing ones are diagnosed.

Pods come from our own list-and-watch (:mod:`pullhealth.pods.podstream`), filtered on the
reading thread, not through kopf: only failing or annotated pods reach the loop, one
handler at a time per pod. Level-triggered: each event recomputes the diagnosis from the
pod as it is now; the annotations already on the pod decide whether anything must be
written, so repeated events (kubelet back-off retries, our own patch) write nothing and
post no Event. With leader election, an outranked replica holds its pods' newest events
and handles them once it leads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from pullhealth import metrics
from pullhealth.agent import nodereport
from pullhealth.domain.diagnose import vantage_layer
from pullhealth.kube import kubeapi, listwatch
from pullhealth.pods import podcheck, podstream
from pullhealth.registrychecks.registrycheck import now_rfc3339
from pullhealth.registrychecks.schedule import Logger
from pullhealth.runtime import startup
from pullhealth.runtime.leader import STANDBY_RECHECK, outranked
from pullhealth.runtime.state import State, client_wired, report_other_writer

FORBIDDEN_BACKOFF = 600.0
MAX_FORBIDDEN_REMEMBERED = 10000


MAX_DEFERRED = 50000  # relevant pods held by an outranked replica


class _Pods:
    stream: listwatch.ListWatch | None = None
    per_pod: podstream.PerPod | None = None
    settings: kopf.OperatorSettings | None = None
    deferred: dict[str, tuple[str, Mapping[str, Any]]] = {}
    flusher: asyncio.Task[None] | None = None


@kopf.on.startup()
async def start_pod_stream(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """Start reading pods once the start-up handler has wired the client."""
    if not await client_wired() or State.kube is None:
        raise kopf.PermanentError("start-up did not finish: no API client for the pod stream")
    _Pods.settings = settings
    loop = asyncio.get_running_loop()
    _Pods.per_pod = podstream.PerPod(_handle, loop)
    scopes, in_scope = startup.read_scopes()
    _Pods.stream = podstream.pod_stream(
        State.kube.api,
        scopes,
        _Pods.per_pod.deliver,
        relevant=podcheck.is_relevant if in_scope is None else _failing_in(in_scope),
    )
    _Pods.stream.start()
    _Pods.flusher = asyncio.create_task(_flush_deferred())
    logger.debug("pod stream started")


@kopf.on.cleanup()
async def stop_pod_stream(**_: Any) -> None:
    """Operator shut-down: the reading threads end, no pod handler outlives it."""
    for stream in (_Pods.stream, *State.readers):
        if stream is not None:
            stream.stop()
    if _Pods.flusher is not None:
        _Pods.flusher.cancel()
    if _Pods.per_pod is not None:
        await _Pods.per_pod.stop()


def _failing_in(in_scope: Callable[[Mapping[str, Any]], bool]) -> Callable[[Mapping[str, Any]], bool]:
    """With namespace globs (``--namespace 'team-*'``): one cluster-wide stream, filtered here."""
    return lambda pod: in_scope(pod) and podcheck.is_relevant(pod)


async def _handle(kind: str, body: Mapping[str, Any]) -> None:
    meta = body.get("metadata") or {}
    uid, namespace = str(meta.get("uid") or ""), str(meta.get("namespace") or "")
    if kind != "DELETED" and namespace and await outranked(namespace):
        if len(_Pods.deferred) >= MAX_DEFERRED:
            _Pods.deferred.clear()  # the leader handles them; a take-over re-lists anyway
        _Pods.deferred[uid] = (kind, body)
        return
    _Pods.deferred.pop(uid, None)
    assert _Pods.settings is not None
    await pod_event(kind, body, kopf.LocalObjectLogger(body=cast(kopf.Body, body), settings=_Pods.settings))


async def _flush_deferred() -> None:
    """An outranked replica that comes to lead handles the pods it held."""
    while True:
        await asyncio.sleep(STANDBY_RECHECK)
        if not _Pods.deferred or _Pods.per_pod is None:
            continue
        for uid, (kind, body) in list(_Pods.deferred.items()):
            namespace = str((body.get("metadata") or {}).get("namespace") or "")
            try:
                if await outranked(namespace):
                    continue
            except Exception:  # an outage: try again later
                break
            if _Pods.deferred.pop(uid, None) is not None:
                _Pods.per_pod.put(kind, body)


async def pod_event(kind: str, body: Mapping[str, Any], logger: Logger) -> None:
    """Diagnose a failing pod, or clear a recovered one."""
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid") or "")
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    if kind == "DELETED":
        metrics.POD_FAILURES.forget(uid)
        State.pod_memo.forget(uid)
        return
    # First sight since start-up: the recorded diagnosis counts until the pod is re-diagnosed.
    metrics.POD_FAILURES.seed_from_annotations(body)
    client = State.kube
    if client is None or State.pod_pool is None or not namespace or not name:
        return  # start-up has not finished
    # No worker slot is held here: the pod cache takes one per probe chain, after the
    # registry's own slot, so pods queued behind a slow registry do not block the others.
    failing = podcheck.failing_containers(body)
    # Back-off retries and our own patch change nothing the diagnosis depends on: the
    # last results are reused (no API read, no chain) while younger than the interval.
    results = State.pod_memo.recall(uid, body, failing) if failing else None
    if results is None:
        results = await _diagnose(client, body, failing, namespace, uid, logger)
        State.pod_memo.remember(uid, body, failing, results)
        metrics.POD_FAILURES.set(
            uid, [(namespace, r.registry or "unknown", r.diagnosis.code.value) for r in results]
        )
    plan = podcheck.plan_writeback(body, results[0] if results else None, now_rfc3339())
    if plan.annotations is None:
        return
    if State.forbidden_until.get(uid, 0.0) > time.monotonic():
        return  # already reported; do not hammer the API server
    # The Event first (deterministic name: a retry finds it), then the annotations that
    # mark the diagnosis reported, only if nobody else wrote them meanwhile.
    if plan.event is not None:
        try:
            await client.emit(plan.event, State.instance)
        except kubeapi.Forbidden as exc:
            metrics.PATCH_FORBIDDEN.labels("events").inc()
            logger.error(
                "cannot post the %s Event (RBAC): %s; grant create on events.k8s.io events to "
                "the operator's service account. The annotation is written without it.",
                plan.event.reason,
                exc,
            )
        except ApiException as exc:
            if not isinstance(exc, kubeapi.Unreachable):  # an outage is logged once, not per pod
                logger.warning("cannot post the %s Event (HTTP %s); retried on the pod's next update",
                               plan.event.reason, exc.status)
            return
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
        if len(State.forbidden_until) > MAX_FORBIDDEN_REMEMBERED:
            State.forbidden_until.clear()
        State.forbidden_until[uid] = time.monotonic() + FORBIDDEN_BACKOFF
        logger.error(
            "cannot annotate the pod (RBAC): %s; grant patch on pods to the operator's "
            "service account. Not retried for %ds.",
            exc,
            int(FORBIDDEN_BACKOFF),
        )
        return
    if written is kubeapi.Written.LOST:
        report_other_writer(logger, f"pod {namespace}/{name} was annotated by another writer")
        return
    if written is kubeapi.Written.WRITTEN and results:
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


async def _diagnose(
    client: kubeapi.KubeWriter,
    body: Mapping[str, Any],
    failing: list[podcheck.FailingContainer],
    namespace: str,
    uid: str,
    logger: Logger,
) -> list[podcheck.PodResult]:
    """Read what the pod's pull depends on and diagnose every failing container."""
    ready = State.first_listings_ready
    if failing and ready is not None and not ready.is_set():
        await ready.wait()  # start-up: the first lists of Events, Nodes, accounts are on their way
    watch = State.kubelet_failures
    watched = watch.messages(namespace, uid) if watch is not None and failing else None
    messages: list[str] = watched or []
    if failing and not watched:
        # Not known, or nothing kept (not arrived yet, or evicted): list the pod's own Events.
        try:
            messages = await client.kubelet_pull_messages(namespace, uid)
        except ApiException as exc:
            # Without the events, the waiting message still carries kubelet's text.
            logger.warning("cannot list the pod's events (HTTP %s); using the waiting message", exc.status)
    node_events: list[dict[str, str]] = []
    if failing and startup.OPTIONS.node_agent:
        try:
            # The node agent's NodePathChecked Events (none when it is not installed).
            node_events = await client.node_path_events(namespace, uid)
        except ApiException as exc:
            logger.warning("cannot list the pod's NodePathChecked events (HTTP %s)", exc.status)
    return await podcheck.diagnose_pod(
        body,
        messages,
        client if State.pod_reader is None else State.pod_reader,
        State.env,
        State.pod_settings,
        State.pod_cache,
        metrics.count_probe_request,
        node_events,
    )
