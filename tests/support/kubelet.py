"""Playing kubelet on a control plane without kubelets: a Node, bound pods, the failing
status and the ``Failed`` Events kubelet writes, with text recorded from real containerd
pulls (tests/data/containerd_messages.jsonl, kubelet 1.28+ wrapping)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes

CORPUS = Path(__file__).resolve().parents[1] / "data" / "containerd_messages.jsonl"
NODE = "pullhealth-e2e-node"


def recorded(mode: str) -> tuple[str, str]:
    """(text, recorded ref) of the kubelet-1.28 wrapping of a recorded failure mode."""
    for line in CORPUS.read_text().splitlines():
        row = json.loads(line)
        if row.get("mode") == mode and row.get("wrapping") == "kubelet-1.28":
            return str(row["text"]), str(row["ref"])
    raise AssertionError(f"no recorded message for {mode}")


def kubelet_message(mode: str, image: str) -> str:
    text, ref = recorded(mode)
    return text.replace(ref, image)



#: On every Node without a kubelet: keeps DaemonSets (the chart's agent) and the scheduler
#: off it; pods the test binds by ``nodeName`` are not affected (NoSchedule).
NO_KUBELET_TAINT = {"key": "pullhealth.io/e2e-no-kubelet", "value": "true", "effect": "NoSchedule"}


def ensure_node(api: Any, name: str = NODE, arch: str = "amd64", labels: dict[str, str] | None = None,
                taints: list[dict[str, str]] | None = None) -> None:
    """A Node pods are bound to (without it, the pod GC would delete them); no kubelet runs it:
    tainted so that the scheduler puts no pod on it, plus ``taints``."""
    try:
        api.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
                         "kubernetes.io/arch": arch, "kubernetes.io/os": "linux", **(labels or {})}},
                         "spec": {"taints": [NO_KUBELET_TAINT, *(taints or [])]}})
    except kubernetes.client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise


def docker_secret(name: str, server: str, user: str, password: str) -> dict[str, Any]:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = json.dumps({"auths": {server: {"auth": auth}}})
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name}, "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()}}


def make_pod(api: Any, ns: str, name: str, image: str, secrets: list[str] | None = None,
             init: bool = False, node: str = NODE) -> dict[str, Any]:
    container = {"name": "app", "image": image}
    spec: dict[str, Any] = {"nodeName": node, "containers": [{"name": "main", "image": "pause:ok"}]
                            if init else [container]}
    if init:
        spec["initContainers"] = [container]
    if secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    pod = api.create_namespaced_pod(ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                                         "spec": spec})
    return dict(api.api_client.sanitize_for_serialization(pod))


def fail_pull(api: Any, ns: str, pod: dict[str, Any], image: str, message: str, *, init: bool = False,
              event: bool = True, reason: str = "ErrImagePull") -> None:
    """Write what kubelet writes on a failed pull: the Failed event, then the waiting state."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    name = pod["metadata"]["name"]
    if event:
        api.create_namespaced_event(ns, {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{name}."},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns,
                               "uid": pod["metadata"]["uid"], "fieldPath": "spec.containers{app}"},
            "reason": "Failed", "type": "Warning", "message": message,
            "source": {"component": "kubelet", "host": NODE},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        })
    waiting = {"state": {"waiting": {"reason": reason, "message": message.split(": ", 1)[-1]}},
               "name": "app", "image": image, "imageID": "", "ready": False, "restartCount": 0}
    key = "initContainerStatuses" if init else "containerStatuses"
    status: dict[str, Any] = {"phase": "Pending", key: [waiting]}
    if init:
        status["containerStatuses"] = [{"name": "main", "image": "pause:ok", "imageID": "", "ready": False,
                                        "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]
    api.patch_namespaced_pod_status(name, ns, {"status": status})


def recover(api: Any, ns: str, name: str, image: str) -> None:
    api.patch_namespaced_pod_status(name, ns, {"status": {"phase": "Running", "containerStatuses": [
        {"name": "app", "image": image, "imageID": "sha256:x", "ready": True, "restartCount": 0,
         "state": {"running": {"startedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}}}]}})


def annotations(api: Any, ns: str, name: str) -> dict[str, str]:
    return dict(api.read_namespaced_pod(name, ns).metadata.annotations or {})


