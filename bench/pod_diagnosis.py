"""Diagnosis latency and registry load for N failing pods: coalesced vs naive.

Starts the test world (real docker-registry, token service, dnsmasq), the local control
plane, and the operator twice: as shipped (``--pod-interval 60``: one probe chain per
registry+credential+image per interval) and naive (``--pod-interval 0``: every pod probes
on its own, still at most 4 chains at once per registry). For each run it creates N pods
bound to a Node, writes the kubelet-style failing status (text recorded from containerd)
and measures, per pod, the time from the status write to the diagnosis annotation
(seen through a watch), plus the HTTP requests the operator sent to the registry.

    .venv/bin/python bench/pod_diagnosis.py [N] [IMAGES]

N defaults to 100 pods, IMAGES (distinct failing images the pods are spread over) to 1.
Loopback only; bounded in pods (<= 500) and time.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests")]

import kubernetes  # noqa: E402

from pullhealth_dev import cluster as devcluster  # noqa: E402
from support import guard  # noqa: E402
from support.operatorproc import OperatorProcess  # noqa: E402
from support.world import World, start_world  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "containerd_messages.jsonl"
NODE = "bench-node"
ANNOTATION = "pullhealth.io/diagnosis"


def message_for(image: str) -> str:
    for line in CORPUS.read_text().splitlines():
        row = json.loads(line)
        if row.get("mode") == "tag_not_found" and row.get("wrapping") == "kubelet-1.28":
            return str(row["text"]).replace(str(row["ref"]), image)
    raise SystemExit("corpus row missing")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(
    core: Any, world: World, kubeconfig: Path, tmp: Path, mode: str, n: int, images: int
) -> dict[str, Any]:
    ns = f"bench-{mode}"
    core.create_namespace({"metadata": {"name": ns}})
    op = OperatorProcess(kubeconfig, world, tmp / f"operator-{mode}.log",
                         ["--pod-interval", "60" if mode == "coalesced" else "0"])
    op.start()
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        w = kubernetes.watch.Watch()
        for event in w.stream(core.list_namespaced_pod, ns, timeout_seconds=300):
            pod = event["object"]
            if (pod.metadata.annotations or {}).get(ANNOTATION) and pod.metadata.name not in seen:
                seen[pod.metadata.name] = time.monotonic()
            if stop.is_set() or len(seen) >= n:
                w.stop()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.5)
    try:
        before = op.probe_requests(world.anon)
        written: dict[str, float] = {}
        for i in range(n):
            image = f"{world.anon}/team/app:bench-missing-{i % images}"
            name = f"p{i}"
            core.create_namespaced_pod(ns, {"metadata": {"name": name}, "spec": {
                "nodeName": NODE, "containers": [{"name": "app", "image": image}]}})
            written[name] = time.monotonic()
            core.patch_namespaced_pod_status(name, ns, {"status": {"phase": "Pending", "containerStatuses": [{
                "name": "app", "image": image, "imageID": "", "ready": False, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull", "message": message_for(image)}}}]}})
        deadline = time.monotonic() + 300
        while len(seen) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        latencies = [(seen[p] - written[p]) * 1000 for p in written if p in seen]
        requests = op.probe_requests(world.anon) - before
    finally:
        stop.set()
        op.stop()
    return {"mode": mode, "pods": n, "diagnosed": len(latencies), "p50_ms": pct(latencies, 0.5),
            "p99_ms": pct(latencies, 0.99), "max_ms": max(latencies) if latencies else float("nan"),
            "registry_requests": requests}


def main() -> int:
    n = max(1, min(int(sys.argv[1]) if len(sys.argv) > 1 else 100, 500))
    images = max(1, min(int(sys.argv[2]) if len(sys.argv) > 2 else 1, n))
    guard.install()
    with tempfile.TemporaryDirectory(prefix="pullhealth-bench-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        world = start_world(stack, tmp / "world")
        cluster = stack.enter_context(devcluster.DevCluster(tmp / "cluster", devcluster.find_binaries()))
        api = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core = kubernetes.client.CoreV1Api(api)
        core.create_node({"metadata": {"name": NODE}})
        rows = [run(core, world, cluster.kubeconfig, tmp, mode, n, images) for mode in ("coalesced", "naive")]
    print(f"{n} failing pods over {images} image(s); latency = status written -> annotation seen")
    header = f"{'mode':<10} {'diagnosed':>9} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}"
    print(f"{header} {'registry requests':>18}")
    for r in rows:
        latency = f"{r['p50_ms']:>9.1f} {r['p99_ms']:>9.1f} {r['max_ms']:>9.1f}"
        print(f"{r['mode']:<10} {r['diagnosed']:>9} {latency} {r['registry_requests']:>18.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
