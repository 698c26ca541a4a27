"""The Helm chart applied to a real API server, for e2e tests that need its exact RBAC.

``helm template`` renders charts/pullhealth (with the API versions the local control plane
serves, so the ValidatingAdmissionPolicy is included); the objects go through
``kubectl apply --dry-run=server`` and then for real into a namespace that enforces the
restricted Pod Security Standard. Tests run the operator as a local process with a token
of the chart's ServiceAccount (:meth:`Installed.token_kubeconfig`).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "pullhealth"
RELEASE = "e2e-chart"
# The local control plane (Kubernetes 1.34) serves these; `helm install` would ask it.
API_VERSIONS = ("admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",)
CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingWebhookConfiguration",
                  "ValidatingAdmissionPolicyBinding")


class _Cluster(Protocol):
    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]: ...

    def token_kubeconfig(self, token: str, path: Path, namespace: str | None = None) -> Path: ...


def render(helm: str, namespace: str, *sets: str) -> list[dict[str, Any]]:
    """``helm template`` with the CRDs, as parsed objects."""
    args = [helm, "template", RELEASE, str(CHART), "--namespace", namespace, "--include-crds"]
    for version in API_VERSIONS:
        args += ["--api-versions", version]
    for value in sets:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def dump(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


class Installed:
    """The chart applied to the cluster: its namespace, objects and ServiceAccount."""

    def __init__(self, cluster: _Cluster, namespace: str, objects: list[dict[str, Any]]) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.objects = objects
        self.service_account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]

    def one(self, kind: str) -> dict[str, Any]:
        (obj,) = [o for o in self.objects if o["kind"] == kind]
        return obj

    def token_kubeconfig(self, path: Path, service_account: str | None = None) -> Path:
        """A kubeconfig that authenticates as the (chart's) ServiceAccount."""
        token = self.cluster.kubectl(
            "-n", self.namespace, "create", "token", service_account or self.service_account, "--duration=1h"
        ).stdout.strip()
        return self.cluster.token_kubeconfig(token, path)


@contextlib.contextmanager
def install_chart(cluster: _Cluster, helm: str, prefix: str, *sets: str) -> Iterator[Installed]:
    """Apply the rendered chart (with ``--set`` values) in a fresh restricted namespace."""
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    k = cluster.kubectl
    k("create", "namespace", ns)
    # The namespace admits only pods that meet the restricted Pod Security Standard.
    k("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
      "pod-security.kubernetes.io/warn=restricted")
    objects = render(helm, ns, *sets)
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    rest = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
    cluster_scoped = [o for o in rest if o["kind"] in CLUSTER_SCOPED]
    try:
        k("apply", "--dry-run=server", "-f", "-", stdin=dump(crds))
        k("apply", "-f", "-", stdin=dump(crds))
        for crd in crds:
            k("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s")
        dry = k("apply", "--dry-run=server", "-f", "-", stdin=dump(rest))
        assert "PodSecurity" not in dry.stderr, dry.stderr
        applied = k("apply", "-f", "-", stdin=dump(rest))
        assert "Warning" not in applied.stderr, applied.stderr
        yield Installed(cluster, ns, objects)
    finally:
        for obj in cluster_scoped:
            k("delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", "--wait=false")
        k("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


@contextlib.contextmanager
def limited_account(cluster: _Cluster, installed: Installed, tmp_path: Path,
                    narrow: Callable[[dict[str, Any]], None]) -> Iterator[Path]:
    """A ServiceAccount bound to a copy of the chart's ClusterRole whose rules ``narrow``
    edits in place (a rule left with no verb is dropped); yields a kubeconfig with its token."""
    k = cluster.kubectl
    limited = f"{RELEASE}-limited-{uuid.uuid4().hex[:4]}"
    role = json.loads(json.dumps(installed.one("ClusterRole")))
    role["metadata"] = {"name": limited}
    for rule in role["rules"]:
        narrow(rule)
    role["rules"] = [rule for rule in role["rules"] if rule["verbs"]]
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": limited},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": limited},
        "subjects": [{"kind": "ServiceAccount", "name": limited, "namespace": installed.namespace}],
    }
    k("-n", installed.namespace, "create", "serviceaccount", limited)
    k("apply", "-f", "-", stdin=dump([role, binding]))
    try:
        yield installed.token_kubeconfig(tmp_path / "limited.kubeconfig", limited)
    finally:
        k("delete", "clusterrolebinding", limited, "--ignore-not-found", "--wait=false")
        k("delete", "clusterrole", limited, "--ignore-not-found", "--wait=false")


def wait_deletes_refused(cluster: _Cluster, namespace: str, pod: str, wait_for: Callable[..., Any],
                         kubeconfig: Path | None = None) -> None:
    """Wait until admission refuses deleting ``pod`` (a server-side dry run: nothing is
    deleted). The API server enforces a new ValidatingAdmissionPolicy a moment after it is
    created: its admission plugin reads the policy and its binding through a watch, then
    type-checks them."""
    wait_for(lambda: cluster.kubectl("-n", namespace, "delete", "pod", pod, "--wait=false", "--dry-run=server",
                                     check=False, kubeconfig=kubeconfig).returncode != 0,
             "the new policy enforced on deletes", timeout=30)
