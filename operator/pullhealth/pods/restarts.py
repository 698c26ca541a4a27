"""Opt-in: delete a recoverable pod so that its controller creates one that pulls now.

kubelet waits out its image pull back-off (up to 5 minutes) even after the cause is fixed
(kubernetes/kubernetes#119891). With ``--restart-recovered-pods`` (the chart's
``recovery.restartPods``) the operator deletes a pod announced ``PullRecoverable`` when:

- the admin's mode allows the pod's namespace (:func:`pullhealth.domain.recovery.namespace_allows`:
  a namespace label only narrows what the admin enabled, it never widens it);
- a ReplicaSet, StatefulSet or DaemonSet controls the pod and it is not being deleted
  (:func:`pullhealth.domain.recovery.restart_refusal`): never a bare pod or a Job's pod;
- fewer than ``--restarts-per-minute`` pods were deleted in the last minute (over all
  namespaces), and this pod was never deleted by this process before.

A ``PullRecoveryRestart`` Event on the pod comes first, then the delete, with preconditions
on the pod's uid and resourceVersion: a pod changed since the decision (orphaned, say) is
kept and decided again on its next event.
"""

from __future__ import annotations

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
        uid, namespace, name = (str(meta.get(k) or "") for k in ("uid", "namespace", "name"))
        now = self._clock()
        if not self.enabled or not uid or uid in self._deleted or now < self._forbidden_until:
            return False
        if recovery.restart_refusal(pod) is not None:
            return False
        if not await self._namespace_allows(namespace, logger):
            return False
        if not self._window.take(now):
            return False  # the pod's next event (or the operator's recheck) comes back to it
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
        posted = await self._client.post(
            notice, self._instance, logger, retried="retried on the pod's next update",
            refused="The pod is not deleted without it.",
        )
        if posted is not kubeapi.Posted.POSTED:
            return False  # no deletion the pod's Events do not explain
        try:
            done = await self._client.delete_pod(
                namespace, name, uid=uid, resource_version=str(meta.get("resourceVersion") or "")
            )
        except kubeapi.Forbidden as exc:
            self._forbidden_until = now + FORBIDDEN_BACKOFF
            logger.error(
                "cannot delete the recoverable pod (RBAC): %s; grant delete on pods to the operator's "
                "service account (the chart does with recovery.restartPods), or turn "
                "--restart-recovered-pods off. Not retried for %ds.", exc, int(FORBIDDEN_BACKOFF),
            )
            return False
        except ApiException as exc:
            logger.warning(
                "cannot delete the recoverable pod (HTTP %s); retried on its next update", exc.status
            )
            return False
        if done is kubeapi.Deleted.CHANGED:
            return False  # not the pod decided on any more: its next event decides again
        self._deleted[uid] = now
        if done is kubeapi.Deleted.DELETED:
            metrics.POD_RECOVERIES.labels("deleted").inc()
            logger.info("deleted recoverable pod %s/%s (was %s) so that %s retries now", namespace, name,
                        previous, owner)
        return done is kubeapi.Deleted.DELETED

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
                        "operator's service account (the chart does with recovery.restartPods). No pod "
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
