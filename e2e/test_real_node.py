"""Failing pulls on a real node: kubelet and containerd fail, the operator explains.

Unlike e2e/test_pods.py (where the test plays kubelet with recorded text), nothing here is
written on kubelet's behalf: a real kubelet v1.34 with Debian's containerd 1.6 and runc
(:mod:`pullhealth_dev.node`, added to the session's control plane for this module) pulls
from the test world's real registries, and the failures, pod status and Events are its own.
Workloads are created as users create them (Deployments, pull secrets, a ServiceAccount's
pull secrets); they only add ``hostNetwork: true`` (there is no pod network here) and a
toleration for the node's taint (so that no other test's pod lands on it).
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pullhealth.kube.events import pulled_image
from pullhealth_dev import cluster as devcluster
from pullhealth_dev import node as realnode
from support.kubelet import docker_secret
from support.prometheus import require_prometheus, running
from support.world import World

TAINT = {"key": "pullhealth.io/e2e-real-node", "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": TAINT["key"], "operator": "Equal", "value": "true", "effect": "NoSchedule"}
#: The world's names the node resolves through the world's dnsmasq; anything else: NXDOMAIN.
WORLD_DOMAINS = ("test", "azurecr.io")
DIAGNOSIS = "pullhealth.io/diagnosis"
# Generous bounds: CI machines are small and shared. The diagnosis bound is the product's
# promise (60 s after kubelet reported the failure), the others only keep a stuck test finite.
KUBELET_WAIT = 180.0
DIAGNOSIS_WAIT = 60.0


def node_for_module(
    dev_cluster: Any, world: World, hosts: tuple[str, ...], kubelet_settings: dict[str, Any] | None = None,
    containerd_root_size: str | None = None,
) -> Iterator[realnode.NodeState]:
    """kube-scheduler + containerd + kubelet on the session's control plane, for one module.

    The node trusts the world's CA for ``hosts`` (hosts.toml, as an operator of a real node
    would configure it), and resolves the world's names through its dnsmasq. Nothing of it
    may outlive it: no shim, no container, no cgroup, no mount.
    """
    harness: devcluster.DevCluster | None = dev_cluster.harness
    if harness is None:
        pytest.skip("the real node runs only on the local dev cluster (not with --kubeconfig)")
    binaries = harness.binaries or devcluster.find_binaries()
    try:
        realnode.find_node_binaries(binaries.kube_apiserver.parent)
    except realnode.NodeError as err:
        if os.environ.get("PULLHEALTH_REQUIRE_E2E"):
            pytest.fail(f"PULLHEALTH_REQUIRE_E2E is set but {err}", pytrace=False)
        pytest.skip(f"no real node here: {err}")
    node = harness.add_node(dns_upstream=world.nameserver, dns_domains=WORLD_DOMAINS, taints=[TAINT],
                            kubelet_settings=kubelet_settings, containerd_root_size=containerd_root_size)
    try:
        for host in hosts:
            node.trust(host, world.ca_bundle)
        yield node
    finally:
        address, cgroups = node.containerd_address, realnode.node_cgroups(node.cgroup_root)
        harness.remove_node()
    assert realnode.shim_pids(address) == []
    assert [c for c in cgroups if Path(c).exists()] == []
    assert realnode.mounts_under(node.dir) == []


@pytest.fixture(scope="module")
def real_node(dev_cluster: Any, world: World) -> Iterator[realnode.NodeState]:
    """The node for this module's tests; it trusts the world's registries."""
    yield from node_for_module(dev_cluster, world, (world.anon, world.basic, world.acr, world.myacr))


def deployment(name: str, image: str, *, secrets: tuple[str, ...] = (), account: str | None = None) -> str:
    """A Deployment as a user writes it, plus hostNetwork and the node's toleration."""
    spec: dict[str, Any] = {
        "hostNetwork": True,
        "tolerations": [TOLERATION],
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "app", "image": image, "imagePullPolicy": "Always"}],
    }
    if secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    if account:
        spec["serviceAccountName"] = account
    return json.dumps({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    })


def pods_of(dev_cluster: Any, ns: str, app: str) -> list[dict[str, Any]]:
    out = dev_cluster.kubectl("get", "pods", "-n", ns, "-l", f"app={app}", "-o", "json").stdout
    return list(json.loads(out)["items"])


def waiting_reason(pod: dict[str, Any]) -> str:
    for status in pod.get("status", {}).get("containerStatuses", []):
        waiting = status.get("state", {}).get("waiting")
        if waiting:
            return str(waiting.get("reason", ""))
    return ""


def events_of(dev_cluster: Any, ns: str, pod: str) -> list[dict[str, Any]]:
    out = dev_cluster.kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={pod}",
                              "-o", "json").stdout
    return list(json.loads(out)["items"])


def kubelet_failure(dev_cluster: Any, ns: str, app: str, wait_for: Callable[..., Any]) -> dict[str, Any]:
    """Wait until kubelet itself reports the pod's pull failure; return the pod."""
    def failed() -> dict[str, Any] | None:
        for pod in pods_of(dev_cluster, ns, app):
            if waiting_reason(pod) in ("ErrImagePull", "ImagePullBackOff"):
                return pod
        return None

    pod: dict[str, Any] = wait_for(failed, f"kubelet's ErrImagePull for {app}", timeout=KUBELET_WAIT)
    assert pod["spec"]["nodeName"] == realnode.NODE_NAME
    return pod


def kubelet_pull_message(dev_cluster: Any, ns: str, pod: str) -> str:
    """The message of kubelet's own ``Failed to pull image`` Event (source: the real node)."""
    for event in events_of(dev_cluster, ns, pod):
        if event["reason"] == "Failed" and event["message"].startswith("Failed to pull image"):
            assert event["source"] == {"component": "kubelet", "host": realnode.NODE_NAME}
            return str(event["message"])
    raise AssertionError(f"no kubelet pull failure event for {pod}")


def diagnosis(dev_cluster: Any, ns: str, app: str, wait_for: Callable[..., Any]) -> tuple[str, str]:
    """(pod name, diagnosis code) once kubelet failed and the operator annotated the pod."""
    pod = kubelet_failure(dev_cluster, ns, app, wait_for)
    name = pod["metadata"]["name"]

    def annotated() -> str | None:
        out = dev_cluster.kubectl("get", "pod", "-n", ns, name, "-o", "json").stdout
        return json.loads(out)["metadata"].get("annotations", {}).get(DIAGNOSIS)

    return name, str(wait_for(annotated, f"{DIAGNOSIS} on {name}", timeout=DIAGNOSIS_WAIT))


def test_node_is_ready_and_real(real_node: realnode.NodeState, dev_cluster: Any) -> None:
    node = json.loads(dev_cluster.kubectl("get", "node", realnode.NODE_NAME, "-o", "json").stdout)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == devcluster.K8S_VERSION
    assert info["containerRuntimeVersion"].startswith("containerd://1.")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready
    # kubelet is reached only on loopback.
    assert {a["address"] for a in node["status"]["addresses"]} == {realnode.NODE_NAME}


def test_unknown_host_deployment_is_diagnosed(real_node: realnode.NodeState, dev_cluster: Any, operator: Any,
                                              namespace: str, wait_for: Callable[..., Any]) -> None:
    image = "nosuch-registry.test/team/app:v1"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("unknown-host", image))
    name, code = diagnosis(dev_cluster, namespace, "unknown-host", wait_for)
    assert code == "DNS_NXDOMAIN"
    message = kubelet_pull_message(dev_cluster, namespace, name)
    # containerd's own words, through kubelet: the lookup went to the node's resolver.
    assert f'failed to pull and unpack image "{image}"' in message
    assert f"lookup nosuch-registry.test on {real_node.dns_address}:53: no such host" in message

    # kubelet keeps retrying (BackOff); the operator says it once.
    wait_for(lambda: any(e["reason"] == "BackOff" for e in events_of(dev_cluster, namespace, name)),
             "kubelet's BackOff", timeout=KUBELET_WAIT)
    time.sleep(2)  # let a (wrong) second diagnosis event land, if the operator wrote one
    ours = [e for e in events_of(dev_cluster, namespace, name) if e["reason"] == "PullDiagnosed"]
    assert len(ours) == 1 and ours[0].get("count", 1) == 1, ours


def test_wrong_pull_secret(real_node: realnode.NodeState, dev_cluster: Any, operator: Any, world: World,
                           namespace: str, wait_for: Callable[..., Any]) -> None:
    secret = docker_secret("stale", world.acr, world.acr_puller[0], "rotated-elsewhere")
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(secret))
    image = f"{world.acr}/team/app:v1"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-",
                        stdin=deployment("stale-secret", image, secrets=("stale",)))
    name, code = diagnosis(dev_cluster, namespace, "stale-secret", wait_for)
    assert code == "CREDENTIALS_REJECTED"
    message = kubelet_pull_message(dev_cluster, namespace, name)
    assert "401 Unauthorized" in message, message
    assert "rotated-elsewhere" not in json.dumps(events_of(dev_cluster, namespace, name))


def test_service_account_pull_secret(real_node: realnode.NodeState, dev_cluster: Any, operator: Any,
                                     world: World, namespace: str, wait_for: Callable[..., Any]) -> None:
    """The pod names no secret: the ServiceAccount's (wrong) one is what kubelet used."""
    secret = docker_secret("team-pull", world.acr, world.acr_puller[0], "expired-password")
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(secret))
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder"},
               "imagePullSecrets": [{"name": "team-pull"}]}
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(account))
    image = f"{world.acr}/team/app:v1"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("via-sa", image, account="builder"))
    name, code = diagnosis(dev_cluster, namespace, "via-sa", wait_for)
    assert code == "CREDENTIALS_REJECTED"
    assert "401 Unauthorized" in kubelet_pull_message(dev_cluster, namespace, name)


def test_the_credential_named_is_the_one_kubelet_used(real_node: realnode.NodeState, dev_cluster: Any,
                                                     operator: Any, world: World, namespace: str,
                                                     wait_for: Callable[..., Any]) -> None:
    """Two pull secrets; kubelet picks the one for the image's registry. The token service
    records who logged in, and with which client: containerd's login is the one the operator
    names."""
    for secret in (docker_secret("for-basic", world.basic, *world.basic_user),
                   docker_secret("acr-nopull", world.acr, *world.acr_nopull)):
        dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(secret))
    repo = f"team/cred-{namespace[-6:]}"  # pulled by this test only
    image = f"{world.acr}/{repo}:v1"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-",
                        stdin=deployment("cred", image, secrets=("for-basic", "acr-nopull")))
    name, code = diagnosis(dev_cluster, namespace, "cred", wait_for)
    logins = [login for login in world.tokenserver.logins if any(repo in s for s in login.scopes)]
    by_kubelet = {login.user for login in logins if "containerd" in login.user_agent}
    assert by_kubelet == {world.acr_nopull[0]}, logins
    out = dev_cluster.kubectl("get", "pod", "-n", namespace, name, "-o", "json").stdout
    cause = json.loads(out)["metadata"]["annotations"]["pullhealth.io/probable-cause"]
    assert f"user {world.acr_nopull[0]} from secret {namespace}/acr-nopull" in cause, (code, cause)
    assert world.basic_user[0] not in cause
    assert code == "PERMISSION_DENIED", cause


def test_hosts_toml_mirror(real_node: realnode.NodeState, dev_cluster: Any, operator: Any, world: World,
                           namespace: str, wait_for: Callable[..., Any]) -> None:
    """containerd asks the mirror its hosts.toml names before the registry itself; kubelet's
    message shows only the last failure (the registry's), which is what the operator explains."""
    registry = f"mirrored-{namespace[-6:]}.test"  # NXDOMAIN: only the mirror can answer
    real_node.write_hosts_toml(registry, f'server = "https://{registry}"\n\n'
                                         f'[host."https://{world.anon}"]\n'
                                         f'  capabilities = ["pull", "resolve"]\n'
                                         f'  ca = "{world.ca_bundle}"\n')
    image = f"{registry}/team/app:nosuchtag"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("mirrored", image))
    name, code = diagnosis(dev_cluster, namespace, "mirrored", wait_for)
    message = kubelet_pull_message(dev_cluster, namespace, name)
    assert f"lookup {registry} on {real_node.dns_address}:53: no such host" in message, message
    # The mirror was asked first, by containerd, for this registry's namespace (?ns=).
    log = world.registries["anon"].log_path.read_text(errors="replace")
    asked = [line for line in log.splitlines() if f"/v2/team/app/manifests/nosuchtag?ns={registry}" in line]
    assert asked and all("containerd" in line for line in asked), asked[:3]
    assert code == "DNS_NXDOMAIN"


def test_missing_tag(real_node: realnode.NodeState, dev_cluster: Any, operator: Any, world: World,
                     namespace: str, wait_for: Callable[..., Any]) -> None:
    image = f"{world.anon}/team/app:nosuchtag"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("missing-tag", image))
    name, code = diagnosis(dev_cluster, namespace, "missing-tag", wait_for)
    assert code == "TAG_NOT_FOUND"
    assert ": not found" in kubelet_pull_message(dev_cluster, namespace, name)


def test_untrusted_tls(real_node: realnode.NodeState, dev_cluster: Any, operator: Any, world: World,
                       namespace: str, wait_for: Callable[..., Any]) -> None:
    image = f"{world.untrusted}/team/app:v1"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("untrusted", image))
    name, code = diagnosis(dev_cluster, namespace, "untrusted", wait_for)
    assert code == "TLS_UNTRUSTED"
    assert "x509: certificate signed by unknown authority" in kubelet_pull_message(dev_cluster, namespace, name)


# --- the chart as users run it: the image built from the Dockerfile, pods on the node -------

RELEASE = "pullhealth"
POOL_LABEL, POOL = "kubernetes.azure.com/agentpool", "e2epool"
IMAGE_USER = 10001  # the Dockerfile's USER, and the chart's runAsUser


def test_a_successful_pull_reaches_the_pull_metrics(real_node: realnode.NodeState, dev_cluster: Any,
                                                    operator: Any, world: World, namespace: str,
                                                    wait_for: Callable[..., Any], tmp_path: Path) -> None:
    """kubelet's own Pulled Event, for a pull from the world's registry, reaches /metrics
    and the chart's dashboard panels in a real Prometheus."""
    with contextlib.ExitStack() as stack:
        check_pull_metrics(stack, dev_cluster, operator, world, namespace, wait_for, tmp_path)


def check_pull_metrics(stack: contextlib.ExitStack, dev_cluster: Any, operator: Any, world: World, namespace: str,
                       wait_for: Callable[..., Any], tmp_path: Path) -> None:
    registry = world.anon  # listed in the operator's --metrics-registries: labelled by name
    image = f"{registry}/library/alpine:3.19"

    def figures() -> dict[str, float]:
        found: dict[str, float] = {}
        for line in operator.metrics().splitlines():
            name, _, value = line.rpartition(" ")
            if name.startswith("pullhealth_image_pull_") and f'registry="{registry}"' in name \
                    and (name.split("{")[0].endswith(("_count", "_sum"))):
                key = name.split("{")[0]
                found[key] = found.get(key, 0.0) + float(value)  # summed over pools
        return found

    # The node's pool, as AKS labels it: the pull metrics carry it.
    dev_cluster.kubectl("label", "node", realnode.NODE_NAME, f"{POOL_LABEL}={POOL}", "--overwrite")
    before = figures()
    prometheus_bin, _ = require_prometheus()
    prom = stack.enter_context(running(prometheus_bin, tmp_path, "groups: []\n", [{
        "job_name": "pullhealth", "scrape_interval": "1s", "scrape_timeout": "1s",
        "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}]}]))
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("pulled", image))

    def pulled_event() -> dict[str, Any] | None:
        for pod in pods_of(dev_cluster, namespace, "pulled"):
            for event in events_of(dev_cluster, namespace, pod["metadata"]["name"]):
                if event["reason"] == "Pulled" and event["message"].startswith("Successfully pulled image"):
                    return event
        return None

    event = wait_for(pulled_event, "kubelet's Pulled Event", timeout=KUBELET_WAIT)
    assert event["source"] == {"component": "kubelet", "host": realnode.NODE_NAME}
    first = pulled_image(event["message"])
    assert first is not None, event["message"]  # kubelet 1.34's words still parse
    assert first.image == image and first.waiting is not None and first.size and first.size > 0

    # The container may exit and kubelet pull again (imagePullPolicy: Always): each pull is
    # its own Event (or a repeat in its count). /metrics must settle on exactly what the
    # Events say, each occurrence once; nothing else pulls from this registry meanwhile.
    def agree() -> tuple[float, float] | None:
        pulls = [(pulled_image(e["message"]), int(e.get("count") or 1))
                 for pod in pods_of(dev_cluster, namespace, "pulled")
                 for e in events_of(dev_cluster, namespace, pod["metadata"]["name"])
                 if e["reason"] == "Pulled" and e["message"].startswith("Successfully pulled image")]
        now = figures()

        def grown(name: str) -> float:
            return now.get(f"pullhealth_image_pull_{name}", 0.0) - before.get(f"pullhealth_image_pull_{name}", 0.0)

        count = sum(times for _, times in pulls)
        seconds = sum(p.seconds * times for p, times in pulls if p is not None)
        size = sum((p.size or 0) * times for p, times in pulls if p is not None)
        if (grown("duration_seconds_count") == count and grown("size_bytes_count") == count
                and grown("waiting_seconds_count") == count
                and abs(grown("duration_seconds_sum") - seconds) < 1e-3 * count
                and grown("size_bytes_sum") == size):
            return count, size
        return None

    count, size = wait_for(agree, "/metrics agreeing with kubelet's Pulled Events", timeout=DIAGNOSIS_WAIT)
    assert count >= 1 and size >= first.size

    # The chart's dashboard panels on these series, evaluated by a real Prometheus that
    # scrapes the operator: each pull panel shows the world's registry (or the node's pool).
    # A rate needs an increase within its window: the first pull creates the series, the
    # container's restarts (it exits; imagePullPolicy Always) pull again.
    board = json.loads((devcluster.REPO / "charts" / "pullhealth" / "dashboards" / "pullhealth.json").read_text())
    panels = {p["title"]: p["targets"][0] for p in board["panels"] if p["title"].startswith("Image pull")}
    assert len(panels) >= 4, panels.keys()
    for title, target in panels.items():
        label, value = ("pool", POOL) if "{{pool}}" in target["legendFormat"] else ("registry", registry)
        expr = target["expr"].replace("$__rate_interval", "5m")

        def shown(expr: str = expr, label: str = label, value: str = value) -> list[dict[str, Any]]:
            return [r for r in prom.query(expr) if r["metric"].get(label) == value and r["value"][1] != "NaN"]

        (row,) = wait_for(shown, f"the dashboard's panel {title!r} showing {value}", timeout=KUBELET_WAIT)
        assert float(row["value"][1]) >= 0, (title, row)


@pytest.fixture(scope="module")
def installed(real_node: realnode.NodeState, dev_cluster: Any, no_session_operator: None,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``pullhealth-dev cluster install`` on the node: the image name it installed.

    The session's local operator is stopped meanwhile (two operators would race); the only
    extra values are tolerations of this module's taint.
    """
    harness = dev_cluster.harness
    values = tmp_path_factory.mktemp("chart") / "tolerate.yaml"
    values.write_text(json.dumps({"tolerations": [TOLERATION], "agent": {"tolerations": [TOLERATION]}}))
    # Cold: the base rootfs (mmdebstrap) and pip downloads; cached later (~1 min).
    proc = subprocess.run(
        [sys.executable, "-m", "pullhealth_dev", "cluster", "--state-dir", str(harness.state_dir),
         "install", "--values", str(values)],
        capture_output=True, text=True, timeout=1800, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    yield proc.stdout.strip()
    # Whatever a test left, the release goes (idempotent after test_uninstall).
    subprocess.run([helm_binary(), f"--kubeconfig={dev_cluster.kubeconfig}", "uninstall", RELEASE,
                    "--namespace", RELEASE, "--ignore-not-found", "--wait", "--timeout", "120s"],
                   capture_output=True, text=True, timeout=180, check=False)


def helm_binary() -> str:
    from support.helm import require_helm

    return require_helm()


def release_pods(dev_cluster: Any) -> list[dict[str, Any]]:
    out = dev_cluster.kubectl("get", "pods", "-n", RELEASE, "-o", "json").stdout
    return list(json.loads(out)["items"])


def running_and_ready(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses", [])
    return pod.get("status", {}).get("phase") == "Running" and bool(statuses) and all(s["ready"] for s in statuses)


def operator_pod(dev_cluster: Any) -> dict[str, Any]:
    pods = [p for p in release_pods(dev_cluster)
            if p["metadata"]["labels"].get("app.kubernetes.io/component") != "agent"
            and "agent" not in p["metadata"]["name"] and p["metadata"].get("deletionTimestamp") is None]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def flag(pod: dict[str, Any], name: str) -> str:
    args = pod["spec"]["containers"][0]["args"]
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"--{name}="))


def test_chart_pods_run_the_image_built_from_the_dockerfile(installed: str, dev_cluster: Any,
                                                            wait_for: Callable[..., Any]) -> None:
    def live() -> list[dict[str, Any]]:
        # A pod of the previous rollout may still be terminating (an install over an older one).
        return [p for p in release_pods(dev_cluster) if p["metadata"].get("deletionTimestamp") is None]

    try:
        wait_for(lambda: len(live()) == 2 and all(running_and_ready(p) for p in live()),
                 "the operator and agent pods, and no other, running and ready", timeout=120)
    except pytest.fail.Exception as failed:
        seen = [(p["metadata"]["name"], p["spec"].get("nodeName"), p["status"].get("phase"), running_and_ready(p))
                for p in live()]
        pytest.fail(f"{failed}; the live pods (name, node, phase, ready): {seen}")
    pods = live()
    for pod in pods:
        assert pod["spec"]["nodeName"] == realnode.NODE_NAME
        assert pod["spec"]["containers"][0]["image"] == installed
        assert pod["status"]["containerStatuses"][0]["image"] == installed
    # The chart's securityContext holds with the real image: UID 10001, read-only root.
    name = operator_pod(dev_cluster)["metadata"]["name"]
    ids = dev_cluster.kubectl("exec", "-n", RELEASE, name, "--", "python", "-c",
                              "import os; print(os.getuid(), os.access('/', os.W_OK))").stdout.split()
    assert ids == [str(IMAGE_USER), "False"]
    version = dev_cluster.kubectl("exec", "-n", RELEASE, name, "--", "pullhealth", "--version").stdout
    assert version.strip(), version


def test_chart_operator_diagnoses_what_kubelet_failed(installed: str, dev_cluster: Any, namespace: str,
                                                     wait_for: Callable[..., Any]) -> None:
    operator = operator_pod(dev_cluster)
    image = "typo-registry.invalid/team/app:v1"
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("typo", image))
    name, code = diagnosis(dev_cluster, namespace, "typo", wait_for)
    assert code == "DNS_NXDOMAIN"
    ours = wait_for(lambda: [e for e in events_of(dev_cluster, namespace, name) if e["reason"] == "PullDiagnosed"],
                    "the PullDiagnosed Event", timeout=DIAGNOSIS_WAIT)
    # Written by the operator pod, not by a process of the test.
    assert ours[0].get("reportingInstance") == operator["metadata"]["name"], ours[0]

    # /metrics, scraped where the pod listens (hostNetwork, loopback only in the local values),
    # as Prometheus does with the chart's default metrics.secure: HTTPS and a bearer token the
    # API server authenticates (TokenReview) and authorizes for GET /metrics.
    port = flag(operator, "metrics-port")
    assert flag(operator, "metrics-bind-address") == "127.0.0.1"
    role = f"{namespace}-scraper"
    dev_cluster.kubectl("-n", namespace, "create", "serviceaccount", "scraper")
    dev_cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
         "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
         "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": namespace}]},
    ]))
    token = dev_cluster.kubectl("-n", namespace, "create", "token", "scraper", "--duration=10m").stdout.strip()
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # the operator's self-signed certificate

    def scrape(bearer: str | None) -> tuple[int, str]:
        request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics",
                                         headers={"Authorization": f"Bearer {bearer}"} if bearer else {})
        try:
            with urllib.request.urlopen(request, timeout=10, context=insecure) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    def counted() -> bool:
        status, text = scrape(token)
        return status == 200 and any(line.startswith('pullhealth_diagnoses_total{code="DNS_NXDOMAIN"}')
                                     and float(line.rsplit(" ", 1)[1]) >= 1 for line in text.splitlines())

    try:
        wait_for(counted, "the diagnosis counted in /metrics", timeout=DIAGNOSIS_WAIT)
        assert scrape(None)[0] == 401  # no token, no series
    finally:
        dev_cluster.kubectl("delete", "clusterrolebinding,clusterrole", role, "--ignore-not-found", "--wait=false")


def test_chart_liveness_passes(installed: str, dev_cluster: Any, wait_for: Callable[..., Any]) -> None:
    # kubelet has probed for a while by now (initialDelaySeconds 10, periodSeconds 20).
    operator = operator_pod(dev_cluster)
    started = operator["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    name = operator["metadata"]["name"]

    def probed_twice() -> bool:
        log = dev_cluster.kubectl("logs", "-n", RELEASE, name).stdout
        return log.count('"GET /healthz') >= 2

    wait_for(probed_twice, "two liveness probes answered", timeout=KUBELET_WAIT)
    again = operator_pod(dev_cluster)
    status = again["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0 and status["state"]["running"]["startedAt"] == started
    # (A readiness probe may fail once while the operator starts: that is what it is for.)
    unhealthy = [e["message"] for e in events_of(dev_cluster, RELEASE, name) if e["reason"] == "Unhealthy"]
    assert not [m for m in unhealthy if m.startswith("Liveness")], unhealthy


def test_chart_upgrade_with_a_changed_value(installed: str, dev_cluster: Any,
                                            wait_for: Callable[..., Any]) -> None:
    before = operator_pod(dev_cluster)["metadata"]["name"]
    proc = subprocess.run([helm_binary(), f"--kubeconfig={dev_cluster.kubeconfig}", "upgrade", RELEASE,
                           str(devcluster.REPO / "charts" / "pullhealth"), "--namespace", RELEASE,
                           "--reuse-values", "--set", "pods.interval=120", "--wait", "--timeout", "300s"],
                          capture_output=True, text=True, timeout=360, check=False)
    assert proc.returncode == 0, proc.stderr

    def rolled() -> dict[str, Any] | None:
        pods = [p for p in release_pods(dev_cluster) if "agent" not in p["metadata"]["name"]]
        new = [p for p in pods if p["metadata"]["name"] != before]
        return new[0] if len(pods) == 1 and new and running_and_ready(new[0]) else None

    new = wait_for(rolled, "the upgraded operator pod", timeout=KUBELET_WAIT)
    assert flag(new, "pod-interval") == "120"


def test_chart_uninstall_leaves_nothing(installed: str, dev_cluster: Any, wait_for: Callable[..., Any]) -> None:
    proc = subprocess.run([helm_binary(), f"--kubeconfig={dev_cluster.kubeconfig}", "uninstall", RELEASE,
                           "--namespace", RELEASE, "--wait", "--timeout", "300s"],
                          capture_output=True, text=True, timeout=360, check=False)
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: release_pods(dev_cluster) == [], "the release's pods gone", timeout=KUBELET_WAIT)
    selector = f"app.kubernetes.io/instance={RELEASE}"
    left = dev_cluster.kubectl("get", "all,serviceaccounts,roles,rolebindings,configmaps,secrets", "-n", RELEASE,
                               "-l", selector, "-o", "name").stdout.split()
    assert left == []
    cluster_wide = dev_cluster.kubectl("get", "clusterroles,clusterrolebindings,validatingadmissionpolicies,"
                                       "validatingadmissionpolicybindings", "-l", selector, "-o", "name",
                                       check=False).stdout.split()
    assert cluster_wide == []

    # And on the node: no process of the image's user is left (kubelet stopped them).
    def none_left() -> bool:
        return not [p for p in Path("/proc").glob("[0-9]*") if _uid_of(p) == IMAGE_USER]

    wait_for(none_left, f"no process of UID {IMAGE_USER} on the node", timeout=KUBELET_WAIT)


def _uid_of(proc: Path) -> int | None:
    try:
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
