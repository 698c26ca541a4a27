"""TCP and TLS steps.

TLS is verified against the system CAs plus an optional bundle. An untrusted chain is
reported with its issuer (an intercepting proxy shows up here), read from a second,
unverified handshake; a server that answers plain HTTP on the TLS port is named as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cryptography import x509

from pullhealth.domain.codes import Code

# OpenSSL X509_V_ERR_* codes that mean "this chain is not trusted here".
_HOSTNAME_MISMATCH = 62
_EXPIRED = 10


class StepError(Exception):
    """A probe step failed with a diagnosis code and facts for the summary."""

    def __init__(self, code: Code, message: str, **facts: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.facts = facts


def make_ssl_context(ca_file: str | None, verify: bool = True) -> ssl.SSLContext:
    """System CAs plus an optional extra bundle (``verify=False``: no verification).

    Loading the system CAs costs tens of milliseconds of CPU: contexts are shared by every
    chain, and made again when the bundle file changes (a re-mounted ConfigMap).
    """
    return _context(ca_file, _stamp(ca_file), verify)


def _stamp(path: str | None) -> tuple[int, int]:
    if not path:
        return (0, 0)
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)  # load_verify_locations reports it
    return (st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _context(ca_file: str | None, stamp: tuple[int, int], verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def tcp_connect(host: str, address: str, port: int, timeout: float) -> None:
    """Open and close a TCP connection.

    Raises:
        StepError: CONNECT_REFUSED or CONNECT_TIMEOUT.
    """
    where = f"{address}:{port}"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except TimeoutError:
        raise StepError(
            Code.CONNECT_TIMEOUT,
            f"TCP connect to {host} at {where} timed out after {timeout:g}s",
            address=where,
        ) from None
    except ConnectionRefusedError:
        raise StepError(
            Code.CONNECT_REFUSED, f"TCP connect to {host} at {where} was refused", address=where
        ) from None
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, str(exc))
        raise StepError(
            Code.CONNECT_TIMEOUT,
            f"TCP connect to {host} at {where} failed: {reason}",
            address=where,
        ) from None
    await _close(writer)


@dataclass(frozen=True)
class PeerCert:
    """The facts of a server certificate worth showing."""

    subject: str
    issuer: str
    not_after: str
    names: tuple[str, ...] = field(default_factory=tuple)
    protocol: str = ""


def describe_cert(der: bytes) -> PeerCert:
    """Subject, issuer, expiry and DNS names of a DER certificate."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(str(n) for n in san.value.get_values_for_type(x509.DNSName))
        names += tuple(str(ip) for ip in san.value.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        names = ()
    return PeerCert(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_after=cert.not_valid_after_utc.isoformat(),
        names=names,
    )


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Opener = Callable[[], Awaitable[Stream]]


def direct(address: str, port: int, timeout: float) -> Opener:
    """An opener of plain TCP connections to address:port (bounded by timeout)."""

    async def open_tcp() -> Stream:
        return await asyncio.wait_for(asyncio.open_connection(address, port), timeout)

    return open_tcp


async def _open_tls(host: str, opener: Opener, ctx: ssl.SSLContext, timeout: float) -> asyncio.StreamWriter:
    """Open the stream (direct, or a proxy tunnel) and upgrade it to TLS."""
    _, writer = await opener()
    try:
        await asyncio.wait_for(writer.start_tls(ctx, server_hostname=host), timeout)
    except BaseException:
        writer.close()
        raise
    return writer


async def _peer_cert_unverified(host: str, opener: Opener, timeout: float) -> PeerCert | None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        writer = await _open_tls(host, opener, ctx, timeout)
    except (OSError, TimeoutError, ssl.SSLError, StepError):
        return None
    ssl_obj = writer.get_extra_info("ssl_object")
    der = ssl_obj.getpeercert(binary_form=True) if ssl_obj else None
    await _close(writer)
    return describe_cert(der) if der else None


async def _speaks_plain_http(opener: Opener, timeout: float) -> bool:
    try:
        reader, writer = await opener()
    except (OSError, TimeoutError, StepError):
        return False
    try:
        writer.write(b"HEAD /v2/ HTTP/1.0\r\nHost: pullhealth\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.read(5), timeout)
    except (OSError, TimeoutError):
        return False
    finally:
        await _close(writer)
    return head.startswith(b"HTTP/")


def _parent(host: str) -> str | None:
    """The domain a host is in (``myacr.azurecr.io`` -> ``azurecr.io``); None for an
    address or a name directly under a top-level domain (its parent is everyone's)."""
    name = host.lower().rstrip(".")
    labels = name.split(".")
    if len(labels) < 3 or labels[-1].isdigit() or ":" in name:
        return None
    return ".".join(labels[1:])


def covers(cert_name: str, host: str) -> bool:
    """A certificate name (``*.`` wildcard: one label) valid for host."""
    name, wanted = cert_name.lower().rstrip("."), host.lower().rstrip(".")
    if name.startswith("*."):
        head, _, rest = wanted.partition(".")
        return bool(head) and rest == name[2:]
    return name == wanted


def names_shown(names: tuple[str, ...], host: str) -> tuple[str, ...]:
    """The certificate names that may be shown for ``host``: those in its own domain. A
    certificate for another name can be another service's (an internal host behind the
    same address): its other names are internal facts, not the registry's."""
    parent = _parent(host)
    out = []
    for raw in names:
        name = raw.lower().rstrip(".")
        bare = name[2:] if name.startswith("*.") else name
        if name == host.lower() or (parent and (bare == parent or bare.endswith("." + parent))):
            out.append(raw)
    return tuple(out[:5])


def issuer_shown(peer: PeerCert | None, host: str) -> str:
    """The issuer, when the certificate is for the requested name (a TLS-inspecting proxy
    mints one for it: its issuer is what to trust or remove); a certificate for another
    name is another service's, and its issuer is not the registry's to tell."""
    if peer is None:
        return "unknown"
    if any(covers(n, host) for n in peer.names):
        return peer.issuer
    return "not shown (the certificate is for another name)"


async def tls_handshake(
    host: str, opener: Opener, ctx: ssl.SSLContext, timeout: float, where: str
) -> PeerCert:
    """Handshake with verification over ``opener``'s stream; return the peer certificate.

    Args:
        host: the name to verify (and send as SNI).
        opener: opens the raw stream: :func:`direct`, or a proxy tunnel.
        ctx: the verification context.
        timeout: seconds for the connection and for the handshake.
        where: what to call the peer in messages (address:port, or "via proxy ...").

    Raises:
        StepError: TLS_UNTRUSTED, TLS_HOSTNAME_MISMATCH, TLS_PROTOCOL_ERROR, FIREWALL_FORBIDDEN
            (a reset during the handshake: a middlebox), CONNECT_* when
            the stream cannot be opened or the server never answers the handshake, or the
            proxy's refusal.
    """
    try:
        writer = await _open_tls(host, opener, ctx, timeout)
    except StepError:
        raise
    except ssl.SSLCertVerificationError as exc:
        peer = await _peer_cert_unverified(host, opener, timeout)
        issuer = issuer_shown(peer, host)
        if exc.verify_code == _HOSTNAME_MISMATCH:
            shown = names_shown(peer.names, host) if peer else ()
            names = ", ".join(shown) if shown else "another name"
            raise StepError(
                Code.TLS_HOSTNAME_MISMATCH,
                f"certificate of {host} is for {names}, not {host}",
                issuer=issuer,
            ) from None
        reason = exc.verify_message or "certificate verify failed"
        if exc.verify_code == _EXPIRED and peer:
            reason = f"{reason} (notAfter {peer.not_after})"
        raise StepError(
            Code.TLS_UNTRUSTED,
            f"certificate of {host} is not trusted: {reason}; issuer: {issuer}",
            issuer=issuer,
        ) from None
    except TimeoutError:
        raise StepError(
            Code.CONNECT_TIMEOUT,
            f"{host} ({where}) accepted TCP but did not complete a TLS handshake within {timeout:g}s",
            address=where,
        ) from None
    except ConnectionRefusedError:
        raise StepError(
            Code.CONNECT_REFUSED, f"the connection to {host} ({where}) was refused", address=where
        ) from None
    except ConnectionResetError:
        # Registries do not reset a ClientHello; firewalls, DPI and TLS-inspecting proxies do.
        raise StepError(
            Code.FIREWALL_FORBIDDEN,
            f"{host} ({where}) accepted TCP, then the connection was reset during the TLS handshake",
            address=where,
            detail=" (the connection was reset during the TLS handshake: a firewall, DPI or "
            "TLS-inspecting proxy between here and the registry usually does this)",
        ) from None
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        if await _speaks_plain_http(opener, timeout):
            detail = "the server answers plain HTTP, not TLS"
        else:
            detail = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        raise StepError(
            Code.TLS_PROTOCOL_ERROR, f"TLS handshake with {host} failed: {detail}", detail=detail
        ) from None
    ssl_obj = writer.get_extra_info("ssl_object")
    der = ssl_obj.getpeercert(binary_form=True) if ssl_obj else None
    version = ssl_obj.version() if ssl_obj else None
    await _close(writer)
    if not der:
        raise StepError(Code.TLS_PROTOCOL_ERROR, f"{host} sent no certificate", detail="no certificate")
    cert = describe_cert(der)
    return PeerCert(cert.subject, cert.issuer, cert.not_after, cert.names, version or "")
