"""The local control plane is real: API, RBAC, controllers, clean shutdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pullhealth_dev import cluster as devcluster

if TYPE_CHECKING:
    from conftest import Cluster

Waiter = Callable[..., Any]


def test_apiserver_is_ready(dev_cluster: Cluster) -> None:
    readyz = dev_cluster.kubectl("get", "--raw", "/readyz?verbose").stdout
    assert "readyz check passed" in readyz
    if dev_cluster.harness is not None:
        version = json.loads(dev_cluster.kubectl("version", "-o", "json").stdout)
        assert version["serverVersion"]["gitVersion"] == devcluster.K8S_VERSION


def test_kubectl_lists_namespaces(dev_cluster: Cluster) -> None:
    names = dev_cluster.kubectl("get", "namespaces", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system"} <= set(names)


def test_new_namespace_gets_default_service_account(
    dev_cluster: Cluster, namespace: str, wait_for: Waiter
) -> None:
    # Created by kube-controller-manager's serviceaccount controller, not the API server.
    wait_for(
        lambda: (
            dev_cluster.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode
            == 0
        ),
        f"ServiceAccount {namespace}/default",
    )


def test_garbage_collector_deletes_orphaned_dependent(
    dev_cluster: Cluster, namespace: str, wait_for: Waiter
) -> None:
    dev_cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = dev_cluster.kubectl(
        "get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    dev_cluster.kubectl("create", "-f", "-", stdin=json.dumps(dependent))
    # Orphan the dependent from the API server's point of view: only the garbage
    # collector (in kube-controller-manager) can notice the owner is gone.
    dev_cluster.kubectl("delete", "configmap", "owner", "-n", namespace, "--cascade=background")
    wait_for(
        lambda: (
            dev_cluster.kubectl(
                "get", "configmap", "dependent", "-n", namespace, "--ignore-not-found", "-o", "name"
            ).stdout.strip()
            == ""
        ),
        "the garbage collector to delete the dependent ConfigMap",
    )


def test_service_account_token_gets_exactly_its_rbac(
    dev_cluster: Cluster, namespace: str, tmp_path: Path, wait_for: Waiter
) -> None:
    dev_cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = dev_cluster.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    config = dev_cluster.token_kubeconfig(token, tmp_path / "reader.kubeconfig", namespace)

    whoami = dev_cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=config).stdout
    assert json.loads(whoami)["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{namespace}:reader"
    )
    denied = dev_cluster.kubectl("get", "configmaps", kubeconfig=config, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()

    dev_cluster.kubectl("create", "role", "read-cm", "--verb=list", "--resource=configmaps", "-n", namespace)
    dev_cluster.kubectl(
        "create", "rolebinding", "read-cm", "--role=read-cm",
        f"--serviceaccount={namespace}:reader", "-n", namespace,
    )  # fmt: skip
    wait_for(
        lambda: dev_cluster.kubectl("get", "configmaps", kubeconfig=config, check=False).returncode == 0,
        "the RoleBinding to take effect",
        timeout=30,
    )


def test_up_down_leave_no_process(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """`up` detaches a second cluster, `down` from another process stops all of it."""
    if request.config.getoption("--kubeconfig"):
        pytest.skip("uses the local harness, not --kubeconfig")
    request.getfixturevalue("require_binaries")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pullhealth_dev", "cluster", "--state-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )

    up = cli("up")
    assert up.returncode == 0, up.stderr
    kubeconfig = Path(up.stdout.strip())
    assert kubeconfig.is_file()
    assert cli("kubeconfig").stdout.strip() == str(kubeconfig)
    state = json.loads((tmp_path / "state.json").read_text())
    pids = {p["name"]: p["pid"] for p in state["processes"]}
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    try:
        status = cli("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "ready" in status.stdout
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    running = [name for name, pid in pids.items() if _runs(pid)]
    assert not running, f"still running after down: {running}"
    assert cli("status").returncode == 3


def _runs(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (reaping is init's job)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
