"""The real node's pieces that need no node (dev/pullhealth_dev/node.py, hack/oci-archive.py).

The node itself runs in e2e/test_real_node.py; these check, fast, the decisions it rests on:
what its resolver forwards, where its state may live, what its namespace mounts, its
kubelet and containerd settings, the pause archive, and that teardown finds shims by their
socket (and only this node's).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pullhealth_dev import node as realnode

ROOT = Path(__file__).resolve().parents[1]


def test_resolver_forwards_only_the_given_domains_to_a_loopback_upstream(tmp_path: Path) -> None:
    config = realnode.dns_config(tmp_path / "q.log", "127.0.0.1:5353", ("test", "azurecr.io"))
    lines = config.splitlines()
    assert "local=/#/" in lines  # every other name: NXDOMAIN, never forwarded
    assert [line for line in lines if line.startswith("server=")] == [
        "server=/test/127.0.0.1#5353", "server=/azurecr.io/127.0.0.1#5353"]
    assert not [line for line in realnode.dns_config(tmp_path / "q.log", None, ()).splitlines()
                if line.startswith("server=")]
    for upstream in ("10.0.0.10:53", "8.8.8.8:53", "127.0.0.1", "localhost:53"):
        with pytest.raises(realnode.NodeError):
            realnode.dns_config(tmp_path / "q.log", upstream, ("test",))


@pytest.mark.parametrize("state_dir", ["/var/lib/pullhealth", "/run/x", "/var/log/n", "/var/run/y"])
def test_state_dir_the_namespace_would_hide_is_refused(state_dir: str) -> None:
    with pytest.raises(realnode.NodeError, match="may not be under"):
        realnode.check_state_dir(Path(state_dir))


def test_state_dir_elsewhere_is_fine_and_names_are_per_state_dir(tmp_path: Path) -> None:
    realnode.check_state_dir(tmp_path / "world")
    a, b = realnode.node_id(tmp_path / "a"), realnode.node_id(tmp_path / "b")
    assert a != b and a.startswith("pullhealth-node-")
    assert realnode.cgroup_root_for(tmp_path / "a") == f"/{a}"
    # Socket paths stay short whatever the state directory (the limit is 104 bytes).
    deep = tmp_path / ("x" * 200)
    assert len(str(realnode.containerd_address_for(deep))) < 60


def test_namespace_script_mounts_privately_then_holds(tmp_path: Path) -> None:
    script = realnode.namespace_script(tmp_path, tmp_path / "resolv.conf", "/usr/bin/sleep").splitlines()
    assert script[0] == "set -eu"
    assert "mount -t tmpfs -o mode=0755 pullhealth-node-run /run" in script
    assert f"mount --bind {tmp_path / 'var-lib'} /var/lib" in script
    assert f"mount --bind {tmp_path / 'var-log'} /var/log" in script
    assert any(line.startswith(f"mount --bind {tmp_path / 'resolv.conf'} ") for line in script)
    sysctls = [line for line in script if "/proc/sys/" in line]
    assert sysctls and all(Path(line.rsplit(" ", 1)[1]).exists() for line in sysctls)
    assert script[-1] == "exec /usr/bin/sleep infinity"
    realnode.write_sysctl_files(tmp_path)
    assert (tmp_path / "sysctl" / "vm.overcommit_memory").read_text() == "1\n"
    assert not any("pullhealth-node-containerd" in line for line in script)


def test_a_small_containerd_root_is_a_sized_tmpfs_in_the_namespace(tmp_path: Path) -> None:
    script = realnode.namespace_script(tmp_path, tmp_path / "resolv.conf", "/usr/bin/sleep", "24m").splitlines()
    root = realnode.containerd_root(tmp_path)
    mount = f"mount -t tmpfs -o size=24m,mode=0711 pullhealth-node-containerd {root}"
    assert script.index(f"mkdir -p {root}") < script.index(mount) < script.index("exec /usr/bin/sleep infinity")
    binaries = realnode.NodeBinaries(*(Path(f"/bin/{n}") for n in range(9)), cni_bin_dir=Path("/usr/lib/cni"))
    assert f'root = "{root}"' in realnode.containerd_config(tmp_path, binaries, "pause:3", tmp_path / "s")
    for bad in ("24", "0m", "24g", "24m; rm -rf /", ""):
        with pytest.raises(ValueError, match="containerd_root_size"):
            realnode.namespace_script(tmp_path, tmp_path / "resolv.conf", "/usr/bin/sleep", bad)


def test_kubelet_stays_on_loopback_and_off_the_hosts_settings(tmp_path: Path) -> None:
    config = realnode.kubelet_config(
        tmp_path, ca_file=tmp_path / "ca.crt", containerd_address=Path("/run/n/containerd.sock"),
        cgroup_root="/pullhealth-node-x", port=1234, healthz_port=1235, resolv_conf=tmp_path / "resolv.conf",
        taints=[{"key": "k", "value": "v", "effect": "NoSchedule"}],
    )
    assert (config["address"], config["healthzBindAddress"], config["readOnlyPort"]) == ("127.0.0.1", "127.0.0.1", 0)
    assert config["makeIPTablesUtilChains"] is False
    assert config["cgroupDriver"] == "cgroupfs" and config["cgroupRoot"] == "/pullhealth-node-x"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["containerRuntimeEndpoint"] == "unix:///run/n/containerd.sock"
    assert config["registerWithTaints"] == [{"key": "k", "value": "v", "effect": "NoSchedule"}]


def test_a_test_may_set_kubelet_settings_but_not_its_loopback_or_authentication(tmp_path: Path) -> None:
    common: dict[str, Any] = {"ca_file": tmp_path / "ca.crt", "containerd_address": Path("/run/n/c.sock"),
                              "cgroup_root": "/x", "port": 1, "healthz_port": 2, "resolv_conf": tmp_path / "r"}
    config = realnode.kubelet_config(tmp_path, **common, settings={"registryPullQPS": 1, "registryBurst": 1})
    assert (config["registryPullQPS"], config["registryBurst"]) == (1, 1)
    assert "registryPullQPS" not in realnode.kubelet_config(tmp_path, **common)
    with pytest.raises(ValueError, match="address"):
        realnode.kubelet_config(tmp_path, **common, settings={"address": "0.0.0.0"})


def test_containerd_config_is_valid_toml_with_the_fixes(tmp_path: Path) -> None:
    binaries = realnode.NodeBinaries(*(Path(f"/bin/{n}") for n in range(9)), cni_bin_dir=Path("/usr/lib/cni"))
    text = realnode.containerd_config(tmp_path, binaries, "localhost/pullhealth/pause:v1", Path("/run/n/c.sock"))
    config = tomllib.loads(text)
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == "localhost/pullhealth/pause:v1"
    assert cri["registry"]["config_path"] == str(tmp_path / "certs.d")
    assert cri["stream_server_address"] == "127.0.0.1"
    assert config["grpc"]["address"] == "/run/n/c.sock"
    assert config["root"].startswith(str(tmp_path)) and config["state"].startswith(str(tmp_path))
    assert "io.containerd.internal.v1.opt" in config["disabled_plugins"]


def test_pause_archive_is_a_reproducible_named_oci_image(tmp_path: Path) -> None:
    program = tmp_path / "pause"
    program.write_bytes(b"\x7fELF not really")
    name = "localhost/pullhealth/pause:test"
    outs = []
    for n in range(2):
        out = tmp_path / f"pause-{n}.tar"
        subprocess.run([sys.executable, str(ROOT / "hack" / "oci-archive.py"), str(program), "/pause", str(out),
                        name], check=True, timeout=60)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    with tarfile.open(tmp_path / "pause-0.tar") as tar:
        def read(member: str) -> bytes:
            f = tar.extractfile(member)
            assert f is not None
            return f.read()

        index = json.loads(read("index.json"))
        entry = index["manifests"][0]
        assert entry["annotations"]["io.containerd.image.name"] == name
        assert entry["platform"]["os"] == "linux"
        manifest_bytes = read(f"blobs/sha256/{entry['digest'].split(':')[1]}")
        assert hashlib.sha256(manifest_bytes).hexdigest() == entry["digest"].split(":")[1]
        manifest = json.loads(manifest_bytes)
        config = json.loads(read(f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"))
        assert config["config"]["Entrypoint"] == ["/pause"]
    assert realnode.pause_image_name(tmp_path / "pause-0.tar") == name


def _fake_shim(address: Path) -> subprocess.Popen[bytes]:
    """A process that looks like a containerd shim for ``address``, with a child (its container)."""
    return subprocess.Popen(["bash", "-c", 'exec -a /usr/bin/containerd-shim-runc-v2 bash -c "sleep 60 & wait" '
                             f"shim -namespace k8s.io -address {address}"])


def test_teardown_kills_this_nodes_shims_and_their_children_only(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.sock", tmp_path / "theirs.sock"
    mine, other = _fake_shim(ours), _fake_shim(theirs)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (realnode.shim_pids(ours) and realnode.shim_pids(theirs)):
            time.sleep(0.05)
        assert realnode.shim_pids(ours) == [mine.pid]

        def children(pid: int) -> list[int]:
            return [p for p, (ppid, _) in realnode._proc_table().items() if ppid == pid]

        while time.monotonic() < deadline and not children(mine.pid):
            time.sleep(0.05)
        child = children(mine.pid)[0]
        assert realnode.kill_shims(ours) == []
        mine.wait(timeout=10)
        assert not realnode._alive(child)
        assert realnode.shim_pids(theirs) == [other.pid] and other.poll() is None
    finally:
        for address, proc in ((ours, mine), (theirs, other)):
            realnode.kill_shims(address)
            proc.kill()
            proc.wait(timeout=10)


def test_a_kubelet_that_died_of_a_map_race_is_told_apart(tmp_path: Path) -> None:
    from pullhealth_dev.cluster import go_runtime_fatal

    log = tmp_path / "kubelet.log"
    # kubelet v1.34.4's own words at start-up (the container manager's capacity map).
    log.write_text("I1203 kubelet.go:2000] starting\nfatal error: concurrent map read and map write\n\n"
                   "goroutine 413 [running]:\ninternal/runtime/maps.fatal({0x31b318e?, 0x0?})\n")
    assert go_runtime_fatal(log)
    log.write_text("E1203 run.go:72] command failed: failed to run Kubelet: invalid configuration\n")
    assert not go_runtime_fatal(log)
    assert not go_runtime_fatal(tmp_path / "missing.log")
