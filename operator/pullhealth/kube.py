"""The Kubernetes API adapter behind :class:`pullhealth.registrycheck.ClusterReader`.

Uses the official client (synchronous) on worker threads, every call with a timeout.
Reads are namespaced by construction: there is no call that lists secrets.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

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


def api_server_addresses(api: kubernetes.client.ApiClient) -> tuple[tuple[str, int | None], ...]:
    """The API server's endpoints, which probes must never reach: the client's host and
    port (resolved once, at start-up) and the in-cluster service IP (every port)."""
    found: list[tuple[str, int | None]] = []
    parts = urlsplit(str(api.configuration.host))
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if host:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            infos = []
        found.extend((str(info[4][0]), port) for info in infos)
    service_ip = os.environ.get("KUBERNETES_SERVICE_HOST")
    if service_ip:
        found.append((service_ip, None))
    return tuple(dict.fromkeys(found))


class KubeReader:
    """Namespaced reads of Secrets and ServiceAccounts, and ServiceAccount tokens."""

    def __init__(self, api: kubernetes.client.ApiClient | None = None) -> None:
        self.api = api or load_config()
        self._core = kubernetes.client.CoreV1Api(self.api)

    async def secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """Read one Secret; None when absent."""
        return await self._read(self._core.read_namespaced_secret, name, namespace)

    async def service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """Read one ServiceAccount; None when absent."""
        return await self._read(self._core.read_namespaced_service_account, name, namespace)

    async def node(self, name: str) -> Mapping[str, Any] | None:
        """Read a Node (cluster-scoped); None when absent or RBAC does not allow it."""
        try:
            obj = await asyncio.to_thread(self._core.read_node, name, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status in (403, 404):
                return None  # the default platform is used instead
            raise
        data: Mapping[str, Any] = self._core.api_client.sanitize_for_serialization(obj)
        return data

    async def service_account_token(self, namespace: str, name: str, audience: str) -> str:
        """Request a 10-minute token for the ServiceAccount (TokenRequest API)."""
        body = kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=600)
        )
        result = await asyncio.to_thread(
            self._core.create_namespaced_service_account_token,
            name,
            namespace,
            body,
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


class Forbidden(Exception):
    """The operator's RBAC does not allow a write."""


class KubeWriter(KubeReader):
    """Reads plus the few writes the pod handler makes."""

    async def kubelet_pull_messages(self, namespace: str, uid: str, limit: int = 50) -> list[str]:
        """Messages of the pod's kubelet ``Failed`` events, newest first (bounded)."""
        result = await asyncio.to_thread(
            self._core.list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.uid={uid},reason=Failed",
            limit=limit,
            _request_timeout=REQUEST_TIMEOUT,
        )

        def when(event: Any) -> str:
            moment = event.last_timestamp or event.event_time or event.first_timestamp
            return moment.isoformat() if moment else ""

        events = sorted(result.items or [], key=when, reverse=True)
        return [str(e.message) for e in events if e.message and "pull" in str(e.message).lower()]

    async def patch_pod_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Merge-patch annotations (None removes a key).

        Raises:
            Forbidden: RBAC denies the patch.
        """
        body = {"metadata": {"annotations": dict(annotations)}}
        try:
            await asyncio.to_thread(
                self._core.patch_namespaced_pod, name, namespace, body, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 403:
                raise Forbidden(_reason(exc) or f"patch pods/{name} in {namespace} is forbidden") from None
            if exc.status == 404:
                return  # the pod is gone: nothing to annotate
            raise


class StatusWriter:
    """Writes RegistryCheck status through the status subresource (merge patch)."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self._custom = kubernetes.client.CustomObjectsApi(api)

    async def patch_status(
        self, group: str, version: str, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Merge-patch ``status``.

        Raises:
            Forbidden: RBAC denies the write.
        """
        try:
            await asyncio.to_thread(
                self._custom.patch_namespaced_custom_object_status,
                group,
                version,
                namespace,
                plural,
                name,
                {"status": dict(status)},
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status == 403:
                fallback = f"patch {plural}/status of {namespace}/{name} is forbidden"
                raise Forbidden(_reason(exc) or fallback) from None
            if exc.status == 404:
                return  # deleted meanwhile
            raise


def _reason(exc: ApiException) -> str:
    """The API server's own message (it names the user, verb and resource refused)."""
    try:
        doc = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return ""
    return str(doc.get("message", ""))[:500] if isinstance(doc, dict) else ""
