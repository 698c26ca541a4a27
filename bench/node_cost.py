"""What the real node of ``pullhealth-dev cluster up --node`` costs: bring-up time and RSS.

Starts the local control plane with the node (kube-scheduler, the node's dnsmasq, containerd,
kubelet) ROUNDS times in a temporary directory. For each round it prints the time until
the API server is ready and until the node is Ready, then, after IDLE seconds idle, the
resident memory (VmRSS) of each node component, then how long ``down`` takes.

    .venv/bin/python bench/node_cost.py [ROUNDS] [IDLE]

ROUNDS defaults to 3, IDLE to 20 seconds. Loopback only; bounded (ROUNDS <= 10).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from pullhealth_dev import cluster as devcluster
from pullhealth_dev import node as realnode

COMPONENTS = (realnode.KUBE_SCHEDULER, realnode.NODE_DNS, realnode.CONTAINERD, realnode.KUBELET)


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def one_round(root: Path, idle: float) -> dict[str, float]:
    cluster = devcluster.DevCluster(root, devcluster.find_binaries(), node=True)
    started = time.monotonic()
    try:
        cluster.start()
        ready = time.monotonic() - started
        time.sleep(idle)
        figures = {"up --node until Ready (s)": ready}
        for name in COMPONENTS:
            figures[f"{name} RSS (MiB)"] = rss_mib(cluster.pids[name])
    finally:
        stopping = time.monotonic()
        cluster.stop()
    figures["down (s)"] = time.monotonic() - stopping
    return figures


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 3
    idle = float(argv[1]) if len(argv) > 1 else 20.0
    if not 1 <= rounds <= 10:
        print("ROUNDS must be 1..10", file=sys.stderr)
        return 2
    results = []
    for n in range(rounds):
        with tempfile.TemporaryDirectory(prefix="pullhealth-bench-node-") as tmp:
            results.append(one_round(Path(tmp), idle))
        print(f"round {n + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in results[-1].items()), flush=True)
    print("\nmedian over", rounds, "rounds:")
    for key in results[0]:
        values = sorted(r[key] for r in results)
        print(f"  {key:<28} {values[len(values) // 2]:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
