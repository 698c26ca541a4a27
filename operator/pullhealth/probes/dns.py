"""DNS step: addresses, the CNAME chain, and private-endpoint routing.

With an explicit nameserver (``host[:port]``) lookups go to that server only, through
dnspython. Without one, addresses come from the system resolver (``getaddrinfo``: it
honours /etc/hosts and the pod's resolv.conf search list, like the runtime does) and the
CNAME chain is read best-effort through dnspython.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from pullhealth.codes import Code
from pullhealth.probes.destinations import DestinationPolicy

PRIVATELINK = "privatelink."


class DnsFailure(Exception):
    """A lookup failed; ``code`` is DNS_NXDOMAIN or DNS_TIMEOUT."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Lookup:
    """What a name resolved to."""

    host: str
    addresses: tuple[str, ...]
    cnames: tuple[str, ...] = ()
    literal: bool = False


# Addresses only reachable from inside a network. Python's ``ip.is_private`` is not used:
# it also counts documentation and reserved ranges (e.g. 203.0.113.0/24), which are public
# as far as routing to a registry is concerned.
_PRIVATE_NETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
)


def is_private(address: str) -> bool:
    """RFC 1918, shared (CGNAT), loopback, link-local or IPv6 ULA address."""
    ip = ipaddress.ip_address(address)
    return any(ip.version == net.version and ip in net for net in _PRIVATE_NETS)


def parse_nameserver(text: str) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``[::1]:53`` -> (ip, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, 53


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def preferred(found: Lookup) -> str:
    """The address a dialer tries first: IPv4 preferred."""
    v4 = [a for a in found.addresses if ":" not in a]
    return (v4 or list(found.addresses))[0]


class Resolver:
    """Resolves names once per chain and remembers the answers.

    Args:
        nameserver: ``ip[:port]`` to ask, or None for the system resolver.
        timeout: seconds for one whole lookup (all retries included).
    """

    def __init__(
        self, nameserver: str | None, timeout: float, policy: DestinationPolicy | None = None
    ) -> None:
        self.timeout = timeout
        self.policy = policy if policy is not None else DestinationPolicy()
        self._nameserver = parse_nameserver(nameserver) if nameserver else None
        self._cache: dict[str, Lookup] = {}

    def _dns(self) -> dns.asyncresolver.Resolver:
        if self._nameserver:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [self._nameserver[0]]
            resolver.port = self._nameserver[1]
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.lifetime = self.timeout
        resolver.timeout = max(self.timeout / 2, 0.5)
        return resolver

    async def lookup(self, host: str) -> Lookup:
        """Resolve a host (cached for this resolver's life).

        Raises:
            DnsFailure: NXDOMAIN, no address records, or no answer in time.
        """
        if host in self._cache:
            return self._cache[host]
        literal = _literal(host)
        if literal:
            result = Lookup(host, (literal,), literal=True)
        elif self._nameserver:
            result = await self._lookup_dns(host)
        else:
            result = await self._lookup_system(host)
        self._cache[host] = result
        return result

    async def address(self, host: str, port: int | None = None) -> str:
        """The address to connect to: the first of a host's, IPv4 preferred (what a dialer
        tries first), allowed by the destination policy. Every connection the probes open
        takes its address from here.

        Raises:
            DnsFailure: as :meth:`lookup`.
            StepError: DESTINATION_REFUSED when the policy refuses the address.
        """
        address = preferred(await self.lookup(host))
        self.policy.check_address(host, address, port)
        return address

    async def _query(self, host: str, rdtype: str) -> tuple[list[str], list[str]]:
        try:
            answer = await self._dns().resolve(host, rdtype, search=False)
        except dns.resolver.NoAnswer as exc:
            response = exc.kwargs.get("response")
            return [], _cnames_of(response)
        addresses = [rr.to_text() for rr in answer]
        return addresses, _cnames_of(answer.response)

    async def _lookup_dns(self, host: str) -> Lookup:
        try:
            (v4, c4), (v6, c6) = await asyncio.gather(self._query(host, "A"), self._query(host, "AAAA"))
        except dns.resolver.NXDOMAIN:
            raise DnsFailure(
                Code.DNS_NXDOMAIN, f"{host} does not exist (NXDOMAIN from {self._server()})"
            ) from None
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            raise DnsFailure(
                Code.DNS_TIMEOUT, f"no answer for {host} from {self._server()} in {self.timeout:g}s"
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise DnsFailure(
                Code.DNS_TIMEOUT, f"DNS server {self._server()} failed to answer for {host}: {exc}"
            ) from None
        except dns.exception.DNSException as exc:
            raise DnsFailure(Code.DNS_TIMEOUT, f"DNS lookup of {host} failed: {exc}") from None
        addresses = tuple(v4 + v6)
        if not addresses:
            raise DnsFailure(Code.DNS_NXDOMAIN, f"{host} has no A or AAAA record")
        return Lookup(host, addresses, tuple(dict.fromkeys(c4 + c6)))

    async def _lookup_system(self, host: str) -> Lookup:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), self.timeout
            )
        except TimeoutError:
            raise DnsFailure(Code.DNS_TIMEOUT, f"no answer for {host} in {self.timeout:g}s") from None
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
                raise DnsFailure(Code.DNS_NXDOMAIN, f"{host}: no such host") from None
            raise DnsFailure(Code.DNS_TIMEOUT, f"lookup of {host} failed: {exc}") from None
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        cnames: list[str] = []
        try:
            answer = await self._dns().resolve(host, "A")
            cnames = _cnames_of(answer.response)
        except dns.exception.DNSException:
            pass  # the chain is informative only; getaddrinfo's answer is what counts
        return Lookup(host, addresses, tuple(cnames))

    def _server(self) -> str:
        return f"{self._nameserver[0]}:{self._nameserver[1]}" if self._nameserver else "system"


def _cnames_of(response: object) -> list[str]:
    out: list[str] = []
    for rrset in getattr(response, "answer", []) or []:
        if rrset.rdtype == dns.rdatatype.CNAME:
            out.extend(rr.target.to_text().rstrip(".") for rr in rrset)
    return out


@dataclass(frozen=True)
class RoutingVerdict:
    """Whether the addresses fit the expected (private or public) routing."""

    ok: bool
    message: str
    address: str = ""
    facts: dict[str, str] = field(default_factory=dict)


def assess_routing(found: Lookup, expect_private: bool) -> RoutingVerdict:
    """Detect a broken private-endpoint setup from a lookup.

    A ``privatelink`` CNAME that ends on a public address means the private DNS zone is
    not linked (or lacks the record), so traffic goes to the public endpoint; a public
    address where a private endpoint is expected means the same.
    """
    public = [a for a in found.addresses if not is_private(a)]
    via_privatelink = any(PRIVATELINK in c for c in found.cnames)
    if public and via_privatelink:
        return RoutingVerdict(
            False,
            f"{found.host} goes through a privatelink CNAME "
            f"({', '.join(found.cnames)}) but ends on public address {public[0]}: "
            "the private DNS zone is not linked to this network or lacks the A record",
            public[0],
        )
    if public and expect_private:
        return RoutingVerdict(
            False,
            f"{found.host} resolves to public address {public[0]} but a private endpoint is expected",
            public[0],
        )
    return RoutingVerdict(True, "", found.addresses[0] if found.addresses else "")
