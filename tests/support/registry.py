"""Debian's real docker-registry (distribution 2.8) with generated config, plus a pusher."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Literal, Self

import httpx

from ._common import LOOPBACK, ManagedProcess, Stoppable, free_port
from .net import make_client
from .pki import PKI

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
HTPASSWD_BIN = shutil.which("htpasswd") or "/usr/bin/htpasswd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_ACCEPT = ", ".join(
    [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json"]
)

Mode = Literal["anonymous", "htpasswd", "token"]


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tiny_layer(label: str, filler: int = 0) -> tuple[bytes, str]:
    """A reproducible gzipped tar with one file (plus ``filler`` bytes of incompressible
    data in a second one: a large layer); returns (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        content = f"{label}\n".encode()
        info = tarfile.TarInfo("etc/pullhealth-image")
        info.size, info.mtime, info.mode = len(content), 0, 0o644
        tar.addfile(info, io.BytesIO(content))
        if filler:
            data = random.Random(label).randbytes(filler)
            info = tarfile.TarInfo("opt/pullhealth-filler")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, compresslevel=1, mtime=0), _digest(tar_bytes)


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class Registry(Stoppable):
    """A docker-registry process on 127.0.0.1 with TLS.

    Args:
        mode: ``anonymous`` (no auth), ``htpasswd`` (Basic) or ``token`` (Bearer).
        pki: Issues the TLS cert for ``hostnames`` + 127.0.0.1.
        hostnames: Names the registry is reached under (first one is ``host``).
        users: htpasswd mode: username -> password (bcrypt via ``htpasswd -Bbn``).
        admin: ``(user, password)`` with push rights used by :meth:`push_image`;
            htpasswd mode adds it to the htpasswd file; token mode needs the
            token server to grant it push.
        token_realm / token_service / token_issuer / token_rootcertbundle:
            ``auth.token`` settings (token mode).
    """

    def __init__(
        self,
        mode: Mode,
        pki: PKI,
        hostnames: list[str],
        *,
        users: dict[str, str] | None = None,
        admin: tuple[str, str] | None = None,
        token_realm: str = "",
        token_service: str = "",
        token_issuer: str = "",
        token_rootcertbundle: Path | None = None,
        workdir: Path | None = None,
        redirect: str | None = None,
    ) -> None:
        """Describe the registry; nothing runs until :meth:`start`.

        ``redirect``: a base URL (``https://host:port``) for distribution's ``redirect``
        storage middleware: blob GETs are answered with a 307 to that host plus the blob's
        storage path (what ACR, S3- and GCS-backed registries do with their data hosts).
        """
        if mode == "token" and not (token_realm and token_service and token_rootcertbundle):
            raise ValueError("token mode needs realm, service and rootcertbundle")
        self.mode = mode
        self.pki = pki
        self.hostnames = list(hostnames)
        self.users = dict(users or {})
        self.admin = admin
        if mode == "htpasswd" and admin is not None:
            self.users.setdefault(*admin)
        self.token_realm = token_realm
        self.token_service = token_service
        self.token_issuer = token_issuer or "pullhealth-test-issuer"
        self.token_rootcertbundle = token_rootcertbundle
        self.redirect = redirect
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="registry-"))
        self.port = 0
        self._proc: ManagedProcess | None = None

    @property
    def host(self) -> str:
        """Primary hostname (resolves to 127.0.0.1 via the DNS fixture)."""
        return self.hostnames[0]

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``https://host:port``."""
        return f"https://{self.address}"

    @property
    def storage(self) -> Path:
        """The filesystem driver's root (a redirect's path is relative to it)."""
        return self.workdir / "storage"

    @property
    def log_path(self) -> Path:
        """The registry's combined stdout/stderr log."""
        return self.workdir / "registry.log"

    def _config(self, cert: tuple[Path, Path]) -> str:
        # JSON is valid YAML, and avoids hand-rolled YAML quoting.
        cfg: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": f"{LOOPBACK}:{self.port}",
                "secret": secrets.token_hex(16),
                "tls": {"certificate": str(cert[0]), "key": str(cert[1])},
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.redirect:
            cfg["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": self.redirect}}]}
        if self.mode == "htpasswd":
            cfg["auth"] = {"htpasswd": {"realm": "basic-realm", "path": str(self._write_htpasswd())}}
        elif self.mode == "token":
            cfg["auth"] = {
                "token": {
                    "realm": self.token_realm,
                    "service": self.token_service,
                    "issuer": self.token_issuer,
                    "rootcertbundle": str(self.token_rootcertbundle),
                }
            }
        return json.dumps(cfg, indent=2)

    def _write_htpasswd(self) -> Path:
        path = self.workdir / "htpasswd"
        lines = []
        for user, password in self.users.items():
            out = subprocess.run(
                [HTPASSWD_BIN, "-Bbn", user, password],
                check=True,
                capture_output=True,
                timeout=30,
            )
            lines.append(out.stdout.decode().strip())
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> Self:
        """Start docker-registry and wait (at most ~10 s) until ``GET /v2/`` answers."""
        super().start()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cert = self.pki.issue([*self.hostnames, "127.0.0.1"])
        last_log = ""
        for attempt in range(3):  # retry if the free port got taken meanwhile
            self.port = free_port()
            conf = self.workdir / "config.yml"
            conf.write_text(self._config(cert))
            self._proc = ManagedProcess([REGISTRY_BIN, "serve", str(conf)], self.log_path)
            self._proc.start()
            if self._wait_ready(10.0):
                return self
            last_log = self._proc.log_tail()
            self._proc.stop()
            self._proc = None
            if "address already in use" not in last_log or attempt == 2:
                break
        self.stop()
        raise RuntimeError(f"docker-registry did not come up:\n{last_log}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        with make_client(self.pki.ca_bundle, timeout=1.0) as client:
            while time.monotonic() < deadline and self._proc.alive():
                try:
                    status = client.get(f"https://127.0.0.1:{self.port}/v2/").status_code
                    if status in (200, 401):
                        return True
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the process and delete its storage if we own the directory."""
        super().stop()
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- pushing -------------------------------------------------------------

    def push_image(
        self,
        repo: str,
        tag: str,
        *,
        platforms: list[str] | None = None,
        oci: bool | None = None,
        layer_bytes: int = 0,
    ) -> str:
        """Push a tiny image (or an index of per-platform images) over the HTTP API.

        Args:
            repo: Repository, e.g. ``team/app``.
            tag: Tag to set.
            platforms: e.g. ``["linux/arm64"]``: push an image index whose
                entries are one manifest per platform; None: a single manifest.
            oci: Media types: OCI (True) or Docker v2 (False). Default: Docker v2
                for a single manifest, OCI for an index.
            layer_bytes: Incompressible bytes added to the layer (a large image).

        Returns:
            The digest of the manifest (or index) that ``tag`` points to.
        """
        with _Pusher(self) as pusher:
            if platforms is None:
                return pusher.push_manifest(repo, tag, "linux/amd64", bool(oci), tag, layer_bytes)
            use_oci = True if oci is None else oci
            entries = []
            for platform in platforms:
                body, digest = pusher.build_manifest(repo, tag, platform, use_oci)
                pusher.put_manifest(repo, digest, body, OCI_MANIFEST if use_oci else DOCKER_MANIFEST)
                os_, _, rest = platform.partition("/")
                arch, _, variant = rest.partition("/")
                plat: dict[str, str] = {"architecture": arch, "os": os_}
                if variant:
                    plat["variant"] = variant
                entries.append(
                    {
                        "mediaType": OCI_MANIFEST if use_oci else DOCKER_MANIFEST,
                        "digest": digest,
                        "size": len(body),
                        "platform": plat,
                    }
                )
            index_type = OCI_INDEX if use_oci else "application/vnd.docker.distribution.manifest.list.v2+json"
            index = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": entries}).encode()
            return pusher.put_manifest(repo, tag, index, index_type)

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest (or index) by digest, as a registry's retention policy or a
        maintainer's removal does: every tag pointing at it is gone too (distribution untags
        them). Needs ``storage.delete.enabled`` (set in this registry's config)."""
        with _Pusher(self) as pusher:
            resp = pusher.request("DELETE", repo, f"{pusher.base}/v2/{repo}/manifests/{digest}")
            if resp.status_code != 202:
                raise RuntimeError(f"manifest DELETE failed: {resp.status_code} {resp.text}")


class _Pusher:
    """Minimal registry client handling Basic and Bearer challenges."""

    def __init__(self, registry: Registry) -> None:
        self.reg = registry
        self.base = f"https://127.0.0.1:{registry.port}"
        # Pinning all names to loopback lets us reach token.test without DNS.
        self.client = make_client(registry.pki.ca_bundle, timeout=10.0)
        self._auth: dict[str, str] = {}  # repo -> Authorization header

    def __enter__(self) -> _Pusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def _authorize(self, repo: str, challenge: str) -> None:
        if self.reg.admin is None:
            raise RuntimeError(f"{self.reg.address} wants auth but no admin is configured")
        user, password = self.reg.admin
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            cred = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._auth[repo] = f"Basic {cred}"
            return
        resp = self.client.get(
            params["realm"],
            params={"service": params.get("service", ""), "scope": f"repository:{repo}:pull,push"},
            auth=(user, password),
        )
        resp.raise_for_status()
        self._auth[repo] = f"Bearer {resp.json()['token']}"

    def request(
        self,
        method: str,
        repo: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send, answering at most one auth challenge."""
        for _ in range(2):
            hdrs = dict(headers or {})
            if repo in self._auth:
                hdrs["Authorization"] = self._auth[repo]
            resp = self.client.request(method, url, content=content, headers=hdrs)
            if resp.status_code != 401:
                return resp
            self._authorize(repo, resp.headers.get("WWW-Authenticate", ""))
        return resp

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = _digest(data)
        url = f"{self.base}/v2/{repo}/blobs/{digest}"
        if self.request("HEAD", repo, url).status_code == 200:
            return digest
        start = self.request("POST", repo, f"{self.base}/v2/{repo}/blobs/uploads/")
        if start.status_code != 202:
            raise RuntimeError(f"upload start failed: {start.status_code} {start.text}")
        location = httpx.URL(self.base).join(start.headers["Location"])
        # Talk to 127.0.0.1 whatever host the registry put in Location.
        location = location.copy_with(host="127.0.0.1", port=self.reg.port)
        done = self.request(
            "PUT",
            repo,
            str(location.copy_merge_params({"digest": digest})),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if done.status_code != 201:
            raise RuntimeError(f"blob upload failed: {done.status_code} {done.text}")
        return digest

    def build_manifest(
        self, repo: str, tag: str, platform: str, oci: bool, layer_bytes: int = 0
    ) -> tuple[bytes, str]:
        os_, _, rest = platform.partition("/")
        arch, _, variant = rest.partition("/")
        layer, diff_id = _tiny_layer(f"{self.reg.host}/{repo}:{tag} {platform}", layer_bytes)
        config_doc: dict[str, object] = {
            "architecture": arch,
            "os": os_,
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "created": "2024-01-01T00:00:00Z",
        }
        if variant:
            config_doc["variant"] = variant
        config = json.dumps(config_doc).encode()
        config_digest = self.push_blob(repo, config)
        layer_digest = self.push_blob(repo, layer)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": OCI_LAYER if oci else DOCKER_LAYER,
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
        body = json.dumps(manifest).encode()
        return body, _digest(body)

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        resp = self.request(
            "PUT",
            repo,
            f"{self.base}/v2/{repo}/manifests/{ref}",
            content=body,
            headers={"Content-Type": media_type},
        )
        if resp.status_code != 201:
            raise RuntimeError(f"manifest PUT failed: {resp.status_code} {resp.text}")
        digest = resp.headers.get("Docker-Content-Digest") or _digest(body)
        if digest != _digest(body):
            raise RuntimeError(f"registry digest {digest} != local {_digest(body)}")
        return digest

    def push_manifest(self, repo: str, tag: str, platform: str, oci: bool, ref: str, layer_bytes: int = 0) -> str:
        body, _ = self.build_manifest(repo, tag, platform, oci, layer_bytes)
        return self.put_manifest(repo, ref, body, OCI_MANIFEST if oci else DOCKER_MANIFEST)
