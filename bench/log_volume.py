"""Operator log bytes per RegistryCheck per day at steady state.

Starts the test world (real registries, DNS), the local control plane and the operator
(``--log-format json``, as in the chart), creates N RegistryChecks (half healthy, half
failing with TAG_NOT_FOUND) at the shortest interval (30 s), waits until every one has
been checked, then counts the bytes the operator logs during a WINDOW of steady state
(results unchanged; the failing ones retry every 30 s). Prints bytes per RegistryCheck per
day at that rate (an upper bound: the default interval is 300 s) and the lines by message.

    .venv/bin/python bench/log_volume.py [N] [WINDOW_SECONDS]

N defaults to 10 (at most 200), WINDOW to 120 s (at most 900). Loopback only.
"""

from __future__ import annotations

import collections
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests")]

import yaml  # noqa: E402

from pullhealth_dev import cluster as devcluster  # noqa: E402
from support import guard  # noqa: E402
from support.objects import regcheck_yaml  # noqa: E402
from support.operatorproc import OperatorProcess  # noqa: E402
from support.world import start_world  # noqa: E402

CRD = ROOT / "crds" / "registrychecks.pullhealth.io.yaml"
INTERVAL = 30


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, check=True).stdout


def main() -> int:
    n = max(2, min(int(sys.argv[1]) if len(sys.argv) > 1 else 10, 200))
    window = max(30, min(int(sys.argv[2]) if len(sys.argv) > 2 else 120, 900))
    guard.install()
    with tempfile.TemporaryDirectory(prefix="pullhealth-bench-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        world = start_world(stack, tmp / "world")
        cluster = stack.enter_context(devcluster.DevCluster(tmp / "cluster", devcluster.find_binaries()))
        kc = cluster.kubeconfig
        kubectl(kc, "apply", "-f", str(CRD))
        kubectl(kc, "wait", "--for=condition=Established", "crd/registrychecks.pullhealth.io",
                "--timeout=60s")
        kubectl(kc, "create", "namespace", "bench")
        log = tmp / "operator.log"
        with OperatorProcess(kc, world, log, ["--no-pods"]):
            docs = []
            for i in range(n):
                image = "library/alpine:3.19" if i % 2 == 0 else "team/app:nosuchtag"
                spec = {"registry": world.anon, "image": image, "auth": {"mode": "anonymous"}}
                docs.append(yaml.safe_load(regcheck_yaml(f"rc{i}", spec, interval=INTERVAL)))
            kubectl(kc, "-n", "bench", "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                items = json.loads(kubectl(kc, "-n", "bench", "get", "regcheck", "-o", "json"))["items"]
                if sum(1 for o in items if (o.get("status") or {}).get("code")) == n:
                    break
                time.sleep(1)
            else:
                raise SystemExit("not every RegistryCheck was checked within 120 s")
            time.sleep(5)  # the first results' Events and log lines are written
            start = log.stat().st_size
            time.sleep(window)
            with log.open("rb") as f:
                f.seek(start)
                steady = f.read()
    per_day = len(steady) / n / window * 86400
    print(f"{n} RegistryChecks (interval {INTERVAL} s, half failing), {window} s of steady state:")
    print(f"  {len(steady)} bytes logged = {per_day:,.0f} bytes per RegistryCheck per day")
    kinds: collections.Counter[str] = collections.Counter()
    for line in steady.decode(errors="replace").splitlines():
        try:
            message = str(json.loads(line).get("message", ""))
        except ValueError:
            message = line
        kinds[message[:60]] += 1
    for message, count in kinds.most_common(10):
        print(f"  {count:6d} x {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
