"""``pullhealth agent``: the thin runner around :mod:`pullhealth.agent.nodeagent`.

Reads the pods of one node (``spec.nodeName`` field selector) with the same list-and-watch
reader and per-pod worker as the operator (:class:`pullhealth.kube.listwatch.ListWatch`,
:class:`pullhealth.pods.podstream.PerPod`): only pods failing on this node reach the loop,
one check at a time per pod with its newest state; every ``--interval`` seconds the failing
pods are checked again (the node's path can change while a pod stays in back-off). Each
check posts the agent's ``NodePathChecked`` Events (create only). The API calls it makes are
exactly what the agent's RBAC allows: pods list/watch, events create.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Any

from pullhealth.agent.nodeagent import MAX_PODS_PER_PASS, Agent, AgentSettings, work_for
from pullhealth.agent.nodereport import read_key
from pullhealth.bounded import BoundedDict
from pullhealth.kube import kubeapi
from pullhealth.kube.listwatch import ListWatch, core_lister, uid_of
from pullhealth.pods.podstream import PerPod
from pullhealth.probes.destinations import build_policy

log = logging.getLogger("pullhealth.agent.nodeagent")

MAX_INFLIGHT = 4
MAX_POSTED = 10000


def trust_node_bundle(bundle: str | None) -> None:
    """Trust exactly the node's CA bundle (not the agent image's): OpenSSL's default verify
    paths follow ``SSL_CERT_FILE``/``SSL_CERT_DIR``, read when each context is made."""
    if bundle:
        os.environ["SSL_CERT_FILE"] = bundle
        os.environ["SSL_CERT_DIR"] = os.devnull


def settings_from(
    args: argparse.Namespace, api_server: tuple[tuple[str, int | None], ...] = ()
) -> AgentSettings:
    """Agent settings from the command line (raises ValueError on a bad CIDR).

    Args:
        args: the ``pullhealth agent`` arguments.
        api_server: the API server's addresses (:func:`kubeapi.api_server_addresses`), which
            probes never reach, as for the operator.
    """
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
            protected=api_server,
            hosts=args.registry_host,
        ),
    )


class Runner:
    """List/watch this node's failing pods and post the agent's Events."""

    def __init__(self, agent: Agent, client: kubeapi.KubeWriter) -> None:
        self.agent = agent
        self.client = client
        self.node = agent.settings.node
        # (pod uid, container) -> Event name
        self.posted: BoundedDict[tuple[str, str], str] = BoundedDict(MAX_POSTED)
        # uid -> the newest state of a pod failing on this node (checked again each interval)
        self.failing: BoundedDict[str, Mapping[str, Any]] = BoundedDict(MAX_PODS_PER_PASS)
        self.limit = asyncio.Semaphore(MAX_INFLIGHT)

    def relevant(self, pod: Mapping[str, Any]) -> bool:
        """On the reading thread: only pods failing on this node."""
        return work_for(pod, self.node) is not None

    async def handle(self, kind: str, pod: Mapping[str, Any]) -> None:
        """One pod's newest event (one at a time per pod); never raises (logged instead)."""
        uid = uid_of(pod)
        if kind == "DELETED" or not self.relevant(pod):
            self.failing.pop(uid, None)  # gone, or recovered: nothing more to check
            return
        self.failing[uid] = pod
        await self._post(uid, pod)

    async def _post(self, uid: str, pod: Mapping[str, Any]) -> None:
        try:
            async with self.limit:
                for spec in await self.agent.events_for(pod):
                    key = (uid, spec.regarding.field_path)
                    if self.posted.get(key) == spec.name:
                        continue
                    posted = await self.client.post(
                        spec, self.node, log, retried="retried on the pod's next update", repeats=False
                    )
                    if posted is kubeapi.Posted.POSTED:
                        self.posted[key] = spec.name
        except Exception:
            log.error("unexpected error checking a pod's node path", exc_info=True)

    async def run(self) -> None:
        """Read the node's pods until cancelled; check the failing ones again each interval."""
        per_pod = PerPod(self.handle, asyncio.get_running_loop())
        stream = ListWatch(
            core_lister(self.client.api, "pods", field_selector=f"spec.nodeName={self.node}"),
            (),
            per_pod.deliver,
            relevant=self.relevant,
            what="pods",
            without="the agent checks nothing until it is granted",
        )
        stream.start()
        try:
            while True:
                await asyncio.sleep(self.agent.settings.interval)
                for pod in list(self.failing.values()):
                    per_pod.put("MODIFIED", pod)
        finally:
            stream.stop()
            await per_pod.stop()


def run(args: argparse.Namespace) -> int:
    """Start the agent; returns when it is stopped (SIGINT/SIGTERM)."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    client = kubeapi.KubeWriter()
    try:
        settings = settings_from(args, kubeapi.api_server_addresses(client.api))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    trust_node_bundle(args.ca_bundle)
    agent = Agent(settings)
    runner = Runner(agent, client)
    log.info("checking the pull path of failing pods on node %s", settings.node)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner.run())
    return 0
