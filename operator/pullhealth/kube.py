"""The Kubernetes API adapter behind :class:`pullhealth.registrycheck.ClusterReader`.

Uses the official client (synchronous) on worker threads, every call with a timeout.
Reads are namespaced by construction: there is no call that lists secrets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

REQUEST_TIMEOUT = 10.0


def load_config() -> kubernetes.client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return kubernetes.client.ApiClient()


class KubeReader:
    """Namespaced reads of Secrets and ServiceAccounts, and ServiceAccount tokens."""

    def __init__(self, api: kubernetes.client.ApiClient | None = None) -> None:
        self._core = kubernetes.client.CoreV1Api(api or load_config())

    async def secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """Read one Secret; None when absent."""
        return await self._read(self._core.read_namespaced_secret, name, namespace)

    async def service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """Read one ServiceAccount; None when absent."""
        return await self._read(self._core.read_namespaced_service_account, name, namespace)

    async def service_account_token(self, namespace: str, name: str, audience: str) -> str:
        """Request a 10-minute token for the ServiceAccount (TokenRequest API)."""
        body = kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=600)
        )
        result = await asyncio.to_thread(
            self._core.create_namespaced_service_account_token, name, namespace, body,
            _request_timeout=REQUEST_TIMEOUT,
        )
        if result.status is None or not result.status.token:
            raise RuntimeError(f"TokenRequest for {namespace}/{name} returned no token")
        return str(result.status.token)

    async def _read(self, call: Any, name: str, namespace: str) -> Mapping[str, Any] | None:
        try:
            obj = await asyncio.to_thread(call, name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data: Mapping[str, Any] = self._core.api_client.sanitize_for_serialization(obj)
        return data
