"""What the domain needs from the API server, and pull secrets read through it.

Every read names the namespace of the object being checked: a secret from another
namespace can never be used, because no call here can reach one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pullhealth.chain.trust import TrustPolicy
from pullhealth.domain import credentials as creds
from pullhealth.domain.codes import Code
from pullhealth.probes import identity
from pullhealth.probes.proxy import Proxy, from_setting

MAX_SECRETS = 16
WORKLOAD_CLIENT_ID = "azure.workload.identity/client-id"
WORKLOAD_TENANT_ID = "azure.workload.identity/tenant-id"
WORKLOAD_AUDIENCE = "api://AzureADTokenExchange"


class ClusterReader(Protocol):
    """Namespaced reads (implemented by ``pullhealth.kube.kubeapi.KubeReader``)."""

    async def secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The Secret, or None when it does not exist."""
        ...

    async def service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The ServiceAccount, or None when it does not exist."""
        ...

    async def service_account_token(self, namespace: str, name: str, audience: str) -> str:
        """A short-lived token of the ServiceAccount for an audience (TokenRequest)."""
        ...

    async def node(self, name: str) -> Mapping[str, Any] | None:
        """The Node a pod runs on, or None when absent or not readable."""
        ...


@dataclass(frozen=True)
class SecretIssue:
    """A referenced pull secret that kubelet would skip."""

    code: Code  # PULL_SECRET_MISSING or PULL_SECRET_INVALID
    name: str
    detail: str


@dataclass(frozen=True)
class Keyring:
    """The usable entries of some pull secrets, and the ones that could not be used."""

    entries: tuple[creds.KeyringEntry, ...] = ()
    issues: tuple[SecretIssue, ...] = field(default_factory=tuple)
    names: tuple[str, ...] = ()


async def read_keyring(reader: ClusterReader, namespace: str, names: Sequence[str]) -> Keyring:
    """Read pull secrets by name in one namespace, like kubelet: skip what is unusable."""
    entries: list[creds.KeyringEntry] = []
    issues: list[SecretIssue] = []
    unique = list(dict.fromkeys(n for n in names if n))[:MAX_SECRETS]
    for name in unique:
        secret = await reader.secret(namespace, name)
        if secret is None:
            issues.append(SecretIssue(Code.PULL_SECRET_MISSING, name, f"secret {namespace}/{name} not found"))
            continue
        try:
            entries.extend(creds.parse_pull_secret(secret, namespace))
        except creds.SecretProblem as exc:
            issues.append(SecretIssue(exc.code, name, exc.detail))
    return Keyring(tuple(entries), tuple(issues), tuple(unique))


def service_account_secret_names(account: Mapping[str, Any] | None) -> list[str]:
    """Names in a ServiceAccount's imagePullSecrets."""
    refs = (account or {}).get("imagePullSecrets") or []
    return [str(ref.get("name")) for ref in refs if isinstance(ref, Mapping) and ref.get("name")]


@dataclass(frozen=True)
class Environment:
    """Operator-wide settings that specs do not carry: endpoints for identities, the
    network path, and the powers the admin lends to namespaces (``trust``)."""

    imds_endpoint: str = identity.IMDS_ENDPOINT
    aad_authority: str = identity.AAD_AUTHORITY
    tenant_id: str | None = None
    nameserver: str | None = None
    ca_file: str | None = None
    proxy: Proxy | None = None
    no_proxy: tuple[str, ...] = ()
    trust: TrustPolicy = field(default_factory=TrustPolicy)

    @classmethod
    def from_env(cls) -> Environment:
        """Read PULLHEALTH_* and the AZURE_* variables the workload identity webhook sets."""
        return cls(
            imds_endpoint=os.environ.get("PULLHEALTH_IMDS_ENDPOINT", identity.IMDS_ENDPOINT),
            aad_authority=os.environ.get("AZURE_AUTHORITY_HOST", identity.AAD_AUTHORITY),
            tenant_id=os.environ.get("AZURE_TENANT_ID"),
            nameserver=os.environ.get("PULLHEALTH_NAMESERVER") or None,
            ca_file=os.environ.get("PULLHEALTH_CA_FILE") or None,
            **_proxy_settings(),
        )


def _proxy_settings() -> dict[str, Any]:
    """PULLHEALTH_PROXY: a proxy URL, or ``env`` for HTTPS_PROXY/NO_PROXY as the runtime
    sees them (AKS injects them into pods when the cluster has an HTTP proxy);
    PULLHEALTH_NO_PROXY adds entries."""
    proxy, no_proxy = from_setting(os.environ.get("PULLHEALTH_PROXY"), os.environ.get("PULLHEALTH_NO_PROXY"))
    return {"proxy": proxy, "no_proxy": no_proxy}
