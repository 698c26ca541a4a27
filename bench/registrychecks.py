"""N RegistryChecks at rest: schedule wake-ups per second, checks run, CPU, RSS, API requests.

Starts the test world and the local control plane, creates N RegistryChecks (over NS
namespaces, all on the anonymous registry's existing image, ``intervalSeconds`` INTERVAL),
starts the operator, waits until every one has a status, then measures a rest window of
WINDOW seconds: the operator's schedule wake-ups (``pullhealth_registry_check_wakeups_total``)
and checks run (``pullhealth_registry_check_runs_total``) per second, its cores busy and RSS,
and the API requests it made (the API server's ``apiserver_request_total``). With one
sleeping task per RegistryCheck, wake-ups at rest are about N / INTERVAL a second.
Figures only: nothing is asserted.

    .venv/bin/python bench/registrychecks.py [--checks N] [--namespaces NS] [--interval S]
                                             [--window S]

Defaults: 1000 RegistryChecks, 10 namespaces, interval 60 s, window 90 s (a whole interval
and more: every check runs once or twice in it). Loopback only;
bounded (<= 5000 RegistryChecks).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes

from scale import ROOT, Proc, api_requests, bench_cluster, operator_delta
from support.operatorproc import OperatorProcess

CRD = ROOT / "crds" / "registrychecks.pullhealth.io.yaml"
MAX_CHECKS = 5000
GROUP, VERSION, PLURAL = "pullhealth.io", "v1alpha1", "registrychecks"


def metric_sum(text: str, name: str) -> float:
    """The sum of every series of ``name`` in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checks", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--interval", type=int, default=60)
    parser.add_argument("--window", type=float, default=90.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="bound of the wait for every status")
    args = parser.parse_args(argv)
    args.checks = max(1, min(args.checks, MAX_CHECKS))
    args.namespaces = max(1, min(args.namespaces, args.checks))
    args.interval = max(30, args.interval)
    return args


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    args = parse_args(argv)
    with bench_cluster() as (world, cluster, api, core, tmp):
        subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "apply", "-f", str(CRD)],
                       check=True, capture_output=True)
        custom = kubernetes.client.CustomObjectsApi(api)
        image = "team/app:v1"  # pushed to the anonymous registry by the test world
        namespaces = [f"rc-{i}" for i in range(args.namespaces)]
        for ns in namespaces:
            core.create_namespace({"metadata": {"name": ns}})
        time.sleep(2.0)  # the CRD is served

        def create(i: int) -> None:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RegistryCheck",
                    "metadata": {"name": f"rc-{i}"},
                    "spec": {"registry": world.anon, "image": image, "intervalSeconds": args.interval,
                             "timeoutSeconds": 10}}
            namespace = namespaces[i % len(namespaces)]
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(create, range(args.checks)))
        print(f"created {args.checks} RegistryChecks in {time.monotonic() - started:.1f} s")

        op = OperatorProcess(cluster.kubeconfig, world, tmp / "operator.log")
        op.start()
        proc = Proc(op.proc.pid if op.proc else 0)
        t0 = time.monotonic()

        def with_status() -> int:
            items: list[dict[str, Any]] = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
            return sum(1 for item in items if (item.get("status") or {}).get("lastCheckTime"))

        done = 0
        while time.monotonic() - t0 < args.timeout and (done := with_status()) < args.checks:
            time.sleep(2.0)
        first = time.monotonic() - t0
        cpu_first = proc.cpu()
        print(f"operator: {done}/{args.checks} with a status {first:.1f} s after its spawn, "
              f"{cpu_first:.1f} CPU s ({cpu_first / max(first, 0.001):.2f} cores)")
        time.sleep(5.0)  # the last status writes and their echo are behind us
        text = op.metrics()
        wakes0 = metric_sum(text, "pullhealth_registry_check_wakeups_total")
        runs0 = metric_sum(text, "pullhealth_registry_check_runs_total")
        registry0 = op.probe_requests(world.anon)
        before, cpu0, w0 = api_requests(api), proc.cpu(), time.monotonic()
        time.sleep(args.window)
        after, cpu1, elapsed = api_requests(api), proc.cpu(), time.monotonic() - w0
        text = op.metrics()
        wakes = metric_sum(text, "pullhealth_registry_check_wakeups_total") - wakes0
        runs = metric_sum(text, "pullhealth_registry_check_runs_total") - runs0
        registry = op.probe_requests(world.anon) - registry0
        rss, peak = proc.memory_mb()
        op.stop()
    print(f"\n[rest] {args.checks} RegistryChecks in {args.namespaces} namespaces, "
          f"interval {args.interval} s, window {elapsed:.0f} s")
    print(f"  wake-ups {wakes:.0f} ({wakes / elapsed:.2f}/s; one per check per interval would be "
          f"{args.checks / args.interval:.2f}/s), checks run {runs:.0f} ({runs / elapsed:.2f}/s), "
          f"registry requests {registry:.0f}")
    print(f"  operator: {cpu1 - cpu0:.1f} CPU s = {(cpu1 - cpu0) / elapsed:.3f} cores, "
          f"RSS {rss:.0f} MB (peak {peak:.0f} MB)")
    spent = operator_delta(before, after, Counter())
    print(f"  API requests by the operator in the window (watches excluded): "
          f"{sum(n for (verb, _), n in spent.items() if verb != 'WATCH')}")
    for (verb, what), n in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"    {verb:<7} {what:<40} {n:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
