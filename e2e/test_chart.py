"""The Helm chart against a real API server: its RBAC is enough, and not more.

``helm template`` renders charts/pullhealth; the objects go through
``kubectl apply --dry-run=server`` and then for real into a namespace that enforces the
restricted Pod Security Standard (so the ReplicaSet can only create the operator's pod
if the chart's securityContext is restricted; no kubelet ever runs it). The operator
then runs as a local process with a token of the chart's ServiceAccount, so every API
call it makes is authorised by exactly the chart's ClusterRole, against real registries
from the test world.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kubernetes
import pytest
import yaml

from support import guard
from support.chart import Installed, dump, install_chart, limited_account, render, wait_deletes_refused
from support.helm import require_helm
from support.kubelet import annotations, ensure_node, fail_pull, kubelet_message, make_pod
from support.objects import docker_secret_yaml, regcheck_yaml
from support.operatorproc import OperatorProcess
from support.world import World

if TYPE_CHECKING:
    from conftest import Cluster

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "pullhealth"

guard.install()
# This module runs its own operator with the chart's rights; the session's would race it.
pytestmark = pytest.mark.usefixtures("no_session_operator")

Waiter = Callable[..., Any]


@pytest.fixture(scope="module")
def installed(dev_cluster: Cluster) -> Iterator[Installed]:
    """The chart with default values, applied like `helm install` would."""
    with install_chart(dev_cluster, require_helm(), "pullhealth-chart") as chart:
        yield chart


def rbac_denials(text: str) -> list[str]:
    """Log lines of requests that RBAC refused (not e.g. a namespace being deleted)."""
    return [line for line in text.splitlines() if 'forbidden: User \\"system:serviceaccount:' in line
            or 'forbidden: User "system:serviceaccount:' in line]


def status_of(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("-n", ns, "get", "regcheck", name, "-o", "json").stdout
    return dict(json.loads(out).get("status") or {})


def test_chart_objects_are_admitted_and_restricted(installed: Installed, wait_for: Waiter) -> None:
    """The Deployment's pod passes restricted Pod Security admission (created by the ReplicaSet)."""
    k = installed.cluster.kubectl
    deployment = installed.one("Deployment")
    selector = ",".join(f"{key}={value}" for key, value in deployment["spec"]["selector"]["matchLabels"].items())

    def pod() -> dict[str, Any] | None:
        items = json.loads(k("-n", installed.namespace, "get", "pods", "-l", selector, "-o", "json").stdout)["items"]
        return items[0] if items else None

    def replica_failure() -> str:
        sets = json.loads(k("-n", installed.namespace, "get", "replicasets", "-o", "json").stdout)["items"]
        return json.dumps([c for rs in sets for c in rs.get("status", {}).get("conditions", [])])

    created = wait_for(lambda: pod() or (None if "ReplicaFailure" not in replica_failure() else "failed"),
                       "the operator pod (restricted admission)")
    assert created != "failed", replica_failure()
    assert created["spec"]["serviceAccountName"] == installed.service_account
    # No kubelet: the pod stays Pending, which is all this test needs.


def test_operator_works_with_exactly_the_chart_rbac(
    dev_cluster: Cluster, installed: Installed, world: World, namespace: str, wait_for: Waiter, tmp_path: Path,
) -> None:
    """RegistryChecks reach the right status with only the chart's ServiceAccount rights."""
    kubeconfig = installed.token_kubeconfig(tmp_path / "operator.kubeconfig")
    as_operator = dev_cluster.kubectl
    # Least privilege, as the API server sees it.
    for verb, resource, subresource, expected in (
        ("get", "secrets", "", "yes"), ("list", "secrets", "", "no"), ("watch", "secrets", "", "no"),
        ("patch", "registrychecks.pullhealth.io", "status", "yes"), ("create", "pods", "", "no"),
        ("delete", "registrychecks.pullhealth.io", "", "no"), ("create", "serviceaccounts", "token", "no"),
        ("update", "registrychecks.pullhealth.io", "status", "no"),
    ):
        args = ["auth", "can-i", verb, resource, "-A"] + ([f"--subresource={subresource}"] if subresource else [])
        result = as_operator(*args, check=False, kubeconfig=kubeconfig)
        assert result.stdout.strip() == expected, (args, result.stdout, result.stderr)

    k = dev_cluster.kubectl
    k("-n", namespace, "apply", "-f", "-", stdin=docker_secret_yaml("acr-good", world.acr, *world.acr_puller))
    k("-n", namespace, "apply", "-f", "-", stdin=docker_secret_yaml("basic-cred", world.basic, *world.basic_user))
    k("-n", namespace, "apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "puller"},
        "imagePullSecrets": [{"name": "basic-cred"}]}))
    cases = {
        "healthy": ({"registry": world.anon, "image": "library/alpine:3.19", "auth": {"mode": "anonymous"}},
                    "Healthy", "OK"),
        "goodsecret": ({"registry": world.acr, "image": "team/app:v1", "auth": {"pullSecrets": ["acr-good"]}},
                       "Healthy", "OK"),
        "sasecret": ({"registry": world.basic, "image": "team/app:v1",
                      "auth": {"mode": "serviceAccount", "serviceAccountName": "puller"}}, "Healthy", "OK"),
        "nosecret": ({"registry": world.acr, "image": "team/app:v1", "auth": {"pullSecrets": ["absent"]}},
                     "Unhealthy", "PULL_SECRET_MISSING"),
    }
    with OperatorProcess(kubeconfig, world, tmp_path / "operator.log") as op:
        for name, (spec, _, _) in cases.items():
            k("-n", namespace, "apply", "-f", "-", stdin=regcheck_yaml(name, spec))
        for name, (_, phase, code) in cases.items():
            status = wait_for(lambda n=name: (s := status_of(dev_cluster, namespace, n)).get("code") and s,
                              f"status of {name}", timeout=60)
            assert (status["phase"], status["code"]) == (phase, code), (name, status, op.text()[-3000:])
        # Failing pods, diagnosed and annotated with the chart's rights too.
        api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(
            config_file=str(dev_cluster.kubeconfig)))
        ensure_node(api)
        pods = {
            "pod-nosecret": (f"{world.acr}/team/app:v1", ["absent"], "token_no_credentials_private_repo",
                             "PULL_SECRET_MISSING"),
            "pod-sa-secret-tag": (f"{world.basic}/team/app:v9", ["basic-cred"], "htpasswd_tag_not_found",
                                  "TAG_NOT_FOUND"),
        }
        for name, (image, secrets, mode, _) in pods.items():
            pod = make_pod(api, namespace, name, image, secrets)
            fail_pull(api, namespace, pod, image, kubelet_message(mode, image))
        for name, (*_, code) in pods.items():
            got = wait_for(lambda n=name: annotations(api, namespace, n).get("pullhealth.io/diagnosis"),
                           f"diagnosis of {name}", timeout=60)
            assert got == code, (name, op.text()[-3000:])
        # Events were posted with the chart's rights.
        events = json.loads(k("-n", namespace, "get", "events", "-o", "json").stdout)["items"]
        reasons = {(e["involvedObject"]["name"], e["reason"]) for e in events}
        assert ("healthy", "CheckSucceeded") in reasons and ("nosecret", "CheckFailed") in reasons, reasons
        assert ("pod-nosecret", "PullDiagnosed") in reasons, reasons
        log = op.text()
    assert not rbac_denials(log), rbac_denials(log)[:3]
    for secret in (world.acr_puller[1], world.basic_user[1]):
        assert secret not in log


def test_operator_account_can_change_only_its_annotations_on_pods(
    dev_cluster: Cluster, installed: Installed, namespace: str, tmp_path: Path,
) -> None:
    """RBAC grants pods patch; the chart's ValidatingAdmissionPolicy, enforced by the real API
    server, limits it to pullhealth.io/* annotations."""
    installed.one("ValidatingAdmissionPolicy")
    kubeconfig = installed.token_kubeconfig(tmp_path / "operator.kubeconfig")
    api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(
        config_file=str(dev_cluster.kubeconfig)))
    make_pod(api, namespace, "victim", "registry.test/team/app:v1", [])

    def patch(body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return dev_cluster.kubectl("-n", namespace, "patch", "pod", "victim", "--type=strategic",
                                   "-p", json.dumps(body), check=False, kubeconfig=kubeconfig)

    # A pullhealth.io key the running operator does not manage (it clears its own keys on
    # pods that do not fail, and another test's operator may be watching this namespace).
    ok = patch({"metadata": {"annotations": {"pullhealth.io/admission-test": "allowed"}}})
    assert ok.returncode == 0, ok.stderr
    for attack in (
        {"spec": {"containers": [{"name": "app", "image": "attacker.test/evil:1"}]}},
        {"metadata": {"labels": {"app": "hijacked"}}},
        {"metadata": {"annotations": {"other.io/owner": "attacker"}}},
        {"metadata": {"annotations": {"pullhealth.io/admission-test": None, "kubectl.kubernetes.io/x": "y"}}},
    ):
        refused = patch(attack)
        assert refused.returncode != 0, attack
        assert "ValidatingAdmissionPolicy" in refused.stderr and "pullhealth" in refused.stderr, refused.stderr
    pod = api.read_namespaced_pod("victim", namespace)
    assert pod.spec.containers[0].image == "registry.test/team/app:v1"
    assert (pod.metadata.annotations or {}).get("pullhealth.io/admission-test") == "allowed"


def test_operator_account_can_delete_only_recoverable_controlled_pods(
    dev_cluster: Cluster, namespace: str, tmp_path: Path, wait_for: Waiter,
) -> None:
    """With pods.restartRecovered RBAC grants pods delete; the chart's second policy, enforced
    by the real API server, limits it to pods announced recoverable that a ReplicaSet,
    StatefulSet or DaemonSet controls."""
    # Its own names: the module's chart (the same release) keeps its cluster-scoped objects.
    with install_chart(dev_cluster, require_helm(), "pullhealth-restart", "fullnameOverride=pullhealth-restart",
                       "pods.restartRecovered=labelled") as chart:
        assert any(o["metadata"]["name"].endswith("-pod-deletes") for o in chart.objects
                   if o["kind"] == "ValidatingAdmissionPolicy")
        kubeconfig = chart.token_kubeconfig(tmp_path / "operator.kubeconfig")
        api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(
            config_file=str(dev_cluster.kubeconfig)))
        ensure_node(api)
        apps = kubernetes.client.AppsV1Api(api.api_client)
        apps.create_namespaced_replica_set(namespace, {
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                         "nodeName": "pullhealth-e2e-node", "containers": [{"name": "app", "image": "r.test/a:1"}]}}}})
        owned = wait_for(lambda: api.list_namespaced_pod(namespace, label_selector="app=web").items, "RS pod")[0]
        make_pod(api, namespace, "bare", "r.test/a:1")

        def delete(name: str) -> subprocess.CompletedProcess[str]:
            return dev_cluster.kubectl("-n", namespace, "delete", "pod", name, "--wait=false", check=False,
                                       kubeconfig=kubeconfig)

        wait_deletes_refused(dev_cluster, namespace, owned.metadata.name, wait_for, kubeconfig)

        def mark(name: str) -> None:
            api.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": {
                "pullhealth.io/recoverable-since": "2026-12-03T10:00:00Z"}}})

        refused = delete(owned.metadata.name)  # not announced recoverable
        assert refused.returncode != 0 and "recoverable-since" in refused.stderr, refused.stderr
        mark("bare")
        refused = delete("bare")  # announced, but nothing would recreate it
        assert refused.returncode != 0 and "ReplicaSet, StatefulSet or DaemonSet" in refused.stderr, refused.stderr
        assert api.read_namespaced_pod("bare", namespace).metadata.deletion_timestamp is None
        mark(owned.metadata.name)
        allowed = delete(owned.metadata.name)
        assert allowed.returncode == 0, allowed.stderr


def test_missing_verb_is_reported_once_and_not_retried_hot(
    dev_cluster: Cluster, installed: Installed, world: World, namespace: str, wait_for: Waiter, tmp_path: Path,
) -> None:
    """Without patch on registrychecks/status: a clear permission error, no hot loop."""
    k = dev_cluster.kubectl

    def no_status_patch(rule: dict[str, Any]) -> None:
        if rule["resources"] == ["registrychecks/status"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "patch"]

    with limited_account(dev_cluster, installed, tmp_path, no_status_patch) as kubeconfig, \
            OperatorProcess(kubeconfig, world, tmp_path / "operator.log") as op:
        k("-n", namespace, "apply", "-f", "-", stdin=regcheck_yaml("healthy", {
            "registry": world.anon, "image": "library/alpine:3.19", "auth": {"mode": "anonymous"}}))

        wait_for(lambda: rbac_denials(op.text()), "a permission error in the operator log", timeout=60)
        before = len(op.lines())
        time.sleep(10)
        grown = len(op.lines()) - before
        text = op.text()
    # Clear: the log names the refused request and what to grant, once per check interval.
    errors = rbac_denials(text)
    assert errors and all('cannot patch resource \\"registrychecks/status\\"' in line for line in errors), errors[:3]
    assert all("grant patch on registrychecks/status" in line for line in errors), errors[:3]
    assert len(errors) == 1, errors
    # Not hot: a handful of lines in 10 s (one timer tick is 5 s), not hundreds.
    assert grown <= 20, f"{grown} log lines in 10 s:\n" + "\n".join(text.splitlines()[-30:])
    assert not status_of(dev_cluster, namespace, "healthy").get("phase")


def test_rbac_of_an_older_chart_still_diagnoses_pods(
    dev_cluster: Cluster, installed: Installed, world: World, namespace: str, wait_for: Waiter, tmp_path: Path,
) -> None:
    """Only get on ServiceAccounts and Nodes (the chart before their watches): one ERROR per
    kind saying what to grant, and failing pods are still diagnosed, reading them by GET."""

    def get_only(rule: dict[str, Any]) -> None:
        if rule["resources"] in (["serviceaccounts"], ["nodes"]):
            rule["verbs"] = ["get"]

    api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(
        config_file=str(dev_cluster.kubeconfig)))
    ensure_node(api)
    image = f"{world.anon}/team/app:older-rbac"
    with limited_account(dev_cluster, installed, tmp_path, get_only) as kubeconfig, \
            OperatorProcess(kubeconfig, world, tmp_path / "operator.log") as op:
        pod = make_pod(api, namespace, "older-rbac", image, [])
        fail_pull(api, namespace, pod, image, kubelet_message("tag_not_found", image))
        got = wait_for(lambda: annotations(api, namespace, "older-rbac").get("pullhealth.io/diagnosis"),
                       "the pod diagnosed", timeout=60)
        text = op.text()
    assert got == "TAG_NOT_FOUND", text[-3000:]
    for kind in ("serviceaccounts", "nodes"):
        said = [line for line in text.splitlines() if f"cannot list/watch {kind}" in line]
        assert len(said) == 1 and f"grant list and watch on {kind}" in said[0], said
        assert "read with a GET per object instead" in said[0], said


def test_helm_install_and_uninstall(dev_cluster: Cluster, tmp_path: Path) -> None:
    """A real `helm install` (CRDs from crds/, templates, NOTES) and `helm uninstall`."""
    helm = require_helm()
    ns = f"pullhealth-helm-{uuid.uuid4().hex[:6]}"
    release = f"e2e-helm-{uuid.uuid4().hex[:4]}"
    env = {**os.environ, "KUBECONFIG": str(dev_cluster.kubeconfig), "HELM_CACHE_HOME": str(tmp_path / "cache"),
           "HELM_CONFIG_HOME": str(tmp_path / "config"), "HELM_DATA_HOME": str(tmp_path / "data")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    try:
        out = run("install", release, str(CHART), "--namespace", ns, "--create-namespace",
                  "--set", "prometheusRule.enabled=false").stdout
        assert "kubectl get regcheck -A" in out and "STATUS: deployed" in out, out
        assert dev_cluster.kubectl("get", "crd", "registrychecks.pullhealth.io", "clusterkopfpeerings.kopf.dev",
                                   "kopfpeerings.kopf.dev").returncode == 0
        assert dev_cluster.kubectl("-n", ns, "get", "deployment", f"{release}-pullhealth").returncode == 0
        run("uninstall", release, "--namespace", ns, "--wait", "--timeout", "60s")
        left = dev_cluster.kubectl("get", "clusterrole", f"{release}-pullhealth", check=False)
        assert left.returncode != 0 and "NotFound" in left.stderr
        # Helm never deletes CRDs: RegistryChecks survive an uninstall.
        dev_cluster.kubectl("get", "crd", "registrychecks.pullhealth.io")
    finally:
        subprocess.run([helm, "uninstall", release, "--namespace", ns, "--ignore-not-found"],
                       capture_output=True, timeout=120, check=False, env=env)
        dev_cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


def test_uninstall_then_crd_delete_leaves_nothing(dev_cluster: Cluster, namespace: str, world: World,
                                                  tmp_path: Path, wait_for: Waiter) -> None:
    """docs/install.md "Uninstall": helm uninstall, then the CRDs; nothing is left, nothing hangs.

    The CRDs are applied again afterwards: the other tests of the session use them.
    """
    helm = require_helm()
    k = dev_cluster.kubectl
    ns = f"pullhealth-gone-{uuid.uuid4().hex[:6]}"
    release = f"e2e-gone-{uuid.uuid4().hex[:4]}"
    env = {**os.environ, "KUBECONFIG": str(dev_cluster.kubeconfig), "HELM_CACHE_HOME": str(tmp_path / "cache"),
           "HELM_CONFIG_HOME": str(tmp_path / "config"), "HELM_DATA_HOME": str(tmp_path / "data")}

    def helm_run(*args: str) -> None:
        result = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False, env=env)
        assert result.returncode == 0, result.stdout + result.stderr

    crd_names = ["registrychecks.pullhealth.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]
    try:
        helm_run("install", release, str(CHART), "--namespace", ns, "--create-namespace",
                 "--set", "prometheusRule.enabled=false")
        k("-n", namespace, "apply", "-f", "-", stdin=regcheck_yaml("left-behind", {"registry": world.anon}))
        helm_run("uninstall", release, "--namespace", ns, "--wait", "--timeout", "60s")
        # What the doc says stays: the CRDs and the RegistryChecks.
        assert k("-n", namespace, "get", "regcheck", "left-behind").returncode == 0
        started = time.monotonic()
        k("delete", "-f", str(CHART / "crds"), "--timeout=30s")
        assert time.monotonic() - started < 30
        k("delete", "namespace", ns, "--timeout=60s")
        for crd in crd_names:
            assert "NotFound" in k("get", "crd", crd, check=False).stderr
        assert "pullhealth.io" not in k("api-resources", "-o", "name").stdout
        for kind in ("clusterrole", "clusterrolebinding"):
            names = k("get", kind, "-o", "name").stdout
            assert release not in names, names
        assert "NotFound" in k("get", "namespace", ns, check=False).stderr
    finally:
        subprocess.run([helm, "uninstall", release, "--namespace", ns, "--ignore-not-found"],
                       capture_output=True, timeout=120, check=False, env=env)
        k("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
        k("apply", "-f", str(CHART / "crds"))
        for crd in crd_names:
            # (kubectl wait fails at once while a new CRD has no conditions yet)
            wait_for(lambda c=crd: k("get", "crd", c, "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                                     check=False).stdout == "True", f"{crd} established", timeout=60)


def test_peering_rbac_lets_the_operator_keep_alive(
    dev_cluster: Cluster, installed: Installed, world: World, namespace: str, wait_for: Waiter, tmp_path: Path,
) -> None:
    """peering.enabled: the ClusterKopfPeering exists and the chart's RBAC lets kopf use it."""
    k = dev_cluster.kubectl
    objects = render(require_helm(), installed.namespace, "peering.enabled=true", "peering.name=e2e-chart")
    rest = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
    peering = next(o for o in rest if o["kind"] == "ClusterKopfPeering")
    k("apply", "-f", "-", stdin=dump(rest))
    try:
        kubeconfig = installed.token_kubeconfig(tmp_path / "operator.kubeconfig")
        with OperatorProcess(kubeconfig, world, tmp_path / "operator.log", ["--peering", "e2e-chart"]) as op:
            k("-n", namespace, "apply", "-f", "-", stdin=regcheck_yaml("healthy", {
                "registry": world.anon, "image": "library/alpine:3.19", "auth": {"mode": "anonymous"}}))

            def keepalive() -> dict[str, Any] | None:
                obj = json.loads(k("get", "clusterkopfpeering", "e2e-chart", "-o", "json").stdout)
                return obj.get("status") or None

            wait_for(keepalive, "the operator's keep-alive in the ClusterKopfPeering", timeout=60)
            status = wait_for(lambda: (s := status_of(dev_cluster, namespace, "healthy")).get("code") and s,
                              "status of healthy (peering)", timeout=60)
            assert (status["phase"], status["code"]) == ("Healthy", "OK"), (status, op.text()[-3000:])
            log = op.text()
        assert not rbac_denials(log), rbac_denials(log)[:3]
    finally:
        k("delete", "clusterkopfpeering", peering["metadata"]["name"], "--ignore-not-found", "--wait=false")
        # Back to the default values for any later test.
        k("apply", "-f", "-", stdin=dump([o for o in installed.objects if o["kind"] != "CustomResourceDefinition"]))
