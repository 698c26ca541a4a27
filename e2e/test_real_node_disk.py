"""A full disk on a real node: containerd runs out of space mid-pull, and its code.

A node of its own (module scope) whose containerd root (content store, snapshots,
metadata) is a 24 MiB tmpfs: the real thing in a small filesystem, not a simulated text.
A Deployment pulls an image with a 40 MB incompressible layer from the world's registry;
containerd's write fails with ``no space left on device``, kubelet reports it in its own
words, and the operator names the node's disk (NODE_DISK_FULL), not the registry.
Nothing here is written on kubelet's behalf.
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
from test_real_node import deployment, diagnosis, kubelet_pull_message, node_for_module

ROOT_SIZE = "24m"
LAYER_BYTES = 40 * 1024 * 1024


@pytest.fixture(scope="module")
def small_disk_node(dev_cluster: Any, world: World) -> Iterator[realnode.NodeState]:
    yield from node_for_module(dev_cluster, world, (world.anon,), containerd_root_size=ROOT_SIZE)


def test_a_full_disk_gets_the_nodes_code_not_the_registrys(
    small_disk_node: realnode.NodeState, dev_cluster: Any, operator: Any, world: World, namespace: str,
    wait_for: Callable[..., Any],
) -> None:
    repo = f"e2e/large-{namespace[-6:]}"
    world.registries["anon"].push_image(repo, "v1", layer_bytes=LAYER_BYTES)
    image = f"{world.anon}/{repo}:v1"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("large", image))

    name, code = diagnosis(dev_cluster, namespace, "large", wait_for)
    message = kubelet_pull_message(dev_cluster, namespace, name)
    # containerd's own words, through kubelet: the write into its content store failed.
    assert "no space left on device" in message, message
    assert classify(message).code is Code.NODE_DISK_FULL
    assert code == Code.NODE_DISK_FULL.value
    pod = json.loads(dev_cluster.kubectl("get", "pod", "-n", namespace, name, "-o", "json").stdout)
    cause = pod["metadata"]["annotations"]["pullhealth.io/probable-cause"]
    assert "disk" in cause.lower(), cause
