"""The local world's real node: kube-scheduler, containerd, runc and kubelet on loopback.

``pullhealth-dev cluster up --node`` (and the e2e fixture of ``e2e/test_real_node.py``) adds
to the control plane of :mod:`pullhealth_dev.cluster`:

* kube-scheduler, in the host's namespaces like the rest of the control plane;
* a dnsmasq on ``127.0.0.X:53`` that answers every name itself (NXDOMAIN) or from the one
  loopback resolver it is given (the test world's), and never forwards anywhere else;
* containerd (Debian's, with runc) and kubelet (built by ``hack/build-k8s.sh``) in a private
  mount namespace, so that what they insist on writing outside their own directories lands
  in the state directory instead of on the host. The namespace gets its own ``/run`` (a
  tmpfs: containerd 1.6 puts shim sockets under ``/run/containerd/s`` whatever its state
  dir), ``/var/lib`` and ``/var/log`` (kubelet always creates ``/var/lib/kubelet/...`` and
  ``/var/log/containers``), an ``/etc/resolv.conf`` naming the dnsmasq above (the host's
  resolver is not on loopback), and files bind-mounted over the kernel tunables kubelet
  would otherwise write (``/proc/sys/vm/overcommit_memory`` ...).

Pods run with ``hostNetwork: true``: the only CNI plugin is ``loopback`` (enough for the node
to be Ready), there is no pod network and no kube-proxy. Images cannot be pulled from any
registry outside this machine; the sandbox ("pause") image is built from upstream's pause.c
by ``hack/build-k8s.sh`` and imported at start.

Teardown stops kubelet, then every containerd shim started for this node's socket (shims
re-parent themselves, so they are found by the ``-address`` they were given) together with
their containers, then containerd, then removes the cgroups kubelet and containerd created.
The mounts vanish with the namespace when its last process exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

#: kubelet registers the node under this name (``--hostname-override``): kubelet refuses a
#: loopback node IP, and the API server reaches kubelet at the node's Hostname address.
NODE_NAME = "127.0.0.1"
KUBELET = "kubelet"
KUBE_SCHEDULER = "kube-scheduler"
CONTAINERD = "containerd"
NODE_DNS = "node-dns"
NODE_NAMESPACE = "node-namespace"

#: The kernel tunables kubelet sets at start (``setupKernelTunables`` in
#: pkg/kubelet/cm/container_manager_linux.go) with the values it wants: inside the node's
#: namespace a file with that value is bind-mounted over each, so the host's stay untouched.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}

#: Paths the node's namespace hides behind its own copies (see the module docstring); a
#: state directory under one of them would be hidden from the node itself.
_PRIVATE_PATHS = (Path("/run"), Path("/var/run"), Path("/var/lib"), Path("/var/log"))
_CGROUP_V1 = Path("/sys/fs/cgroup")
_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "grpc_proxy")


class NodeError(RuntimeError):
    """The node cannot be prepared, started or stopped."""


@dataclasses.dataclass(frozen=True)
class NodeBinaries:
    """The executables of the node: two built here, the rest from Debian packages."""

    kubelet: Path
    kube_scheduler: Path
    pause_archive: Path
    containerd: Path
    ctr: Path
    runc: Path
    dnsmasq: Path
    unshare: Path
    nsenter: Path
    cni_bin_dir: Path


def find_node_binaries(k8s_dir: Path) -> NodeBinaries:
    """Locate the node's executables.

    Args:
        k8s_dir: Where ``hack/build-k8s.sh`` put kubelet, kube-scheduler and the pause archive.

    Returns:
        The located binaries.

    Raises:
        NodeError: If any is missing, naming the command that installs or builds it.
    """
    missing: list[str] = []

    def which(name: str, package: str) -> Path:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
        if not found:
            missing.append(f"{name} (apt-get install {package})")
            return Path(name)
        return Path(found)

    built = {name: k8s_dir / name for name in (KUBELET, KUBE_SCHEDULER, "pause.oci.tar")}
    for path in built.values():
        if not path.exists():
            missing.append(f"{path} (hack/build-k8s.sh)")
    cni = Path("/usr/lib/cni")
    if not (cni / "loopback").exists():
        missing.append(f"{cni}/loopback (apt-get install containernetworking-plugins)")
    binaries = NodeBinaries(
        kubelet=built[KUBELET],
        kube_scheduler=built[KUBE_SCHEDULER],
        pause_archive=built["pause.oci.tar"],
        containerd=which("containerd", "containerd"),
        ctr=which("ctr", "containerd"),
        runc=which("runc", "runc"),
        dnsmasq=which("dnsmasq", "dnsmasq-base"),
        unshare=which("unshare", "util-linux"),
        nsenter=which("nsenter", "util-linux"),
        cni_bin_dir=cni,
    )
    if missing:
        raise NodeError("the real node needs: " + "; ".join(missing) + " (bash scripts/setup.sh does both)")
    return binaries


@dataclasses.dataclass
class NodeState:
    """What teardown needs to find again, saved in the cluster's state file.

    Attributes:
        dir: The node's directory inside the cluster's state directory.
        containerd_address: containerd's socket, inside the node's namespace (its ``/run``:
            a path under a long state directory would pass the 104-byte limit of socket
            paths); its shims carry it as ``-address``, distinct per node.
        namespace_pid: The process holding the node's mount namespace open.
        cgroup_root: kubelet's ``cgroupRoot``, created in every v1 hierarchy by us.
        created_cgroups: cgroup directories created by us or by the node (removed at stop).
        dns_address: The node's dnsmasq, ``127.0.0.X``.
    """

    dir: Path
    containerd_address: Path
    namespace_pid: int
    cgroup_root: str
    created_cgroups: list[str]
    dns_address: str

    def to_json(self) -> dict[str, Any]:
        """The state as JSON-able values."""
        return {
            "dir": str(self.dir),
            "containerd_address": str(self.containerd_address),
            "namespace_pid": self.namespace_pid,
            "cgroup_root": self.cgroup_root,
            "created_cgroups": self.created_cgroups,
            "dns_address": self.dns_address,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeState:
        """Read back :meth:`to_json`."""
        return cls(
            Path(data["dir"]),
            Path(data["containerd_address"]),
            int(data["namespace_pid"]),
            str(data["cgroup_root"]),
            [str(c) for c in data["created_cgroups"]],
            str(data["dns_address"]),
        )

    @property
    def certs_d(self) -> Path:
        """containerd's registry ``config_path``: ``<host[:port]>/hosts.toml`` per registry."""
        return self.dir / "certs.d"

    def trust(self, host: str, ca_file: Path) -> Path:
        """Make containerd trust ``ca_file`` for ``host`` (a ``host:port``).

        Docker's certificate pattern (``certs.d/<host:port>/ca.crt``), which containerd
        reads at every pull when the directory has no ``hosts.toml``.

        Returns:
            The file written.
        """
        path = self.certs_d / host / "ca.crt"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca_file, path)
        return path

    def write_hosts_toml(self, host: str, text: str) -> Path:
        """Write ``certs.d/<host>/hosts.toml`` (a mirror, a CA) as containerd reads it."""
        # On Linux the directory is named for the host with its port (``host:port``).
        path = self.certs_d / host / "hosts.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def ctr(self, *args: str, timeout: float = 120.0, ctr: str = "ctr") -> subprocess.CompletedProcess[str]:
        """Run ``ctr -n k8s.io`` against this node's containerd, in its namespace (bounded)."""
        enter = [shutil.which("nsenter") or "nsenter", f"--mount=/proc/{self.namespace_pid}/ns/mnt", "--"]
        return subprocess.run(
            [*enter, ctr, "--address", str(self.containerd_address), "--namespace", "k8s.io", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )


# -- preparing ------------------------------------------------------------------------------


def check_state_dir(state_dir: Path) -> None:
    """Refuse a state directory the node's namespace would hide from itself."""
    resolved = state_dir.resolve()
    for private in _PRIVATE_PATHS:
        if resolved == private or private in resolved.parents:
            raise NodeError(f"the node's state directory may not be under {private} (it is {resolved})")


def node_id(state_dir: Path) -> str:
    """``pullhealth-node-<hash of the state directory>``: distinct per node on one machine."""
    return "pullhealth-node-" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]


def cgroup_root_for(state_dir: Path) -> str:
    """kubelet's ``cgroupRoot`` for one state directory."""
    return "/" + node_id(state_dir)


def containerd_address_for(state_dir: Path) -> Path:
    """containerd's socket for one state directory, in the node's private ``/run``."""
    return Path("/run") / node_id(state_dir) / "containerd.sock"


def cgroup_hierarchies(*, unified: bool = False) -> list[Path]:
    """The mounted cgroup v1 hierarchies (``/sys/fs/cgroup/<controller>``).

    Args:
        unified: Also list cgroup v2 mounts (a hybrid host's ``/sys/fs/cgroup/unified``,
            where runc mirrors the v1 paths): teardown cleans there too.

    Raises:
        NodeError: On a cgroup v2-only host, which this node setup was not made for.
    """
    found = []
    types = ("cgroup", "cgroup2") if unified else ("cgroup",)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[sep + 1] in types:
            found.append(Path(fields[4]))
    if not found:
        raise NodeError("no cgroup v1 hierarchy is mounted (the node expects this machine's cgroup v1)")
    return sorted(found)


def node_cgroups(root: str) -> list[str]:
    """kubelet's ``cgroupRoot`` in every hierarchy, v2 included: the node's cgroups, all of
    them under it (the name is this state directory's alone)."""
    return [str(h / root.lstrip("/")) for h in cgroup_hierarchies(unified=True)]


def make_cgroup_root(root: str) -> list[str]:
    """Create kubelet's ``cgroupRoot`` in every v1 hierarchy (kubelet requires it to exist).

    Returns:
        The directories created (to remove at stop).
    """
    created = []
    for hierarchy in cgroup_hierarchies():
        path = hierarchy / root.lstrip("/")
        if path.exists():
            continue
        path.mkdir()
        created.append(str(path))
        if (hierarchy / "cpuset.cpus").exists():
            # A new cpuset cgroup starts with no CPUs and no memory nodes: inherit them.
            for name in ("cpuset.cpus", "cpuset.mems"):
                (path / name).write_text((hierarchy / name).read_text())
    return created


def containerd_cgroups_before() -> list[str]:
    """The ``k8s.io`` cgroups that exist before the node starts (containerd creates them)."""
    return [str(h / "k8s.io") for h in cgroup_hierarchies(unified=True) if (h / "k8s.io").exists()]


def new_containerd_cgroups(before: Sequence[str]) -> list[str]:
    """The ``k8s.io`` cgroups created since :func:`containerd_cgroups_before`."""
    now = (str(h / "k8s.io") for h in cgroup_hierarchies(unified=True))
    return [c for c in now if Path(c).exists() and c not in before]


def remove_cgroups(paths: Sequence[str], timeout: float = 20.0) -> list[str]:
    """Remove cgroup directories and everything under them, deepest first.

    A cgroup can be removed once its processes are gone, which may take a moment after
    they were killed: retry until ``timeout``.

    Returns:
        The directories that could not be removed.
    """
    deadline = time.monotonic() + timeout
    left = [p for p in paths if Path(p).exists()]
    while left:
        for top in left:
            dirs = sorted((d for d, _, _ in os.walk(top)), key=lambda d: d.count("/"), reverse=True)
            for d in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(d)
        left = [p for p in left if Path(p).exists()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    return left


def pick_dns_address() -> str:
    """A ``127.0.0.X`` whose port 53 is free (UDP and TCP) for the node's dnsmasq."""
    for last in range(53, 254):
        address = f"127.0.0.{last}"
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
                udp.bind((address, 53))
                tcp.bind((address, 53))
        except OSError:
            continue
        return address
    raise NodeError("no 127.0.0.X has port 53 free for the node's resolver")


def dns_config(log: Path, upstream: str | None, domains: Sequence[str]) -> str:
    """dnsmasq's configuration: answer everything locally, except ``domains`` from ``upstream``.

    Args:
        log: dnsmasq's query log.
        upstream: A loopback resolver ``127.0.0.1:PORT`` (the test world's), or None.
        domains: The domains sent to ``upstream``.

    Raises:
        NodeError: If ``upstream`` is not on loopback: the node never asks anyone else.
    """
    lines = ["log-queries", f"log-facility={log}", "local=/#/"]
    if upstream:
        host, _, port = upstream.rpartition(":")
        if not host.startswith("127.") or not port.isdigit():
            raise NodeError(f"the node's upstream resolver must be 127.x.x.x:PORT, not {upstream!r}")
        lines += [f"server=/{domain}/{host}#{port}" for domain in domains]
    return "\n".join(lines) + "\n"


def dns_answers(address: str, timeout: float = 1.0) -> bool:
    """Tell whether a resolver on ``address:53`` answers a query (any answer)."""
    # A minimal query for "localhost. A" (id 0x5068, recursion desired).
    query = bytes.fromhex("506801000001000000000000") + b"\x09localhost\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query, (address, 53))
            data = sock.recv(512)
        except OSError:
            return False
    return data[:2] == query[:2]


def namespace_script(
    node_dir: Path, resolv_conf: Path, sleep: str, containerd_root_size: str | None = None
) -> str:
    """The shell script run by ``unshare --mount``: set up the node's private mounts, then hold
    the namespace open (``exec sleep``) until teardown.

    Args:
        node_dir: The node's directory (var-lib/, var-log/, sysctl/ are in it).
        resolv_conf: The file to show as ``/etc/resolv.conf``.
        sleep: Path of ``sleep``.
        containerd_root_size: A tmpfs size (``32m``) for containerd's root (content store,
            snapshots, metadata): a small disk that a large pull fills. None: the node's directory.
    """
    lines = [
        "set -eu",
        # A private /run: containerd's shim sockets, runc's state, kubelet's sockets.
        "mount -t tmpfs -o mode=0755 pullhealth-node-run /run",
        f"mount --bind {node_dir / 'var-lib'} /var/lib",
        f"mount --bind {node_dir / 'var-log'} /var/log",
    ]
    if containerd_root_size is not None:
        if not re.fullmatch(r"[1-9][0-9]{0,5}[km]", containerd_root_size):
            raise ValueError(f"containerd_root_size: a size like 32m, not {containerd_root_size!r}")
        root = containerd_root(node_dir)
        options = f"size={containerd_root_size},mode=0711"
        lines += [f"mkdir -p {root}", f"mount -t tmpfs -o {options} pullhealth-node-containerd {root}"]
    target = Path("/etc/resolv.conf").resolve()
    if target.parent != Path("/etc"):
        # A symlink (systemd-resolved's stub into /run): recreate its target in the new /run.
        lines.append(f"mkdir -p {target.parent} && touch {target}")
    lines.append(f"mount --bind {resolv_conf} {target}")
    for name in KUBELET_SYSCTLS:
        if Path("/proc/sys", name).exists():
            lines.append(f"mount --bind {node_dir / 'sysctl' / name.replace('/', '.')} /proc/sys/{name}")
    lines += [f"touch {node_dir / 'namespace.ready'}", f"exec {sleep} infinity"]
    return "\n".join(lines) + "\n"


def write_sysctl_files(node_dir: Path) -> None:
    """One file per kubelet tunable, holding the value kubelet wants (see KUBELET_SYSCTLS)."""
    folder = node_dir / "sysctl"
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in KUBELET_SYSCTLS.items():
        (folder / name.replace("/", ".")).write_text(value + "\n")


def containerd_root(node_dir: Path) -> Path:
    """containerd's root directory (content store, snapshots, metadata) on the node."""
    return node_dir / "containerd" / "root"


def containerd_config(node_dir: Path, binaries: NodeBinaries, pause_image: str, address: Path) -> str:
    """containerd 1.6's configuration (version 2) for the node."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
root = "{containerd_root(node_dir)}"
state = "{node_dir / 'containerd' / 'state'}"
# The "opt" plugin would create /opt/containerd; the node installs nothing there.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[debug]
  level = "info"

[{cri}]
  sandbox_image = "{pause_image}"
  # This VM lacks CAP_SYS_RESOURCE: runc may not lower a container's oom_score_adj below
  # containerd's own, and every sandbox would fail ("failed to update /proc/self/oom_score_adj").
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  enable_unprivileged_ports = false
  enable_unprivileged_icmp = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{binaries.runc}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{binaries.cni_bin_dir}"
  conf_dir = "{node_dir / 'cni' / 'net.d'}"

[{cri}.registry]
  # <host:port>/hosts.toml per registry: CAs and mirrors, read at every pull.
  config_path = "{node_dir / 'certs.d'}"
"""


#: The only CNI network: the loopback plugin, enough for containerd to report the network
#: ready (every pod here uses the host's network).
CNI_CONFLIST = {
    "cniVersion": "0.4.0",
    "name": "pullhealth-loopback",
    "plugins": [{"type": "loopback"}],
}


def kubelet_config(
    node_dir: Path,
    *,
    ca_file: Path,
    containerd_address: Path,
    cgroup_root: str,
    port: int,
    healthz_port: int,
    resolv_conf: Path,
    taints: Sequence[Mapping[str, str]] = (),
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """kubelet's KubeletConfiguration for the node; ``settings`` override its fields (a test's
    ``registryPullQPS``, say), never the loopback and authentication ones."""
    endpoint = f"unix://{containerd_address}"
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # Loopback only, at free ports: the API server reaches it for logs and exec.
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        # This machine runs cgroup v1, which kubelet 1.34 refuses unless told otherwise.
        "failCgroupV1": False,
        # Never add iptables chains to the host (there is no kube-proxy either).
        "makeIPTablesUtilChains": False,
        "failSwapOn": False,
        "resolvConf": str(resolv_conf),
        "volumePluginDir": str(node_dir / "volume-plugins"),
        "serializeImagePulls": False,
        # Keep every image (the pause image cannot be pulled again) and never evict for a
        # full disk on a small CI machine: this node is for diagnosis, not capacity.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "shutdownGracePeriod": "0s",
        "registerNode": True,
        "registerWithTaints": list(taints),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "logging": {"format": "text"},
    }
    fixed = {"address", "port", "readOnlyPort", "healthzBindAddress", "authentication", "authorization"}
    refused = fixed & set(settings or {})
    if refused:
        raise ValueError(f"kubelet settings the dev node keeps fixed: {sorted(refused)}")
    config.update(settings or {})
    return config


def pause_image_name(archive: Path) -> str:
    """The image name recorded in the pause archive (``io.containerd.image.name``)."""
    import tarfile

    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise NodeError(f"{archive} has no index.json")
        index = json.load(member)
    return str(index["manifests"][0]["annotations"]["io.containerd.image.name"])


def node_env() -> dict[str, str]:
    """The environment of containerd and kubelet: the caller's, without proxy settings (a
    proxy would carry image pulls off this machine)."""
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}


# -- stopping ---------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) of every process."""
    table: dict[int, tuple[int, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (ppid, [a.decode(errors="replace") for a in argv if a])
    return table


def shim_pids(containerd_address: Path) -> list[int]:
    """The containerd shims serving this node's containerd (``-address <its socket>``)."""
    wanted = str(containerd_address)
    found = []
    for pid, (_, argv) in _proc_table().items():
        if not argv or "containerd-shim" not in Path(argv[0]).name:
            continue
        if any(a == "-address" and i + 1 < len(argv) and argv[i + 1] == wanted for i, a in enumerate(argv)):
            found.append(pid)
    return found


def kill_shims(containerd_address: Path, timeout: float = 15.0) -> list[int]:
    """SIGKILL this node's shims and every process under them (the pods' containers).

    Returns:
        The PIDs still alive after ``timeout`` (should be none).
    """
    shims = shim_pids(containerd_address)
    if not shims:
        return []
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    doomed: list[int] = []
    stack = list(shims)
    while stack:
        pid = stack.pop()
        doomed.append(pid)
        stack.extend(children.get(pid, ()))
    # Containers first (deepest last in `doomed`), so no shim restarts anything.
    for pid in reversed(doomed):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    alive = doomed
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _alive(p)]
    return alive


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def mounts_under(path: Path) -> list[str]:
    """Mount points at or under ``path`` in this (the host's) mount namespace."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def write_yaml(path: Path, data: Any) -> None:
    """Write ``data`` as YAML (config files of the node)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
