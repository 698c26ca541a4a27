"""Back-off churn: what an unchanged failing pod costs when kubelet rewrites its status.

N failing pods (over NS namespaces, IMAGES images) are written and diagnosed first; then
for DURATION seconds every pod's status is rewritten every PERIOD seconds, alternating
``ErrImagePull`` <-> ``ImagePullBackOff`` with the same message (kubelet's back-off: nothing
about the failure changes). Printed: the operator's API requests per update (from the API
server's ``apiserver_request_total``, the driver's own subtracted), registry requests
(probe chains), cores busy during the churn, how long it stays busy afterwards (a
backlog), and RSS before/after. Figures only: nothing is asserted.

    .venv/bin/python bench/churn.py [--pods N] [--namespaces NS] [--images IMAGES]
                                     [--period S] [--duration S] [-- operator flags...]

Defaults: 1000 pods, 100 namespaces, 10 images, every 10 s for 120 s (100 updates/s).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import MAX_PODS, Annotations, Driver, Proc, api_requests, bench_cluster, operator_delta
from support.operatorproc import OperatorProcess

IDLE_CORES = 0.05


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--period", type=float, default=10.0, help="seconds between two writes of one pod")
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("operator_args", nargs="*", help="more `pullhealth run` flags (after --)")
    args = parser.parse_args(argv)
    args.pods = max(1, min(args.pods, MAX_PODS))
    args.namespaces = max(1, min(args.namespaces, args.pods))
    return args


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    args = parse_args(argv)
    with bench_cluster() as (world, cluster, api, core, tmp):
        driver = Driver(core, world, args.images)
        op = OperatorProcess(cluster.kubeconfig, world, tmp / "operator.log", args.operator_args)
        watcher = Annotations(core)
        with watcher.running():
            namespaces = driver.namespaces("churn", args.namespaces)
            op.start()
            proc = Proc(op.proc.pid if op.proc else 0)
            pods: list[tuple[str, dict[str, str], str]] = []
            for i in range(args.pods):
                ns, image = namespaces[i % len(namespaces)], driver.image(i)
                pod = driver.create(ns, f"c{i}", image)
                driver.fail(ns, pod, image)
                pods.append((ns, pod, image))
            watcher.wait([f"{ns}/{pod['name']}" for ns, pod, _ in pods], 300)
            time.sleep(3.0)  # settled: the diagnoses' own writes are behind us
            rss0, _ = proc.memory_mb()
            before, cpu0, chains0 = api_requests(api), proc.cpu(), op.probe_requests(world.anon)
            driver.sent.clear()
            start = time.monotonic()
            updates = 0
            reasons = ("ImagePullBackOff", "ErrImagePull")

            def rewrite(item: tuple[int, int]) -> None:
                round_, i = item
                ns, pod, image = pods[i]
                due = start + round_ * args.period + i * args.period / len(pods)
                if (delay := due - time.monotonic()) > 0:
                    time.sleep(delay)
                driver.fail(ns, pod, image, reason=reasons[round_ % 2], event=False)

            rounds = max(1, int(args.duration / args.period))
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(rewrite, [(r, i) for r in range(rounds) for i in range(len(pods))]))
            updates = rounds * len(pods)
            churn_end = time.monotonic()
            cpu_churn = proc.cpu() - cpu0
            # A backlog: the operator stays busy after the last write.
            busy_until, last, last_t = churn_end, proc.cpu(), churn_end
            while time.monotonic() - busy_until < 3.0 and time.monotonic() - churn_end < 300:
                time.sleep(0.5)
                now, cpu = time.monotonic(), proc.cpu()
                if (cpu - last) / (now - last_t) > IDLE_CORES:
                    busy_until = now
                last, last_t = cpu, now
            after, chains = api_requests(api), op.probe_requests(world.anon) - chains0
            rss1, peak = proc.memory_mb()
            op.stop()
        requests = operator_delta(before, after, driver.sent)
        total = sum(n for (verb, _), n in requests.items() if verb != "WATCH")
        wall = churn_end - start
        print(
            f"{args.pods} failing pods ({args.namespaces} namespaces, {args.images} images), "
            f"status rewritten every {args.period:g} s for {wall:.0f} s: {updates} updates "
            f"({updates / wall:.0f}/s), nothing changes"
        )
        print(f"  API requests by the operator: {total} = {total / updates:.3f} per update")
        for (verb, what), n in sorted(requests.items(), key=lambda kv: -kv[1]):
            print(f"    {verb:<7} {what:<34} {n:>7}")
        print(f"  registry requests (chains): {chains:.0f}")
        print(
            f"  operator during the churn: {cpu_churn / wall:.2f} cores; busy "
            f"{max(0.0, busy_until - churn_end):.1f} s after the last write"
        )
        print(f"  RSS {rss0:.0f} MB before -> {rss1:.0f} MB after (peak {peak:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
