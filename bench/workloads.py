"""Workload image checks at scale: registry requests per pass and per minute, CPU, RSS.

Starts the test world, the local control plane and one more real registry (Debian's
docker-registry, anonymous) answering under REGISTRIES host names (``rNN.bench.test``, each
a separate registry to the operator: its own cache keys and pacing budget), pushes IMAGES
images spread evenly over them, creates WORKLOADS suspended CronJobs (no controller acts on
them) over 20 namespaces, each with one of the images, then starts the operator as shipped
plus ``--workloads`` (defaults: interval 300 s, 8 workers, 30 chains a minute per
registry). Printed: time from the operator's start to the first full pass (every workload
checked once), registry requests (the operator's ``pullhealth_probe_requests_total`` per
registry) in that pass and the most in any 60 s window, the operator's CPU and RSS.
Figures only: nothing is asserted.

    .venv/bin/python bench/workloads.py [--workloads N] [--images N] [--registries N]
                                        [--watch SECONDS] [-- operator flags...]

Defaults: 10000 workloads, 500 images, 20 registries; after the first pass it keeps
sampling for --watch seconds (default 120). Loopback only; bounded (<= 20000 workloads).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests"), str(ROOT / "bench")]

import kubernetes  # noqa: E402

from pullhealth_dev import cluster as devcluster  # noqa: E402
from scale import Proc  # noqa: E402
from support import guard  # noqa: E402
from support.dns import Dnsmasq  # noqa: E402
from support.operatorproc import OperatorProcess  # noqa: E402
from support.registry import Registry  # noqa: E402
from support.world import start_world  # noqa: E402

MAX_WORKLOADS = 20000
NAMESPACES = 20
_SAMPLE = re.compile(r'^pullhealth_probe_requests_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$')


def requests_by_registry(metrics: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            out[labels["registry"]] = out.get(labels["registry"], 0.0) + float(match["value"])
    return out


def counter(metrics: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + " "))


def main(argv: Sequence[str] = sys.argv[1:]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=10000)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--registries", type=int, default=20)
    parser.add_argument("--watch", type=float, default=120.0)
    parser.add_argument("operator_flags", nargs="*")
    args = parser.parse_args(argv)
    count = max(1, min(args.workloads, MAX_WORKLOADS))
    images = max(1, min(args.images, count))
    registries = max(1, min(args.registries, images, 99))
    guard.install()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="pullhealth-bench-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        world = start_world(stack, tmp / "world")
        names = [f"r{k:02d}.bench.test" for k in range(registries)]
        dns = stack.enter_context(Dnsmasq(dict.fromkeys(names, "127.0.0.1"), workdir=tmp / "dns"))
        registry = stack.enter_context(Registry("anonymous", world.pki, names, workdir=tmp / "registry"))
        started = time.monotonic()
        refs = []
        for i in range(images):
            k = i % registries
            repo = f"r{k:02d}/app{i // registries}"
            registry.push_image(repo, "v1")
            refs.append(f"{names[k]}:{registry.port}/{repo}:v1")
        print(f"pushed {images} images over {registries} registries in {time.monotonic() - started:.0f}s")

        cluster = stack.enter_context(devcluster.DevCluster(tmp / "cluster", devcluster.find_binaries()))
        api = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        api.configuration.connection_pool_maxsize = 16
        core, batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
        for n in range(NAMESPACES):
            core.create_namespace({"metadata": {"name": f"bench-{n:02d}"}})

        def create(i: int) -> None:
            pod = {"restartPolicy": "Never", "containers": [{"name": "c", "image": refs[i % images]}]}
            batch.create_namespaced_cron_job(f"bench-{i % NAMESPACES:02d}", {
                "metadata": {"name": f"job-{i:05d}"},
                "spec": {"schedule": "0 3 * * *", "suspend": True,
                         "jobTemplate": {"spec": {"template": {"spec": pod}}}},
            })

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(count)))
        took = time.monotonic() - started
        print(f"created {count} suspended CronJobs over {NAMESPACES} namespaces in {took:.0f}s")

        flags = ["--workloads", "--metrics-registries", ",".join(f"{n}:{registry.port}" for n in names),
                 *args.operator_flags]
        op = OperatorProcess(cluster.kubeconfig, world, tmp / "operator.log", flags,
                             env={"PULLHEALTH_NAMESERVER": dns.nameserver})
        spawned = time.monotonic()
        op.start()
        stack.callback(op.stop)
        assert op.proc is not None
        proc = Proc(op.proc.pid)
        samples: list[tuple[float, dict[str, float], float]] = []  # (seconds, requests, checks)
        first_pass: float | None = None
        pass_requests: dict[str, float] = {}
        deadline = None
        while True:
            text = op.metrics()
            now = time.monotonic() - spawned
            checks = counter(text, "pullhealth_workload_checks_total")
            samples.append((now, requests_by_registry(text), checks))
            if first_pass is None and checks >= count:
                first_pass, pass_requests = now, samples[-1][1]
                deadline = now + args.watch
            if deadline is not None and now >= deadline:
                break
            if now > 3600:
                print("no full pass within an hour")
                break
            time.sleep(2.0)
        cpu = proc.cpu()
        rss, peak = proc.memory_mb()
        end = samples[-1][0]
        per_minute: dict[str, float] = {}
        for i, (t0, r0, _) in enumerate(samples):
            for t1, r1, _ in samples[i:]:
                if t1 - t0 > 60.0:
                    break
                for reg, value in r1.items():
                    per_minute[reg] = max(per_minute.get(reg, 0.0), value - r0.get(reg, 0.0))
        bench = {k: v for k, v in pass_requests.items() if "bench.test" in k}
        if first_pass is not None:
            print(f"first full pass ({count} workloads checked once): {first_pass:.0f}s after the start")
        else:
            print("first full pass: not reached")
        if bench:
            print(f"registry requests in the first pass: {sum(bench.values()):.0f} in all, per registry "
                  f"min {min(bench.values()):.0f} / max {max(bench.values()):.0f} "
                  f"({images / registries:.0f} images each)")
        busiest = {k: v for k, v in per_minute.items() if "bench.test" in k}
        if busiest:
            median = sorted(busiest.values())[len(busiest) // 2]
            print(f"most registry requests in any 60 s window, per registry: "
                  f"max {max(busiest.values()):.0f}, median {median:.0f}")
        print(f"checks run: {samples[-1][2]:.0f} in {end:.0f}s")
        print(f"operator CPU: {cpu:.1f} s over {end:.0f} s ({cpu / max(end, 1):.2f} cores); "
              f"RSS {rss:.0f} MB (peak {peak:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
