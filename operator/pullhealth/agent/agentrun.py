"""``pullhealth agent``: the thin runner around :mod:`pullhealth.agent.nodeagent`.

Lists, then watches, the pods of one node (``spec.nodeName`` field selector), hands each
failing one to the agent and posts its ``NodePathChecked`` Events (create only). The API
calls it makes are exactly what the agent's RBAC allows: pods list/watch, events create.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from pullhealth.agent.nodeagent import MAX_PODS_PER_PASS, Agent, AgentSettings, work_for
from pullhealth.agent.nodereport import read_key
from pullhealth.kube import kubeapi
from pullhealth.probes.destinations import build_policy

log = logging.getLogger("pullhealth.agent.nodeagent")

MAX_INFLIGHT = 4
MAX_POSTED = 10000
RETRY_SECONDS = 10.0


def trust_node_bundle(bundle: str | None) -> None:
    """Trust exactly the node's CA bundle (not the agent image's): OpenSSL's default verify
    paths follow ``SSL_CERT_FILE``/``SSL_CERT_DIR``, read when each context is made."""
    if bundle:
        os.environ["SSL_CERT_FILE"] = bundle
        os.environ["SSL_CERT_DIR"] = os.devnull


def settings_from(args: argparse.Namespace) -> AgentSettings:
    """Agent settings from the command line (raises ValueError on a bad CIDR)."""
    node = args.node or os.environ.get("NODE_NAME", "")
    if not node:
        raise ValueError("the node's name is needed: --node or NODE_NAME (the chart sets it from the pod)")
    return AgentSettings(
        node=node,
        report_key=read_key(args.report_key_file),
        nameserver=args.nameserver or None,
        certs_dir=args.certs_dir or None,
        timeout=args.timeout,
        interval=args.interval,
        private_endpoints=tuple(s.strip() for s in args.private_endpoints.split(",") if s.strip()),
        destinations=build_policy(
            allow=args.allow_cidr,
            deny=args.deny_cidr,
            protected=_api_server(),
            hosts=args.registry_host,
        ),
    )


def _api_server() -> list[tuple[str, int | None]]:
    """The API server's service address (refused as a registry destination)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "")
    return [(host, int(port) if port.isdigit() else None)] if host else []


class Runner:
    """List/watch this node's pods and post the agent's Events."""

    def __init__(self, agent: Agent, client: kubeapi.KubeWriter) -> None:
        self.agent = agent
        self.client = client
        self.core = kubernetes.client.CoreV1Api(client.api)
        self.selector = f"spec.nodeName={agent.settings.node}"
        self.posted: dict[tuple[str, str], str] = {}  # (pod uid, container) -> Event name
        self.inflight: set[str] = set()
        self.pending: dict[str, Mapping[str, Any]] = {}  # uid -> latest update while in flight
        self.limit = asyncio.Semaphore(MAX_INFLIGHT)
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, pod: Mapping[str, Any]) -> None:
        """Check one pod and post what is new; never raises (logged instead).

        A pod updated while it is being handled is handled again afterwards, as it is
        then (the latest update wins; at most one pending update per pod).
        """
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if not uid:
            return
        if uid in self.inflight:
            self.pending[uid] = pod
            return
        self.inflight.add(uid)
        try:
            current: Mapping[str, Any] | None = pod
            while current is not None:
                await self._post(uid, current)
                current = self.pending.pop(uid, None)
        finally:
            self.inflight.discard(uid)

    async def _post(self, uid: str, pod: Mapping[str, Any]) -> None:
        if work_for(pod, self.agent.settings.node) is None:
            return  # not failing on this node: no slot taken
        try:
            async with self.limit:
                for spec in await self.agent.events_for(pod):
                    key = (uid, spec.regarding.field_path)
                    if self.posted.get(key) == spec.name:
                        continue
                    await self.client.emit(spec, self.agent.settings.node, repeats=False)
                    if len(self.posted) >= MAX_POSTED:
                        self.posted.clear()
                    self.posted[key] = spec.name
        except kubeapi.Forbidden as exc:
            log.error("cannot post the NodePathChecked Event (RBAC): %s", exc)
        except ApiException as exc:
            log.warning("cannot post the NodePathChecked Event (HTTP %s); retried on the pod's next update",
                        exc.status)
        except Exception:
            log.error("unexpected error checking a pod's node path", exc_info=True)

    def submit(self, pod: Mapping[str, Any]) -> None:
        """Handle a pod in the background (bounded by :data:`MAX_INFLIGHT`)."""
        task = asyncio.ensure_future(self.handle(pod))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def list_pods(self) -> str:
        """Submit every pod of the node; returns the list's resourceVersion."""
        result = await asyncio.to_thread(
            self.core.list_pod_for_all_namespaces,
            field_selector=self.selector,
            limit=MAX_PODS_PER_PASS,
            _request_timeout=kubeapi.REQUEST_TIMEOUT,
        )
        for pod in result.items or []:
            self.submit(self.core.api_client.sanitize_for_serialization(pod))
        return str((result.metadata and result.metadata.resource_version) or "")

    async def watch(self, resource_version: str) -> None:
        """Follow pod changes for one interval (the server ends the watch), then return."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)
        done = object()
        stop = threading.Event()

        def pump() -> None:
            watcher = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in watcher.stream(  # type: ignore[no-untyped-call]
                    self.core.list_pod_for_all_namespaces,
                    field_selector=self.selector,
                    resource_version=resource_version,
                    timeout_seconds=int(self.agent.settings.interval),
                    _request_timeout=self.agent.settings.interval + 30,
                ):
                    if stop.is_set():
                        break
                    asyncio.run_coroutine_threadsafe(queue.put(event), loop).result()
            except Exception as exc:  # the caller re-lists
                log.warning("pod watch ended: %s", type(exc).__name__)
            finally:
                watcher.stop()  # type: ignore[no-untyped-call]
                asyncio.run_coroutine_threadsafe(queue.put(done), loop)

        thread = threading.Thread(target=pump, name="pod-watch", daemon=True)
        thread.start()
        try:
            while (event := await queue.get()) is not done:
                if event.get("type") in ("ADDED", "MODIFIED"):
                    self.submit(self.core.api_client.sanitize_for_serialization(event["object"]))
        finally:
            stop.set()

    async def run(self) -> None:
        """List, watch, repeat; API failures are retried after a pause."""
        while True:
            try:
                version = await self.list_pods()
                await self.watch(version)
            except (ApiException, OSError) as exc:
                log.warning("cannot list this node's pods (%s); retrying in %gs",
                            getattr(exc, "status", type(exc).__name__), RETRY_SECONDS)
                await asyncio.sleep(RETRY_SECONDS)


def run(args: argparse.Namespace) -> int:
    """Start the agent; returns when it is stopped (SIGINT/SIGTERM)."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    trust_node_bundle(args.ca_bundle)
    agent = Agent(settings)
    runner = Runner(agent, kubeapi.KubeWriter())
    log.info("checking the pull path of failing pods on node %s", settings.node)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner.run())
    return 0
