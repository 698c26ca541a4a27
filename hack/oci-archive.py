#!/usr/bin/env python3
"""Pack one static executable into a single-layer OCI image archive.

Used by hack/build-k8s.sh for the node's pause image: no registry is reachable, so
the sandbox image is built here and imported with ``ctr -n k8s.io images import``.
The archive is reproducible (fixed mtimes, owners and order), so rebuilding gives
the same digests.

Usage: oci-archive.py EXECUTABLE PATH-IN-IMAGE OUT.tar IMAGE-NAME
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import platform
import tarfile

#: The image's platform: this machine's (the pause binary was just compiled here).
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())

def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def _blob(tar: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    _add(tar, f"blobs/sha256/{digest}", data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    # The name is the one containerd gives the imported image (io.containerd.image.name).
    exe, inside, out, name = argv
    with open(exe, "rb") as f:
        program = f.read()
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w", format=tarfile.PAX_FORMAT) as layer:
        _add(layer, inside.lstrip("/"), program, 0o755)
    diff_id = "sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()
    layer_gz = gzip.compress(layer_tar.getvalue(), mtime=0)
    config = {
        "architecture": ARCH,
        "os": "linux",
        "config": {"Entrypoint": [inside], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        layer_desc = _blob(tar, layer_gz)
        config_desc = _blob(tar, json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}],
        }
        manifest_desc = _blob(tar, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **manifest_desc,
                    "platform": {"architecture": ARCH, "os": "linux"},
                    "annotations": {"io.containerd.image.name": name},
                }
            ],
        }
        _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add(tar, "index.json", json.dumps(index, sort_keys=True).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
