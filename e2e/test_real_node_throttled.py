"""kubelet's own pull rate limit on a real node: ``pull QPS exceeded``, and its code.

A node of its own (module scope) whose kubelet allows one pull per second, burst 1
(``registryPullQPS`` / ``registryBurst`` in the KubeletConfiguration the dev node writes):
a pod whose containers pull the same image from the world's registry asks for pulls faster
than that, kubelet refuses some with its own words, and the operator names the cause
(PULL_QPS_EXCEEDED), not the registry. Nothing here is written on kubelet's behalf.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pullhealth.domain.classify import classify
from pullhealth.domain.codes import Code
from pullhealth_dev import node as realnode
from support.world import World
from test_real_node import KUBELET_WAIT, TOLERATION, events_of, node_for_module, pods_of

THROTTLE = {"registryPullQPS": 1, "registryBurst": 1}
CONTAINERS = 6


@pytest.fixture(scope="module")
def throttled_node(dev_cluster: Any, world: World) -> Iterator[realnode.NodeState]:
    yield from node_for_module(dev_cluster, world, (world.anon,), THROTTLE)


def many_pulls(name: str, image: str) -> str:
    """One Deployment whose pod pulls ``image`` once per container (imagePullPolicy: Always)."""
    containers = [{"name": f"c{i}", "image": image, "imagePullPolicy": "Always"} for i in range(CONTAINERS)]
    spec = {"hostNetwork": True, "tolerations": [TOLERATION], "terminationGracePeriodSeconds": 0,
            "containers": containers}
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": spec}},
    })


def test_kubelets_pull_limit_gets_its_own_code(throttled_node: realnode.NodeState, dev_cluster: Any,
                                               operator: Any, world: World, namespace: str,
                                               wait_for: Callable[..., Any]) -> None:
    image = f"{world.anon}/library/alpine:3.19"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=many_pulls("throttled", image))

    def events() -> list[dict[str, Any]]:
        return [e for pod in pods_of(dev_cluster, namespace, "throttled")
                for e in events_of(dev_cluster, namespace, pod["metadata"]["name"])]

    def refused() -> dict[str, Any] | None:
        return next((e for e in events() if e["reason"] == "Failed" and "pull QPS exceeded" in e["message"]),
                    None)

    event = wait_for(refused, "kubelet's own 'pull QPS exceeded'", timeout=KUBELET_WAIT)
    assert event["source"] == {"component": "kubelet", "host": realnode.NODE_NAME}
    assert event["message"] == f'Failed to pull image "{image}": pull QPS exceeded'
    assert classify(event["message"]).code is Code.PULL_QPS_EXCEEDED

    def diagnosed() -> str | None:
        for e in events():
            if e["reason"] == "PullDiagnosed" and "registryPullQPS" in e["message"]:
                return str(e["message"])
        return None

    message = wait_for(diagnosed, "the operator's PULL_QPS_EXCEEDED diagnosis", timeout=KUBELET_WAIT)
    assert "the registry was never asked" in message
