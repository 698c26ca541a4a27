"""Image references, parsed and normalised the way Docker and kubelet do.

The grammar follows distribution's reference package: an optional domain (a first path
component containing ``.`` or ``:``, or ``localhost``), lowercase path components, an
optional tag and an optional digest. Docker Hub shorthand (``nginx``) becomes
``docker.io/library/nginx:latest``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[0-9a-fA-F:.]+\])"
    r"(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_MAX_NAME = 255
_MAX_HOST = 253
_MAX_LABEL = 63


class InvalidReference(ValueError):
    """The text is not a valid image reference; the message says why."""


@dataclass(frozen=True)
class ImageReference:
    """A normalised image reference.

    Attributes:
        registry: the registry as written in references (``docker.io`` for Docker Hub).
        repository: the repository path (``library/nginx``).
        tag: the tag, or None when only a digest was given.
        digest: the digest, or None.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """The host[:port] to talk the registry API to (Docker Hub's API host differs)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def manifest_ref(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def familiar(self) -> str:
        """The fully qualified reference, as kubelet prints it."""
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def __str__(self) -> str:
        return self.familiar


def _port(text: str, hostport: str) -> int:
    if not text.isdigit() or not text.isascii() or not 1 <= int(text) <= 65535:
        raise InvalidReference(f"invalid port {text!r} in {hostport!r} (1-65535)")
    return int(text)


def split_host_port(hostport: str) -> tuple[str, int]:
    """Split ``host[:port]`` (IPv6 in brackets) into host and port (default 443).

    Raises:
        InvalidReference: a port outside 1-65535, or an unclosed bracket.
    """
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise InvalidReference(f"unclosed bracket in {hostport!r}")
        host = hostport[1:end]
        rest = hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidReference(f"invalid text after the IPv6 address in {hostport!r}")
        return host, _port(rest[1:], hostport) if rest else 443
    if ":" in hostport:
        host, _, port = hostport.rpartition(":")
        return host, _port(port, hostport)
    return hostport, 443


def join_host_port(host: str, port: int) -> str:
    """``host[:port]`` for URLs: IPv6 in brackets, the default port 443 left out."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == 443 else f"{shown}:{port}"


def check_host(hostport: str) -> None:
    """Validate a registry ``host[:port]`` beyond the grammar: DNS label and name lengths,
    the port range, IPv6 literals, and ASCII only (with a clear message for unicode).

    Raises:
        InvalidReference: naming what is wrong.
    """
    if not hostport.isascii():
        raise InvalidReference(
            f"registry host {hostport!r} has non-ASCII characters; write an internationalised "
            "name in its punycode (xn--) form"
        )
    host, _ = split_host_port(hostport)
    if not _DOMAIN.fullmatch(hostport):
        raise InvalidReference(f"invalid registry host {hostport!r} (host[:port], letters, digits, - and .)")
    if hostport.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidReference(f"invalid IPv6 address {host!r} in {hostport!r}") from None
        return
    if len(host) > _MAX_HOST:
        raise InvalidReference(f"registry host longer than {_MAX_HOST} characters")
    for label in host.split("."):
        if not label:
            raise InvalidReference(f"registry host {host!r} has an empty label")
        if len(label) > _MAX_LABEL:
            raise InvalidReference(f"registry host {host!r} has a label longer than {_MAX_LABEL} characters")


def normalize_registry(host: str) -> str:
    """Docker Hub aliases become ``docker.io``; other hosts are lowercased."""
    host = host.strip().lower()
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix) :]
    host = host.split("/", 1)[0]
    return DOCKER_HUB if host in _HUB_ALIASES else host


def _looks_like_domain(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def parse(text: str) -> ImageReference:
    """Parse and normalise an image reference.

    Args:
        text: e.g. ``nginx``, ``myacr.azurecr.io/team/app:v1``, ``host:5000/x@sha256:...``.

    Returns:
        The normalised reference; the tag defaults to ``latest`` when no digest is given.

    Raises:
        InvalidReference: when the text cannot be a valid reference.
    """
    ref = text.strip()
    if not ref:
        raise InvalidReference("the reference is empty")
    if any(c.isspace() for c in ref):
        raise InvalidReference("the reference contains white space")
    if "://" in ref:
        raise InvalidReference("a reference has no scheme (remove http:// or https://)")

    digest: str | None = None
    if "@" in ref:
        ref, _, digest = ref.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise InvalidReference(f"invalid digest {digest!r}")

    first, sep, rest = ref.partition("/")
    if sep and _looks_like_domain(first):
        if not first.isascii() or not _DOMAIN.fullmatch(first):
            check_host(first)  # says why when it can (unicode, lengths, port)
            raise InvalidReference(f"invalid registry host {first!r}")
        check_host(first)
        registry = normalize_registry(first)
        remainder = rest
    else:
        registry = DOCKER_HUB
        remainder = ref

    tag: str | None = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag!r}")

    if not remainder:
        raise InvalidReference("the repository name is empty")
    components = remainder.split("/")
    for component in components:
        if not _COMPONENT.fullmatch(component):
            if component.lower() != component and _COMPONENT.fullmatch(component.lower()):
                raise InvalidReference(f"repository name must be lowercase (got {component!r})")
            raise InvalidReference(f"invalid repository path component {component!r}")
    if registry == DOCKER_HUB and len(components) == 1:
        remainder = f"library/{remainder}"
    if len(f"{registry}/{remainder}") > _MAX_NAME:
        raise InvalidReference(f"repository name longer than {_MAX_NAME} characters")

    if tag is None and digest is None:
        tag = "latest"
    return ImageReference(registry=registry, repository=remainder, tag=tag, digest=digest)


def parse_target(text: str) -> tuple[str, ImageReference | None]:
    """Parse a CLI/CR target: a bare registry host, or an image reference.

    A single component that looks like a host (``myacr.azurecr.io``, ``localhost:5000``)
    is taken as a registry with no image to check.

    Returns:
        (registry, image or None).

    Raises:
        InvalidReference: when the text is neither.
    """
    stripped = text.strip()
    for prefix in ("https://", "http://"):
        if stripped.startswith(prefix):
            stripped = stripped[len(prefix) :].rstrip("/")
    if "/" not in stripped and "@" not in stripped and not stripped.isascii():
        check_host(stripped)
    if "/" not in stripped and "@" not in stripped and _DOMAIN.fullmatch(stripped):
        host = stripped.rsplit(":", 1)[0] if not stripped.endswith("]") else stripped
        if "." in host or host == "localhost" or host.startswith("["):
            check_host(stripped)
            return normalize_registry(stripped), None
    image = parse(stripped)
    return image.registry, image
