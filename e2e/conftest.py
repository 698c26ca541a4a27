"""Fixtures for tests against a real Kubernetes API server.

By default a session-wide local control plane (etcd, kube-apiserver,
kube-controller-manager from ``hack/build-k8s.sh``) is started with
:mod:`pullhealth_dev.cluster`. ``pytest e2e --kubeconfig PATH`` uses an existing
cluster instead. Without binaries the e2e tests are skipped, unless
``PULLHEALTH_REQUIRE_E2E`` is set (CI), in which case they fail.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest
import yaml

from pullhealth_dev import cluster as devcluster
from support import guard
from support.kubelet import ensure_node
from support.operatorproc import OperatorProcess
from support.world import World, start_world

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "registrychecks.pullhealth.io.yaml"

# Nothing in the e2e suite may connect off loopback.
guard.install()

KUBECTL = os.environ.get("KUBECTL", "kubectl")
T = TypeVar("T")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kubeconfig",
        default=None,
        help="run e2e tests against this existing cluster instead of a local dev cluster",
    )


def require_binaries() -> devcluster.Binaries:
    """Locate the control-plane binaries, or skip (fail under PULLHEALTH_REQUIRE_E2E)."""
    try:
        return devcluster.find_binaries()
    except devcluster.DevClusterError as err:
        if os.environ.get("PULLHEALTH_REQUIRE_E2E"):
            pytest.fail(f"PULLHEALTH_REQUIRE_E2E is set but {err}", pytrace=False)
        pytest.skip(f"no local control plane: {err}")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


@dataclasses.dataclass
class Cluster:
    """A reachable cluster: its admin kubeconfig, and the harness if we started it.

    Attributes:
        kubeconfig: Path of a kubeconfig with cluster-admin rights.
        harness: The local dev cluster, or None with ``--kubeconfig``.
    """

    kubeconfig: Path
    harness: devcluster.DevCluster | None = None

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster (bounded to 60 s)."""
        result = subprocess.run(
            [KUBECTL, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def token_kubeconfig(self, token: str, path: Path, namespace: str | None = None) -> Path:
        """Write a kubeconfig for this cluster that authenticates with ``token``."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["context"]["cluster"])
        ca_pem = base64.b64decode(cluster["certificate-authority-data"])
        return devcluster.write_token_kubeconfig(path, cluster["server"], ca_pem, token, namespace=namespace)


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    """:func:`wait_for`, for tests (they must not import conftest, which is ambiguous)."""
    return wait_for


@pytest.fixture(name="require_binaries")
def require_binaries_fixture() -> devcluster.Binaries:
    """The control-plane binaries; skips (or fails in CI) when they are missing."""
    return require_binaries()


@pytest.fixture(scope="session")
def dev_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A ready cluster for the whole session; a local one unless ``--kubeconfig``."""
    existing = request.config.getoption("--kubeconfig")
    if existing:
        yield Cluster(Path(existing))
        return
    binaries = require_binaries()
    harness = devcluster.DevCluster(tmp_path_factory.mktemp("dev-cluster"), binaries)
    harness.start()
    pids = harness.pids
    try:
        yield Cluster(harness.kubeconfig, harness)
    finally:
        harness.stop()
    # Teardown check: nothing the harness started may outlive the session.
    left = [f"{name} ({pid})" for name, pid in pids.items() if Path(f"/proc/{pid}").exists()]
    if left:
        pytest.fail(f"processes left after stop(): {', '.join(left)}")


@pytest.fixture(scope="module")
def api(dev_cluster: Cluster) -> kubernetes.client.CoreV1Api:
    """The core API as the admin, with the kubelet-less Node that played-kubelet pods are bound to."""
    core = kubernetes.client.CoreV1Api(
        kubernetes.config.new_client_from_config(config_file=str(dev_cluster.kubeconfig)))
    ensure_node(core)
    return core


@pytest.fixture
def namespace(dev_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"e2e-{slug}-{uuid.uuid4().hex[:6]}"
    dev_cluster.kubectl("create", "namespace", name)
    yield name
    dev_cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


# --- the test world (real registries, DNS, token service) and the operator process

@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    with tempfile.TemporaryDirectory(prefix="pullhealth-e2e-world-") as tmp, contextlib.ExitStack() as stack:
        yield start_world(stack, Path(tmp))


@pytest.fixture(scope="module")
def no_session_operator() -> Iterator[None]:
    """Stop the session's operator (admin rights, its own flags) for a module that runs its
    own: two operators would race for the same objects, and what the module asserts (the
    chart's RBAC, the trust boundary's flags) must come from its operator alone."""
    with OperatorProcess.others_stopped():
        yield


@pytest.fixture(scope="session")
def operator(
    dev_cluster: Any, world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    dev_cluster.kubectl("apply", "-f", str(CRD))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd/registrychecks.pullhealth.io",
                        "--timeout=60s")
    op = OperatorProcess(dev_cluster.kubeconfig, world, tmp_path_factory.mktemp("operator") / "operator.log",
                         ["--pod-interval", "60"])
    with op:
        yield op
    op.check_log_clean()  # operator logs must never carry a credential


