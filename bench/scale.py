"""Failing pods at scale: latency, API requests per pod, operator CPU and memory.

Starts the test world and the local control plane, then the operator (as shipped:
``--all-namespaces --pod-interval 60``), and plays kubelet for N pods spread over NS
namespaces and IMAGES distinct missing images: the ``Failed`` Event, then the
``ErrImagePull`` waiting state (text recorded from containerd), written at about RATE
pods per second from a few threads.

Two scenarios:

* ``live``: the operator runs while the pods fail. Printed: the time from the LAST status
  write to the last annotation seen, and per pod (status written -> annotation seen)
  p50/p99.
* ``restart``: N more failing pods are written while the operator is stopped; the time
  from its start (process spawn) to the last of them annotated.

For each: the API requests the operator made, read from the API server's own
``apiserver_request_total`` (the driver's own requests, which it counts, are subtracted),
per failing pod by verb and resource; the operator's CPU seconds (and cores busy) and
RSS (current, peak). Figures only: nothing is asserted.

    .venv/bin/python bench/scale.py [--pods N] [--namespaces NS] [--images IMAGES] [--rate R]
                                     [--scenario live|restart|both] [-- operator flags...]

Defaults: 1000 pods, 100 namespaces, 10 images, 50 pods/s. Loopback only; bounded
(<= 5000 pods).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests")]

import kubernetes  # noqa: E402

from pullhealth_dev import cluster as devcluster  # noqa: E402
from support import guard  # noqa: E402
from support.kubelet import kubelet_message  # noqa: E402
from support.operatorproc import OperatorProcess  # noqa: E402
from support.world import World, start_world  # noqa: E402

NODE = "bench-node"
ANNOTATION = "pullhealth.io/diagnosis"
LABEL = "pullhealth-bench"
MAX_PODS = 5000
# (verb, group/resource[/subresource]) keys of apiserver_request_total.
Key = tuple[str, str]


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def api_requests(api: Any) -> Counter[Key]:
    """``apiserver_request_total`` summed over codes, scopes and versions."""
    method, url, headers, body, post = api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    response = api.call_api(method, url, headers, body, post, _request_timeout=30)
    text = response.read().decode()
    out: Counter[Key] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
        labels = dict(part.split("=", 1) for part in labels_text.split(",") if "=" in part)
        labels = {k: v.strip('"') for k, v in labels.items()}
        resource = labels.get("resource", "")
        if not resource:
            continue  # /metrics, /readyz and other non-resource paths
        group = labels.get("group", "")
        what = (f"{group}/" if group else "") + resource
        if labels.get("subresource"):
            what += "/" + labels["subresource"]
        out[(labels.get("verb", ""), what)] += int(float(value))
    return out


class Proc:
    """CPU seconds and memory of a process from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mb(self) -> tuple[float, float]:
        """(RSS, peak RSS) in MB."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
        return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


@dataclass
class Driver:
    """Plays kubelet for many pods and counts its own API requests."""

    core: Any
    world: World
    images: int
    sent: Counter[Key] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, verb: str, what: str, n: int = 1) -> None:
        with self.lock:
            self.sent[(verb, what)] += n

    def namespaces(self, prefix: str, count: int) -> list[str]:
        names = [f"{prefix}-{i}" for i in range(count)]
        for ns in names:
            self.core.create_namespace({"metadata": {"name": ns}})
            self.count("POST", "namespaces")
        return names

    def image(self, i: int) -> str:
        return f"{self.world.anon}/team/app:bench-missing-{i % self.images}"

    def create(self, ns: str, name: str, image: str) -> dict[str, Any]:
        pod = self.core.create_namespaced_pod(
            ns,
            {
                "metadata": {"name": name, "labels": {LABEL: "1"}},
                "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": image}]},
            },
        )
        self.count("POST", "pods")
        return {"name": name, "uid": pod.metadata.uid}

    def fail(
        self, ns: str, pod: dict[str, Any], image: str, reason: str = "ErrImagePull", event: bool = True
    ) -> None:
        """kubelet's Failed Event (core/v1), then the waiting state."""
        message = kubelet_message("tag_not_found", image)
        if event:
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.core.create_namespaced_event(
                ns,
                {
                    "metadata": {"generateName": f"{pod['name']}."},
                    "involvedObject": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": pod["name"],
                        "namespace": ns,
                        "uid": pod["uid"],
                        "fieldPath": "spec.containers{app}",
                    },
                    "reason": "Failed",
                    "type": "Warning",
                    "message": message,
                    "source": {"component": "kubelet", "host": NODE},
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                },
            )
            self.count("POST", "events")
        self.core.patch_namespaced_pod_status(
            pod["name"],
            ns,
            {
                "status": {
                    "phase": "Pending",
                    "containerStatuses": [
                        {
                            "name": "app",
                            "image": image,
                            "imageID": "",
                            "ready": False,
                            "restartCount": 0,
                            "state": {"waiting": {"reason": reason, "message": message.split(": ", 1)[-1]}},
                        }
                    ],
                }
            },
        )
        self.count("PATCH", "pods/status")

    def create_failing(self, namespaces: list[str], n: int, rate: float, prefix: str) -> dict[str, float]:
        """N failing pods round-robin over the namespaces, paced; name -> time written."""
        written: dict[str, float] = {}
        start = time.monotonic()

        def one(i: int) -> None:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ns, image = namespaces[i % len(namespaces)], self.image(i)
            pod = self.create(ns, f"{prefix}{i}", image)
            self.fail(ns, pod, image)
            written[f"{ns}/{prefix}{i}"] = time.monotonic()

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(one, range(n)))
        return written


class Annotations:
    """A watch on every bench pod: when each was first seen annotated."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            w = kubernetes.watch.Watch()
            with contextlib.suppress(Exception):
                for event in w.stream(
                    self.core.list_pod_for_all_namespaces, label_selector=LABEL, timeout_seconds=60
                ):
                    pod = event["object"]
                    key = f"{pod.metadata.namespace}/{pod.metadata.name}"
                    if (pod.metadata.annotations or {}).get(ANNOTATION) and key not in self.seen:
                        self.seen[key] = time.monotonic()
                    if self._stop.is_set():
                        w.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[Annotations]:
        self._thread.start()
        time.sleep(0.5)
        try:
            yield self
        finally:
            self._stop.set()

    def wait(self, keys: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(k not in self.seen for k in keys):
            time.sleep(0.1)


# Requests other components make meanwhile (the controller manager's leases, node status,
# each new namespace's default ServiceAccount and root CA ConfigMap; admission's
# LimitRange lookups when pods are created): never the operator's.
NOT_OURS = frozenset({"coordination.k8s.io/leases", "limitranges", "nodes/status"})
NOT_OURS_CALLS = frozenset({("PATCH", "nodes"), ("POST", "serviceaccounts"), ("POST", "configmaps")})


def operator_delta(before: Counter[Key], after: Counter[Key], driver: Counter[Key]) -> Counter[Key]:
    """The operator's requests: the API server's count minus the driver's own and the watches
    the bench itself holds (list/watch of pods: the annotation watch)."""
    out: Counter[Key] = Counter()
    for key in set(after) | set(before):
        n = after[key] - before[key] - driver[key]
        if n > 0 and key[1] not in NOT_OURS and key not in NOT_OURS_CALLS:
            out[key] = n
    return out


def print_requests(title: str, requests: Counter[Key], pods: int) -> None:
    total = sum(n for (verb, _), n in requests.items() if verb != "WATCH")
    print(f"  {title}: {total} requests (watches excluded) = {total / max(pods, 1):.2f} per failing pod")
    for (verb, what), n in sorted(requests.items(), key=lambda kv: -kv[1]):
        print(f"    {verb:<7} {what:<34} {n:>7} {n / max(pods, 1):>7.2f}/pod")


def scenario(
    name: str, args: argparse.Namespace, world: World, cluster: Any, api: Any, core: Any, tmp: Path
) -> None:
    driver = Driver(core, world, args.images)
    op = OperatorProcess(cluster.kubeconfig, world, tmp / f"operator-{name}.log", args.operator_args)
    watcher = Annotations(core)
    # The watcher's own list+watch requests happen before `before` is read.
    with watcher.running():
        namespaces = driver.namespaces(f"{name}", args.namespaces)
        live = 0.0
        if name == "live":
            op.start()
            proc = Proc(op.proc.pid if op.proc else 0)
            before, cpu0 = api_requests(api), proc.cpu()
            driver.sent.clear()
            t0 = time.monotonic()
            written = driver.create_failing(namespaces, args.pods, args.rate, "p")
            last_write = max(written.values())
            watcher.wait(list(written), args.timeout)
            origin = last_write
        else:
            written = driver.create_failing(namespaces, args.pods, args.rate, "r")
            time.sleep(1.0)
            before = api_requests(api)
            driver.sent.clear()
            t0 = time.monotonic()
            op.start()
            live = time.monotonic()
            proc = Proc(op.proc.pid if op.proc else 0)
            cpu0 = 0.0
            watcher.wait(list(written), args.timeout)
            origin = t0
        done = [watcher.seen[k] for k in written if k in watcher.seen]
        elapsed = max(done) - t0 if done else float("nan")
        time.sleep(1.0)  # the last writes are counted
        after = api_requests(api)
        cpu = proc.cpu() - cpu0
        rss, peak = proc.memory_mb()
        op.stop()
    latencies = [watcher.seen[k] - written[k] for k in written if k in watcher.seen]
    print(
        f"\n[{name}] {args.pods} failing pods, {args.namespaces} namespaces, {args.images} images, "
        f"written at ~{args.rate:g} pods/s; annotated {len(done)}/{len(written)}"
    )
    if name == "live":
        print(
            f"  last annotation {max(done) - origin if done else float('nan'):.2f} s after the last "
            "status write; "
            f"per pod p50 {pct(latencies, 0.5):.2f} s, p99 {pct(latencies, 0.99):.2f} s, "
            f"max {max(latencies) if latencies else float('nan'):.2f} s"
        )
    else:
        first, last = (min(done) - origin, max(done) - origin) if done else (float("nan"), float("nan"))
        print(
            f"  all annotated {last:.2f} s after the operator's spawn "
            f"(live after {live - origin:.2f} s, first annotation after {first:.2f} s)"
        )
    print(
        f"  operator: {cpu:.1f} CPU s over {elapsed:.1f} s ({cpu / max(elapsed, 0.001):.2f} cores), "
        f"RSS {rss:.0f} MB (peak {peak:.0f} MB)"
    )
    print_requests("API requests by the operator", operator_delta(before, after, driver.sent), args.pods)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50.0, help="pods written per second")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--scenario", choices=("live", "restart", "both"), default="both")
    parser.add_argument("operator_args", nargs="*", help="more `pullhealth run` flags (after --)")
    args = parser.parse_args(argv)
    args.pods = max(1, min(args.pods, MAX_PODS))
    args.namespaces = max(1, min(args.namespaces, args.pods))
    args.images = max(1, min(args.images, args.pods))
    return args


@contextlib.contextmanager
def bench_cluster() -> Iterator[tuple[World, Any, Any, Any, Path]]:
    """World, control plane (with the bench Node), admin ApiClient, CoreV1Api, temp dir."""
    guard.install()
    # SIGTERM (timeout, Ctrl-C in a wrapper) unwinds: the world and the cluster are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="pullhealth-bench-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        world = start_world(stack, tmp / "world")
        cluster = stack.enter_context(devcluster.DevCluster(tmp / "cluster", devcluster.find_binaries()))
        api = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        api.configuration.connection_pool_maxsize = 8
        core = kubernetes.client.CoreV1Api(api)
        core.create_node(
            {
                "metadata": {
                    "name": NODE,
                    "labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"},
                }
            }
        )
        yield world, cluster, api, core, tmp


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    args = parse_args(argv)
    with bench_cluster() as (world, cluster, api, core, tmp):
        for name in ("live", "restart"):
            if args.scenario in (name, "both"):
                scenario(name, args, world, cluster, api, core, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
