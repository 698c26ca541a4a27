"""The data path on a real node: kubelet and containerd pull through the registry's redirect.

The world's ``datapath`` registry (Debian's docker-registry with distribution's ``redirect``
storage middleware) answers every blob GET with a 307 to its data host (a blob store
serving the registry's storage directory over HTTPS with Range), as ACR redirects to
``<registry>.<region>.data.azurecr.io``. ``datablocked`` (on an ACR name) redirects to a
data host where nothing listens, while its login server works. A real kubelet v1.34 with
Debian's containerd 1.6 pulls both; nothing is written on kubelet's behalf.

The node trusts the world's CA for the registries only (``certs.d/<registry>/ca.crt``):
containerd follows the redirect with the registry host's HTTP client, so the data host's
certificate is checked against that same trust (the test shows the pull succeeding with no
entry for the data host).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pullhealth.agent.nodereport import parse_note
from pullhealth.domain.codes import Code
from pullhealth_dev import node as realnode
from support.kubelet import docker_secret
from support.objects import regcheck_yaml
from support.world import World
from test_node_agent import AgentProcess
from test_real_node import (
    KUBELET_WAIT,
    deployment,
    diagnosis,
    events_of,
    kubelet_pull_message,
    node_for_module,
    pods_of,
)


@pytest.fixture(scope="module")
def datapath_node(dev_cluster: Any, world: World) -> Iterator[realnode.NodeState]:
    """A node trusting the world's CA for the two registries, not for their data hosts."""
    yield from node_for_module(dev_cluster, world, (world.datapath, world.datablocked))


def test_kubelet_pulls_through_the_redirect(datapath_node: realnode.NodeState, dev_cluster: Any,
                                            operator: Any, world: World, namespace: str,
                                            wait_for: Callable[..., Any]) -> None:
    secret = docker_secret("dora", world.datapath, *world.data_user)
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(secret))
    mark = len(world.blobs.requests)
    image = f"{world.datapath}/team/app:v1"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-",
                        stdin=deployment("through-redirect", image, secrets=("dora",)))

    def pulled() -> dict[str, Any] | None:
        for pod in pods_of(dev_cluster, namespace, "through-redirect"):
            for event in events_of(dev_cluster, namespace, pod["metadata"]["name"]):
                if event["reason"] == "Pulled" and event["message"].startswith("Successfully pulled image"):
                    return event
        return None

    event = wait_for(pulled, "kubelet's Pulled Event for the image behind the redirect", timeout=KUBELET_WAIT)
    assert event["source"] == {"component": "kubelet", "host": realnode.NODE_NAME}
    # containerd fetched the blobs from the data host, and sent it no credential.
    by_containerd = [(path, headers) for _, path, headers in world.blobs.requests[mark:]
                     if "containerd" in headers.get("User-Agent", "")]
    assert by_containerd, world.blobs.requests[mark:]
    for path, headers in by_containerd:
        assert path.startswith("/docker/registry/v2/blobs/sha256/")
        assert not any(k.lower() == "authorization" for k in headers), headers


def test_data_endpoint_refused_while_the_login_server_works(datapath_node: realnode.NodeState,
                                                            dev_cluster: Any, operator: Any, world: World,
                                                            namespace: str,
                                                            wait_for: Callable[..., Any]) -> None:
    image = f"{world.datablocked}/team/app:v1"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("data-blocked", image))
    name, code = diagnosis(dev_cluster, namespace, "data-blocked", wait_for)
    message = kubelet_pull_message(dev_cluster, namespace, name)
    # containerd's own words: the manifest came from the login server, the blob's redirect failed.
    data_host = world.blocked_data_host.split(":")[0]
    assert f'failed to pull and unpack image "{image}"' in message, message
    assert data_host in message and "connection refused" in message, message
    assert code == "DATA_ENDPOINT_UNREACHABLE", (code, message)
    out = dev_cluster.kubectl("get", "pod", "-n", namespace, name, "-o", "json").stdout
    cause = json.loads(out)["metadata"]["annotations"]["pullhealth.io/probable-cause"]
    assert world.blocked_data_host in cause, cause
    ours = [e for e in events_of(dev_cluster, namespace, name) if e["reason"] == "PullDiagnosed"]
    assert ours and "DATA_ENDPOINT_UNREACHABLE" in ours[0]["message"], ours

    # The same registry as a RegistryCheck: the status names the data host and the step.
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=regcheck_yaml(
        "data-blocked", {"registry": world.datablocked, "image": "team/app:v1"}))

    def status() -> dict[str, Any] | None:
        out = dev_cluster.kubectl("get", "regcheck", "-n", namespace, "data-blocked", "-o", "json").stdout
        found = json.loads(out).get("status") or {}
        return found if found.get("code") else None

    found = wait_for(status, "the RegistryCheck's status", timeout=60)
    assert (found["phase"], found["code"]) == ("Unhealthy", "DATA_ENDPOINT_UNREACHABLE"), found
    blob = next(c for c in found["checks"] if c["name"] == "blob")
    assert blob["status"] == "failed" and world.blocked_data_host in blob["message"], blob
    assert any("data.azurecr.io" in step for step in found["remediation"]), found["remediation"]


def test_the_node_agent_names_the_data_host_from_the_node(datapath_node: realnode.NodeState, dev_cluster: Any,
                                                         operator: Any, world: World, namespace: str,
                                                         wait_for: Callable[..., Any], tmp_path: Path) -> None:
    """``pullhealth agent`` for this node (its resolver, its certs.d, the node's CA bundle)
    reads kubelet's real message, finds the data host in it and checks dns/tcp/tls to it
    from the node: the NodePathChecked Event says DATA_ENDPOINT_UNREACHABLE at the tcp step."""
    key = tmp_path / "report.key"
    key.write_text(os.urandom(24).hex())
    image = f"{world.datablocked}/team/app:v1"
    with AgentProcess(realnode.NODE_NAME, dev_cluster.kubeconfig, f"{datapath_node.dns_address}:53",
                      world.ca_bundle, datapath_node.certs_d, tmp_path / "agent.log", key):
        dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("agent-sees", image))

        def reported() -> Any:
            for pod in pods_of(dev_cluster, namespace, "agent-sees"):
                for event in events_of(dev_cluster, namespace, pod["metadata"]["name"]):
                    if event["reason"] == "NodePathChecked":
                        report = parse_note(event.get("message") or event.get("note") or "")
                        if report is not None and report.code is not Code.OK:
                            return report
            return None

        try:
            report = wait_for(reported, "the agent's NodePathChecked naming the data host", timeout=KUBELET_WAIT)
        except BaseException:
            print((tmp_path / "agent.log").read_text(errors="replace")[-4000:])
            raise
    assert report.code is Code.DATA_ENDPOINT_UNREACHABLE, report
    assert report.node == realnode.NODE_NAME and report.step == "tcp"
    assert report.endpoint == f"https://{world.blocked_data_host}", report
