"""The Kubernetes API adapter: reads (:class:`pullhealth.chain.pullsources.ClusterReader`),
pod annotations, RegistryCheck status, Events, the peering object, and API-server outages.

Uses the official client (synchronous) on worker threads, every call with a timeout.
Reads are namespaced by construction: there is no call that lists secrets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from pullhealth.kube import events
from pullhealth.kube.apioutages import OutageTracker

REQUEST_TIMEOUT = 10.0
# Optimistic-concurrency retries: a conflict caused by someone else's unrelated write
# (kubelet's status updates) is retried on the fresh object this many times.
MAX_CONFLICT_RETRIES = 5


def load_config(pool_size: int | None = None) -> kubernetes.client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG).

    Args:
        pool_size: connections kept to the API server (one per worker thread: with
            fewer, urllib3 opens and discards a connection per extra concurrent call).
    """
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    if pool_size is None:
        return kubernetes.client.ApiClient()
    config = kubernetes.client.Configuration.get_default_copy()
    config.connection_pool_maxsize = pool_size
    return kubernetes.client.ApiClient(config)


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


class Unreachable(ApiException):
    """The API server did not answer (connection refused, reset, timed out): status 0."""

    def __init__(self, detail: str) -> None:
        super().__init__(status=0, reason=f"API server unreachable: {detail}")


class _Caller:
    """Runs a client call on a worker thread, bounded, reporting outages to the tracker."""

    # Set by the operator's start-up: one WARNING per outage instead of one per failure.
    outages: OutageTracker | None = None

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await asyncio.to_thread(fn, *args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if _Caller.outages is not None:
                _Caller.outages.failed(type(exc).__name__)
            raise Unreachable(type(exc).__name__) from None
        except ApiException as exc:
            if exc.status in (500, 502, 503, 504) and _Caller.outages is not None:
                _Caller.outages.failed(f"HTTP {exc.status}")  # etcd down behind the API server
            elif _Caller.outages is not None:
                _Caller.outages.recovered()
            raise
        if _Caller.outages is not None:
            _Caller.outages.recovered()
        return result

    async def _write(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        """A write whose answer is not used: the response body is read and dropped, not
        turned into the client's model objects (a Pod's costs more CPU than the request)."""
        await self._call(_discarding(fn), *args, **kwargs)


def _raw(fn: Any, parse: Any) -> Any:
    """``fn`` called for its raw answer, which ``parse`` turns into the result (no model
    objects, no sanitize round trip); the connection goes back to the pool either way."""

    def call(*args: Any, **kwargs: Any) -> Any:
        response = fn(*args, _preload_content=False, **kwargs)
        try:
            return parse(response.read())
        finally:
            response.release_conn()

    return call


def _as_json(fn: Any) -> Any:
    """``fn``'s answer as plain JSON."""
    return _raw(fn, json.loads)


def _discarding(fn: Any) -> Any:
    """``fn``'s answer read and dropped."""
    return _raw(fn, lambda _body: None)


def report_outages_to(tracker: OutageTracker | None) -> None:
    """Every API call made through this module reports connection failures and successes."""
    _Caller.outages = tracker


class KubeReader(_Caller):
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
            data: Mapping[str, Any] = await self._call(_as_json(self._core.read_node), name)
        except ApiException as exc:
            if exc.status in (403, 404):
                return None  # the default platform is used instead
            raise
        return data

    async def service_account_token(self, namespace: str, name: str, audience: str) -> str:
        """Request a 10-minute token for the ServiceAccount (TokenRequest API)."""
        body = kubernetes.client.AuthenticationV1TokenRequest(
            spec=kubernetes.client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=600)
        )
        result = await self._call(
            self._core.create_namespaced_service_account_token,
            name,
            namespace,
            body,
        )
        if result.status is None or not result.status.token:
            raise RuntimeError(f"TokenRequest for {namespace}/{name} returned no token")
        return str(result.status.token)

    async def _read(self, call: Any, name: str, namespace: str) -> Mapping[str, Any] | None:
        try:
            data: Mapping[str, Any] = await self._call(_as_json(call), name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return data


class Forbidden(Exception):
    """The operator's RBAC does not allow a write."""


class Conflict(Exception):
    """Another writer changed what a write was based on; this write was not made."""


class Emitted(StrEnum):
    """What :meth:`KubeWriter.emit` did."""

    CREATED = "created"
    EXISTED = "existed"  # a retry (or a racing writer) of the same report: nothing posted
    REPEATED = "repeated"  # the same report again after other states: series.count + 1


class Posted(StrEnum):
    """What became of an Event (:meth:`KubeWriter.post`)."""

    POSTED = "posted"  # created, or already there
    REFUSED = "refused"  # RBAC (logged at ERROR)
    FAILED = "failed"  # the API server answered with an error (logged at WARNING)
    UNREACHABLE = "unreachable"  # an outage (logged once by the outage tracker)


Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


class Written(StrEnum):
    """What a compare-and-set write did."""

    WRITTEN = "written"
    LOST = "lost"  # another writer changed the object first; nothing written
    GONE = "gone"  # the object was deleted


class Deleted(StrEnum):
    """What a conditional delete did (:meth:`KubeWriter.delete_pod`)."""

    DELETED = "deleted"
    CHANGED = "changed"  # the pod is no longer the one decided on (uid or resourceVersion): kept
    GONE = "gone"  # already deleted


class KubeWriter(KubeReader):
    """Reads plus the few writes the handlers make."""

    def __init__(self, api: kubernetes.client.ApiClient | None = None) -> None:
        super().__init__(api)
        self._events = kubernetes.client.EventsV1Api(self.api)

    async def post(
        self,
        spec: events.EventSpec,
        instance: str,
        logger: Logger,
        *,
        retried: str,
        refused: str = "",
        repeats: bool = True,
        log_refusal: bool = True,
    ) -> Posted:
        """Post an Event (:meth:`emit`) and say what became of it: the one place that logs a
        refused or failed Event (callers decide what to do next from the answer).

        Args:
            spec: the Event.
            instance: our reportingInstance.
            logger: where a refusal (ERROR) or failure (WARNING) is logged.
            retried: when a failed post is tried again ("retried on the pod's next update").
            refused: what happens without the Event, appended to the RBAC error line.
            repeats: see :meth:`emit`.
            log_refusal: False when the caller already logged this refusal once (it is
                answered :attr:`Posted.REFUSED` all the same).
        """
        try:
            await self.emit(spec, instance, repeats=repeats)
        except Forbidden as exc:
            if not log_refusal:
                return Posted.REFUSED
            logger.error(
                "cannot post the %s Event (RBAC): %s; grant create on events.k8s.io events to "
                "this component's service account.%s", spec.reason, exc, f" {refused}" if refused else ""
            )
            return Posted.REFUSED
        except Unreachable:
            return Posted.UNREACHABLE  # the outage is logged once, not per Event
        except ApiException as exc:
            logger.warning("cannot post the %s Event (HTTP %s); %s", spec.reason, exc.status, retried)
            return Posted.FAILED
        return Posted.POSTED

    async def emit(self, spec: events.EventSpec, instance: str, *, repeats: bool = True) -> Emitted:
        """Post an Event exactly once (see :mod:`pullhealth.kube.events`).

        Create it under its deterministic name; when it exists, the occurrence marker
        tells a retry (nothing to do) from a repeat (count it in ``series``). With
        ``repeats=False`` an existing Event is left as it is (the node agent may only
        create Events: its names carry the whole report).

        Raises:
            Forbidden: RBAC denies creating Events.
            ApiException: the API server failed (the caller writes nothing after it).
        """
        namespace = spec.regarding.namespace
        try:
            await self._write(
                self._events.create_namespaced_event,
                namespace,
                spec.body(instance),  # a dict is serialised as is
            )
            return Emitted.CREATED
        except ApiException as exc:
            if exc.status == 403 and _terminating(exc):
                return Emitted.EXISTED  # the namespace is being deleted: nobody will read it
            if exc.status == 403:
                raise Forbidden(answer_reason(exc) or f"create events in {namespace} is forbidden") from None
            if exc.status != 409:
                raise
            if not repeats:
                return Emitted.EXISTED
        for _ in range(MAX_CONFLICT_RETRIES):
            existing = await self._read(self._events.read_namespaced_event, spec.name, namespace)
            if existing is None:  # expired between create and read: post it again, once
                return await self.emit(spec, instance, repeats=False)
            if events.is_retry(existing, spec.occurrence):
                return Emitted.EXISTED
            try:
                await self._write(
                    self._events.patch_namespaced_event,
                    spec.name,
                    namespace,
                    events.repeat_patch(existing, spec.occurrence),
                )
                return Emitted.REPEATED
            except ApiException as exc:
                if exc.status == 403:
                    refused = answer_reason(exc) or f"patch events in {namespace} is forbidden"
                    raise Forbidden(refused) from None
                if exc.status not in (404, 409):
                    raise
        return Emitted.EXISTED  # others keep counting it: it exists

    async def ready(self) -> bool:
        """Whether the API server answers ``/readyz`` (etcd included); never raises."""
        try:
            await self._call(self._readyz)
        except ApiException:
            return False
        return True

    def _readyz(self, _request_timeout: float) -> None:
        method, url, headers, body, post = self.api.param_serialize(
            "GET", "/readyz", auth_settings=["BearerToken"]
        )
        response = self.api.call_api(method, url, headers, body, post, _request_timeout=_request_timeout)
        response.read()  # type: ignore[no-untyped-call]
        if response.status != 200:
            raise ApiException(status=response.status, reason="not ready")

    async def read_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """Read a Pod; None when absent."""
        return await self._read(self._core.read_namespaced_pod, name, namespace)

    async def kubelet_pull_messages(self, namespace: str, uid: str, limit: int = 50) -> list[str]:
        """Messages of the pod's kubelet ``Failed`` events, newest first (bounded): the same
        Events, in the same order, as the watch store keeps (:func:`events.newest_pull_messages`)."""
        result = await self._call(
            _as_json(self._core.list_namespaced_event),
            namespace,
            field_selector=f"involvedObject.uid={uid},reason=Failed",
            limit=limit,
        )
        items = result.get("items") if isinstance(result, dict) else None
        return events.newest_pull_messages([e for e in items or [] if isinstance(e, dict)])

    async def node_path_events(self, namespace: str, uid: str, limit: int = 50) -> list[dict[str, str]]:
        """The pod's ``NodePathChecked`` Events (the node agent's), newest first (bounded):
        ``note``, ``controller`` (reporting controller) and ``instance`` of each."""
        result = await self._call(
            self._core.list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.uid={uid},reason=NodePathChecked",
            limit=limit,
        )

        def when(event: Any) -> str:
            moment = event.event_time or event.last_timestamp or event.first_timestamp
            return moment.isoformat() if moment else ""

        return [
            {
                "note": str(e.message or ""),
                "controller": str(e.reporting_component or ""),
                "instance": str(e.reporting_instance or ""),
            }
            for e in sorted(result.items or [], key=when, reverse=True)
        ]

    async def patch_pod_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Merge-patch annotations (None removes a key).

        Raises:
            Forbidden: RBAC denies the patch.
        """
        body = {"metadata": {"annotations": dict(annotations)}}
        try:
            await self._write(self._core.patch_namespaced_pod, name, namespace, body)
        except ApiException as exc:
            if exc.status == 403:
                refused = answer_reason(exc) or f"patch pods/{name} in {namespace} is forbidden"
                raise Forbidden(refused) from None
            if exc.status == 404:
                return  # the pod is gone: nothing to annotate
            raise

    async def set_pod_annotations(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str | None],
        *,
        resource_version: str,
        expected: Mapping[str, str | None],
    ) -> Written:
        """Compare-and-set annotations: write only if ours still read ``expected``.

        The patch carries ``resourceVersion`` (optimistic concurrency). On a conflict the
        pod is read again: if another writer changed our annotations, nothing is written
        (:attr:`Written.LOST`); if only others' fields changed (kubelet's status), the
        patch is retried on the fresh version.

        Raises:
            Forbidden: RBAC denies the patch.
        """
        version = resource_version
        for _ in range(MAX_CONFLICT_RETRIES):
            body = {"metadata": {"annotations": dict(annotations), "resourceVersion": version}}
            try:
                await self._write(self._core.patch_namespaced_pod, name, namespace, body)
                return Written.WRITTEN
            except ApiException as exc:
                if exc.status == 403:
                    refused = f"patch pods/{name} in {namespace} is forbidden"
                    raise Forbidden(answer_reason(exc) or refused) from None
                if exc.status == 404:
                    return Written.GONE
                if exc.status != 409:
                    raise
            pod = await self.read_pod(namespace, name)
            if pod is None:
                return Written.GONE
            meta = pod.get("metadata") or {}
            current = meta.get("annotations") or {}
            if any(current.get(key) != value for key, value in expected.items()):
                return Written.LOST
            version = str(meta.get("resourceVersion") or "")
        return Written.LOST


    async def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        """A Namespace's labels; None when it is absent.

        Raises:
            Forbidden: RBAC denies ``get`` on namespaces.
        """
        try:
            data = await self._call(_as_json(self._core.read_namespace), name)
        except ApiException as exc:
            if exc.status == 403:
                raise Forbidden(answer_reason(exc) or f"get namespaces/{name} is forbidden") from None
            if exc.status == 404:
                return None
            raise
        labels = (data.get("metadata") or {}).get("labels") if isinstance(data, dict) else None
        return {str(k): str(v) for k, v in (labels or {}).items()}

    async def delete_pod(
        self, namespace: str, name: str, *, uid: str, resource_version: str, dry_run: bool = False
    ) -> Deleted:
        """Delete a pod only if it is still the one decided on: preconditions on its uid and
        resourceVersion (the API server refuses with 409 otherwise; nothing is deleted).

        With ``dry_run`` the API server authorises the delete (RBAC), runs admission and
        checks the preconditions, and deletes nothing: :attr:`Deleted.DELETED` then means
        "would be deleted".

        Raises:
            Forbidden: RBAC denies ``delete`` on pods.
        """
        preconditions = kubernetes.client.V1Preconditions(uid=uid, resource_version=resource_version or None)
        try:
            await self._write(
                self._core.delete_namespaced_pod,
                name,
                namespace,
                # In the body: the API server reads a DELETE's options from its body when it has
                # one, and ignores the dryRun query parameter then.
                body=kubernetes.client.V1DeleteOptions(
                    preconditions=preconditions, dry_run=["All"] if dry_run else None
                ),
            )
        except ApiException as exc:
            if exc.status == 403:
                refused = answer_reason(exc) or f"delete pods/{name} in {namespace} is forbidden"
                raise Forbidden(refused) from None
            if exc.status == 404:
                return Deleted.GONE
            if exc.status == 409:
                return Deleted.CHANGED
            raise
        return Deleted.DELETED


class StatusWriter(_Caller):
    """Writes RegistryCheck status through the status subresource (merge patch)."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self._custom = kubernetes.client.CustomObjectsApi(api)

    async def peering_status(self, name: str, namespace: str | None) -> Mapping[str, Any] | None:
        """The status of kopf's peering object (ClusterKopfPeering, or KopfPeering in
        ``namespace``): one keep-alive record per replica. None when absent.

        Raises:
            ApiException: it could not be read (an outage, RBAC): the caller must not act.
        """
        try:
            if namespace is None:
                obj: Any = await self._call(
                    self._custom.get_cluster_custom_object, "kopf.dev", "v1", "clusterkopfpeerings", name
                )
            else:
                obj = await self._call(
                    self._custom.get_namespaced_custom_object,
                    "kopf.dev",
                    "v1",
                    namespace,
                    "kopfpeerings",
                    name,
                )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        status: Mapping[str, Any] | None = (obj or {}).get("status")
        return status

    async def patch_status(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        resource_version: str | None = None,
        still_ours: Callable[[Mapping[str, Any]], bool] | None = None,
    ) -> str | None:
        """Merge-patch ``status``; returns the new resourceVersion (None: object deleted).

        With ``resource_version`` the write is conditional (optimistic concurrency). On a
        conflict the object is read again and the write retried on the fresh version only
        if ``still_ours(object)`` says nobody took over what this write is based on.

        Raises:
            Forbidden: RBAC denies the write.
            Conflict: another writer changed the object first.
        """
        rv = resource_version
        for _ in range(MAX_CONFLICT_RETRIES):
            body: dict[str, Any] = {"status": dict(status)}
            if rv:
                body["metadata"] = {"resourceVersion": rv}
            try:
                result: Any = await self._call(
                    self._custom.patch_namespaced_custom_object_status,
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                    body,
                )
                return str(((result or {}).get("metadata") or {}).get("resourceVersion") or "")
            except ApiException as exc:
                if exc.status == 403:
                    fallback = f"patch {plural}/status of {namespace}/{name} is forbidden"
                    raise Forbidden(answer_reason(exc) or fallback) from None
                if exc.status == 404:
                    return None  # deleted meanwhile
                if exc.status != 409 or still_ours is None:
                    if exc.status == 409:
                        raise Conflict(f"{plural} {namespace}/{name} changed meanwhile") from None
                    raise
            try:
                fresh: Any = await self._call(
                    self._custom.get_namespaced_custom_object,
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            if not still_ours(fresh):
                raise Conflict(f"{plural} {namespace}/{name} was written by another operator")
            rv = str((fresh.get("metadata") or {}).get("resourceVersion") or "")
        raise Conflict(f"{plural} {namespace}/{name} keeps changing")


def _terminating(exc: ApiException) -> bool:
    """A 403 from admission (NamespaceLifecycle), not RBAC: the namespace is being deleted."""
    return "because it is being terminated" in answer_reason(exc)


def answer_reason(exc: ApiException) -> str:
    """The API server's own message (it names the user, verb and resource refused)."""
    try:
        doc = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return ""
    return str(doc.get("message", ""))[:500] if isinstance(doc, dict) else ""
