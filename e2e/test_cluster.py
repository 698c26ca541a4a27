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
from pullhealth_dev import node as realnode

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


def test_up_node_down_leave_no_process_mount_or_cgroup(tmp_path: Path, request: pytest.FixtureRequest,
                                                       wait_for: Any) -> None:
    """`up --node` detaches the control plane and a Ready node; a pod runs on it; `down` from
    another process stops everything, the pod's shim and container included, and leaves no
    cgroup and no mount behind."""
    if request.config.getoption("--kubeconfig"):
        pytest.skip("uses the local harness, not --kubeconfig")
    binaries = request.getfixturevalue("require_binaries")
    try:
        realnode.find_node_binaries(binaries.kube_apiserver.parent)
    except realnode.NodeError as err:
        if os.environ.get("PULLHEALTH_REQUIRE_E2E"):
            pytest.fail(f"PULLHEALTH_REQUIRE_E2E is set but {err}", pytrace=False)
        pytest.skip(f"no real node here: {err}")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pullhealth_dev", "cluster", "--state-dir", str(tmp_path), *args],
            capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )

    up = cli("up", "--node")
    assert up.returncode == 0, up.stderr
    state = json.loads((tmp_path / "state.json").read_text())
    pids = {p["name"]: p["pid"] for p in state["processes"]}
    node = realnode.NodeState.from_json(state["node"])
    cgroups = realnode.node_cgroups(node.cgroup_root)
    try:
        status = cli("status")
        assert status.returncode == 0 and "node 127.0.0.1 Ready" in status.stdout, status.stdout
        kubectl = [os.environ.get("KUBECTL", "kubectl"), f"--kubeconfig={up.stdout.strip()}"]
        pause = realnode.pause_image_name(realnode.find_node_binaries(binaries.kube_apiserver.parent).pause_archive)
        subprocess.run([*kubectl, "run", "sleeper", f"--image={pause}", "--image-pull-policy=Never",
                        "--overrides", '{"spec": {"hostNetwork": true}}'], check=True, timeout=60,
                       capture_output=True)
        wait_for(lambda: subprocess.run([*kubectl, "get", "pod", "sleeper", "-o", "jsonpath={.status.phase}"],
                                        capture_output=True, text=True, timeout=60).stdout == "Running",
                 "the pod Running on the node", timeout=120)
        assert realnode.shim_pids(node.containerd_address)
        assert any(Path(c).exists() for c in cgroups)
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert not [name for name, pid in pids.items() if _runs(pid)]
    assert realnode.shim_pids(node.containerd_address) == []
    assert [c for c in cgroups if Path(c).exists()] == []
    assert realnode.mounts_under(tmp_path) == []
