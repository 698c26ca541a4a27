"""Which credential a pull would use, decided in one place for RegistryChecks and pods.

Both flows ask "with what does this pull authenticate, and may the operator act that
way for this namespace?". The answer is a :class:`PullPath`: the cache key its result is
shared under and the chain to run. Every use of an operator power goes through here:

- identities (managed, workload) only for registries in the admin's ACR domains, only
  with client ids the admin allowed, workload identity only when the admin turned it on
  and only with the service account's own annotated client id;
- the cache key carries the namespace whenever the namespace's secrets end up in the
  result (a secret's name is a fact of the diagnosis), so no namespace reads another's;
- the chain options carry the admin's destination policy.

No kopf, no I/O of its own beyond the reader calls the identity closures make.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from pullhealth.chain.probechain import ChainOptions, Target, check_credentials, run_chain
from pullhealth.chain.pullsources import (
    WORKLOAD_AUDIENCE,
    WORKLOAD_CLIENT_ID,
    WORKLOAD_TENANT_ID,
    ClusterReader,
    Environment,
)
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.chain.trust import is_acr
from pullhealth.domain.codes import Code
from pullhealth.domain.credentials import Credential
from pullhealth.domain.diagnose import make
from pullhealth.domain.model import Diagnosis
from pullhealth.domain.reference import ImageReference
from pullhealth.probes import identity


@dataclass(frozen=True)
class PullPath:
    """A resolved way to pull: what to run and the key its result is shared under."""

    key: tuple[Hashable, ...]
    work: Callable[[], Awaitable[Diagnosis]]

    async def run(
        self, cache: SingleFlight[Diagnosis] | None, registry: str, fresh: bool = False
    ) -> Diagnosis:
        """Run (or join) the chain; one run per key per cache interval (``fresh``: a new
        run all the same, shared from then on)."""
        if cache is None:
            return await self.work()
        return await cache.get(registry, self.key, self.work, fresh=fresh)


def chain_options(
    env: Environment,
    *,
    timeout: float,
    platform: str,
    on_request: Callable[[str, str], None] | None = None,
    expect_private_endpoint: bool = False,
    data_endpoint: str | None = None,
) -> ChainOptions:
    """Chain options for a check run by the operator: the admin's network settings and
    destination policy, whatever the spec says."""
    return ChainOptions(
        nameserver=env.nameserver,
        timeout=timeout,
        ca_file=env.ca_file,
        platform=platform,
        expect_private_endpoint=expect_private_endpoint,
        data_endpoint=data_endpoint,
        on_request=on_request,
        proxy=env.proxy,
        no_proxy=env.no_proxy,
        destinations=env.trust.destinations,
    )


def _refused(registry: str, namespace: str, detail: str) -> Diagnosis:
    return make(Code.IDENTITY_NOT_ALLOWED, {"registry": registry, "namespace": namespace, "detail": detail})


def anonymous(registry: str, image: ImageReference | None, options: ChainOptions, key: Hashable) -> PullPath:
    """No credentials: the result holds nothing of any namespace, so it is shared."""
    return PullPath(("anon", registry, key), lambda: run_chain(Target(registry, image), options))


def with_credentials(
    registry: str,
    image: ImageReference | None,
    namespace: str,
    matched: list[Credential] | None,
    options: ChainOptions,
    key: Hashable,
    no_match_facts: Mapping[str, str] | None = None,
) -> PullPath:
    """The namespace's pull-secret credentials, kubelet's order (None: none were given).

    The key carries the namespace: the result names the secrets it came from.
    """
    fingerprints = tuple(c.fingerprint for c in matched) if matched is not None else None
    return PullPath(
        ("creds", namespace, registry, fingerprints, key),
        lambda: check_credentials(
            registry, image, matched, options, no_match_facts=dict(no_match_facts or {})
        ),
    )


def managed_identity(
    registry: str,
    image: ImageReference | None,
    namespace: str,
    client_id: str | None,
    env: Environment,
    options: ChainOptions,
    key: Hashable,
) -> PullPath | Diagnosis:
    """A managed identity through the node's IMDS: the kubelet identity, or another client
    id the admin allowed. Refused (no IMDS request) for other registries or identities."""
    trust = env.trust
    if not is_acr(registry, trust.acr_domains):
        return _refused(
            registry,
            namespace,
            f"{registry} is not in the operator's ACR domains ({', '.join(trust.acr_domains)}); "
            "no identity token is requested for it",
        )
    if not trust.managed_identity_allowed(client_id):
        return _refused(
            registry, namespace, f"managed identity {client_id} is not one the cluster admin allowed"
        )
    chosen = client_id or trust.kubelet_client_id

    async def imds(resource: str) -> identity.AadToken:
        return await identity.managed_identity_token(
            client_id=chosen, endpoint=env.imds_endpoint, resource=resource, timeout=options.timeout
        )

    return PullPath(
        ("mi", registry, chosen or "default", trust.audiences, key),
        lambda: run_chain(Target(registry, image, identity=imds, audiences=trust.audiences), options),
    )


def workload_identity(
    registry: str,
    image: ImageReference | None,
    namespace: str,
    sa_name: str,
    account: Mapping[str, Any] | None,
    requested_client_id: str | None,
    reader: ClusterReader,
    env: Environment,
    options: ChainOptions,
    key: Hashable,
) -> PullPath | Diagnosis:
    """The service account's workload identity: its own annotated client id only, and
    only when the admin turned workload identity on (it mints a service-account token)."""
    trust = env.trust
    if not trust.workload_identity:
        return _refused(
            registry,
            namespace,
            "workload identity checks are off (the cluster admin enables them with "
            "security.identities.workloadIdentity / --workload-identity)",
        )
    if not is_acr(registry, trust.acr_domains):
        return _refused(
            registry,
            namespace,
            f"{registry} is not in the operator's ACR domains; no identity token is requested for it",
        )
    annotations = ((account or {}).get("metadata") or {}).get("annotations") or {}
    client_id = annotations.get(WORKLOAD_CLIENT_ID)
    tenant_id = annotations.get(WORKLOAD_TENANT_ID) or env.tenant_id
    if requested_client_id and requested_client_id != client_id:
        return _refused(
            registry,
            namespace,
            f"spec.auth.clientId differs from {namespace}/{sa_name}'s {WORKLOAD_CLIENT_ID} "
            "annotation; workload identity uses the service account's own client id",
        )
    if account is None or not client_id or not tenant_id:
        missing = (
            "service account not found"
            if account is None
            else f"no {WORKLOAD_CLIENT_ID} annotation"
            if not client_id
            else f"no {WORKLOAD_TENANT_ID} annotation and no AZURE_TENANT_ID"
        )
        return make(
            Code.IDENTITY_UNAVAILABLE,
            {"registry": registry, "namespace": namespace, "detail": f"{namespace}/{sa_name}: {missing}"},
        )

    async def federated(resource: str) -> identity.AadToken:
        token = await reader.service_account_token(namespace, sa_name, WORKLOAD_AUDIENCE)
        return await identity.workload_identity_token(
            client_id=str(client_id),
            tenant_id=str(tenant_id),
            federated_token=token,
            authority=env.aad_authority,
            resource=resource,
            timeout=options.timeout,
        )

    return PullPath(
        ("wi", namespace, sa_name, str(client_id), registry, trust.audiences, key),
        lambda: run_chain(Target(registry, image, identity=federated, audiences=trust.audiences), options),
    )
