"""Process-wide collaborators of the handlers, set once by the start-up handler."""

from __future__ import annotations

import asyncio
import logging

from pullhealth.chain.pullsources import Environment
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.domain.diagnose import transient
from pullhealth.domain.model import Diagnosis
from pullhealth.kube import events, listwatch, watchcache
from pullhealth.kube import kubeapi as kubeapi
from pullhealth.pods import kubeletevents, podcheck, podmemo


class State:
    """The API client, settings and the shared probe caches."""

    kube: kubeapi.KubeWriter | None = None
    status: kubeapi.StatusWriter | None = None
    env: Environment = Environment()
    pod_settings: podcheck.PodSettings = podcheck.PodSettings()
    # Identical RegistryChecks (same registry, credentials, image) share one chain run.
    registry_check_cache: SingleFlight[Diagnosis] = SingleFlight(ttl=20.0, is_failure=transient)
    # Failing pods: one chain per (registry, credential, image) per interval.
    pod_cache: SingleFlight[Diagnosis] = SingleFlight(ttl=60.0, per_registry=4)
    pod_pool: asyncio.Semaphore | None = None
    # Per pod: the last diagnosis and what it depended on (reused while nothing changed).
    pod_memo: podmemo.PodMemo = podmemo.PodMemo(ttl=60.0)
    # Pod diagnosis reads Nodes, ServiceAccounts and Secrets through short-lived caches.
    pod_reader: watchcache.CachedReader | None = None
    # kubelet's pull-failure Events of every pod, from one watch (None: listed per pod).
    kubelet_failures: kubeletevents.KubeletFailures | None = None
    # Set once that watch and the Node and ServiceAccount mirrors first listed (or gave up
    # waiting for them): at start-up pods wait for it instead of each reading its own.
    first_listings_ready: asyncio.Event | None = None
    # The list-and-watch readers feeding those mirrors (stopped at clean-up).
    readers: list[listwatch.ListWatch] = []
    forbidden_until: dict[str, float] = {}
    # RegistryCheck uid -> (generation, recheck request, monotonic time before which it is
    # not run again) of the last check run here: a status write that failed (RBAC,
    # conflict), or an event carrying an older status, must not cause a retry storm
    # against the registry.
    last_run: dict[str, tuple[int, str | None, float]] = {}
    # The reportingInstance of our Events and the holder of RegistryCheck claims.
    instance: str = events.reporting_instance()
    # Whether leader election (kopf peering) runs: then another writer is a former leader.
    leader_election: bool = False
    # With leader election: (peering name, cluster-wide, our priority), and per peering
    # object (None: the cluster one) when it was last read and whether we were outranked.
    peering: tuple[str, bool, int] | None = None
    standby_seen: dict[str | None, tuple[float, bool]] = {}
    other_writer_reported: bool = False
    # Tasks started at start-up (kept referenced so they are not garbage-collected).
    background: set[asyncio.Task[None]] = set()


def report_other_writer(logger: logging.Logger | logging.LoggerAdapter[logging.Logger], what: str) -> None:
    """Another operator writes the same objects: say so at ERROR, once per process, with the fix."""
    if State.other_writer_reported:
        logger.info("another operator wrote first: %s", what)
        return
    State.other_writer_reported = True
    logger.error(
        "another pullhealth operator is active on the same objects (%s): every diagnosis and "
        "check is done twice. Run one active replica: replicaCount: 1, or peering.enabled=true "
        "with the chart (leader election, docs/install.md#high-availability); stop any "
        "operator started by hand against this cluster.",
        what,
    )


async def client_wired(wait: float = 30.0) -> bool:
    """Wait (at most ``wait`` s) until the start-up handler has wired the API client.

    kopf runs start-up handlers concurrently; the ones that start readers need the client.
    """
    deadline = asyncio.get_running_loop().time() + wait
    while State.kube is None and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    return State.kube is not None
