"""Operator start-up: the settings become the runtime (clients, caches, readers, metrics).

:func:`tune_kopf` sets kopf's own settings; :func:`build` wires every collaborator in order
and returns the one :class:`~pullhealth.runtime.state.Runtime` the handlers receive. Called
by the composition root (:mod:`pullhealth.runtime.main`), once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import kopf

from pullhealth import metrics
from pullhealth.chain.pullsources import Environment
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.domain import diagnose
from pullhealth.domain.model import Diagnosis
from pullhealth.kube import apioutages, kubeapi, listwatch, metricsauth, watchcache
from pullhealth.kube.leader import LeaderElection
from pullhealth.pods import kubeletevents, podcheck, podmemo
from pullhealth.runtime.settings import Settings
from pullhealth.runtime.state import Runtime
from pullhealth.workloads import inventory

RECOVERY_PROBE_SECONDS = 2.0
# Seconds pods wait at start-up for the first lists of kubelet's Events, Nodes and
# ServiceAccounts (instead of each pod reading its own while those lists are on their way).
FIRST_LISTING_WAIT = 10.0
# Threads beyond the API requests of pods: RegistryCheck writes, outage probes, the metrics rebuild.
EXTRA_THREADS = 4


class NoEssence(kopf.DiffBaseStorage):
    """kopf's change detection, switched off: every handler here is ``on.event`` (level-
    triggered), so no diff is ever used, yet kopf would deep-copy each object twice per
    event to compute one (most of its CPU per pod update during kubelet's back-off)."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def tune_kopf(kopf_settings: kopf.OperatorSettings, settings: Settings, logger: kopf.Logger) -> None:
    """kopf's settings from ours: peering, no diff-base, bounded calls, no log-line Events."""
    # kopf turns log lines into Events; only our explicit events are wanted (the reasons
    # promised in the docs), so no log level is high enough to be posted.
    kopf_settings.posting.level = logging.CRITICAL + 10
    kopf_settings.peering.standalone = settings.peering is None
    if settings.peering:
        kopf_settings.peering.name = settings.peering
        kopf_settings.peering.mandatory = True
        kopf_settings.peering.priority = settings.peering_priority
        kopf_settings.peering.lifetime = settings.peering_lifetime
        kopf_settings.peering.stealth = True  # no keep-alive line every few seconds
        logger.info("leader election: peering %s, priority %d", settings.peering, settings.peering_priority)
    kopf_settings.persistence.diffbase_storage = NoEssence()
    # kopf's per-object worker keeps the last event's object while it idles: let it go
    # at once (RegistryChecks are few, but a large list must not be held for 5 s).
    kopf_settings.watching.chunk_size = 500
    kopf_settings.queueing.idle_timeout = 0.2
    # Every API call is bounded; watches are re-established rather than hang.
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    kopf_settings.watching.connect_timeout = 30
    kopf_settings.networking.request_timeout = 30
    kopf_settings.batching.error_delays = [1, 5, 15, 30, 60]


def build(settings: Settings, logger: kopf.Logger) -> Runtime:
    """Wire the runtime: API clients, trust policy, caches, watch-fed readers, metrics.

    Runs on the event loop (it sets the loop's executor and starts background tasks).
    """
    # API server outages: one WARNING when one starts and one when it ends, counted;
    # kopf's per-retry ERROR lines are folded into them.
    outages = apioutages.OutageTracker(logging.getLogger("pullhealth.api"), metrics.API_OUTAGES.inc)
    apioutages.install(outages)
    kubeapi.report_outages_to(outages)
    # Every blocking client call runs on a worker thread: as many threads (and pooled
    # connections) as API requests may be in flight, not the default pool's 6 on 2 cores.
    threads = settings.api_concurrency + EXTRA_THREADS
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pullhealth-api")
    )
    kube = kubeapi.KubeWriter(kubeapi.load_config(pool_size=threads))
    status = kubeapi.StatusWriter(kube.api)
    api_addresses = kubeapi.api_server_addresses(kube.api)
    env = dataclasses.replace(Environment.from_env(), trust=settings.trust(api_addresses))
    logger.info(
        "trust boundary: identities for %s; extra managed identities %d; workload identity %s; "
        "ARM audience %s; API server addresses refused: %s; allowed CIDRs: %s",
        ",".join(env.trust.acr_domains),
        len(settings.managed_identities),
        "on" if settings.workload_identity else "off",
        "on" if settings.arm_audience else "off",
        ",".join(f"{a}:{p or '*'}" for a, p in api_addresses) or "none found",
        ",".join(settings.allow_cidrs) or "none",
    )
    # Probe chains for pods: at most `per_registry` per registry and `workers` in all; a
    # worker slot is taken only once the registry's slot is held (a slow registry holds at
    # most `per_registry` of them). Transient failures are shared for a short time only.
    runtime = Runtime(
        settings=settings,
        kube=kube,
        status=status,
        env=env,
        pod_settings=podcheck.PodSettings(agent_report_key=settings.agent_report_key),
        pod_cache=SingleFlight(
            ttl=settings.pod_interval,
            per_registry=settings.per_registry,
            is_failure=diagnose.transient,
            shared_limit=asyncio.Semaphore(settings.workers),
            on_result=_observe_budget,
        ),
        registry_check_cache=SingleFlight(ttl=20.0, is_failure=diagnose.transient, on_result=_observe_budget),
        pod_memo=podmemo.PodMemo(ttl=settings.pod_interval),
    )
    runtime.background.add(asyncio.create_task(_end_outages(outages, kube)))
    scopes, in_scope = settings.read_scopes()
    if settings.peering:
        runtime.leader = LeaderElection(
            status, kube.api, settings.peering, not settings.namespaces, settings.peering_priority,
            scopes, in_scope,
        )
        runtime.leader.start()
    listed: list[Callable[[], bool]] = []  # the first listings pods wait for at start-up
    nodes: watchcache.Mirror | None = None
    if settings.pods:
        nodes, accounts, settled = _mirror_nodes_and_accounts(kube.api, settings, runtime.readers)
        runtime.pod_reader = watchcache.CachedReader(kube, nodes=nodes, accounts=accounts)
        listed.append(settled)
    else:
        runtime.pod_reader = watchcache.CachedReader(kube)
    if settings.pods and in_scope is None:
        failures = runtime.kubelet_failures = kubeletevents.KubeletFailures(kube.api, settings.namespaces)
        failures.start()
        listed.append(lambda: failures.settled)
        runtime.kubelet_pulls = kubeletevents.KubeletPulls(
            kube.api, settings.namespaces, record=metrics.record_image_pull, pool_of=_pool_of(nodes)
        )
        runtime.kubelet_pulls.start()
    if listed:
        ready = runtime.first_listings_ready = asyncio.Event()
        runtime.background.add(asyncio.create_task(_first_listings(listed, ready)))
    metrics.set_admin_registries(settings.metrics_registry_list)
    if settings.metrics_port:
        if settings.metrics_secure:
            authorizer = metricsauth.MetricsAuthorizer(kube.api)
            metrics.serve(settings.metrics_port, settings.metrics_bind_address, authorizer.check,
                          metrics.self_signed_context())
        else:
            metrics.serve(settings.metrics_port, settings.metrics_bind_address)
        logger.info("metrics on %s:%d/metrics", settings.metrics_bind_address, settings.metrics_port)
    return runtime


def _mirror_nodes_and_accounts(
    api: Any, settings: Settings, readers: list[listwatch.ListWatch]
) -> tuple[watchcache.Mirror, watchcache.Mirror, Callable[[], bool]]:
    """Nodes (labels) and ServiceAccounts (pull fields) from one list-and-watch each; and
    whether both were listed (or refused: then pods read them with GETs)."""
    nodes = watchcache.Mirror(watchcache.node_placement)
    accounts = watchcache.Mirror(watchcache.account_pull_fields)
    without = "it is read with a GET per object instead (cached for seconds)"
    node_stream = listwatch.ListWatch(
        listwatch.core_lister(api, "nodes"), (), nodes.deliver, what="nodes", without=without
    )
    scopes, in_scope = settings.read_scopes()
    account_stream = listwatch.ListWatch(
        listwatch.core_lister(api, "serviceaccounts"),
        scopes,
        accounts.deliver,
        relevant=in_scope or (lambda _account: True),
        what="serviceaccounts",
        without=without,
    )
    for mirror, stream in ((nodes, node_stream), (accounts, account_stream)):
        mirror.listed = _listed(stream)
        stream.start()
        readers.append(stream)
    return nodes, accounts, lambda: node_stream.settled and account_stream.settled


def _observe_budget(registry: str, diagnosis: Diagnosis) -> None:
    """A fresh chain's RateLimit-* counts (whoever asked: pods, RegistryChecks, workloads,
    admission), exported as the registry's budget."""
    budget = inventory.budget(diagnosis)
    metrics.record_registry_budget(registry, budget.limit, budget.remaining)


def _pool_of(nodes: watchcache.Mirror | None) -> Callable[[str], str]:
    """A node's pool label from the Node mirror ("other" when unknown: not listed, refused)."""

    def pool(node: str) -> str:
        known = nodes.get("", node) if nodes is not None and node else None
        return metrics.pool_label(((known or {}).get("metadata") or {}).get("labels"))

    return pool


def _listed(stream: listwatch.ListWatch) -> Callable[[], bool]:
    return lambda: stream.listed


async def _first_listings(listed: list[Callable[[], bool]], ready: asyncio.Event) -> None:
    """Set ``ready`` once the watch-fed reads were first listed, or after FIRST_LISTING_WAIT s
    (then pods read what is missing with GETs, and list their own Events)."""
    deadline = time.monotonic() + FIRST_LISTING_WAIT
    while not all(done() for done in listed) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    ready.set()


async def _end_outages(outages: apioutages.OutageTracker, client: kubeapi.KubeWriter) -> None:
    """While an outage lasts, ask ``/readyz`` (etcd included) every 2 s to log its end."""
    while True:
        await asyncio.sleep(RECOVERY_PROBE_SECONDS)
        if outages.down:
            await client.ready()  # success ends the outage (the tracker logs it)
