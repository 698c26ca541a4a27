"""httpx clients that reach fixture hostnames without touching system DNS.

Fixture names such as ``anon.test`` exist only in the dnsmasq zone, so a plain
httpx client cannot resolve them. These clients resolve through dnsmasq (or pin
everything to 127.0.0.1) while keeping the URL's hostname for SNI, certificate
verification and the Host header. Any non-loopback address is refused so a
test can never send traffic off the machine.
"""

from __future__ import annotations

import ipaddress
import ssl
import typing
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import httpcore
import httpx


def _require_loopback(ip: str) -> str:
    if not ipaddress.ip_address(ip).is_loopback:
        raise httpcore.ConnectError(f"refusing non-loopback address {ip}")
    return ip


def split_nameserver(nameserver: str) -> tuple[str, int]:
    """Split ``"127.0.0.1:PORT"`` into ``("127.0.0.1", PORT)``."""
    host, _, port = nameserver.rpartition(":")
    return host, int(port)


def resolve_a(nameserver: str, name: str, timeout: float = 2.0) -> list[str]:
    """A records for ``name`` from ``nameserver`` (CNAMEs followed by the server)."""
    host, port = split_nameserver(nameserver)
    reply = dns.query.udp(dns.message.make_query(name, "A"), host, port=port, timeout=timeout)
    return [rdata.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rdata in rrset]


class _ResolvingBackend(httpcore.SyncBackend):
    """Resolves hostnames via a given nameserver, or pins them to 127.0.0.1."""

    def __init__(self, nameserver: str | None) -> None:
        self._nameserver = nameserver

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            if self._nameserver is None:
                ip = "127.0.0.1"
            else:
                addrs = resolve_a(self._nameserver, host)
                if not addrs:
                    raise httpcore.ConnectError(f"{host} does not resolve") from None
                ip = addrs[0]
        return super().connect_tcp(_require_loopback(ip), port, timeout, local_address, socket_options)


class _Transport(httpx.HTTPTransport):
    def __init__(self, ssl_context: ssl.SSLContext, nameserver: str | None) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        # httpx has no public hook for the network backend; swap the pool it built.
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            network_backend=_ResolvingBackend(nameserver),
        )


def make_client(
    ca_bundle: Path | str | None,
    *,
    nameserver: str | None = None,
    timeout: float = 5.0,
    **kwargs: typing.Any,
) -> httpx.Client:
    """An httpx client for fixture hostnames.

    Args:
        ca_bundle: CA file to trust; ``None`` disables verification.
        nameserver: ``"127.0.0.1:PORT"`` to resolve through; ``None`` pins every
            hostname to 127.0.0.1 (handy when DNS is not under test).
        timeout: Per-operation timeout in seconds.
        **kwargs: Passed to :class:`httpx.Client` (e.g. ``auth``, ``headers``).
    """
    if ca_bundle is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(ca_bundle))
    return httpx.Client(
        transport=_Transport(ctx, nameserver),
        timeout=timeout,
        trust_env=False,
        **kwargs,
    )
