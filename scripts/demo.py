"""The README's demonstration, on loopback only.

Starts real local registries (Debian's docker-registry: anonymous, htpasswd, token auth
with an ACR-style token service), dnsmasq with a test zone, a local control plane
(etcd + kube-apiserver + kube-controller-manager built by hack/build-k8s.sh) with a real
node (kube-scheduler, kubelet, containerd: ``pullhealth-dev cluster up --node``), then runs
the operator, applies sample RegistryChecks and shows ``kubectl get regcheck``, and deploys
an app whose pull kubelet really fails; also shows ``pullhealth check`` and ``pullhealth
explain`` one-shots. Everything is stopped at
the end, also when the demo is interrupted (Ctrl-C, SIGTERM from ``timeout`` or ``kill``,
SIGHUP from a closed terminal): every server, the control plane, the operator and the
temporary directory go. ``--keep`` leaves everything running at the end, until Ctrl-C.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests")]

from pullhealth_dev import cluster as devcluster  # noqa: E402
from support import guard  # noqa: E402
from support.operatorproc import free_port  # noqa: E402
from support.world import TEST_ALLOW_CIDR, World, start_world  # noqa: E402

KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
# Bold banners only on a terminal (https://no-color.org: NO_COLOR turns them off too).
COLOUR = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
WORLD_DOMAINS = ("test", "azurecr.io")  # the node resolves these through the world's dnsmasq


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if COLOUR else f"\n== {text}", flush=True)


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    """First stop signal: unwind (every ``with``/ExitStack cleans up); later ones are ignored."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    name = signal.Signals(signum).name
    print(f"\n{name}: stopping everything the demo started", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def _children(pid: int) -> list[int]:
    """Live descendants of ``pid`` (from /proc; zombies excluded)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop_leftovers() -> None:
    """Last line of defence: a server interrupted while starting may have no stop hook yet."""
    left = _children(os.getpid())
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _children(os.getpid())
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def sh(*args: str, env: dict[str, str] | None = None, stdin: str | None = None, check: bool = True) -> str:
    print("$ " + " ".join(a if " " not in a else repr(a) for a in args), flush=True)
    result = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=120,
                            env=env, check=False)
    out = (result.stdout + result.stderr).rstrip()
    if out:
        print(out, flush=True)
    if check and result.returncode not in (0, 1):
        raise SystemExit(f"command failed ({result.returncode})")
    return result.stdout


def one_shots(world: World) -> None:
    pullhealth = [sys.executable, "-m", "pullhealth"]
    common = ["--nameserver", world.nameserver, "--ca-file", str(world.ca_bundle), "--timeout", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    banner("pullhealth check: a healthy pull path")
    sh(*pullhealth, "check", f"{world.anon}/library/alpine:3.19", *common, env=env)
    banner("pullhealth check: wrong password against an ACR-style token registry")
    sh(*pullhealth, "check", f"{world.acr}/team/app:v1", "--username", world.acr_puller[0],
       "--password-stdin", *common, env=env, stdin="not-the-password\n")
    banner("pullhealth check: private endpoint DNS leaking to a public address")
    sh(*pullhealth, "check", f"{world.leak}/team/app:v1", *common, env=env)
    banner("pullhealth explain: a kubelet event message")
    sh(*pullhealth, "explain", 'Failed to pull image "myacr.azurecr.io/team/app:v2": failed to pull and '
       'unpack image "myacr.azurecr.io/team/app:v2": failed to resolve reference '
       '"myacr.azurecr.io/team/app:v2": myacr.azurecr.io/team/app:v2: not found', env=env)


def secret_yaml(name: str, server: str, user: str, password: str) -> str:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = base64.b64encode(json.dumps({"auths": {server: {"auth": auth}}}).encode()).decode()
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
                       "metadata": {"name": name}, "data": {".dockerconfigjson": config}})


def samples(world: World) -> list[dict[str, object]]:
    def rc(name: str, spec: dict[str, object]) -> dict[str, object]:
        return {"apiVersion": "pullhealth.io/v1alpha1", "kind": "RegistryCheck", "metadata": {"name": name},
                "spec": {"intervalSeconds": 60, "timeoutSeconds": 2, **spec}}

    return [
        rc("public-alpine", {"registry": world.anon, "image": "library/alpine:3.19",
                             "auth": {"mode": "anonymous"}}),
        rc("acr-app", {"registry": world.acr, "image": "team/app:v1", "auth": {"pullSecrets": ["acr-pull"]}}),
        rc("acr-wrong-password", {"registry": world.acr, "image": "team/app:v1",
                                  "auth": {"pullSecrets": ["acr-stale"]}}),
        rc("acr-node-identity", {"registry": world.myacr, "image": "team/app:v1",
                                 "auth": {"mode": "managedIdentity", "clientId": world.imds_client_id}}),
        rc("missing-tag", {"registry": world.anon, "image": "team/app:v9"}),
        rc("arm-only-image", {"registry": world.anon, "image": "multi/arm:1"}),
        rc("typo-registry", {"registry": world.missing, "image": "team/app:v1"}),
        rc("private-endpoint", {"registry": world.leak, "image": "team/app:v1",
                                "network": {"expectPrivateEndpoint": True}}),
    ]


def web_deployment(image: str) -> str:
    """The demo's app: a Deployment with a stale pull secret (hostNetwork: no pod network here)."""
    template = {"metadata": {"labels": {"app": "web"}},
                "spec": {"hostNetwork": True, "imagePullSecrets": [{"name": "acr-stale"}],
                         "containers": [{"name": "app", "image": image, "imagePullPolicy": "Always"}]}}
    return json.dumps({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                       "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                                "template": template}})


def failing_pod(world: World, kubeconfig: str, k: list[str]) -> None:
    """A Deployment whose pull kubelet fails on the real node (a stale secret), diagnosed."""
    banner("a Deployment with a stale pull secret: kubelet on the node fails to pull it")
    image = f"{world.acr}/team/app:v1"
    sh(*k, "-n", "demo", "apply", "-f", "-", stdin=web_deployment(image))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        out = subprocess.run([*k, "-n", "demo", "get", "pods", "-l", "app=web", "-o", "json"],
                             capture_output=True, text=True, timeout=30, check=False).stdout
        pods = json.loads(out or '{"items": []}')["items"]
        if pods and "pullhealth.io/diagnosis" in pods[0]["metadata"].get("annotations", {}):
            break
        time.sleep(1)
    sh(*k, "-n", "demo", "get", "pods", "-l", "app=web", "-o", "wide")
    sh(*k, "-n", "demo", "get", "events", "--field-selector", "source=kubelet", "-o",
       "custom-columns=REASON:.reason,MESSAGE:.message")
    sh(*k, "-n", "demo", "get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.annotations}")
    sh(*k, "-n", "demo", "get", "events", "--field-selector", "reason=PullDiagnosed")


def show_metrics(port: int) -> None:
    banner(f"the operator's metrics (curl http://127.0.0.1:{port}/metrics, a few lines)")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = ("pullhealth_registry_check_healthy{", "pullhealth_diagnoses_total{")
    for line in text.splitlines():
        if line.startswith(wanted):
            print(line, flush=True)


def cluster_demo(world: World, state: Path, stack: contextlib.ExitStack, keep: bool) -> None:
    binaries = devcluster.find_binaries()
    banner("starting a local control plane (etcd, kube-apiserver, kube-controller-manager) and a "
           "node (kube-scheduler, containerd, kubelet)")
    # The node resolves the world's names through the world's dnsmasq, nothing else.
    cluster = devcluster.DevCluster(state / "cluster", binaries, node=True,
                                    node_dns_upstream=world.nameserver, node_dns_domains=WORLD_DOMAINS)
    # Registered before start(): an interrupt while it starts still stops what did start.
    stack.callback(banner, "stopped the control plane and the node")
    stack.callback(cluster.stop)
    cluster.start()
    assert cluster.node is not None
    for registry in (world.anon, world.basic, world.acr, world.myacr):
        cluster.node.trust(registry, world.ca_bundle)  # as a node's admin adds a private CA
    kubeconfig = str(cluster.kubeconfig)
    k = [KUBECTL, f"--kubeconfig={kubeconfig}"]
    sh(*k, "apply", "-f", str(ROOT / "crds" / "registrychecks.pullhealth.io.yaml"))
    sh(*k, "wait", "--for=condition=Established", "crd/registrychecks.pullhealth.io", "--timeout=60s")
    sh(*k, "create", "namespace", "demo")
    sh(*k, "-n", "demo", "apply", "-f", "-", stdin=secret_yaml("acr-pull", world.acr, *world.acr_puller))
    sh(*k, "-n", "demo", "apply", "-f", "-",
       stdin=secret_yaml("acr-stale", world.acr, world.acr_puller[0], "rotated-last-week"))
    banner("running the operator: pullhealth run")
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONPATH": str(ROOT / "operator"),
           "PULLHEALTH_NAMESERVER": world.nameserver, "PULLHEALTH_CA_FILE": str(world.ca_bundle),
           "PULLHEALTH_IMDS_ENDPOINT": world.imds_url}
    log = (state / "operator.log").open("wb")
    metrics_port = free_port()
    # The demo world lives on 127.0.0.1, which the operator's destination policy refuses by
    # default (docs/security.md); the kubelet identity is the IMDS fixture's. /metrics is
    # served plain on loopback so that the demo can curl it (the chart protects it).
    op = subprocess.Popen([sys.executable, "-m", "pullhealth", "run", "--metrics-port", str(metrics_port),
                           "--metrics-bind-address", "127.0.0.1", "--no-metrics-secure",
                           "--liveness", "http://127.0.0.1:0/healthz", "--allow-cidr", TEST_ALLOW_CIDR,
                           "--kubelet-client-id", world.imds_client_id], env=env,
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        items = samples(world)
        sh(*k, "-n", "demo", "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                   "items": items}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            query = "jsonpath={.items[*].status.lastCheckTime}"
            out = subprocess.run([*k, "-n", "demo", "get", "regcheck", "-o", query],
                                 capture_output=True, text=True, timeout=30, check=False).stdout.split()
            if len(out) == len(items):
                break
            time.sleep(1)
        banner("kubectl get regcheck")
        sh(*k, "-n", "demo", "get", "regcheck")
        banner("the failing one says why and what to do: its status.summary and status.remediation")
        sh(*k, "-n", "demo", "get", "regcheck", "acr-wrong-password", "-o",
           "jsonpath={.status.summary}{'\\n'}{range .status.remediation[*]}  - {@}{'\\n'}{end}")
        sh(*k, "-n", "demo", "get", "events", "--field-selector", "reason=CheckFailed")
        failing_pod(world, kubeconfig, k)
        show_metrics(metrics_port)
        if keep:
            banner("everything keeps running (--keep); Ctrl-C stops it all")
            print(f"export KUBECONFIG={kubeconfig}\n"
                  f"curl -s http://127.0.0.1:{metrics_port}/metrics | grep ^pullhealth_", flush=True)
            while True:
                time.sleep(3600)
    finally:
        op.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            op.wait(timeout=20)
        if op.poll() is None:
            op.kill()
        log.close()


def main() -> int:
    keep = "--keep" in sys.argv[1:]
    guard.install()  # the demo only ever talks to loopback
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupted)
    with contextlib.ExitStack() as stack:
        # Unwound in reverse: servers and the cluster stop, leftovers are killed, then the
        # temporary directory goes.
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="pullhealth-demo-",
                                                              ignore_cleanup_errors=True))
        stack.callback(_stop_leftovers)
        banner("starting local registries, token service, DNS (all on 127.0.0.1)")
        world = start_world(stack, Path(tmp) / "world")
        one_shots(world)
        try:
            cluster_demo(world, Path(tmp), stack, keep)
        except devcluster.DevClusterError as exc:
            print(f"\nskipping the operator part: {exc}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
