"""Opt-in: delete a recoverable pod so that its controller creates one that pulls now.

kubelet waits out its image pull back-off (up to 5 minutes) even after the cause is fixed
(kubernetes/kubernetes#119891). With ``--restart-recovered-pods`` (the chart's
``pods.restartRecovered``) the operator deletes a pod announced ``PullRecoverable`` when:

- the admin's mode allows the pod's namespace (:func:`pullhealth.domain.recovery.namespace_allows`:
  a namespace label only narrows what the admin enabled, it never widens it);
- a ReplicaSet, StatefulSet or DaemonSet controls the pod and it is not being deleted
  (:func:`pullhealth.domain.recovery.restart_refusal`): never a bare pod or a Job's pod;
- fewer than ``--restarts-per-minute`` pods were deleted in the last minute (over all
  namespaces), and this pod was never deleted by this process before.

The delete is first tried with ``dryRun`` (RBAC, admission and the preconditions on the pod's
uid and resourceVersion, nothing deleted), then a ``PullRecoveryRestart`` Event is posted on
the pod, then the pod is deleted with the same preconditions: no Event announces a deletion
the API server refuses, and no pod is deleted without its Event. A pod changed since the
decision (orphaned, say) is kept and decided again on its next event.

RBAC refusals (no ``delete`` on pods, no ``create`` on Events, no ``get`` on namespaces) are
the admin's to fix: each is logged once per process, saying what to grant; a refused delete
or Event is counted in ``pullhealth_patch_forbidden_total`` and no pod is tried again for
``FORBIDDEN_BACKOFF`` seconds (then, still refused, without a new log line). Nothing else of
the operator depends on these rights. Other failed deletes (an admission refusal answered
422, a 5xx) leave the pod for a later event and are logged at most once per
``FORBIDDEN_BACKOFF``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from pullhealth import metrics
from pullhealth.bounded import BoundedDict
from pullhealth.domain import recovery
from pullhealth.kube import events, kubeapi
from pullhealth.kube.kubeapi import Logger

NAMESPACE_TTL = 30.0  # seconds a namespace's labels are reused
FORBIDDEN_BACKOFF = 600.0
MAX_PODS = 10_000  # pods remembered as restarted (or refused) by this process
MAX_NAMESPACES = 10_000


class Restarter:
    """Decides and carries out the deletion of recoverable pods, bounded.

    Args:
        mode: the admin's ``--restart-recovered-pods``.
        per_minute: deletions in any 60 s at most.
        client: the API writer.
        instance: the Events' reportingInstance.
        clock: monotonic seconds (a test may pass its own).
    """

    def __init__(
        self,
        mode: recovery.RestartMode,
        per_minute: int,
        client: kubeapi.KubeWriter,
        instance: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mode = mode
        self.per_minute = max(1, per_minute)
        self._client = client
        self._instance = instance
        self._clock = clock
        self._deleted: BoundedDict[str, float] = BoundedDict(MAX_PODS)
        self._window = recovery.Window(self.per_minute)
        # namespace -> (valid until, its labels or None)
        self._namespaces: BoundedDict[str, tuple[float, Mapping[str, str] | None]] = BoundedDict(
            MAX_NAMESPACES
        )
        self._forbidden_until = 0.0
        self._reported: set[str] = set()
        self._failure_logged_until = 0.0
        self._unlogged = 0
        # One attempt at a time (at most per_minute a minute wait for it): a refusal stops the
        # attempts behind it, and is logged and counted once, not once per pod in flight.
        self._turn = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        """Whether the admin turned restarts on at all."""
        return self.mode is not recovery.RestartMode.OFF

    async def consider(self, pod: Mapping[str, Any], previous: str, logger: Logger) -> bool:
        """Delete ``pod`` (announced recoverable, was ``previous``) if everything allows it.

        Returns whether it was deleted. Never raises for an API answer: a refusal is logged
        once per process, a failure leaves the pod for its next event.
        """
        meta = pod.get("metadata") or {}
        uid, namespace = (str(meta.get(k) or "") for k in ("uid", "namespace"))
        now = self._clock()
        if not self.enabled or not uid or uid in self._deleted or now < self._forbidden_until:
            return False
        if recovery.restart_refusal(pod) is not None:
            return False
        if not await self._namespace_allows(namespace, logger):
            return False
        if not self._window.take(now):
            return False  # the pod's next event (or the operator's recheck) comes back to it
        async with self._turn:
            if self._clock() < self._forbidden_until:
                return False  # refused while this one waited
            return await self._restart(pod, previous, logger)

    async def _restart(self, pod: Mapping[str, Any], previous: str, logger: Logger) -> bool:
        """The dry run, the Event, the delete; whether the pod was deleted."""
        meta = pod.get("metadata") or {}
        uid, namespace, name = (str(meta.get(k) or "") for k in ("uid", "namespace", "name"))
        now = self._clock()
        owner = recovery.owner_name(pod)
        notice = events.EventSpec(
            regarding=events.Regarding("v1", "Pod", namespace, name, uid),
            type="Normal",
            reason="PullRecoveryRestart",
            action="Delete",
            note=(
                f"deleting the pod so that its controller {owner} creates one that pulls now instead of "
                f"waiting for kubelet's back-off (was {previous}; the pull works again); "
                f"enabled by the admin (--restart-recovered-pods={self.mode.value})"
            ),
            key=("restart",),
            occurrence=uid,
        )
        version = str(meta.get("resourceVersion") or "")
        # Nothing deleted yet: is the delete allowed (RBAC, admission) and still the pod decided on?
        trial = await self._delete(namespace, name, uid, version, now, logger, dry_run=True)
        if trial is not kubeapi.Deleted.DELETED:
            return False
        posted = await self._client.post(
            notice, self._instance, logger, retried="retried on the pod's next update",
            refused=f"No pod is deleted without its Event; tried again every {int(FORBIDDEN_BACKOFF)}s, "
            "this line is not repeated.",
            log_refusal="events" not in self._reported,
        )
        if posted is kubeapi.Posted.REFUSED:
            self._refused("events", now)
            return False
        if posted is not kubeapi.Posted.POSTED:
            return False  # no deletion the pod's Events do not explain
        done = await self._delete(namespace, name, uid, version, now, logger, dry_run=False)
        if done is None or done is kubeapi.Deleted.CHANGED:
            return False  # not the pod decided on any more: its next event decides again
        self._deleted[uid] = now
        if done is kubeapi.Deleted.DELETED:
            metrics.POD_RECOVERIES.labels("deleted").inc()
            logger.info("deleted recoverable pod %s/%s (was %s) so that %s retries now", namespace, name,
                        previous, owner)
        return done is kubeapi.Deleted.DELETED

    async def _delete(
        self, namespace: str, name: str, uid: str, version: str, now: float, logger: Logger, *, dry_run: bool
    ) -> kubeapi.Deleted | None:
        """The conditional delete (or its dry run); None when the API server refused or failed."""
        try:
            return await self._client.delete_pod(
                namespace, name, uid=uid, resource_version=version, dry_run=dry_run
            )
        except kubeapi.Forbidden as exc:
            if "pods" not in self._reported:
                logger.error(
                    "cannot delete the recoverable pod (forbidden): %s; if RBAC refused, grant delete on "
                    "pods to the operator's service account (the chart does with pods.restartRecovered); "
                    "if an admission policy or webhook did, it decides; or turn --restart-recovered-pods "
                    "off. No pod is deleted meanwhile; tried again every %ds, this line is not repeated.",
                    exc, int(FORBIDDEN_BACKOFF),
                )
            self._refused("pods", now)
            return None
        except ApiException as exc:
            self._failed(exc, now, logger)
            return None

    def _failed(self, exc: ApiException, now: float, logger: Logger) -> None:
        """Any other refusal (an admission denial with another code, a 5xx): the pod is tried
        again on a later event, and the line is written at most once per ``FORBIDDEN_BACKOFF``,
        saying how many failures it stands for (a webhook refusing every delete would
        otherwise log each attempt, up to ``per_minute`` lines a minute)."""
        self._unlogged += 1
        if now < self._failure_logged_until:
            return
        logger.warning(
            "cannot delete the recoverable pod (HTTP %s: %s); pods are retried on later updates; "
            "%d failed deletion(s) since the last such line, the next line comes after %ds at the earliest",
            exc.status, kubeapi.answer_reason(exc) or exc.reason, self._unlogged, int(FORBIDDEN_BACKOFF),
        )
        self._unlogged = 0
        self._failure_logged_until = now + FORBIDDEN_BACKOFF

    def _refused(self, resource: str, now: float) -> None:
        """RBAC refused a write on ``resource`` (already logged once): counted, and no pod is
        tried again for a while."""
        self._reported.add(resource)
        metrics.PATCH_FORBIDDEN.labels(resource).inc()
        self._forbidden_until = now + FORBIDDEN_BACKOFF

    async def _namespace_allows(self, namespace: str, logger: Logger) -> bool:
        now = self._clock()
        cached = self._namespaces.get(namespace)
        if cached is not None and cached[0] > now:
            labels = cached[1]
        else:
            try:
                labels = await self._client.namespace_labels(namespace)
            except kubeapi.Forbidden as exc:
                if "namespaces" not in self._reported:
                    self._reported.add("namespaces")
                    logger.error(
                        "cannot read namespace %s's labels (RBAC): %s; grant get on namespaces to the "
                        "operator's service account (the chart does with pods.restartRecovered). No pod "
                        "is deleted meanwhile.", namespace, exc,
                    )
                self._namespaces[namespace] = (now + FORBIDDEN_BACKOFF, None)
                return False
            except ApiException:
                return False  # not known now: decided again on the pod's next event
            self._namespaces[namespace] = (now + NAMESPACE_TTL, labels)
        if labels is None:
            return False  # absent (or unreadable): nothing is deleted
        return recovery.namespace_allows(self.mode, labels)
