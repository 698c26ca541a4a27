"""Where the chain may connect: one policy, checked on every address before a connect.

The operator probes on behalf of RegistryCheck authors (namespace users) and of pods. Its
network position is a power they do not have: it reaches the node's loopback services, the
instance metadata endpoint, the API server. The policy keeps that position out of reach:

- by default it refuses loopback (``localhost``, ``*.localhost`` and every numeric
  spelling of an address, ``127.1``, ``2130706433``, ``0x7f000001``, checked by name even
  when a proxy resolves it), link-local (IPv4 and IPv6: 169.254.169.254 is there), the
  cloud metadata and host-agent addresses that are not link-local (fd00:ec2::254,
  fd00:ec2::23, 168.63.129.16, 100.100.100.200, 2002:a9fe:a9fe::/48), unspecified,
  multicast, reserved addresses and the API server's own addresses;
- private ranges and ClusterIPs stay allowed (private endpoints and in-cluster registries
  live there);
- the admin widens or narrows it with allow / deny CIDRs and an optional registry host
  allow-list (``pullhealth run`` flags, chart values), never through a RegistryCheck.

Every connection the probes open takes its address from :meth:`Resolver.address
<pullhealth.probes.dns.Resolver.address>`, which asks this policy first: a refused
destination raises before any packet is sent. Operator-configured endpoints (IMDS, Azure
AD, the egress proxy) are not registry destinations and are not subject to it.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pullhealth.domain.codes import Code
from pullhealth.probes.net import StepError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services on addresses that are not link-local.
_METADATA = (
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS IMDS (IPv6)
    ipaddress.ip_network("fd00:ec2::23/128"),  # AWS Time Sync / DNS on Nitro (IPv6)
    ipaddress.ip_network("168.63.129.16/32"),  # Azure WireServer (host agent, DNS, health)
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud metadata
    ipaddress.ip_network("2002:a9fe:a9fe::/48"),  # 6to4 spelling of 169.254.169.254
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


def _part_value(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    return int(part, 8) if part.startswith("0") else int(part)


def numeric_ipv4(name: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric host name means to the C resolver (``inet_aton``), or None.

    ``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and ``2852039166`` are
    addresses to glibc's ``getaddrinfo``, curl and many proxies: 1 to 4 parts, each decimal,
    octal (leading 0) or hex (0x), the last part filling the remaining bytes.
    """
    parts = name.split(".")
    if not 1 <= len(parts) <= 4 or not all(_PART.fullmatch(p) for p in parts):
        return None
    values = [_part_value(p) for p in parts]
    head, last = values[:-1], values[-1]
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def loopback_name(name: str) -> bool:
    """``localhost`` and its aliases, and every ``*.localhost`` (RFC 6761: loopback)."""
    return name in LOCAL_NAMES or name.endswith(".localhost")


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) from flags; raises ValueError naming the bad one."""
    out: list[Network] = []
    for raw in values:
        text = raw.strip()
        if not text:
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"not a CIDR or address: {text!r}") from None
    return tuple(out)


def _why_special(ip: Address) -> str | None:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (instance metadata and node-local services live there)"
    if any(ip in n for n in _METADATA if n.version == ip.version):
        return "a cloud metadata or host-agent address"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return "unspecified"  # 0.0.0.0/8: "this host" (Linux connects 0.0.0.0 to loopback)
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _why_special(ip.ipv4_mapped)
    if ip.is_reserved:
        return "reserved"
    return None


@dataclass(frozen=True)
class DestinationPolicy:
    """Which addresses and registry hosts the probes may connect to.

    Attributes:
        restrict: False turns the policy off (the CLI: its user connects as themselves).
        allow: CIDRs allowed even when special (loopback in the test world) — checked
            after ``deny``.
        deny: CIDRs always refused (admin additions).
        protected: the API server's own endpoints, ``(address, port)`` with port None for
            every port; refused even inside ``allow``.
        hosts: registry host patterns (``*.azurecr.io``); empty means any host.
    """

    restrict: bool = True
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    protected: tuple[tuple[Address, int | None], ...] = field(default_factory=tuple)
    hosts: tuple[str, ...] = ()

    @classmethod
    def unrestricted(cls) -> DestinationPolicy:
        """No restriction: the CLI, where the user probes with their own powers."""
        return cls(restrict=False)

    def check_host(self, host: str) -> None:
        """Refuse a registry host outside the admin's host allow-list (if one is set).

        Raises:
            StepError: DESTINATION_REFUSED.
        """
        name = host.lower().rstrip(".")
        if self.restrict and self.hosts and not any(fnmatch.fnmatchcase(name, p.lower()) for p in self.hosts):
            raise StepError(
                Code.DESTINATION_REFUSED,
                f"{host} is not in the operator's registry host allow-list",
                host=host,
                detail="the host is not in the admin's registry allow-list",
            )

    def check_peer_name(self, host: str, port: int | None = None) -> None:
        """For any host the chain is sent to (a token realm too): a local name, or an
        address literal the policy refuses, is refused even when a proxy would resolve it.

        Raises:
            StepError: DESTINATION_REFUSED.
        """
        if not self.restrict:
            return
        name = host.lower().rstrip(".").strip("[]")
        if loopback_name(name):
            # Always the node's loopback for an image, never the operator's: no allow-list
            # makes the operator's own loopback stand in for it.
            raise StepError(
                Code.DESTINATION_REFUSED,
                f"{host} is the node's own loopback: kubelet pulls from the node, and the operator's "
                "pod cannot see the node's loopback, so it does not probe its own",
                host=host,
                detail=f"{host} is the node's own loopback, which the operator cannot see",
            )
        numeric = numeric_ipv4(name)
        if numeric is not None:
            # A spelling of an address (127.1, 2130706433, 0x7f000001): what a resolver or
            # a proxy would connect to is checked, even when the proxy resolves the name.
            self.check_address(host, str(numeric), port)
            return
        try:
            ipaddress.ip_address(name.split("%", 1)[0])
        except ValueError:
            return
        self.check_address(host, name, port)

    def check_address(self, host: str, address: str, port: int | None = None) -> None:
        """Refuse a connect to ``address``:``port`` (what ``host`` resolved to).

        Raises:
            StepError: DESTINATION_REFUSED, before any packet is sent.
        """
        if not self.restrict:
            return
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise StepError(
                Code.DESTINATION_REFUSED,
                f"{host} resolved to {address!r}, which is not an IP address",
                host=host,
                detail="the address is not an IP address",
            ) from None
        reason = self._refusal(ip, port)
        if reason is None:
            return
        local = reason == "loopback" and host.lower().rstrip(".").strip("[]") in (*LOCAL_NAMES, address)
        detail = (
            f"{host} is the node's own loopback, which the operator cannot see"
            if local
            else f"{host} resolves to {ip} ({reason}), which the operator's destination policy refuses"
        )
        raise StepError(Code.DESTINATION_REFUSED, detail, host=host, address=str(ip), detail=detail)

    def _refusal(self, ip: Address, port: int | None) -> str | None:
        if any(ip in n for n in self.deny if n.version == ip.version):
            return "denied by the admin"
        if any(ip == a and (p is None or p == port) for a, p in self.protected):
            return "the Kubernetes API server"
        if any(ip in n for n in self.allow if n.version == ip.version):
            return None
        return _why_special(ip)


def build_policy(
    *,
    allow: Sequence[str] = (),
    deny: Sequence[str] = (),
    protected: Sequence[tuple[str, int | None]] = (),
    hosts: Sequence[str] = (),
) -> DestinationPolicy:
    """The operator's policy from admin settings (flags / chart values) and the API
    server's endpoints found at start-up."""
    addresses: list[tuple[Address, int | None]] = []
    for value, port in protected:
        try:
            addresses.append((ipaddress.ip_address(value), port))
        except ValueError:
            continue
    return DestinationPolicy(
        restrict=True,
        allow=parse_networks(allow),
        deny=parse_networks(deny),
        protected=tuple(addresses),
        hosts=tuple(h.strip() for h in hosts if h.strip()),
    )
