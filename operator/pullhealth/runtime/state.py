"""The runtime: the one object the composition root builds and every handler receives.

Built once at start-up by :func:`pullhealth.runtime.startup.build` from the settings; the
pod stream and the RegistryCheck loops are given it (kopf handlers find it in their
``memo``). Nothing here is a class attribute: two runtimes in one process (tests) share
nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from pullhealth.chain.pullsources import Environment
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.domain.diagnose import transient
from pullhealth.domain.model import Diagnosis
from pullhealth.kube import events, kubeapi, listwatch, watchcache
from pullhealth.kube.leader import LeaderElection
from pullhealth.pods import kubeletevents, podcheck, podmemo
from pullhealth.runtime.settings import Settings


@dataclass(eq=False)
class Runtime:
    """The API clients, the settings and the shared caches of one operator process."""

    settings: Settings
    kube: kubeapi.KubeWriter
    status: kubeapi.StatusWriter
    env: Environment = field(default_factory=Environment)
    pod_settings: podcheck.PodSettings = field(default_factory=podcheck.PodSettings)
    # Identical RegistryChecks (same registry, credentials, image) share one chain run.
    registry_check_cache: SingleFlight[Diagnosis] = field(
        default_factory=lambda: SingleFlight(ttl=20.0, is_failure=transient)
    )
    # Failing pods: one chain per (registry, credential, image) per interval, at most
    # `per_registry` per registry and `workers` in all.
    pod_cache: SingleFlight[Diagnosis] = field(default_factory=lambda: SingleFlight(ttl=60.0, per_registry=4))
    # Per pod: the last diagnosis and what it depended on (reused while nothing changed).
    pod_memo: podmemo.PodMemo = field(default_factory=lambda: podmemo.PodMemo(ttl=60.0))
    # Pod diagnosis reads Nodes, ServiceAccounts and Secrets through short-lived caches.
    pod_reader: watchcache.CachedReader | None = None
    # kubelet's pull-failure Events of every pod, from one watch (None: listed per pod).
    kubelet_failures: kubeletevents.KubeletFailures | None = None
    kubelet_pulls: kubeletevents.KubeletPulls | None = None
    # Set once that watch and the Node and ServiceAccount mirrors first listed (or gave up
    # waiting for them): at start-up pods wait for it instead of each reading its own.
    first_listings_ready: asyncio.Event | None = None
    # The list-and-watch readers feeding those mirrors (stopped at clean-up).
    readers: list[listwatch.ListWatch] = field(default_factory=list)
    # With leader election (``--peering``): who outranks whom.
    leader: LeaderElection | None = None
    # The reportingInstance of our Events and the holder of RegistryCheck claims.
    instance: str = field(default_factory=events.reporting_instance)
    # Tasks started at start-up (kept referenced so they are not garbage-collected).
    background: set[asyncio.Task[None]] = field(default_factory=set)
    _other_writer_reported: bool = False

    async def outranked(self, namespace: str, *, fresh: bool = False) -> bool:
        """With leader election: whether a live peer outranks this replica (see
        :meth:`LeaderElection.outranked`); always False without it."""
        if self.leader is None:
            return False
        return await self.leader.outranked(namespace, fresh=fresh)

    def report_other_writer(
        self, logger: logging.Logger | logging.LoggerAdapter[logging.Logger], what: str
    ) -> None:
        """Another operator writes the same objects: say so at ERROR, once per process, with the fix."""
        if self._other_writer_reported:
            logger.info("another operator wrote first: %s", what)
            return
        self._other_writer_reported = True
        logger.error(
            "another pullhealth operator is active on the same objects (%s): every diagnosis and "
            "check is done twice. Run one active replica: replicaCount: 1, or peering.enabled=true "
            "with the chart (leader election, docs/install.md#high-availability); stop any "
            "operator started by hand against this cluster.",
            what,
        )

    def stop_readers(self) -> None:
        """The reading threads end at their next event or watch time-out."""
        for stream in self.readers:
            stream.stop()
        if self.kubelet_failures is not None:
            self.kubelet_failures.stop()
        if self.kubelet_pulls is not None:
            self.kubelet_pulls.stop()
        if self.leader is not None:
            self.leader.stop()
        for task in self.background:
            task.cancel()
