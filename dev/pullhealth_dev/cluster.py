"""A real, local Kubernetes control plane for e2e tests and demos.

Runs etcd, kube-apiserver and kube-controller-manager built from upstream sources by
``hack/build-k8s.sh``. Everything listens on 127.0.0.1 at free ports; certificates, keys,
data and logs live in one state directory. Every API object, RBAC decision, admission
check, ServiceAccount token and controller (namespace lifecycle, garbage collection, ...)
is the real thing, which is what the operator talks to.

Without a node, pods are never scheduled. With ``node=True`` (``up --node``) kube-scheduler,
containerd and kubelet join: a real node named ``127.0.0.1`` runs ``hostNetwork`` pods and
pulls their images (:mod:`pullhealth_dev.node`).

Usage from the command line::

    python -m pullhealth_dev.cluster up          # start in the background
    kubectl --kubeconfig "$(python -m pullhealth_dev.cluster kubeconfig)" get ns
    python -m pullhealth_dev.cluster down

This module never imports kopf: it is infrastructure for tests and the CLI.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import dataclasses
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

from pullhealth_dev import image as nodeimage
from pullhealth_dev import node as realnode

#: The repository this (editable) package lives in: the Dockerfile, the chart, hack/.
REPO = Path(__file__).resolve().parents[2]
LOCAL_VALUES = REPO / "dev" / "values-local.yaml"
RELEASE = "pullhealth"

#: Versions built by hack/build-k8s.sh; keep in sync with hack/k8s/versions.env.
K8S_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"

#: ClusterIP range handed to kube-apiserver; its first address is the
#: ``kubernetes`` Service and must be a SAN of the serving certificate.
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CLUSTER_NAME = "pullhealth-dev"

ETCD = "etcd"
KUBE_APISERVER = "kube-apiserver"
KUBE_CONTROLLER_MANAGER = "kube-controller-manager"

_STATE_FILE = "state.json"
_ADMIN_KUBECONFIG = "admin.kubeconfig"
# Everything `start()` creates, so a fresh start removes only what it owns.
_AUDIT_POLICY_FILE = "audit-policy.yaml"
_OWNED = (
    "pki", "etcd-data", "logs", "kcm", "scheduler", "node",
    _STATE_FILE, _ADMIN_KUBECONFIG, _AUDIT_POLICY_FILE,
)

# What the API server records in logs/audit.log: who read or wrote the objects pod diagnosis
# touches, at Metadata level (never a Secret's data), once per request when it completes.
# Tests and benchmarks count the operator's requests per namespace from it, where the
# cluster-wide apiserver_request_total cannot tell one client or namespace from another.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system", "system:nodes"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["pods", "pods/status", "events", "serviceaccounts", "secrets", "nodes"]
      - group: "events.k8s.io"
        resources: ["events"]
  - level: None
"""
AUDIT_LOG_MAX_MB = 500  # one file for a whole test session; older content rotates out
_PR_SET_PDEATHSIG = 1


#: kubelet starts tried when it dies of a Go runtime fatal error at start-up (see _start_node).
KUBELET_STARTS = 3

class DevClusterError(RuntimeError):
    """The dev cluster cannot be located, started, reached or stopped."""


@dataclasses.dataclass(frozen=True)
class Binaries:
    """Paths of the three control-plane executables."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Return the pullhealth cache root.

    Args:
        env: Environment to read; defaults to ``os.environ``.

    Returns:
        ``$PULLHEALTH_CACHE`` if set, else ``~/.cache/pullhealth``.
    """
    env = os.environ if env is None else env
    configured = env.get("PULLHEALTH_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "pullhealth"


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Return the state directory used by ``up``/``down`` when none is given.

    Args:
        env: Environment to read; defaults to ``os.environ``.

    Returns:
        ``<cache>/dev-cluster``.
    """
    return cache_dir(env) / "dev-cluster"


def find_binaries(env: Mapping[str, str] | None = None) -> Binaries:
    """Locate etcd, kube-apiserver and kube-controller-manager.

    ``$PULLHEALTH_K8S_BIN`` names one directory holding all three. Otherwise the
    cache directories written by ``hack/build-k8s.sh`` for the pinned versions are used.

    Args:
        env: Environment to read; defaults to ``os.environ``.

    Returns:
        The located binaries.

    Raises:
        DevClusterError: If any binary is missing, with the command that builds it.
    """
    env = os.environ if env is None else env
    override = env.get("PULLHEALTH_K8S_BIN")
    if override:
        base = Path(override)
        found = Binaries(base / ETCD, base / KUBE_APISERVER, base / KUBE_CONTROLLER_MANAGER)
        hint = f"PULLHEALTH_K8S_BIN={override} must hold {ETCD}, {KUBE_APISERVER} and "
        hint += f"{KUBE_CONTROLLER_MANAGER}"
    else:
        root = cache_dir(env)
        k8s = root / "k8s" / K8S_VERSION
        found = Binaries(
            root / "etcd" / ETCD_VERSION / ETCD,
            k8s / KUBE_APISERVER,
            k8s / KUBE_CONTROLLER_MANAGER,
        )
        hint = (
            f"run hack/build-k8s.sh to build Kubernetes {K8S_VERSION} and etcd "
            f"{ETCD_VERSION} (about 10 minutes on 2 cores), or set PULLHEALTH_K8S_BIN"
        )
    missing = [str(p) for p in dataclasses.astuple(found) if not os.access(p, os.X_OK)]
    if missing:
        raise DevClusterError(f"missing control-plane binaries: {', '.join(missing)}; {hint}")
    return found


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on 127.0.0.1 right now.

    All sockets are held open until every port is chosen, so the ports differ from
    each other; another process may still take one before it is used.

    Args:
        count: How many ports.

    Returns:
        The port numbers.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def kubeconfig_dict(
    server: str,
    ca_pem: bytes,
    user: Mapping[str, str],
    *,
    namespace: str | None = None,
    name: str = CLUSTER_NAME,
) -> dict[str, Any]:
    """Build a single-context kubeconfig.

    Args:
        server: API server URL.
        ca_pem: PEM of the CA that signed the API server's certificate.
        user: The ``users[].user`` entry (client cert data or token).
        namespace: Default namespace of the context, if any.
        name: Name of the cluster, user and context.

    Returns:
        The kubeconfig as a dict ready for YAML.
    """
    context: dict[str, str] = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": name, "user": dict(user)}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
    }


def write_token_kubeconfig(
    path: Path, server: str, ca_pem: bytes, token: str, *, namespace: str | None = None
) -> Path:
    """Write a kubeconfig that authenticates with a bearer token.

    Used to run the operator with exactly the permissions of a ServiceAccount (for
    instance the one a Helm chart's RBAC grants), instead of cluster-admin.

    Args:
        path: Where to write; the file is readable by its owner only.
        server: API server URL.
        ca_pem: PEM of the CA that signed the API server's certificate.
        token: A ServiceAccount token (e.g. from the TokenRequest API).
        namespace: Default namespace of the context, if any.

    Returns:
        ``path``.
    """
    config = kubeconfig_dict(server, ca_pem, {"token": token}, namespace=namespace)
    _write_private(path, yaml.safe_dump(config, sort_keys=False).encode())
    return path


@dataclasses.dataclass
class _Proc:
    """A control-plane process, started by us now or found in the state file."""

    name: str
    pid: int
    exe: str
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    argv: tuple[str, ...] = ()
    detach: bool = False

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _pid_runs(self.pid, self.exe)


class DevCluster:
    """etcd + kube-apiserver + kube-controller-manager on loopback.

    Use as a context manager (``with DevCluster(dir) as cluster: ...``) for tests,
    or call :meth:`start` with ``detach=True`` to leave the processes running after
    this Python process exits; :meth:`load` and :meth:`stop` find them again through
    the PIDs recorded in the state directory.

    Attributes:
        state_dir: Holds pki/, etcd-data/, logs/, state.json and admin.kubeconfig.
        binaries: The executables to run.
        timeout: Bound, in seconds, of each wait for a component to become ready.
    """

    def __init__(
        self,
        state_dir: Path,
        binaries: Binaries | None = None,
        *,
        timeout: float = 120.0,
        node: bool = False,
        node_dns_upstream: str | None = None,
        node_dns_domains: Sequence[str] = (),
        node_taints: Sequence[Mapping[str, str]] = (),
    ) -> None:
        """Prepare a cluster; nothing starts before :meth:`start`.

        Args:
            state_dir: Directory for certificates, data, logs and the kubeconfig.
            binaries: Executables; located with :func:`find_binaries` when omitted.
            timeout: Bound, in seconds, of each readiness wait.
            node: Also start kube-scheduler and a real node (containerd + kubelet).
            node_dns_upstream: A loopback resolver (``127.0.0.1:PORT``) the node asks for
                the names under ``node_dns_domains``; every other name does not resolve.
            node_dns_domains: Domains resolved through ``node_dns_upstream``.
            node_taints: Taints the node registers with (``key``, ``value``, ``effect``).
        """
        self.state_dir = Path(state_dir).absolute()
        self.binaries = binaries
        self.timeout = timeout
        self.server = ""
        self.with_node = node
        self.node_dns_upstream = node_dns_upstream
        self.node_dns_domains = tuple(node_dns_domains)
        self.node_taints = [dict(t) for t in node_taints]
        self.node_kubelet_settings: dict[str, Any] = {}
        self.node_containerd_root_size: str | None = None
        #: The running node's state (None without a node).
        self.node: realnode.NodeState | None = None
        self._procs: list[_Proc] = []

    # -- paths -----------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Path of the cluster-admin kubeconfig (client certificate in system:masters)."""
        return self.state_dir / _ADMIN_KUBECONFIG

    @property
    def pki(self) -> Path:
        """Directory of the CA, certificates and service-account keys."""
        return self.state_dir / "pki"

    @property
    def logs(self) -> Path:
        """Directory of the component logs (``<component>.log``)."""
        return self.state_dir / "logs"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (JSON lines, see :data:`AUDIT_POLICY`)."""
        return self.logs / "audit.log"

    @property
    def ca_pem(self) -> bytes:
        """PEM of the cluster CA."""
        return (self.pki / "ca.crt").read_bytes()

    @property
    def pids(self) -> dict[str, int]:
        """PIDs of the running components by name."""
        return {p.name: p.pid for p in self._procs}

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, *, detach: bool = False) -> None:
        """Generate credentials, start the three components and wait until ready.

        Any previous state owned by the cluster in ``state_dir`` is removed first, so
        every start is a fresh, empty cluster.

        Args:
            detach: Keep the processes running after this Python process exits. When
                False they receive SIGTERM if it dies, so tests leave nothing behind.

        Raises:
            DevClusterError: If a binary is missing or a component does not become
                ready within ``timeout``; the message ends with its last log lines.
                Components already started are stopped before raising.
        """
        binaries = self.binaries or find_binaries()
        if self._procs:
            raise DevClusterError("already started")
        node_binaries = None
        if self.with_node:
            try:
                realnode.check_state_dir(self.state_dir)
                node_binaries = realnode.find_node_binaries(binaries.kube_apiserver.parent)
            except realnode.NodeError as err:
                raise DevClusterError(str(err)) from err
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for name in _OWNED:
            target = self.state_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        for sub in (self.pki, self.logs, self.state_dir / "etcd-data", self.state_dir / "kcm"):
            sub.mkdir(mode=0o700)
        etcd_port, peer_port, api_port, kcm_port = free_ports(4)
        self.server = f"https://127.0.0.1:{api_port}"
        pki = self._write_pki()
        try:
            self._start_etcd(binaries.etcd, etcd_port, peer_port, detach)
            self._wait(ETCD, lambda: self._probe(etcd_port, "/health", "etcd-client"))
            self._start_apiserver(binaries.kube_apiserver, etcd_port, api_port, detach)
            self._wait(KUBE_APISERVER, lambda: self._probe(api_port, "/readyz", "admin"))
            self._write_client_kubeconfig(self.kubeconfig, pki, "admin")
            self._start_controller_manager(binaries.kube_controller_manager, kcm_port, pki, detach)
            self._wait(KUBE_CONTROLLER_MANAGER, lambda: self._probe(kcm_port, "/healthz", None))
            # The controllers really run once the default namespace got its ServiceAccount.
            self._wait(
                KUBE_CONTROLLER_MANAGER,
                lambda: self._probe(api_port, "/api/v1/namespaces/default/serviceaccounts/default", "admin"),
            )
            if node_binaries is not None:
                self._start_node(node_binaries, pki, detach)
        except BaseException:
            self.stop()
            raise
        self._save_state()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every component: SIGTERM, then SIGKILL after ``timeout`` seconds.

        Components stop in reverse start order. Safe to call twice or on a cluster
        that never started.

        Args:
            timeout: Seconds each component gets to exit after SIGTERM.

        Raises:
            DevClusterError: If a process survives SIGKILL (should never happen).
        """
        try:
            self._stop_procs(timeout)
        finally:
            self._procs = []
            (self.state_dir / _STATE_FILE).unlink(missing_ok=True)

    def _stop_procs(self, timeout: float) -> None:
        """Stop the recorded processes (reverse start order) and what the node leaves."""
        survivors = []
        for proc in reversed(self._procs):
            if not _terminate(proc, timeout):
                survivors.append(f"{proc.name} (pid {proc.pid})")
            if proc.name == realnode.KUBELET and self.node is not None:
                # kubelet leaves its pods running: stop them (and their shims) before
                # containerd, or the shims outlive everything.
                left_pids = realnode.kill_shims(self.node.containerd_address)
                survivors += [f"shim or container (pid {p})" for p in left_pids]
        if self.node is not None:
            # Shims of an earlier, crashed node process (its kubelet already gone).
            left_pids = realnode.kill_shims(self.node.containerd_address)
            survivors += [f"shim or container (pid {p})" for p in left_pids]
            left = realnode.remove_cgroups(
                [
                    *self.node.created_cgroups,
                    *realnode.node_cgroups(self.node.cgroup_root),
                    *realnode.new_containerd_cgroups(self._cgroups_before()),
                ]
            )
            if left:
                survivors.append(f"cgroups {', '.join(left)}")
            mounts = realnode.mounts_under(self.node.dir)
            if mounts:
                survivors.append(f"mounts {', '.join(mounts)}")
            self.node = None
        self._procs = []
        if survivors:
            raise DevClusterError(f"left behind after stop: {', '.join(survivors)}")

    def kill(self, name: str) -> None:
        """SIGKILL one component (fault injection: a crashed etcd or API server).

        Args:
            name: ``etcd``, ``kube-apiserver`` or ``kube-controller-manager``.

        Raises:
            DevClusterError: If the component is unknown or was not started here.
        """
        proc = self._proc(name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        if proc.popen is not None:
            proc.popen.wait(10)

    def revive(self, name: str) -> None:
        """Start a killed component again with the same command line, and wait until ready.

        etcd keeps its data directory and the API server its port, so clients reconnect
        to the same cluster.

        Raises:
            DevClusterError: If it is still running, or does not become ready in time.
        """
        proc = self._proc(name)
        if proc.alive():
            raise DevClusterError(f"{name} is running")
        self._procs.remove(proc)
        self._spawn(name, proc.argv, proc.detach)
        if name == ETCD:
            port = int(next(a for a in proc.argv if a.startswith("--listen-client-urls=")).rsplit(":", 1)[1])
            self._wait(ETCD, lambda: self._probe(port, "/health", "etcd-client"))
        elif name == KUBE_APISERVER:
            self._wait(KUBE_APISERVER, self.ready)
        self._save_state()

    def _proc(self, name: str) -> _Proc:
        for proc in self._procs:
            if proc.name == name:
                if not proc.argv:
                    raise DevClusterError(f"{name} was not started by this process")
                return proc
        raise DevClusterError(f"no component {name}")

    def running(self) -> dict[str, bool]:
        """Tell which recorded components still run.

        Returns:
            Component name -> whether its process is alive.
        """
        return {p.name: p.alive() for p in self._procs}

    def ready(self) -> bool:
        """Tell whether the API server answers ``/readyz`` with 200."""
        port = int(self.server.rsplit(":", 1)[1]) if self.server else 0
        return bool(port) and self._probe(port, "/readyz", "admin")

    @classmethod
    def load(cls, state_dir: Path) -> DevCluster | None:
        """Attach to a cluster started with ``detach=True``.

        Args:
            state_dir: The state directory it was started with.

        Returns:
            The cluster (its processes may have died since), or None if no state
            file exists.
        """
        cluster = cls(state_dir)
        path = cluster.state_dir / _STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        cluster.server = str(state["server"])
        cluster._procs = [
            _Proc(p["name"], int(p["pid"]), str(p["exe"]), Path(p["log"])) for p in state["processes"]
        ]
        if state.get("node"):
            cluster.node = realnode.NodeState.from_json(state["node"])
            cluster.with_node = True
        cluster._k8s_cgroups_before = list(state.get("k8s_cgroups_before", []))
        return cluster

    # -- credentials ---------------------------------------------------------------------

    def token_kubeconfig(self, token: str, path: Path | None = None, *, namespace: str | None = None) -> Path:
        """Write a kubeconfig for this cluster authenticating with ``token``.

        Args:
            token: A ServiceAccount token.
            path: Where to write; defaults to ``<state_dir>/token-<n>.kubeconfig``.
            namespace: Default namespace of the context, if any.

        Returns:
            The kubeconfig path.
        """
        if path is None:
            n = sum(1 for _ in self.state_dir.glob("token-*.kubeconfig"))
            path = self.state_dir / f"token-{n}.kubeconfig"
        return write_token_kubeconfig(path, self.server, self.ca_pem, token, namespace=namespace)

    def service_account_token(self, namespace: str, name: str, *, expiration_seconds: int = 3600) -> str:
        """Issue a token for a ServiceAccount through the TokenRequest API.

        Args:
            namespace: The ServiceAccount's namespace.
            name: The ServiceAccount's name.
            expiration_seconds: Requested lifetime (the API server enforces >= 600).

        Returns:
            The bearer token.

        Raises:
            DevClusterError: If the API server refuses.
        """
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        status, data = self._request("POST", path, json.dumps(body).encode())
        if status != 201:
            raise DevClusterError(f"TokenRequest {namespace}/{name}: HTTP {status}: {data!r}")
        return str(json.loads(data)["status"]["token"])

    # -- internals ---------------------------------------------------------------------

    def _write_pki(self) -> dict[str, tuple[Path, Path]]:
        try:
            import trustme  # imported lazily: an optional dev dependency
        except ImportError as err:
            raise DevClusterError(
                "the dev cluster needs the 'trustme' package: pip install trustme "
                "(or pip install -e '.[dev]')"
            ) from err
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        ca = trustme.CA(organization_name="pullhealth dev-cluster")
        _write_private(self.pki / "ca.crt", ca.cert_pem.bytes())
        _write_private(self.pki / "ca.key", ca.private_key_pem.bytes())
        local = ("127.0.0.1", "localhost")
        # (common name, organisation, identities): CN and O become user and group.
        leaves: dict[str, tuple[str, str, tuple[str, ...]]] = {
            "etcd-server": ("etcd", "pullhealth", local),
            "etcd-client": ("kube-apiserver-etcd-client", "pullhealth", ()),
            "apiserver": (
                "kube-apiserver",
                "pullhealth",
                (
                    *local,
                    KUBERNETES_SERVICE_IP,
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ),
            ),
            "admin": ("pullhealth-admin", "system:masters", ()),
            "kcm": ("system:kube-controller-manager", "pullhealth", ()),
            "kcm-serving": ("kube-controller-manager", "pullhealth", local),
            "scheduler": ("system:kube-scheduler", "pullhealth", ()),
            "scheduler-serving": ("kube-scheduler", "pullhealth", local),
            # The node's identity for the Node authorizer and NodeRestriction admission.
            "node": (f"system:node:{realnode.NODE_NAME}", "system:nodes", ()),
            # The API server's client certificate towards kubelet (logs, exec, port-forward).
            "kubelet-client": ("kube-apiserver-kubelet-client", "system:masters", ()),
        }
        files = {}
        for name, (cn, org, identities) in leaves.items():
            # Client certificates get a placeholder SAN: trustme always writes the
            # extension, and an empty one is invalid X.509.
            leaf = ca.issue_cert(
                *(identities or (f"{name}.client.invalid",)),
                common_name=cn,
                organization_name=org,
            )
            crt, key = self.pki / f"{name}.crt", self.pki / f"{name}.key"
            _write_private(crt, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
            _write_private(key, leaf.private_key_pem.bytes())
            files[name] = (crt, key)
        # A separate CA for the front proxy (aggregated API servers), as kubeadm does:
        # a certificate from it authenticates the proxy, never a user.
        proxy_ca = trustme.CA(organization_name="pullhealth dev-cluster front-proxy")
        _write_private(self.pki / "front-proxy-ca.crt", proxy_ca.cert_pem.bytes())
        proxy = proxy_ca.issue_cert("front-proxy-client.client.invalid", common_name="front-proxy-client")
        _write_private(self.pki / "front-proxy-client.crt", proxy.cert_chain_pems[0].bytes())
        _write_private(self.pki / "front-proxy-client.key", proxy.private_key_pem.bytes())
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(
            self.pki / "sa.key",
            sa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        _write_private(
            self.pki / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        return files

    def _write_client_kubeconfig(self, path: Path, pki: Mapping[str, tuple[Path, Path]], name: str) -> None:
        crt, key = pki[name]
        user = {
            "client-certificate-data": base64.b64encode(crt.read_bytes()).decode(),
            "client-key-data": base64.b64encode(key.read_bytes()).decode(),
        }
        config = kubeconfig_dict(self.server, self.ca_pem, user)
        _write_private(path, yaml.safe_dump(config, sort_keys=False).encode())

    def _start_etcd(self, exe: Path, port: int, peer_port: int, detach: bool) -> None:
        pki = self.pki
        client_url = f"https://127.0.0.1:{port}"
        # The peer listener serves no one (single member) but etcd always opens it.
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            ETCD,
            [
                str(exe),
                f"--name={CLUSTER_NAME}",
                f"--data-dir={self.state_dir / 'etcd-data'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster={CLUSTER_NAME}={peer_url}",
                "--initial-cluster-state=new",
                f"--cert-file={pki / 'etcd-server.crt'}",
                f"--key-file={pki / 'etcd-server.key'}",
                f"--trusted-ca-file={pki / 'ca.crt'}",
                "--client-cert-auth=true",
                # A throwaway cluster: trade durability for speed on slow CI disks.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            detach,
        )

    def _start_apiserver(self, exe: Path, etcd_port: int, port: int, detach: bool) -> None:
        pki = self.pki
        (self.state_dir / _AUDIT_POLICY_FILE).write_text(AUDIT_POLICY)
        self._spawn(
            KUBE_APISERVER,
            [
                str(exe),
                f"--etcd-servers=https://127.0.0.1:{etcd_port}",
                f"--etcd-cafile={pki / 'ca.crt'}",
                f"--etcd-certfile={pki / 'etcd-client.crt'}",
                f"--etcd-keyfile={pki / 'etcd-client.key'}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                # The node registers as 127.0.0.1 (its Hostname address): never dial the
                # machine's other addresses that kubelet may also report.
                "--kubelet-preferred-address-types=Hostname",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # No kubelet will ever serve the `kubernetes` Service, and the lease
                # reconciler would try to publish 127.0.0.1, which Endpoints reject.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                f"--audit-policy-file={self.state_dir / _AUDIT_POLICY_FILE}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                f"--audit-log-maxsize={AUDIT_LOG_MAX_MB}",
                "--audit-log-maxbackup=1",
            ],
            detach,
        )

    def _start_controller_manager(
        self, exe: Path, port: int, leaves: Mapping[str, tuple[Path, Path]], detach: bool
    ) -> None:
        pki = self.pki
        kubeconfig = self.state_dir / "kcm" / "kcm.kubeconfig"
        self._write_client_kubeconfig(kubeconfig, leaves, "kcm")
        self._spawn(
            KUBE_CONTROLLER_MANAGER,
            [
                str(exe),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.state_dir / 'kcm'}",
                f"--tls-cert-file={pki / 'kcm-serving.crt'}",
                f"--tls-private-key-file={pki / 'kcm-serving.key'}",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--cluster-name={CLUSTER_NAME}",
                # One instance: skip the lease wait a restart would otherwise cost.
                "--leader-elect=false",
            ],
            detach,
        )

    # -- the node ------------------------------------------------------------------------

    #: The components a node adds, in start order.
    NODE_COMPONENTS = (
        realnode.KUBE_SCHEDULER,
        realnode.NODE_DNS,
        realnode.NODE_NAMESPACE,
        realnode.CONTAINERD,
        realnode.KUBELET,
    )

    def add_node(
        self,
        *,
        dns_upstream: str | None = None,
        dns_domains: Sequence[str] = (),
        taints: Sequence[Mapping[str, str]] = (),
        kubelet_settings: Mapping[str, Any] | None = None,
        containerd_root_size: str | None = None,
    ) -> realnode.NodeState:
        """Start kube-scheduler and the real node on this running cluster (started here).

        Args:
            dns_upstream: A loopback resolver for the names under ``dns_domains``.
            dns_domains: Domains the node resolves through ``dns_upstream``.
            taints: Taints the node registers with.
            kubelet_settings: KubeletConfiguration fields to set (``registryPullQPS``, ...).
            containerd_root_size: A small tmpfs (``32m``) for containerd's root, which a large
                pull fills (``no space left on device``); None: the state directory's disk.

        Returns:
            The node's state (its containerd, certs.d for hosts.toml files).

        Raises:
            DevClusterError: If it is already there, or does not become Ready in time.
        """
        if self.node is not None or not self._procs:
            raise DevClusterError("add_node needs a running cluster without a node")
        binaries = self.binaries or find_binaries()
        try:
            realnode.check_state_dir(self.state_dir)
            node_binaries = realnode.find_node_binaries(binaries.kube_apiserver.parent)
        except realnode.NodeError as err:
            raise DevClusterError(str(err)) from err
        self.node_dns_upstream, self.node_dns_domains = dns_upstream, tuple(dns_domains)
        self.node_taints = [dict(t) for t in taints]
        self.node_kubelet_settings = dict(kubelet_settings or {})
        self.node_containerd_root_size = containerd_root_size
        leaves = {
            crt.stem: (crt, crt.with_suffix(".key"))
            for crt in self.pki.glob("*.crt")
            if crt.with_suffix(".key").exists()
        }
        detach = any(p.detach for p in self._procs)
        try:
            self._start_node(node_binaries, leaves, detach)
        except BaseException:
            self.remove_node()
            raise
        self._save_state()
        assert self.node is not None
        return self.node

    def remove_node(self, timeout: float = 15.0) -> None:
        """Stop the node and kube-scheduler, leaving the control plane running; the Node
        object is deleted (its pods are then garbage-collected by the control plane).

        Raises:
            DevClusterError: If anything of the node is left behind.
        """
        node_procs = [p for p in self._procs if p.name in self.NODE_COMPONENTS]
        control_plane = [p for p in self._procs if p.name not in self.NODE_COMPONENTS]
        self._procs = node_procs
        try:
            self._stop_procs(timeout)
        finally:
            self._procs = control_plane
        with contextlib.suppress(OSError, http.client.HTTPException):
            self._request("DELETE", f"/api/v1/nodes/{realnode.NODE_NAME}", None)
        self._save_state()

    _k8s_cgroups_before: list[str] | None = None

    def _cgroups_before(self) -> list[str]:
        return list(self._k8s_cgroups_before or [])

    def _start_node(
        self, binaries: realnode.NodeBinaries, leaves: Mapping[str, tuple[Path, Path]], detach: bool
    ) -> None:
        """Start kube-scheduler, the node's resolver, its namespace, containerd and kubelet,
        and wait until the node is Ready (see :mod:`pullhealth_dev.node`)."""
        node_dir = self.state_dir / "node"
        for sub in ("var-lib", "var-log", "containerd", "certs.d", "cni/net.d", "volume-plugins"):
            (node_dir / sub).mkdir(parents=True, exist_ok=True)
        pki = self.pki
        # kube-scheduler, beside the rest of the control plane.
        sched_port, kubelet_port, healthz_port = free_ports(3)
        sched_kubeconfig = self.state_dir / "scheduler" / "scheduler.kubeconfig"
        self._write_client_kubeconfig(sched_kubeconfig, leaves, "scheduler")
        self._spawn(
            realnode.KUBE_SCHEDULER,
            [
                str(binaries.kube_scheduler),
                f"--kubeconfig={sched_kubeconfig}",
                f"--authentication-kubeconfig={sched_kubeconfig}",
                f"--authorization-kubeconfig={sched_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                f"--tls-cert-file={pki / 'scheduler-serving.crt'}",
                f"--tls-private-key-file={pki / 'scheduler-serving.key'}",
                "--leader-elect=false",
            ],
            detach,
        )
        self._wait(realnode.KUBE_SCHEDULER, lambda: self._probe(sched_port, "/healthz", None))

        # The node's resolver on 127.0.0.X:53.
        dns_address = realnode.pick_dns_address()
        dns_conf = node_dir / "dnsmasq.conf"
        dns_conf.write_text(
            realnode.dns_config(
                self.logs / "node-dns-queries.log", self.node_dns_upstream, self.node_dns_domains
            )
        )
        self._spawn(
            realnode.NODE_DNS,
            [
                str(binaries.dnsmasq), "--keep-in-foreground", "--no-resolv", "--no-hosts",
                "--bind-interfaces", f"--listen-address={dns_address}", "--port=53",
                f"--conf-file={dns_conf}", "--pid-file=", "--user=root",
            ],
            detach,
        )
        self._wait(realnode.NODE_DNS, lambda: realnode.dns_answers(dns_address))
        resolv_conf = node_dir / "resolv.conf"
        resolv_conf.write_text(f"nameserver {dns_address}\n")

        # cgroups: kubelet's root must exist; containerd may add k8s.io ones.
        cgroup_root = realnode.cgroup_root_for(self.state_dir)
        self._k8s_cgroups_before = realnode.containerd_cgroups_before()
        containerd_address = realnode.containerd_address_for(self.state_dir)
        self.node = realnode.NodeState(
            node_dir, containerd_address, 0, cgroup_root, realnode.make_cgroup_root(cgroup_root), dns_address
        )
        self._save_state()  # from here on, `down` can clean up even if start fails

        # The private mount namespace, held open by `sleep`.
        realnode.write_sysctl_files(node_dir)
        script = node_dir / "namespace.sh"
        sleep = shutil.which("sleep") or "/bin/sleep"
        script.write_text(
            realnode.namespace_script(node_dir, resolv_conf, sleep, self.node_containerd_root_size)
        )
        (node_dir / "namespace.ready").unlink(missing_ok=True)
        self._spawn(
            realnode.NODE_NAMESPACE,
            [str(binaries.unshare), "--mount", "--propagation", "private", "--", "/bin/sh", str(script)],
            detach,
            exe=sleep,
        )
        self._wait(realnode.NODE_NAMESPACE, lambda: (node_dir / "namespace.ready").exists())
        holder = self._proc(realnode.NODE_NAMESPACE).pid
        self.node.namespace_pid = holder
        self._save_state()
        enter = [str(binaries.nsenter), f"--mount=/proc/{holder}/ns/mnt", "--"]
        env = realnode.node_env()

        # containerd, then the pause image it cannot pull.
        pause_image = realnode.pause_image_name(binaries.pause_archive)
        containerd_conf = node_dir / "containerd" / "config.toml"
        containerd_conf.write_text(
            realnode.containerd_config(node_dir, binaries, pause_image, containerd_address)
        )
        cni = node_dir / "cni" / "net.d" / "10-pullhealth-loopback.conflist"
        cni.write_text(json.dumps(realnode.CNI_CONFLIST, indent=2))
        self._spawn(
            realnode.CONTAINERD,
            [*enter, str(binaries.containerd), f"--config={containerd_conf}"],
            detach, exe=str(binaries.containerd), env=env,
        )
        node, ctr = self.node, str(binaries.ctr)
        self._wait(realnode.CONTAINERD, lambda: node.ctr("version", timeout=10, ctr=ctr).returncode == 0)
        imported = node.ctr("images", "import", str(binaries.pause_archive), ctr=ctr)
        if imported.returncode != 0:
            raise DevClusterError(f"importing the pause image failed: {imported.stderr.strip()}")

        # kubelet.
        kubelet_dir = node_dir / "kubelet"
        kubelet_kubeconfig = kubelet_dir / "kubelet.kubeconfig"
        self._write_client_kubeconfig(kubelet_kubeconfig, leaves, "node")
        config = realnode.kubelet_config(
            node_dir,
            ca_file=pki / "ca.crt",
            containerd_address=containerd_address,
            cgroup_root=cgroup_root,
            port=kubelet_port,
            healthz_port=healthz_port,
            resolv_conf=resolv_conf,
            taints=self.node_taints,
            settings=self.node_kubelet_settings,
        )
        realnode.write_yaml(kubelet_dir / "config.yaml", config)
        argv = [
            *enter, str(binaries.kubelet),
            f"--config={kubelet_dir / 'config.yaml'}",
            f"--kubeconfig={kubelet_kubeconfig}",
            f"--hostname-override={realnode.NODE_NAME}",
            "--v=2",
        ]
        for start in range(1, KUBELET_STARTS + 1):
            self._spawn(realnode.KUBELET, argv, detach, exe=str(binaries.kubelet), env=env)
            try:
                self._wait(realnode.KUBELET, self.node_ready)
                return
            except DevClusterError:
                proc = self._proc(realnode.KUBELET)
                if proc.alive() or start == KUBELET_STARTS or not go_runtime_fatal(proc.log):
                    raise
                # kubelet 1.34 can die at start-up on an upstream data race (the container
                # manager's capacity map read by the first node status while it is written:
                # "fatal error: concurrent map read and map write" in GetCapacity). A node's
                # service manager restarts it (systemd's Restart=); so does this harness.
                self._procs.remove(proc)

    def node_ready(self) -> bool:
        """Tell whether the node is registered and its Ready condition is True."""
        try:
            status, body = self._request("GET", f"/api/v1/nodes/{realnode.NODE_NAME}", None)
        except (OSError, http.client.HTTPException):
            return False
        if status != 200:
            return False
        conditions = json.loads(body).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _spawn(
        self,
        name: str,
        argv: Sequence[str],
        detach: bool,
        *,
        exe: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start one component with its log in ``logs/<name>.log``.

        Args:
            name: The component.
            argv: Its command line.
            detach: Whether it outlives this process.
            exe: The program it ends up running when ``argv[0]`` execs another one
                (``nsenter``, ``unshare``): what the PID check compares with.
            env: Its environment (this process's by default).
        """
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env=None if env is None else dict(env),
                # Own session: a Ctrl-C in the shell that ran `up` does not reach it.
                start_new_session=True,
                preexec_fn=None if detach else _die_with_parent,
            )
        self._procs.append(_Proc(name, popen.pid, exe or argv[0], log, popen, tuple(argv), detach))

    def _wait(self, name: str, check: Callable[[], bool]) -> None:
        proc = next(p for p in self._procs if p.name == name)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise DevClusterError(f"{name} exited early\n{_tail(proc.log)}")
            if check():
                return
            time.sleep(0.2)
        raise DevClusterError(f"{name} not ready after {self.timeout:.0f}s\n{_tail(proc.log)}")

    def _ssl_context(self, client: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if client:
            context.load_cert_chain(self.pki / f"{client}.crt", self.pki / f"{client}.key")
        return context

    def _probe(self, port: int, path: str, client: str | None) -> bool:
        try:
            status, _ = self._request("GET", path, None, port=port, client=client)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        *,
        port: int | None = None,
        client: str | None = "admin",
    ) -> tuple[int, bytes]:
        if port is None:
            port = int(self.server.rsplit(":", 1)[1])
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=self._ssl_context(client), timeout=5)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _save_state(self) -> None:
        state: dict[str, Any] = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "processes": [
                {"name": p.name, "pid": p.pid, "exe": p.exe, "log": str(p.log)} for p in self._procs
            ],
        }
        if self.node is not None:
            state["node"] = self.node.to_json()
            state["k8s_cgroups_before"] = self._cgroups_before()
        _write_private(self.state_dir / _STATE_FILE, json.dumps(state, indent=2).encode())


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 (keys and kubeconfigs are secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def go_runtime_fatal(log: Path, lines: int = 400) -> bool:
    """Whether a Go program's log ends in a runtime fatal error (a data race on a map)."""
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return False
    return any(line.startswith("fatal error: concurrent map") for line in tail)


def _tail(log: Path, lines: int = 25) -> str:
    """Return the last ``lines`` lines of a log file, for error messages."""
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError as err:
        return f"(no log at {log}: {err})"
    return f"last lines of {log}:\n" + "\n".join(text)


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the parent dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _pid_runs(pid: int, exe: str) -> bool:
    """Tell whether ``pid`` is alive and still runs ``exe`` (guards against PID reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and cmdline[0].decode(errors="replace") == exe


def _terminate(proc: _Proc, timeout: float) -> bool:
    """SIGTERM, wait up to ``timeout``, SIGKILL, wait again. True if it is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not proc.alive():
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        if proc.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(wait)
        else:
            deadline = time.monotonic() + wait
            while proc.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
    return not proc.alive()


# -- command line ------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Run ``up | down | kubeconfig | status`` on the dev cluster.

    Args:
        argv: Arguments after the program name.

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(
        prog="pullhealth-dev cluster",
        description="A local etcd + kube-apiserver + kube-controller-manager on 127.0.0.1; "
        "with `up --node`, also kube-scheduler and a real node (containerd + kubelet).",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="certificates, data, logs and kubeconfig (default: %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per component")
    parser.add_argument(
        "--node",
        action="store_true",
        help="with up: also start kube-scheduler and a real node (containerd + kubelet, "
        "hostNetwork pods only); needs scripts/setup.sh and hack/build-k8s.sh",
    )
    parser.add_argument(
        "--values",
        "-f",
        action="append",
        type=Path,
        default=[],
        help="with install: more Helm values files, after dev/values-local.yaml (repeatable)",
    )
    parser.add_argument("command", choices=tuple(_COMMANDS))
    args = parser.parse_args(argv)
    out: IO[str] = sys.stdout
    try:
        return _COMMANDS[args.command](args, out)
    except DevClusterError as err:
        print(f"pullhealth-dev cluster: {err}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace, out: IO[str]) -> int:
    state_dir: Path = args.state_dir
    existing = DevCluster.load(state_dir)
    if existing is not None:
        has_node = existing.node is not None
        if all(existing.running().values()) and existing.ready() and has_node >= args.node:
            print(f"already running at {existing.server}", file=sys.stderr)
            print(existing.kubeconfig, file=out)
            return 0
        existing.stop()  # stale, or without the node asked for: clean up, start afresh
    cluster = DevCluster(state_dir, find_binaries(), timeout=args.timeout, node=args.node)
    started = time.monotonic()
    what = " with a node (kube-scheduler, containerd, kubelet)" if args.node else ""
    print(f"starting etcd {ETCD_VERSION} and Kubernetes {K8S_VERSION}{what} ...", file=sys.stderr)
    cluster.start(detach=True)
    print(
        f"ready at {cluster.server} in {time.monotonic() - started:.1f}s; logs in "
        f"{cluster.logs}\n  export KUBECONFIG={cluster.kubeconfig}",
        file=sys.stderr,
    )
    print(cluster.kubeconfig, file=out)
    return 0


def _down(args: argparse.Namespace, out: IO[str]) -> int:
    cluster = DevCluster.load(args.state_dir)
    if cluster is None:
        print("not running", file=sys.stderr)
        return 0
    cluster.stop()
    print("stopped", file=sys.stderr)
    return 0


def _kubeconfig(args: argparse.Namespace, out: IO[str]) -> int:
    cluster = DevCluster.load(args.state_dir)
    if cluster is None:
        print("not running: start it with `pullhealth-dev cluster up`", file=sys.stderr)
        return 1
    print(cluster.kubeconfig, file=out)
    return 0


def _install(args: argparse.Namespace, out: IO[str]) -> int:
    """Build the operator image from the Dockerfile, load it into the node, helm install."""
    cluster = DevCluster.load(args.state_dir)
    if cluster is None or cluster.node is None or not cluster.node_ready():
        print("no Ready node: start one with `pullhealth-dev cluster up --node`", file=sys.stderr)
        return 1
    missing = nodeimage.environment_ok()
    if missing:
        raise DevClusterError(f"cannot build images: missing {', '.join(missing)} (bash scripts/setup.sh)")
    if not (REPO / "Dockerfile").exists():
        raise DevClusterError(f"no Dockerfile in {REPO}: install needs the repository checkout")
    from importlib.metadata import version

    started = time.monotonic()
    try:
        name, archive = nodeimage.build_and_export(cache_dir(), REPO, version("pullhealth"), cluster.node.dir)
    except nodeimage.ImageError as err:
        raise DevClusterError(str(err)) from err
    imported = cluster.node.ctr("images", "import", str(archive), timeout=600)
    archive.unlink(missing_ok=True)
    if imported.returncode != 0:
        raise DevClusterError(f"ctr images import failed: {imported.stderr.strip()}")
    print(f"image {name} built and loaded in {time.monotonic() - started:.0f}s", file=sys.stderr)
    metrics_port, health_port = free_ports(2)
    argv = [
        _helm(), "upgrade", "--install", RELEASE, str(REPO / "charts" / "pullhealth"),
        "--namespace", RELEASE, "--create-namespace", f"--kubeconfig={cluster.kubeconfig}",
        "-f", str(LOCAL_VALUES), *(a for f in args.values for a in ("-f", str(f))),
        "--set", f"image.tag={name.rsplit(':', 1)[1]}",
        "--set", f"apiServer.port={cluster.server.rsplit(':', 1)[1]}",
        "--set", f"metrics.port={metrics_port}", "--set", f"healthPort={health_port}",
        # The agent reads containerd's certs.d/<host>/hosts.toml where this node keeps them.
        "--set", f"agent.containerdConfigPath={cluster.node.dir}",
        "--wait", "--timeout", f"{int(args.timeout * 3)}s",
    ]
    print("$ " + " ".join(argv), file=sys.stderr, flush=True)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout * 3 + 60, check=False)
    print((result.stdout + result.stderr).rstrip(), file=sys.stderr)
    if result.returncode != 0:
        raise DevClusterError(f"helm install failed ({result.returncode})")
    print(f"installed {RELEASE} ({name}) in {time.monotonic() - started:.0f}s; operator and agent ready",
          file=sys.stderr)
    print(name, file=out)
    return 0


def _helm() -> str:
    """helm: the one on PATH, else the pinned one hack/build-helm.sh builds."""
    found = shutil.which("helm")
    if found:
        return found
    built = subprocess.run(["bash", str(REPO / "hack" / "build-helm.sh"), "--print-dir"], capture_output=True,
                           text=True, timeout=60, check=False).stdout.strip()
    if built and (Path(built) / "helm").exists():
        return str(Path(built) / "helm")
    raise DevClusterError("helm is missing: run hack/build-helm.sh")


def _status(args: argparse.Namespace, out: IO[str]) -> int:
    cluster = DevCluster.load(args.state_dir)
    if cluster is None:
        print("not running", file=out)
        return 3
    running = cluster.running()
    for name, pid in cluster.pids.items():
        print(f"{name:<24} pid {pid:<8} {'running' if running[name] else 'DEAD'}", file=out)
    ready = all(running.values()) and cluster.ready()
    print(f"server {cluster.server} {'ready' if ready else 'NOT READY'}", file=out)
    if cluster.node is not None:
        node_ready = ready and cluster.node_ready()
        ready = node_ready
        print(f"node {realnode.NODE_NAME} {'Ready' if node_ready else 'NOT READY'}", file=out)
    print(f"kubeconfig {cluster.kubeconfig}", file=out)
    return 0 if ready else 1


_COMMANDS: dict[str, Callable[[argparse.Namespace, IO[str]], int]] = {
    "up": _up,
    "down": _down,
    "kubeconfig": _kubeconfig,
    "status": _status,
    "install": _install,
}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
