"""Placement at scale: CPU of the platforms a workload pass computes, with and without reuse.

Every workload check (and every admitted pod spec) needs the platforms of the nodes its
pods may land on: one pass over every Node (labels, then taints against the tolerations).
With NODES nodes and WORKLOADS workloads that is NODES x WORKLOADS node evaluations per
pass when each check computes it (the baseline), and one pass over the nodes per distinct
placement pattern (``placement.placement_inputs``) when the Node mirror reuses the answers
(``kube.watchcache.node_platforms``, through ``Mirror.derived``) until a Node's labels or taints change.

The nodes are AKS-shaped (ten pools, one a tainted spot pool, one arm64, one Windows
tainted ``os=windows:NoSchedule``); the workloads use PATTERNS placements (none, a pool
selector, an arch selector, tolerations) in turn. Printed per pass: seconds of CPU,
node evaluations, and the answers compared (they must agree). Pure Python, no cluster.

    .venv/bin/python bench/placement.py [--nodes N] [--workloads N] [--heartbeats N]

Defaults: 1000 nodes, 10000 workloads; --heartbeats Node status updates are delivered
between two passes (they change nothing kept: the second pass reuses every answer).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator")]

from pullhealth.domain import placement  # noqa: E402
from pullhealth.kube import watchcache  # noqa: E402
from pullhealth.kube.watchcache import Mirror, node_placement  # noqa: E402

SPOT = {"key": "kubernetes.azure.com/scalesetpriority", "value": "spot", "effect": "NoSchedule"}
WINDOWS = {"key": "os", "value": "windows", "effect": "NoSchedule"}
PATTERNS: list[dict[str, Any]] = [
    {},
    {"nodeSelector": {"agentpool": "pool3"}},
    {"nodeSelector": {"kubernetes.io/arch": "arm64"}},
    {"tolerations": [{**SPOT, "operator": "Equal"}]},
    {"tolerations": [{"key": "os", "operator": "Exists"}], "nodeSelector": {"kubernetes.io/os": "windows"}},
    {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "agentpool", "operator": "In", "values": ["pool1", "pool2"]}]}]}}}},
]


def node(i: int, heartbeat: str = "t0") -> dict[str, Any]:
    pool = i % 10
    os_name, arch = ("windows", "amd64") if pool == 9 else ("linux", "arm64" if pool == 8 else "amd64")
    taints = [SPOT] if pool == 3 else [WINDOWS] if pool == 9 else []
    return {"metadata": {"name": f"aks-pool{pool}-{i:05d}", "uid": f"u{i}", "labels": {
                "kubernetes.io/os": os_name, "kubernetes.io/arch": arch, "agentpool": f"pool{pool}",
                "kubernetes.azure.com/agentpool": f"pool{pool}", "kubernetes.io/hostname": f"aks-{i:05d}",
                "topology.kubernetes.io/zone": f"westeurope-{pool % 3 + 1}"}},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "lastHeartbeatTime": heartbeat}]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--workloads", type=int, default=10000)
    parser.add_argument("--heartbeats", type=int, default=1000)
    args = parser.parse_args()
    nodes, workloads = min(args.nodes, 20000), min(args.workloads, 100000)
    mirror = Mirror(node_placement)
    mirror.listed = lambda: True
    for i in range(nodes):
        mirror.deliver("LISTED", node(i))
    specs = [PATTERNS[w % len(PATTERNS)] for w in range(workloads)]
    evaluated = [0]
    listing = mirror.objects

    def counted() -> list[Any]:
        """The Nodes a computation goes through (each one is evaluated)."""
        found = listing()
        evaluated[0] += len(found)
        return found

    mirror.objects = counted  # type: ignore[method-assign]
    started = time.process_time()
    baseline = [placement.node_platforms(counted(), spec, "linux/amd64") for spec in specs]
    base_cpu, base_nodes = time.process_time() - started, evaluated[0]
    print(f"{nodes} nodes, {workloads} workloads, {len(PATTERNS)} placement patterns")
    print(f"{'pass':<34}{'CPU s':>8}{'node evaluations':>18}")
    print(f"{'baseline: computed per check':<34}{base_cpu:>8.2f}{base_nodes:>18}")
    for label in ("reused: first pass", f"reused: after {args.heartbeats} heartbeats"):
        evaluated[0] = 0
        started = time.process_time()
        answers = [watchcache.node_platforms(mirror, s, "linux/amd64") for s in specs]
        print(f"{label:<34}{time.process_time() - started:>8.2f}{evaluated[0]:>18}")
        assert answers == baseline, "reused answers differ from the computed ones"
        for h in range(args.heartbeats):
            mirror.deliver("MODIFIED", node(h % nodes, heartbeat=f"t{h + 1}"))
    print("answers: identical to the baseline")


if __name__ == "__main__":
    main()
