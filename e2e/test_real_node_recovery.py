"""Recovery you can see on a real node (issue 24): a fixed cause, then the recovery Event.

A node of its own (module scope): a real kubelet and containerd pull from the world's
registry. A Deployment's image tag does not exist yet: kubelet fails and backs off, the
operator diagnoses TAG_NOT_FOUND. The tag is then pushed (the fix): the operator's recheck
of the pod's own pull path finds it, posts ``PullRecoverable`` and, since the admin enabled
``--restart-recovered-pods labelled`` and the namespace carries the label, deletes the pod:
its ReplicaSet's replacement pulls and runs at once. A bare pod with the same image in the
same namespace is never deleted. Nothing here is written on kubelet's behalf.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pullhealth_dev import node as realnode
from support.operatorproc import OperatorProcess
from support.world import World
from test_real_node import (
    KUBELET_WAIT,
    TOLERATION,
    deployment,
    diagnosis,
    events_of,
    node_for_module,
    pods_of,
)

LABEL = "pullhealth.io/restart-recovered-pods"


@pytest.fixture(scope="module")
def recovery_node(dev_cluster: Any, world: World) -> Iterator[realnode.NodeState]:
    yield from node_for_module(dev_cluster, world, (world.anon,))


@pytest.fixture
def recovering(dev_cluster: Any, world: World, operator: Any, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator with a short pod interval (the fix is found before kubelet's next retry)
    and restarts in labelled namespaces; the session's operator is stopped meanwhile."""
    with OperatorProcess.others_stopped():
        op = OperatorProcess(dev_cluster.kubeconfig, world, tmp_path / "operator.log", [
            "--pod-interval", "2", "--restart-recovered-pods", "labelled"])
        op.start()
        try:
            yield op
        finally:
            op.stop()


def failures(dev_cluster: Any, ns: str, pod: str) -> int:
    """How many pulls kubelet reported failed for the pod (its Failed Event's count)."""
    return sum(int(e.get("count") or 1) for e in events_of(dev_cluster, ns, pod)
               if e["reason"] == "Failed" and e["message"].startswith("Failed to pull image"))


def bare_pod(name: str, image: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
                       "spec": {"hostNetwork": True, "tolerations": [TOLERATION], "terminationGracePeriodSeconds": 0,
                                "containers": [{"name": "app", "image": image, "imagePullPolicy": "Always"}]}})


def test_a_fixed_cause_is_announced_and_the_pod_restarts(
        recovery_node: realnode.NodeState, dev_cluster: Any, recovering: OperatorProcess, world: World,
        namespace: str, wait_for: Callable[..., Any]) -> None:
    dev_cluster.kubectl("label", "namespace", namespace, f"{LABEL}=true")
    tag = f"soon-{uuid.uuid4().hex[:8]}"
    image = f"{world.anon}/team/app:{tag}"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("later", image))
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=bare_pod("alone", image))
    name, code = diagnosis(dev_cluster, namespace, "later", wait_for)
    assert code == "TAG_NOT_FOUND"
    _, bare_code = diagnosis(dev_cluster, namespace, "alone", wait_for)
    assert bare_code == "TAG_NOT_FOUND"
    [pod] = [p for p in pods_of(dev_cluster, namespace, "later") if p["metadata"]["name"] == name]
    uid = pod["metadata"]["uid"]
    bare_uid = pods_of(dev_cluster, namespace, "alone")[0]["metadata"]["uid"]

    # Push right after one of kubelet's failures, once its back-off has grown to 20 s or more:
    # the operator (interval 2 s) finds the fix well before kubelet's next retry.
    wait_for(lambda: failures(dev_cluster, namespace, name) >= 2, "kubelet's second failed pull",
             timeout=KUBELET_WAIT)
    seen = failures(dev_cluster, namespace, name)
    wait_for(lambda: failures(dev_cluster, namespace, name) > seen, "kubelet's next failed pull",
             timeout=KUBELET_WAIT)
    world.registries["anon"].push_image("team/app", tag)

    def recoverable() -> dict[str, Any] | None:
        return next((e for e in events_of(dev_cluster, namespace, name) if e["reason"] == "PullRecoverable"), None)

    event = wait_for(recoverable, "PullRecoverable on the Deployment's pod", timeout=60)
    assert event["type"] == "Normal" and event["involvedObject"]["fieldPath"] == "spec.containers{app}"
    assert event["message"].startswith("was TAG_NOT_FOUND: the pull of container app works again")
    assert "kubelet retries by about " in event["message"], event["message"]

    # The opt-in: the pod is deleted (its Event first) and the ReplicaSet's new pod runs.
    def replacement_runs() -> dict[str, Any] | None:
        for p in pods_of(dev_cluster, namespace, "later"):
            if p["metadata"]["uid"] != uid and p.get("status", {}).get("phase") == "Running":
                return p
        return None

    fresh = wait_for(replacement_runs, "the replacement pod running", timeout=KUBELET_WAIT)
    assert not any(k.startswith("pullhealth.io/") for k in fresh["metadata"].get("annotations") or {})
    restart = [e for e in events_of(dev_cluster, namespace, name) if e["reason"] == "PullRecoveryRestart"]
    assert len(restart) == 1 and "its controller ReplicaSet/later-" in restart[0]["message"], restart
    assert 'pullhealth_pod_recoveries_total{action="deleted"} 1.0' in recovering.metrics()

    # The bare pod is never deleted: kubelet's own retry is what starts it.
    def bare_runs() -> dict[str, Any] | None:
        [alone] = pods_of(dev_cluster, namespace, "alone")
        return alone if alone.get("status", {}).get("phase") == "Running" else None

    alone = wait_for(bare_runs, "kubelet's own retry of the bare pod", timeout=KUBELET_WAIT + 300)
    assert alone["metadata"]["uid"] == bare_uid
    assert not [e for e in events_of(dev_cluster, namespace, "alone") if e["reason"] == "PullRecoveryRestart"]
    assert 'pullhealth_pod_recoveries_total{action="deleted"} 1.0' in recovering.metrics()
