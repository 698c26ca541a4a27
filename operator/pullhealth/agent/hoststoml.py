"""Which endpoints containerd pulls a registry's images from: ``certs.d/<host>/hosts.toml``.

Pure (reads files, no network). Follows containerd's registry host configuration
(https://github.com/containerd/containerd/blob/main/docs/hosts.md):

- the directory is ``<config_path>/<host[:port]>/``, else ``<config_path>/_default/``;
- ``[host."<url>"]`` tables are tried **in file order**, then ``server`` (default
  ``https://<host>``; ``https://registry-1.docker.io`` for ``docker.io``);
- ``capabilities`` (default ``pull``, ``resolve``, ``push``): a host without ``pull`` is
  never used to pull; one without ``resolve`` cannot turn a tag into a digest;
- ``ca`` (a path or a list; relative to the directory), ``skip_verify``, and an
  ``http://`` URL for a plain-HTTP host.

Bounded: at most :data:`MAX_FILE` bytes are read and :data:`MAX_HOSTS` hosts kept.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

MAX_FILE = 64 * 1024
MAX_HOSTS = 8
DEFAULT_CAPABILITIES = ("pull", "resolve", "push")
DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"


@dataclass(frozen=True)
class Endpoint:
    """One place containerd may pull from.

    Attributes:
        url: ``scheme://host[:port][/path]`` as written (the server's default filled in).
        host: ``host[:port]`` to connect to.
        mirror: True for a ``[host."..."]`` entry, False for the registry's server.
        capabilities: what containerd uses it for.
        ca: CA files trusted for it (absolute paths).
        skip_verify: containerd does not verify its certificate.
        plain_http: the URL is ``http://``.
    """

    url: str
    host: str
    mirror: bool
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    ca: tuple[str, ...] = ()
    skip_verify: bool = False

    @property
    def plain_http(self) -> bool:
        """containerd talks plain HTTP to it."""
        return self.url.startswith("http://")

    @property
    def pulls(self) -> bool:
        """containerd pulls from it (``pull`` capability)."""
        return "pull" in self.capabilities


@dataclass(frozen=True)
class HostsConfig:
    """What containerd's config says for one registry.

    Attributes:
        registry: the image's registry (``host[:port]``).
        source: the hosts.toml read, or "" when none applies (defaults).
        endpoints: mirrors in file order, then the server.
        problem: why the file could not be used ("" when fine); containerd then fails
            every pull of this registry, so this is reported too.
    """

    registry: str
    source: str = ""
    endpoints: tuple[Endpoint, ...] = field(default_factory=tuple)
    problem: str = ""

    def pull_endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoints a pull tries, in order."""
        return tuple(e for e in self.endpoints if e.pulls)


def default_server(registry: str) -> str:
    """containerd's server URL for a registry when hosts.toml names none."""
    return DOCKER_HUB_SERVER if registry == DOCKER_HUB else f"https://{registry}"


def _host_of(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    return parts.netloc.rsplit("@", 1)[-1]


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(str(v) for v in value if isinstance(v, str))
    return ()


def _ca_paths(value: object, base: Path) -> tuple[str, ...]:
    out = []
    for raw in _strings(value)[:MAX_HOSTS]:
        path = Path(raw)
        out.append(str(path if path.is_absolute() else base / path))
    return tuple(out)


def _endpoint(url: str, table: object, base: Path, *, mirror: bool) -> Endpoint:
    data = table if isinstance(table, dict) else {}
    url = url if "://" in url else f"https://{url}"
    caps = _strings(data.get("capabilities")) or DEFAULT_CAPABILITIES
    return Endpoint(
        url=url.rstrip("/"),
        host=_host_of(url),
        mirror=mirror,
        capabilities=caps,
        ca=_ca_paths(data.get("ca"), base),
        skip_verify=bool(data.get("skip_verify", False)),
    )


def config_dir(config_path: str | Path, registry: str) -> Path | None:
    """The directory containerd uses for the registry: its own, else ``_default``, else None."""
    root = Path(config_path)
    for name in (registry, "_default"):
        candidate = root / name
        if (candidate / "hosts.toml").is_file():
            return candidate
    return None


def parse(text: str, registry: str, base: Path, source: str = "") -> HostsConfig:
    """Parse one hosts.toml's text for ``registry`` (``base``: its directory)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problem = f"{source or 'hosts.toml'} is not valid TOML: {exc}"
        return HostsConfig(registry, source, (_default_server(registry),), problem=problem)
    hosts = data.get("host")
    mirrors = []
    if isinstance(hosts, dict):
        for url, table in list(hosts.items())[:MAX_HOSTS]:
            mirrors.append(_endpoint(str(url), table, base, mirror=True))
    # Top-level ca / skip_verify / capabilities apply to the server, named or default.
    server_url = data.get("server")
    url = server_url if isinstance(server_url, str) and server_url else default_server(registry)
    server = _endpoint(url, data, base, mirror=False)
    return HostsConfig(registry, source, (*mirrors, server))


def _default_server(registry: str) -> Endpoint:
    url = default_server(registry)
    return Endpoint(url=url, host=_host_of(url), mirror=False)


def load(config_path: str | Path | None, registry: str) -> HostsConfig:
    """containerd's endpoints for ``registry`` from ``config_path`` (``certs.d``).

    No config path, no directory or no file: the defaults (the server only).
    """
    if not config_path:
        return HostsConfig(registry, "", (_default_server(registry),))
    directory = config_dir(config_path, registry)
    if directory is None:
        return HostsConfig(registry, "", (_default_server(registry),))
    path = directory / "hosts.toml"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE + 1)
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror or exc}"
        return HostsConfig(registry, str(path), (_default_server(registry),), problem=problem)
    if len(raw) > MAX_FILE:
        problem = f"{path} is larger than {MAX_FILE} bytes; not read"
        return HostsConfig(registry, str(path), (_default_server(registry),), problem=problem)
    return parse(raw.decode("utf-8", "replace"), registry, directory, str(path))


def describe(endpoints: Sequence[Endpoint]) -> str:
    """``mirror https://m (pull, resolve) -> server https://r``: the order containerd tries."""
    parts = []
    for e in endpoints:
        what = "mirror" if e.mirror else "server"
        extra = ", skip_verify" if e.skip_verify else ""
        parts.append(f"{what} {e.url} ({', '.join(e.capabilities)}{extra})")
    return " -> ".join(parts)
