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
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver

from pullhealth.domain.codes import Code
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

    async def _family(self, host: str, rdtype: str) -> tuple[list[str], list[str]] | BaseException:
        """One address family's answer, or the exception that family's query raised."""
        try:
            return await self._query(host, rdtype)
        except dns.exception.DNSException as exc:
            return exc

    async def _lookup_dns(self, host: str) -> Lookup:
        """Ask for A and AAAA; the family that answers decides.

        A resolver that answers A but refuses or fails AAAA (REFUSED/SERVFAIL: corporate DNS,
        dnsmasq without an upstream) must not fail the lookup: an IPv4 pull works. Only when
        no family yields an address does the lookup fail, with the servers' own rcodes named.
        """
        v4, v6 = await asyncio.gather(self._family(host, "A"), self._family(host, "AAAA"))
        answered = [r for r in (v4, v6) if not isinstance(r, BaseException)]
        addresses = tuple(a for r in answered for a in r[0])
        if addresses:
            return Lookup(host, addresses, tuple(dict.fromkeys(c for r in answered for c in r[1])))
        errors = {t: r for t, r in (("A", v4), ("AAAA", v6)) if isinstance(r, BaseException)}
        if any(isinstance(e, dns.resolver.NXDOMAIN) for e in errors.values()):
            raise DnsFailure(Code.DNS_NXDOMAIN, f"{host} does not exist (NXDOMAIN from {self._server()})")
        if not errors:
            raise DnsFailure(Code.DNS_NXDOMAIN, f"{host} has no A or AAAA record")
        said = "; ".join(f"{rdtype}: {self._why(err)}" for rdtype, err in errors.items())
        if len(errors) == 1:
            said += " (the other family has no record)"
        raise DnsFailure(Code.DNS_TIMEOUT, f"DNS server {self._server()} gave no address for {host}: {said}")

    def _why(self, err: BaseException) -> str:
        """REFUSED / SERVFAIL / no answer in time, as the server said it."""
        if isinstance(err, dns.exception.Timeout):
            return f"no answer in {self.timeout:g}s"
        if isinstance(err, dns.resolver.NoNameservers):
            rcodes = [
                dns.rcode.to_text(response.rcode())
                for *_, response in err.kwargs.get("errors", [])
                if isinstance(response, dns.message.Message)
            ]
            if rcodes:
                return "answered " + "/".join(dict.fromkeys(rcodes))
            return "no server answered"
        return str(err) or type(err).__name__

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
            # A resolver failing one family (REFUSED/SERVFAIL for AAAA) can fail the combined
            # lookup: the family that answers decides.
            addresses = await self._system_one_family(host)
            if not addresses:
                raise DnsFailure(Code.DNS_TIMEOUT, f"lookup of {host} failed: {exc}") from None
        else:
            addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        cnames: list[str] = []
        try:
            answer = await self._dns().resolve(host, "A")
            cnames = _cnames_of(answer.response)
        except dns.exception.DNSException:
            pass  # the chain is informative only; getaddrinfo's answer is what counts
        return Lookup(host, addresses, tuple(cnames))

    async def _system_one_family(self, host: str) -> tuple[str, ...]:
        """Addresses of the first family (IPv4, then IPv6) the system resolver answers."""
        loop = asyncio.get_running_loop()
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM), self.timeout
                )
            except (TimeoutError, OSError):
                continue
            if infos:
                return tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        return ()

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
