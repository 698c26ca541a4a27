"""The operator's powers that the cluster admin lends to namespaces, and nothing more.

A RegistryCheck and a pod spec are written by namespace users: untrusted input. The
operator can read every namespace's pull secrets, ask the node's instance metadata service
for managed-identity tokens, mint service-account tokens and connect from its own network
position. :class:`TrustPolicy` is what the admin configured (``pullhealth run`` flags,
chart values), never a field of a RegistryCheck; docs/security.md explains each switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pullhealth.domain.codes import ACR_SUFFIXES
from pullhealth.probes.destinations import DestinationPolicy
from pullhealth.probes.identity import ACR_RESOURCE, ARM_RESOURCE

DEFAULT_ACR_DOMAINS = ACR_SUFFIXES


def is_acr(registry: str, domains: Sequence[str]) -> bool:
    """Registry host (without port) equals or ends with one of the ACR domains."""
    host = registry.split(":")[0].lower().rstrip(".")
    return any(host == d.lstrip(".") or host.endswith(d if d.startswith(".") else "." + d) for d in domains)


@dataclass(frozen=True)
class TrustPolicy:
    """What the operator may do on a namespace's behalf.

    Attributes:
        acr_domains: registries for which identity checks (managed, workload) may run.
        kubelet_client_id: the kubelet identity (None: the node's only identity); a
            RegistryCheck may always name it, and pods use it like kubelet does.
        managed_identity_client_ids: further managed identities a RegistryCheck may name.
        workload_identity: mint service-account tokens for workload identity checks.
        arm_audience: also ask for ARM-audience tokens (a management token, valid far
            beyond ACR) to compare with the ACR audience.
        destinations: where the chain may connect.
    """

    acr_domains: tuple[str, ...] = DEFAULT_ACR_DOMAINS
    kubelet_client_id: str | None = None
    managed_identity_client_ids: frozenset[str] = frozenset()
    workload_identity: bool = False
    arm_audience: bool = False
    destinations: DestinationPolicy = field(default_factory=DestinationPolicy)

    @property
    def audiences(self) -> tuple[str, ...]:
        """Token audiences to ask for, the ACR audience first."""
        return (ACR_RESOURCE, ARM_RESOURCE) if self.arm_audience else (ACR_RESOURCE,)

    def managed_identity_allowed(self, client_id: str | None) -> bool:
        """Whether a RegistryCheck may name this client id (None: the kubelet identity)."""
        if client_id is None or client_id == self.kubelet_client_id:
            return True
        return client_id.lower() in {c.lower() for c in self.managed_identity_client_ids}
