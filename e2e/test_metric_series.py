"""The operator's /metrics against a real API server: bounded labels, series of deleted
RegistryChecks stay deleted, failing-pod gauges are back at once after a restart."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from support import guard
from support.kubelet import annotations, fail_pull, kubelet_message, make_pod
from support.objects import regcheck_yaml
from support.operatorproc import OperatorProcess
from support.world import World

if TYPE_CHECKING:
    from conftest import Cluster

guard.install()

ROOT = Path(__file__).resolve().parents[1]
PEERING_CRDS = ROOT / "charts" / "pullhealth" / "crds" / "kopf-peering.yaml"


def series_of(text: str, **labels: str) -> list[str]:
    """Sample lines of pullhealth_* series carrying all of ``labels``."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return [line for line in text.splitlines()
            if line.startswith("pullhealth_") and all(w in line for w in wanted)]


def test_a_registrycheck_deleted_mid_check_gets_no_series_back(
    dev_cluster: Cluster, operator: OperatorProcess, world: World, namespace: str, wait_for: Any,
) -> None:
    k = dev_cluster.kubectl
    # The silent registry accepts TCP and never answers: the check runs for its timeout.
    k("-n", namespace, "apply", "-f", "-", stdin=regcheck_yaml("slow", {"registry": world.silent}, timeout=4))

    def phase() -> str:
        obj = json.loads(k("-n", namespace, "get", "regcheck", "slow", "-o", "json").stdout)
        return str((obj.get("status") or {}).get("phase") or "")

    wait_for(lambda: phase() == "Pending", "the first check running", timeout=30)
    # --wait=false: whether the object lingers (finalizers) is not what this test is about.
    k("-n", namespace, "delete", "regcheck", "slow", "--wait=false")
    # The run in flight is cancelled or ends when its calls time out (4 s each); either
    # way nothing it does afterwards may export the deleted object's series again.
    time.sleep(8)
    assert series_of(operator.metrics(), namespace=namespace, name="slow") == []
    # Its registry is no longer named by any RegistryCheck: no per-registry series either.
    assert series_of(operator.metrics(), registry=world.silent) == []


def test_pod_gauges_are_bounded_and_back_at_once_after_a_restart(
    operator: OperatorProcess, world: World, namespace: str, api: Any, wait_for: Any,
) -> None:
    # A registry no RegistryCheck names and the admin did not list: counted as "other".
    image = f"{world.silent}/team/app:v1"
    pod = make_pod(api, namespace, "unnamed", image)
    fail_pull(api, namespace, pod, image, kubelet_message("tag_not_found", image))
    code = wait_for(lambda: annotations(api, namespace, "unnamed").get("pullhealth.io/diagnosis"),
                    "diagnosis", timeout=60)
    gauge = f'pullhealth_pod_pull_failures{{code="{code}",namespace="{namespace}",registry="other"}} 1.0'
    wait_for(lambda: gauge in operator.metrics(), "the failing container counted", timeout=15)
    text = operator.metrics()
    assert world.silent not in text, [line for line in text.splitlines() if world.silent in line]
    assert re.search(r'^pullhealth_build_info\{python_version="[\d.]+",version="[^"]+"\} 1\.0$', text, re.M)

    # After a restart the count comes from the pod's annotations as soon as kopf lists the
    # pod, long before a new probe of the silent registry could finish (its TLS handshake
    # times out after 10 s).
    operator.stop()
    operator.start()
    started = time.monotonic()
    wait_for(lambda: gauge in operator.metrics(), "the failing container counted again", timeout=8)
    assert time.monotonic() - started < 8


def test_a_demoted_replica_stops_exporting_registry_checks(
    dev_cluster: Cluster, world: World, namespace: str, wait_for: Any, tmp_path: Path,
) -> None:
    """HA: the replica that was active until a newer one outranked it keeps its check loops
    but their status is no longer updated; it must not export it (a stale "healthy" next to
    the active replica's "unhealthy" would hide the alert)."""
    k = dev_cluster.kubectl
    peering = f"e2e-metrics-{namespace[-6:]}"
    for path, crd in ((ROOT / "crds" / "registrychecks.pullhealth.io.yaml", "registrychecks.pullhealth.io"),
                      (PEERING_CRDS, "clusterkopfpeerings.kopf.dev")):
        k("apply", "-f", str(path))
        wait_for(lambda c=crd: "True" in k("get", "crd", c, "-o", "jsonpath={.status.conditions"
                                           "[?(@.type=='Established')].status}").stdout, f"{crd} established")
    k("apply", "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}}))

    def replica(name: str) -> OperatorProcess:
        return OperatorProcess(dev_cluster.kubeconfig, world, tmp_path / f"{name}.log", ["--peering", peering],
                               env={"POD_NAME": name, "POD_ID": name})

    healthy = f'pullhealth_registry_check_healthy{{name="bad",namespace="{namespace}",registry="{world.anon}"}}'
    older, newer = replica("pullhealth-old"), replica("pullhealth-new")
    with OperatorProcess.others_stopped():
        try:
            older.start()
            k("-n", namespace, "apply", "-f", "-", stdin=regcheck_yaml(
                "bad", {"registry": world.anon, "image": "team/app:v9"}, interval=300))
            wait_for(lambda: f"{healthy} 0.0" in older.metrics(), "the active replica exporting", timeout=60)
            newer.start()  # the newest replica has the highest priority: it takes over
            wait_for(lambda: "Pausing operations in favour of" in older.text(), "the old replica paused",
                     timeout=30)
            wait_for(lambda: healthy not in older.metrics(), "the paused replica withdrawing", timeout=20)
            wait_for(lambda: f"{healthy} 0.0" in newer.metrics(), "the new active replica exporting", timeout=30)
            time.sleep(6)  # a few more wake-ups of the old replica's loop: still nothing
            assert healthy not in older.metrics()
            assert not series_of(older.metrics(), namespace=namespace)
        finally:
            newer.stop()
            older.stop()
            k("delete", "clusterkopfpeering", peering, "--ignore-not-found", "--wait=false")


def test_metrics_are_served_only_to_tokens_the_api_server_authorizes(
    dev_cluster: Cluster, world: World, namespace: str, tmp_path: Path,
) -> None:
    """Issue 21: any pod could read every namespace's series; now /metrics is HTTPS and
    needs a token that a TokenReview authenticates and a SubjectAccessReview lets GET
    /metrics (kube-rbac-proxy's rule), checked against the real API server."""
    import ssl
    import urllib.error
    import urllib.request

    k = dev_cluster.kubectl
    for sa in ("nobody", "reader"):
        k("-n", namespace, "create", "serviceaccount", sa)
    role = f"{namespace}-metrics-reader"
    k("apply", "-f", "-", stdin=yaml.safe_dump_all([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
         "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
         "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]},
    ]))
    tokens = {sa: k("-n", namespace, "create", "token", sa, "--duration=10m").stdout.strip()
              for sa in ("nobody", "reader")}
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # the operator's self-signed certificate

    try:
        with OperatorProcess.others_stopped(), OperatorProcess(
            dev_cluster.kubeconfig, world, tmp_path / "operator.log", ["--metrics-secure"]
        ) as op:
            url = f"https://127.0.0.1:{op.metrics_port}/metrics"

            def get(token: str | None) -> tuple[int, str]:
                request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
                try:
                    with urllib.request.urlopen(request, timeout=10, context=insecure) as response:
                        return response.status, response.read().decode()
                except urllib.error.HTTPError as exc:
                    return exc.code, ""

            assert get(None)[0] == 401
            assert get("not-a-token")[0] == 401
            assert get(tokens["nobody"])[0] == 403
            status, body = get(tokens["reader"])
            assert status == 200 and "pullhealth_" in body, status
            # Plain HTTP is not served at all.
            with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
                urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5).read()
    finally:
        k("delete", "clusterrolebinding,clusterrole", role, "--ignore-not-found")
