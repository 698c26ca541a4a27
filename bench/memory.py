"""Operator memory with many pods: RSS while pods are created, peak RSS when it (re)starts.

Starts the test world and the local control plane and writes pods the way a busy cluster
holds them: most Running (a container status, conditions, a few labels, env and
resources, like a Deployment's pod), one in a hundred failing to pull. Two scenarios:

* ``live``: the operator runs while the pods are written; its RSS is printed at each
  step (default 1000, 5000, 10000 pods) once the API server is quiet again.
* ``restart``: the operator is started against all the pods already there; printed: its
  peak RSS (VmHWM), its RSS once it settled, and how long until every failing pod was
  annotated.

Figures only: nothing is asserted.

    .venv/bin/python bench/memory.py [--steps 1000,5000,10000] [--failing-every 100]
                                     [--scenario live|restart|both]

Loopback only; bounded (<= 20000 pods).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pullhealth.pods import podcheck
from scale import NODE, Proc, bench_cluster
from support.kubelet import kubelet_message
from support.operatorproc import OperatorProcess

MAX_PODS = 20_000
NAMESPACES = 50
ANNOTATION = podcheck.ANN_DIAGNOSIS
FAILING_LABEL = "pullhealth-bench-failing"


def pod_body(name: str, image: str, fails: bool) -> dict[str, Any]:
    """A Deployment-like pod: labels, an owner-like label set, env, resources, probes."""
    body: dict[str, Any] = {
        "metadata": {
            "name": name,
            "labels": {"app": name.rsplit("-", 1)[0], "pod-template-hash": "5d8f7c9b4", "tier": "backend",
                       "pullhealth-bench-memory": "1"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-30T00:00:00Z"},
        },
        "spec": {
            "nodeName": NODE,
            "containers": [{
                "name": "app",
                "image": image,
                "env": [{"name": f"SETTING_{i}", "value": f"value-{i}"} for i in range(8)],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "500m", "memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                "ports": [{"containerPort": 8080, "name": "http"}],
            }],
        },
    }
    if fails:
        body["metadata"]["labels"][FAILING_LABEL] = "1"
    return body


def running_status(image: str) -> dict[str, Any]:
    now = "2026-11-30T00:00:00Z"
    return {"status": {
        "phase": "Running", "podIP": "10.244.1.7", "hostIP": "10.224.0.4", "startTime": now,
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                       for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
        "containerStatuses": [{"name": "app", "image": image, "imageID": f"{image}@sha256:{'a' * 64}",
                               "ready": True, "restartCount": 0, "started": True,
                               "containerID": f"containerd://{'b' * 64}",
                               "state": {"running": {"startedAt": now}}}],
    }}


def failing_status(image: str) -> dict[str, Any]:
    message = kubelet_message("tag_not_found", image).split(": ", 1)[-1]
    return {"status": {"phase": "Pending", "containerStatuses": [{
        "name": "app", "image": image, "imageID": "", "ready": False, "restartCount": 0,
        "state": {"waiting": {"reason": "ErrImagePull", "message": message}}}]}}


class Writer:
    """Writes pods ``[start, stop)`` over the bench namespaces; every Nth one fails."""

    def __init__(self, core: Any, anon: str, failing_every: int) -> None:
        self.core = core
        self.anon = anon
        self.failing_every = failing_every
        self.failing: list[tuple[str, str]] = []

    def write(self, start: int, stop: int) -> None:
        def one(i: int) -> None:
            ns, name = f"mem-{i % NAMESPACES}", f"svc{i % 40}-{i}"
            fails = self.failing_every > 0 and i % self.failing_every == 0
            image = f"{self.anon}/team/app:{'missing-' if fails else ''}{i % 10}"
            self.core.create_namespaced_pod(ns, pod_body(name, image, fails), _preload_content=False).read()
            status = failing_status(image) if fails else running_status(image)
            self.core.patch_namespaced_pod_status(name, ns, status, _preload_content=False).read()
            if fails:
                self.failing.append((ns, name))

        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(one, range(start, stop)))


def annotated(core: Any) -> int:
    """Failing bench pods that carry the diagnosis annotation (one list, by label)."""
    items = core.list_pod_for_all_namespaces(label_selector=FAILING_LABEL).items
    return sum(1 for p in items if (p.metadata.annotations or {}).get(ANNOTATION))


def settle(proc: Proc, seconds: float = 5.0, limit: float = 120.0) -> float:
    """Wait until the operator's CPU use stops growing (< 5% of a core over ``seconds``)."""
    deadline = time.monotonic() + limit
    last = proc.cpu()
    while time.monotonic() < deadline:
        time.sleep(seconds)
        now = proc.cpu()
        if now - last < 0.05 * seconds:
            break
        last = now
    return proc.memory_mb()[0]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", default="1000,5000,10000", help="pod counts at which RSS is printed")
    parser.add_argument("--failing-every", type=int, default=100, help="one failing pod in N (0: none)")
    parser.add_argument("--scenario", choices=("live", "restart", "both"), default="both")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    args.steps = sorted({max(1, min(int(s), MAX_PODS)) for s in args.steps.split(",") if s.strip()})
    return args


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    args = parse_args(argv)
    with bench_cluster() as (world, cluster, _api, core, tmp):
        for i in range(NAMESPACES):
            core.create_namespace({"metadata": {"name": f"mem-{i}"}})
        writer = Writer(core, world.anon, args.failing_every)
        op = OperatorProcess(cluster.kubeconfig, world, tmp / "operator-live.log")
        written = 0
        if args.scenario in ("live", "both"):
            op.start()
            proc = Proc(op.proc.pid if op.proc else 0)
            print(f"[live] operator started: RSS {settle(proc):.0f} MB")
            for step in args.steps:
                t0 = time.monotonic()
                writer.write(written, step)
                wrote = time.monotonic() - t0
                rss = settle(proc)
                print(f"[live] {step} pods ({len(writer.failing)} failing; written in {wrote:.0f} s): "
                      f"RSS {rss:.0f} MB (peak {proc.memory_mb()[1]:.0f} MB), "
                      f"{annotated(core)} annotated, {proc.cpu():.0f} CPU s so far")
                written = step
            op.stop()
        else:
            writer.write(0, args.steps[-1])
            written = args.steps[-1]
        if args.scenario in ("restart", "both"):
            # The live run's annotations are removed, so the restart has the failing pods to do.
            for ns, name in writer.failing:
                core.patch_namespaced_pod(name, ns, {"metadata": {"annotations": {
                    key: None for key in podcheck.ANNOTATIONS}}}, _preload_content=False).read()
            op = OperatorProcess(cluster.kubeconfig, world, tmp / "operator-restart.log")
            t0 = time.monotonic()
            op.start()
            proc = Proc(op.proc.pid if op.proc else 0)
            deadline = t0 + args.timeout
            while time.monotonic() < deadline and annotated(core) < len(writer.failing):
                time.sleep(1.0)
            done = time.monotonic() - t0
            rss = settle(proc)
            print(f"[restart] against {written} pods ({len(writer.failing)} failing): every failing pod "
                  f"annotated {done:.1f} s after the spawn; RSS peak {proc.memory_mb()[1]:.0f} MB, "
                  f"settled {rss:.0f} MB, {proc.cpu():.0f} CPU s")
            op.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
