"""What the node agent costs on one node: RSS and CPU of ``pullhealth agent``.

Starts the test world (real docker-registry, dnsmasq), the local control plane and one
agent process for a Node. Measures the agent's resident memory (VmRSS, peak VmHWM) and
CPU time (utime + stime from /proc) in three phases:

1. idle for IDLE seconds (no failing pod on the node: the watch only);
2. N pods failing on the node, spread over REGISTRIES registries (the world's, each with
   distinct image names): until every pod has its NodePathChecked Event;
3. steady state for IDLE seconds with the pods still failing (kubelet back-off updates
   every 10 s per pod re-deliver them; results are reused for the interval).

    .venv/bin/python bench/agent_cost.py [N] [IDLE]

N defaults to 100 pods, IDLE to 60 seconds. Loopback only; bounded (N <= 500).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests")]

import kubernetes  # noqa: E402

from pullhealth_dev import cluster as devcluster  # noqa: E402
from support import guard  # noqa: E402
from support.world import start_world  # noqa: E402

NODE = "bench-agent-node"
TICK = os.sysconf("SC_CLK_TCK")


def usage(pid: int) -> dict[str, float]:
    """CPU seconds so far and memory (MiB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines if ":" in line)
    kib = {k: float(status[k].split()[0]) for k in ("VmRSS", "VmHWM")}
    return {"cpu_s": cpu, "rss_mib": kib["VmRSS"] / 1024, "peak_rss_mib": kib["VmHWM"] / 1024}


def failing(core: Any, ns: str, name: str, image: str) -> None:
    pod = core.create_namespaced_pod(ns, {"metadata": {"name": name}, "spec": {
        "nodeName": NODE, "containers": [{"name": "app", "image": image}]}})
    backoff(core, ns, pod.metadata.name, image, "ImagePullBackOff")


def backoff(core: Any, ns: str, name: str, image: str, reason: str) -> None:
    """kubelet's status update of a pod failing its pull (ErrImagePull <-> ImagePullBackOff)."""
    waiting = {"reason": reason, "message": f'Back-off pulling image "{image}"'}
    core.patch_namespaced_pod_status(name, ns, {"status": {"phase": "Pending", "containerStatuses": [
        {"name": "app", "image": image, "imageID": "", "ready": False, "restartCount": 0,
         "state": {"waiting": waiting}}]}})


def main() -> None:
    n = min(int(sys.argv[1]) if len(sys.argv) > 1 else 100, 500)
    idle = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    guard.install()
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        world = start_world(stack, tmp / "world")
        cluster = devcluster.DevCluster(tmp / "cluster", devcluster.find_binaries())
        cluster.start()
        stack.callback(cluster.stop)
        client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core = kubernetes.client.CoreV1Api(client)
        core.create_node({"metadata": {"name": NODE, "labels": {"kubernetes.io/os": "linux"}}})
        core.create_namespace({"metadata": {"name": "bench"}})
        log = (tmp / "agent.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pullhealth", "agent", "--node", NODE, "--nameserver", world.nameserver,
             "--ca-bundle", str(world.ca_bundle), "--certs-dir", str(tmp / "certs.d"),
             "--allow-cidr", "127.0.0.0/8", "--interval", "300"],
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONPATH": str(ROOT / "operator")},
            stdout=log, stderr=subprocess.STDOUT,
        )
        stack.callback(lambda: (proc.terminate(), proc.wait(timeout=20)))
        # Start-up (imports, the first list) is not idle time: wait for its log line, then 10 s.
        while b"checking the pull path" not in (tmp / "agent.log").read_bytes():
            time.sleep(0.5)
        time.sleep(10)
        print("agent started; idle phase", file=sys.stderr, flush=True)
        start = usage(proc.pid)
        time.sleep(idle)
        after_idle = usage(proc.pid)
        print("burst phase", file=sys.stderr, flush=True)
        registries = [world.anon, world.basic, world.acr, world.privatelink, world.untrusted, world.missing]
        began = time.monotonic()
        for i in range(n):
            failing(core, "bench", f"p{i}", f"{registries[i % len(registries)]}/team/app{i}:v1")
        while True:
            events = core.list_namespaced_event("bench", field_selector="reason=NodePathChecked").items
            if len({e.involved_object.uid for e in events}) >= n or time.monotonic() - began > 300:
                break
            time.sleep(1)
        reported = time.monotonic() - began
        print(f"burst done in {reported:.1f}s; steady phase", file=sys.stderr, flush=True)
        after_burst = usage(proc.pid)
        deadline = time.monotonic() + idle
        flip = 0
        while time.monotonic() < deadline:  # kubelet's back-off: every pod updated each 10 s
            flip += 1
            for i in range(n):
                image = f"{registries[i % len(registries)]}/team/app{i}:v1"
                backoff(core, "bench", f"p{i}", image, ("ErrImagePull", "ImagePullBackOff")[flip % 2])
            time.sleep(10)
        end = usage(proc.pid)
        print(json.dumps({
            "pods": n,
            "registries": len(registries),
            "idle_cpu_ms_per_min": round((after_idle["cpu_s"] - start["cpu_s"]) * 60000 / idle, 1),
            "idle_rss_mib": round(after_idle["rss_mib"], 1),
            "burst_seconds_to_all_events": round(reported, 1),
            "burst_cpu_s": round(after_burst["cpu_s"] - after_idle["cpu_s"], 2),
            "steady_cpu_ms_per_min": round((end["cpu_s"] - after_burst["cpu_s"]) * 60000 / idle, 1),
            "rss_mib": round(end["rss_mib"], 1),
            "peak_rss_mib": round(end["peak_rss_mib"], 1),
            "events": len(core.list_namespaced_event("bench", field_selector="reason=NodePathChecked").items),
        }, indent=2))


if __name__ == "__main__":
    main()
