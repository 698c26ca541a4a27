"""``pullhealth-dev cluster install``: the operator image from the Dockerfile, on the real node.

No image registry is reachable here and there is no Docker daemon, so:

1. the Dockerfile's base image (``docker.io/library/python:3.11-slim``) is made from
   Debian packages: ``mmdebstrap --variant=minbase`` (bookworm: python3, python3-venv,
   ca-certificates, passwd) with a venv at ``/opt/venv`` first on ``PATH`` (Debian's pip
   refuses system-wide installs), added to buildah's storage under that name. Both the
   rootfs and the storage are cached under ``~/.cache/pullhealth`` (keyed by BASE_KEY);
2. ``buildah bud --isolation chroot --pull=never`` builds the repository's Dockerfile,
   unchanged. HTTPS from its RUN steps (pip) may pass a certificate-inspecting proxy: the
   host's CA bundle is mounted over the image's for the RUN steps only, never baked in;
3. the image is pushed to an OCI archive under its full name
   (``docker.io/library/pullhealth:TAG``: a short name would import under a name kubelet
   does not look up) and imported into the node's containerd with ``ctr images import``;
4. ``helm upgrade --install`` installs the chart with ``dev/values-local.yaml`` (the local
   world's values: hostNetwork, the API server on loopback, the image never pulled), and
   waits until the operator Deployment and the agent DaemonSet are ready.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

BASE_IMAGE = "docker.io/library/python:3.11-slim"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
#: The cache key of the base rootfs and storage: change it when the recipe changes.
BASE_KEY = f"debian-{BASE_SUITE}-python3.11-venv-1"
VENV = "/opt/venv"
#: The host's CA bundle, mounted over the image's own (Debian's pip reads that one) during
#: RUN steps only: the host may reach PyPI through a certificate-inspecting proxy.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
OPERATOR_IMAGE = "docker.io/library/pullhealth"
#: buildah (containers/image) keeps a blob-info cache here whatever its --root, and its
#: network setup creates /etc/cni/net.d: removed afterwards when they were not there before.
_HOST_LEFTOVERS = (Path("/var/lib/containers"), Path("/etc/cni"))
BUILD_TIMEOUT = 1800.0


class ImageError(RuntimeError):
    """The base image or the operator image cannot be built or loaded."""


def _run(argv: Sequence[str], what: str, timeout: float = BUILD_TIMEOUT, echo: bool = True,
         env: dict[str, str] | None = None) -> str:
    """Run a build step (bounded); its output goes to stderr afterwards when ``echo``."""
    if echo:
        print(f"$ {' '.join(argv)}", file=sys.stderr, flush=True)
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if echo and proc.stderr.strip():
        print(proc.stderr.rstrip()[-4000:], file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise ImageError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


class Builder:
    """buildah with its storage in the pullhealth cache (never /var/lib/containers/storage)."""

    def __init__(self, cache: Path) -> None:
        self.root = cache / "buildah" / "storage"
        self.runroot = cache / "buildah" / "run"
        self.base_dir = cache / "images" / BASE_KEY
        self.buildah = shutil.which("buildah") or "buildah"
        # Its own containers.conf: CNI configuration (never used: RUN steps share the
        # host's network) under the cache, not /etc/cni.
        self.conf = cache / "buildah" / "containers.conf"
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f'[network]\nnetwork_config_dir = "{cache / "buildah" / "cni"}"\n')

    def __call__(self, *args: str, what: str, echo: bool = True) -> str:
        env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        return _run([self.buildah, "--root", str(self.root), "--runroot", str(self.runroot), *args], what,
                    echo=echo, env=env)

    def has_image(self, name: str) -> bool:
        out = self("images", "--noheading", "--format", "{{.Name}}:{{.Tag}}",
                   what="buildah images", echo=False)
        return name in out.split()

    def base_rootfs(self) -> Path:
        """The base rootfs tarball, made with mmdebstrap once (cached)."""
        rootfs = self.base_dir / "rootfs.tar"
        if rootfs.exists():
            return rootfs
        self.base_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.base_dir / "rootfs.tar.tmp"
        mmdebstrap = shutil.which("mmdebstrap")
        if not mmdebstrap:
            raise ImageError("mmdebstrap is not installed (bash scripts/setup.sh installs it)")
        print(f"image: building the base rootfs ({BASE_SUITE}: {', '.join(BASE_PACKAGES)}; about 2 minutes)",
              file=sys.stderr, flush=True)
        _run([mmdebstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
              f"--customize-hook=chroot \"$1\" python3 -m venv {VENV}",
              BASE_SUITE, str(tmp), DEBIAN_MIRROR], "mmdebstrap")
        tmp.rename(rootfs)
        return rootfs

    def base_image(self) -> None:
        """``docker.io/library/python:3.11-slim`` in buildah's storage (cached)."""
        if self.has_image(BASE_IMAGE):
            return
        rootfs = self.base_rootfs()
        container = self("from", "--name", "pullhealth-base", "scratch", what="buildah from scratch").strip()
        try:
            self("add", container, str(rootfs), "/", what="buildah add rootfs")
            path = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            self("config", "--env", f"PATH={path}", "--cmd", "python3", "--os", "linux", container,
                 what="buildah config")
            self("commit", "--rm", container, BASE_IMAGE, what="buildah commit")
        except BaseException:
            with contextlib.suppress(ImageError):
                self("rm", container, what="buildah rm", echo=False)
            raise

    def operator_image(self, repo: Path, version: str) -> str:
        """Build the repository's Dockerfile; return the image's full name with its tag."""
        self.base_image()
        # A build that was interrupted leaves its working container (and its overlay mount)
        # in this storage, which is ours alone: remove any before building.
        self("rm", "--all", what="buildah rm --all", echo=False)
        tmp_tag = f"{OPERATOR_IMAGE}:build"
        self("bud", "--isolation", "chroot", "--network", "host", "--pull=never", "--layers",
             "--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro",
             "--build-arg", f"VERSION={version}", "-f", str(repo / "Dockerfile"), "-t", tmp_tag, str(repo),
             what="buildah bud")
        image_id = self("images", "--noheading", "--format", "{{.ID}}", tmp_tag, what="buildah images",
                        echo=False).split()[0]
        # A tag per content: a changed image gets a new tag, so the chart's pods roll.
        name = f"{OPERATOR_IMAGE}:{version}-{image_id[:12]}"
        self("tag", tmp_tag, name, what="buildah tag")
        return name

    def oci_archive(self, name: str, target: Path) -> Path:
        """Write ``name`` to an OCI archive under its full name (as containerd imports it)."""
        target.unlink(missing_ok=True)
        self("push", name, f"oci-archive:{target}:{name}", what="buildah push")
        return target


@contextlib.contextmanager
def containers_cache_restored() -> Iterator[None]:
    """Remove what buildah leaves on the host (see _HOST_LEFTOVERS) if it was not there."""
    absent = [path for path in _HOST_LEFTOVERS if not path.exists()]
    try:
        yield None
    finally:
        for path in absent:
            shutil.rmtree(path, ignore_errors=True)


def build_and_export(cache: Path, repo: Path, version: str, out_dir: Path) -> tuple[str, Path]:
    """Build the operator image and write its OCI archive into ``out_dir``.

    Returns:
        (full image name with tag, archive path).
    """
    builder = Builder(cache)
    with containers_cache_restored():
        name = builder.operator_image(repo, version)
        out_dir.mkdir(parents=True, exist_ok=True)
        archive = builder.oci_archive(name, out_dir / "pullhealth.oci.tar")
    return name, archive


def environment_ok() -> list[str]:
    """What is missing for building images here (empty when ready)."""
    missing = [tool for tool in ("buildah", "mmdebstrap") if not shutil.which(tool)]
    if not HOST_CA_BUNDLE.exists():
        missing.append(str(HOST_CA_BUNDLE))
    if os.geteuid() != 0:
        missing.append("root (buildah --isolation chroot and mmdebstrap run as root here)")
    return missing
