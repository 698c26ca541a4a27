"""Admission latency and registry load: the real API server calling the operator's webhook.

Starts the test world (real docker-registry, dnsmasq), the local control plane and the
operator serving the webhook (certificate generated, CA injected), then sends Deployment
creates through the API server at a fixed rate (open loop; server-side dry run, so the
webhook answers every one and nothing is stored) and measures, per request, the time the
API server took to answer, and how many answers carried a warning. Phases:

- ``none``: no webhook registered (the API server's own cost, for comparison);
- ``warm``: the same few images over and over (answered from the shared cache);
- ``cold``: a new image tag per apply (a probe chain for each: the worst case);
- ``down``: the webhook registered, the operator stopped (fail-open: connection refused);
- ``hook-w``, ``hook-c``: warm and cold again, posted straight to the webhook (its own
  answer time without the API server's).

    .venv/bin/python bench/admission.py [--rate 50] [--seconds 8]

Registry requests per apply come from the operator's pullhealth_probe_requests_total.
Loopback only; bounded in rate (<= 200/s) and time.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests")]

import httpx  # noqa: E402
import kubernetes  # noqa: E402

from pullhealth_dev import cluster as devcluster  # noqa: E402
from support import guard  # noqa: E402
from support.objects import webhook_configuration  # noqa: E402
from support.operatorproc import OperatorProcess, free_port  # noqa: E402
from support.world import World, start_world  # noqa: E402

TIMEOUT_SECONDS = 5
NS = "bench-admission"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def deployment(name: str, image: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "b"}},
                     "template": {"metadata": {"labels": {"app": "b"}},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}}


def paced(rate: float, seconds: float, apply: Callable[[int], bool]) -> dict[str, Any]:
    """Calls ``apply(i)`` at ``rate``/s for ``seconds`` (64 in flight at most): latencies (ms),
    errors by kind, and the answers ``apply`` said carried a warning."""
    latencies: list[float] = []
    warned = errors = 0
    kinds: Counter[str] = Counter()
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal warned, errors
        started = time.monotonic()
        try:
            warning = apply(i)
        except Exception as exc:  # counted, not raised: the pool would swallow it
            with lock:
                errors += 1
                kinds[f"{type(exc).__name__} {getattr(exc, 'status', '')}".strip()] += 1
            return
        took = (time.monotonic() - started) * 1000
        with lock:
            latencies.append(took)
            warned += 1 if warning else 0

    total = int(rate * seconds)
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=64) as pool:
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i)
    if kinds:
        print(f"errors: {dict(kinds)}")
    return {"applies": total, "answered": len(latencies), "errors": errors, "warned": warned,
            "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99),
            "max": max(latencies, default=float("nan"))}


def phase(apps: Any, images: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """Deployment creates through the API server (server dry run)."""

    def apply(i: int) -> bool:
        body = deployment(f"d{i}-{uuid.uuid4().hex[:6]}", images[i % len(images)])
        reply = apps.create_namespaced_deployment(NS, body, dry_run="All", _preload_content=False)
        reply.release_conn()
        return bool(reply.headers.get("Warning"))

    return paced(rate, seconds, apply)


def direct(url: str, ca: str, images: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """AdmissionReviews posted straight to the webhook (its own answer time, no API server)."""
    context = ssl.create_default_context(cadata=ca)
    with httpx.Client(verify=context, timeout=10.0, limits=httpx.Limits(max_connections=64)) as http:

        def apply(i: int) -> bool:
            kind = {"group": "apps", "version": "v1", "kind": "Deployment"}
            review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
                "uid": str(i), "kind": kind, "namespace": NS, "operation": "CREATE",
                "object": deployment(f"d{i}", images[i % len(images)])}}
            return bool(http.post(url, json=review).json()["response"].get("warnings"))

        return paced(rate, seconds, apply)


def cold_images(world: World, rate: float, seconds: float) -> list[str]:
    """A new tag per apply: no cached result, a probe chain each."""
    run = uuid.uuid4().hex[:8]
    return [f"{world.anon}/team/app:cold-{run}-{i}" for i in range(int(rate * seconds))]


def requests(op: OperatorProcess, world: World) -> float:
    return sum(op.probe_requests(r) for r in (world.anon, world.basic, world.acr))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="applies per second (default 50)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per phase (default 8)")
    args = parser.parse_args()
    rate, seconds = max(1.0, min(args.rate, 200.0)), max(1.0, min(args.seconds, 60.0))
    guard.install()
    rows: list[tuple[str, dict[str, Any], float]] = []
    with tempfile.TemporaryDirectory(prefix="pullhealth-bench-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        world = start_world(stack, tmp / "world")
        cluster = stack.enter_context(devcluster.DevCluster(tmp / "cluster", devcluster.find_binaries()))
        client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        client.configuration.connection_pool_maxsize = 64
        client.rest_client.pool_manager.connection_pool_kw["maxsize"] = 64
        core, apps = kubernetes.client.CoreV1Api(client), kubernetes.client.AppsV1Api(client)
        admission = kubernetes.client.AdmissionregistrationV1Api(client)
        core.create_namespace({"metadata": {"name": NS}})
        core.create_node({"metadata": {"name": "bench-node", "labels": {
            "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}})
        healthy = f"{world.anon}/team/app:v1"
        phase(apps, [healthy], 10, 1)  # the API server's own warm-up
        rows.append(("none", phase(apps, [healthy], rate, seconds), 0.0))

        name, port = "bench-admission", free_port()
        admission.create_validating_webhook_configuration(webhook_configuration(name, port, TIMEOUT_SECONDS))
        op = OperatorProcess(cluster.kubeconfig, world, tmp / "operator.log", [
            "--admission-port", str(port), "--admission-bind-address", "127.0.0.1",
            "--admission-tls-secret", f"default/{name}-tls", "--admission-host", "127.0.0.1",
            "--admission-webhook-name", name])
        op.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            hooks = admission.read_validating_webhook_configuration(name).webhooks or []
            if all(h.client_config.ca_bundle for h in hooks):
                break
            time.sleep(0.2)
        # warm: a few images, each checked once before the phase.
        warm = [healthy, f"{world.anon}/team/app:v9", f"{world.anon}/multi/arm:1",
                f"{world.anon}/library/alpine:3.19"]
        time.sleep(3)  # the operator's own start-up (first listings) out of the figures
        phase(apps, warm, 10, 1)
        # hook-*: the webhook's own answer time, without the API server in between.
        secret = core.read_namespaced_secret(f"{name}-tls", "default").data or {}
        ca = base64.b64decode(secret["ca.crt"]).decode()
        url = f"https://127.0.0.1:{port}/validate?timeout={TIMEOUT_SECONDS}s"
        for label, images, via_api in (
            ("warm", warm, True), ("hook-w", warm, False),
            ("cold", cold_images(world, rate, seconds), True),
        ):
            before = requests(op, world)
            got = phase(apps, images, rate, seconds) if via_api else direct(url, ca, images, rate, seconds)
            rows.append((label, got, requests(op, world) - before))
            time.sleep(5)  # what a cold phase left queued drains before the next
        before = requests(op, world)
        rows.append(("hook-c", direct(url, ca, cold_images(world, rate, seconds), rate, seconds),
                     requests(op, world) - before))
        op.stop()
        rows.append(("down", phase(apps, [f"{world.anon}/team/app:v9"], rate, seconds), 0.0))
        text = op.text()
    print(f"Deployment creates (server dry run) through the API server at {rate:.0f}/s for {seconds:.0f} s "
          f"per phase; webhook timeoutSeconds {TIMEOUT_SECONDS}, budget 2 s")
    print(f"{'phase':<6} {'applies':>7} {'answered':>8} {'warned':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'registry req/apply':>19}")
    for label, r, reqs in rows:
        per = reqs / r["applies"] if r["applies"] else 0.0
        figures = f"{r['p50']:>8.1f} {r['p99']:>8.1f} {r['max']:>8.1f}"
        print(f"{label:<6} {r['applies']:>7} {r['answered']:>8} {r['warned']:>6} {figures} {per:>19.2f}")
    answered = text.count('"admission: ')
    print(f"operator log lines about admission: {answered}; secrets in the log: "
          f"{any(s in text for s in (world.basic_user[1], world.acr_puller[1]))}")
    print(json.dumps({label: {**r, "registry_requests": reqs} for label, r, reqs in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
