"""Operator start-up: settings, collaborators and the metrics endpoint."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import kopf

from pullhealth import kube, metrics, podcheck
from pullhealth.cluster import Environment
from pullhealth.coalesce import SingleFlight
from pullhealth.handlers.state import State
from pullhealth.probes.destinations import build_policy
from pullhealth.trust import TrustPolicy


@dataclass
class Options:
    """Set by ``pullhealth run`` before kopf starts."""

    metrics_port: int = 8080
    peering: str | None = None
    pods: bool = True
    pod_interval: float = 60.0
    per_registry: int = 4
    workers: int = 16
    acr_domains: str = ".azurecr.io,.azurecr.cn,.azurecr.us"
    kubelet_client_id: str | None = None
    managed_identities: tuple[str, ...] = ()
    workload_identity: bool = False
    arm_audience: bool = False
    allow_cidrs: tuple[str, ...] = ()
    deny_cidrs: tuple[str, ...] = ()
    registry_hosts: tuple[str, ...] = ()

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


OPTIONS = Options()


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
    # Every API call is bounded; watches reconnect rather than hang.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 30
    settings.batching.error_delays = [1, 5, 15, 30, 60]
    State.kube = kube.KubeWriter()
    State.status = kube.StatusWriter(State.kube.api)
    api_addresses = kube.api_server_addresses(State.kube.api)
    State.env = dataclasses.replace(Environment.from_env(), trust=OPTIONS.trust(api_addresses))
    State.pod_settings = podcheck.PodSettings()
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
    # most `per_registry` of them). Failures are shared for a short time only.
    State.pod_pool = asyncio.Semaphore(OPTIONS.workers)
    State.pod_cache = SingleFlight(
        ttl=OPTIONS.pod_interval,
        per_registry=OPTIONS.per_registry,
        is_failure=lambda d: not d.healthy,
        shared_limit=State.pod_pool,
    )
    if OPTIONS.metrics_port:
        metrics.serve(OPTIONS.metrics_port)
        logger.info("metrics on :%d/metrics", OPTIONS.metrics_port)
