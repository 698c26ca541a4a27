"""Operator start-up: settings, collaborators and the metrics endpoint."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from pullhealth import metrics
from pullhealth.chain.pullsources import Environment
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.chain.trust import TrustPolicy
from pullhealth.domain import diagnose
from pullhealth.kube import apioutages, kubeapi, listwatch, metricsauth, watchcache
from pullhealth.pods import kubeletevents, podcheck, podmemo
from pullhealth.probes.destinations import build_policy
from pullhealth.runtime.state import State


@dataclass
class Options:
    """Set by ``pullhealth run`` before kopf starts."""

    metrics_port: int = 8080
    metrics_bind_address: str = "0.0.0.0"
    metrics_registries: tuple[str, ...] = ()
    # /metrics over HTTPS for tokens the API server authorizes (--metrics-secure).
    metrics_secure: bool = True
    peering: str | None = None
    namespaces: tuple[str, ...] = ()
    pods: bool = True
    # Read the node agent's NodePathChecked Events for failing pods (--node-agent).
    node_agent: bool = False
    pod_interval: float = 60.0
    per_registry: int = 4
    workers: int = 16
    # RegistryCheck chains at once across the operator (fair across namespaces).
    registry_check_workers: int = 8
    # API requests in flight at once (threads and pooled connections): what bounds how
    # fast a thousand pods are annotated is the API server's latency times this.
    api_concurrency: int = 48
    acr_domains: str = ".azurecr.io,.azurecr.cn,.azurecr.us"
    kubelet_client_id: str | None = None
    managed_identities: tuple[str, ...] = ()
    workload_identity: bool = False
    arm_audience: bool = False
    allow_cidrs: tuple[str, ...] = ()
    deny_cidrs: tuple[str, ...] = ()
    registry_hosts: tuple[str, ...] = ()
    # The node agent's report key (--agent-report-key-file): only signed notes are taken.
    agent_report_key: bytes | None = None

    def trust(self, api_server_addresses: tuple[tuple[str, int | None], ...]) -> TrustPolicy:
        """The admin's trust policy from the flags."""
        return TrustPolicy(
            acr_domains=tuple(d.strip() for d in self.acr_domains.split(",") if d.strip()),
            kubelet_client_id=self.kubelet_client_id,
            managed_identity_client_ids=frozenset(self.managed_identities),
            workload_identity=self.workload_identity,
            arm_audience=self.arm_audience,
            destinations=build_policy(
                allow=self.allow_cidrs,
                deny=self.deny_cidrs,
                protected=api_server_addresses,
                hosts=self.registry_hosts,
            ),
        )
    # Leader election (kopf peering): the newest replica has the highest priority, so a
    # rolling update hands over at once and two replicas never share one priority (kopf
    # pauses *all* operators of equal priority).
    peering_priority: int = field(default_factory=lambda: int(time.time() * 1000))
    # Seconds a replica's keep-alive stays valid: a standby takes over at most this long
    # after the active replica died (kopf refreshes it every 1-5 s at this value).
    peering_lifetime: int = 10


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


OPTIONS = Options()
RECOVERY_PROBE_SECONDS = 2.0
# Seconds pods wait at start-up for the first lists of kubelet's Events, Nodes and
# ServiceAccounts (instead of each pod reading its own while those lists are on their way).
FIRST_LISTING_WAIT = 10.0
# Threads beyond the API requests of pods: RegistryCheck writes, outage probes, the metrics rebuild.
EXTRA_THREADS = 4


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """Tune kopf and wire the domain's collaborators."""
    # kopf turns log lines into Events; only our explicit events are wanted (the reasons
    # promised in the docs), so no log level is high enough to be posted.
    settings.posting.level = logging.CRITICAL + 10
    settings.peering.standalone = OPTIONS.peering is None
    if OPTIONS.peering:
        settings.peering.name = OPTIONS.peering
        settings.peering.mandatory = True
        settings.peering.priority = OPTIONS.peering_priority
        settings.peering.lifetime = OPTIONS.peering_lifetime
        settings.peering.stealth = True  # no keep-alive line every few seconds
        State.leader_election = True
        State.peering = (OPTIONS.peering, not OPTIONS.namespaces, OPTIONS.peering_priority)
        logger.info("leader election: peering %s, priority %d", OPTIONS.peering, OPTIONS.peering_priority)
    settings.persistence.diffbase_storage = NoEssence()
    # The first list of pods arrives in pages, not as one 10k-pod answer; kopf's per-object
    # worker keeps the last event's object while it idles: let it go at once, so a restart
    # against 10k pods does not hold all of them for kopf's default 5 s.
    settings.watching.chunk_size = 500
    settings.queueing.idle_timeout = 0.2
    # Every API call is bounded; watches reconnect rather than hang.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 30
    settings.batching.error_delays = [1, 5, 15, 30, 60]
    # API server outages: one WARNING when one starts and one when it ends, counted;
    # kopf's per-retry ERROR lines are folded into them.
    outages = apioutages.OutageTracker(logging.getLogger("pullhealth.api"), metrics.API_OUTAGES.inc)
    apioutages.install(outages)
    kubeapi.report_outages_to(outages)
    # Every blocking client call runs on a worker thread: as many threads (and pooled
    # connections) as API requests may be in flight, not the default pool's 6 on 2 cores.
    threads = OPTIONS.api_concurrency + EXTRA_THREADS
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pullhealth-api")
    )
    State.kube = kubeapi.KubeWriter(kubeapi.load_config(pool_size=threads))
    State.background.add(asyncio.create_task(_end_outages(outages, State.kube)))
    State.status = kubeapi.StatusWriter(State.kube.api)
    api_addresses = kubeapi.api_server_addresses(State.kube.api)
    State.env = dataclasses.replace(Environment.from_env(), trust=OPTIONS.trust(api_addresses))
    State.pod_settings = podcheck.PodSettings(agent_report_key=OPTIONS.agent_report_key)
    logger.info(
        "trust boundary: identities for %s; extra managed identities %d; workload identity %s; "
        "ARM audience %s; API server addresses refused: %s; allowed CIDRs: %s",
        ",".join(State.env.trust.acr_domains),
        len(OPTIONS.managed_identities),
        "on" if OPTIONS.workload_identity else "off",
        "on" if OPTIONS.arm_audience else "off",
        ",".join(f"{a}:{p or '*'}" for a, p in api_addresses) or "none found",
        ",".join(OPTIONS.allow_cidrs) or "none",
    )
    # Probe chains for pods: at most `per_registry` per registry and `workers` in all; a
    # worker slot is taken only once the registry's slot is held (a slow registry holds at
    # most `per_registry` of them). Transient failures are shared for a short time only.
    State.pod_pool = asyncio.Semaphore(OPTIONS.workers)
    State.pod_cache = SingleFlight(
        ttl=OPTIONS.pod_interval,
        per_registry=OPTIONS.per_registry,
        is_failure=diagnose.transient,
        shared_limit=State.pod_pool,
    )
    State.pod_memo = podmemo.PodMemo(ttl=OPTIONS.pod_interval)
    listed: list[Callable[[], bool]] = []  # the first listings pods wait for at start-up
    if OPTIONS.pods:
        nodes, accounts, settled = _mirror_nodes_and_accounts(State.kube.api)
        State.pod_reader = watchcache.CachedReader(State.kube, nodes=nodes, accounts=accounts)
        listed.append(settled)
    else:
        State.pod_reader = watchcache.CachedReader(State.kube)
    if OPTIONS.pods and read_scopes()[1] is None:
        State.kubelet_failures = kubeletevents.KubeletFailures(State.kube.api, OPTIONS.namespaces)
        State.kubelet_failures.start()
        failures = State.kubelet_failures
        listed.append(lambda: failures.settled)
    if listed:
        ready = State.first_listings_ready = asyncio.Event()
        State.background.add(asyncio.create_task(_first_listings(listed, ready)))
    metrics.set_admin_registries(OPTIONS.metrics_registries)
    if OPTIONS.metrics_port:
        if OPTIONS.metrics_secure:
            authorizer = metricsauth.MetricsAuthorizer(State.kube.api)
            metrics.serve(OPTIONS.metrics_port, OPTIONS.metrics_bind_address, authorizer.check,
                          metrics.self_signed_context())
        else:
            metrics.serve(OPTIONS.metrics_port, OPTIONS.metrics_bind_address)
        logger.info("metrics on %s:%d/metrics", OPTIONS.metrics_bind_address, OPTIONS.metrics_port)


def read_scopes() -> tuple[tuple[str, ...], Callable[[listwatch.Obj], bool] | None]:
    """Where the operator's own readers list and watch namespaced kinds: the watched
    namespaces, or all of them (empty) with a filter when ``--namespace`` has globs."""
    patterns = OPTIONS.namespaces
    if any(c in ns for ns in patterns for c in "*?[!"):
        return (), listwatch.in_namespaces(patterns)
    return patterns, None


def _mirror_nodes_and_accounts(
    api: Any,
) -> tuple[watchcache.Mirror, watchcache.Mirror, Callable[[], bool]]:
    """Nodes (labels) and ServiceAccounts (pull fields) from one list-and-watch each; and
    whether both were listed (or refused: then pods read them with GETs)."""
    nodes = watchcache.Mirror(watchcache.node_labels)
    accounts = watchcache.Mirror(watchcache.account_pull_fields)
    without = "it is read with a GET per object instead (cached for seconds)"
    node_stream = listwatch.ListWatch(
        listwatch.core_lister(api, "nodes"), (), nodes.deliver, what="nodes", without=without
    )
    scopes, in_scope = read_scopes()
    account_stream = listwatch.ListWatch(
        listwatch.core_lister(api, "serviceaccounts"),
        scopes,
        accounts.deliver,
        relevant=in_scope or (lambda _account: True),
        what="serviceaccounts",
        without=without,
    )
    for mirror, stream in ((nodes, node_stream), (accounts, account_stream)):
        mirror.synced = _synced(stream)
        stream.start()
        State.readers.append(stream)
    return nodes, accounts, lambda: node_stream.settled and account_stream.settled


def _synced(stream: listwatch.ListWatch) -> Callable[[], bool]:
    return lambda: stream.ever_synced


async def _first_listings(listed: list[Callable[[], bool]], ready: asyncio.Event) -> None:
    """Set ``ready`` once the watch-fed reads were first listed, or after FIRST_LISTING_WAIT s
    (then pods read what is missing with GETs, and list their own Events)."""
    deadline = time.monotonic() + FIRST_LISTING_WAIT
    while not all(synced() for synced in listed) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    ready.set()


async def _end_outages(outages: apioutages.OutageTracker, client: kubeapi.KubeWriter) -> None:
    """While an outage lasts, ask ``/readyz`` (etcd included) every 2 s to log its end."""
    while True:
        await asyncio.sleep(RECOVERY_PROBE_SECONDS)
        if outages.down:
            await client.ready()  # success ends the outage (the tracker logs it)
