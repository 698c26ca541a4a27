"""A slow data endpoint against a short runtime request timeout, on a real node.

The nearest real equivalent of "a large image against the runtime's timeout" this stack
can run: a registry whose blob downloads redirect to a data host that trickles the bytes
(``BlobStore(rate=...)``, 10 bytes a second), and a kubelet whose ``runtimeRequestTimeout``
is 10 s. What it shows is what this stack really does, and it is not a timeout: kubelet
v1.34 applies no deadline to ``PullImage`` (k8s.io/cri-client passes a cancel-only
context), and Debian's containerd 1.6.20 has no ``image_pull_progress_timeout``. The slow
pull runs past the request timeout and succeeds; kubelet reports no failure, so there is no
``context deadline exceeded`` for the operator to turn into PULL_TIMED_OUT (that code and
its Pulling -> Failed timeline stay tested with recorded text: tests/test_classify.py,
e2e/test_pods.py). docs/datapath.md says so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pullhealth.kube.events import pulled_image
from pullhealth_dev import node as realnode
from support.httpfixtures import BlobStore
from support.registry import Registry
from support.world import World
from test_real_node import KUBELET_WAIT, deployment, events_of, node_for_module, pods_of, waiting_reason

REQUEST_TIMEOUT = 10.0  # seconds: kubelet's runtimeRequestTimeout on this node
RATE = 10  # bytes a second from the data host


@pytest.fixture(scope="module")
def slow_registry(world: World) -> Iterator[str]:
    """``data.test:P``: a registry whose blobs come from a data host trickling them."""
    with tempfile.TemporaryDirectory(prefix="pullhealth-slowpull-") as tmp, \
            BlobStore(world.pki.issue(["blobs.test"]), rate=RATE) as blobs, \
            Registry("anonymous", world.pki, ["data.test"], workdir=Path(tmp),
                     redirect=f"https://blobs.test:{blobs.port}") as registry:
        blobs.root = registry.storage
        registry.push_image("team/slow", "v1")
        yield registry.address


@pytest.fixture(scope="module")
def slow_node(dev_cluster: Any, world: World, slow_registry: str) -> Iterator[realnode.NodeState]:
    yield from node_for_module(dev_cluster, world, (slow_registry,),
                               {"runtimeRequestTimeout": f"{REQUEST_TIMEOUT:g}s"})


def test_a_pull_slower_than_the_runtime_request_timeout_is_not_cut_off(
        slow_node: realnode.NodeState, slow_registry: str, dev_cluster: Any, operator: Any, namespace: str,
        wait_for: Callable[..., Any]) -> None:
    image = f"{slow_registry}/team/slow:v1"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("slow", image))

    def events() -> list[dict[str, Any]]:
        return [e for pod in pods_of(dev_cluster, namespace, "slow")
                for e in events_of(dev_cluster, namespace, pod["metadata"]["name"])]

    def pulled() -> dict[str, Any] | None:
        return next((e for e in events() if e["reason"] == "Pulled"
                     and e["message"].startswith("Successfully pulled image")), None)

    event = wait_for(pulled, "kubelet's Pulled Event after the slow pull", timeout=KUBELET_WAIT)
    assert event["source"] == {"component": "kubelet", "host": realnode.NODE_NAME}
    found = pulled_image(event["message"])
    assert found is not None, event["message"]
    # The pull ran longer than kubelet's runtime request timeout, and nothing cut it off.
    assert found.seconds > REQUEST_TIMEOUT, event["message"]
    failed = [e["message"] for e in events() if e["reason"] == "Failed" and "pull" in e["message"].lower()]
    assert failed == []
    assert not any(e["reason"] == "PullDiagnosed" for e in events())
    assert all(waiting_reason(p) not in ("ErrImagePull", "ImagePullBackOff")
               for p in pods_of(dev_cluster, namespace, "slow"))
