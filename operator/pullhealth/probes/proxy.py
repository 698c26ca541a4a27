"""HTTP(S) proxies: where the runtime's pull goes when the cluster has an egress proxy.

AKS's HTTP proxy feature (and most corporate setups) give containerd ``HTTPS_PROXY`` and
``NO_PROXY``; the same variables are injected into pods. When a proxy applies, the pull
path is pod -> proxy -> registry: the proxy resolves and connects to the registry, so the
chain's DNS and TCP steps are about the proxy, and TLS runs inside a ``CONNECT`` tunnel.

``NO_PROXY`` follows the rules Go's ``httpproxy`` package (used by containerd) applies:
``*`` matches everything; ``host`` and ``.host`` match the host and its subdomains; an IP
or CIDR matches addresses; an optional ``:port`` must match too.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from pullhealth.domain.codes import Code
from pullhealth.probes.net import StepError

MAX_RESPONSE_HEAD = 16 * 1024


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy. ``password`` is secret: never shown, only sent to the proxy."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The proxy URL with credentials (for the HTTP client only; never print it)."""
        auth = ""
        if self.username:
            auth = f"{self.username}:{self.password or ''}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{auth}{host}:{self.port}"

    @property
    def shown(self) -> str:
        """host:port, safe to show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def authorization(self) -> str | None:
        """The Proxy-Authorization value, if the proxy URL carried credentials."""
        if not self.username:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def parse_proxy(url: str) -> Proxy:
    """Parse ``http://[user:pass@]host[:port]`` (a bare ``host:port`` means http).

    Raises:
        ValueError: for another scheme or a missing host.
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme != "http":
        raise ValueError(f"only http:// proxies are supported (got {parts.scheme}://)")
    if not parts.hostname:
        raise ValueError("the proxy URL has no host")
    return Proxy(
        host=parts.hostname,
        port=parts.port or 80,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def split_no_proxy(value: str | None) -> tuple[str, ...]:
    """``a,b, .c`` -> ('a', 'b', '.c')."""
    return tuple(p.strip().lower() for p in (value or "").split(",") if p.strip())


def from_environment(env: Mapping[str, str] | None = None) -> tuple[Proxy | None, tuple[str, ...]]:
    """HTTPS_PROXY (or https_proxy) and NO_PROXY (or no_proxy), as the runtime reads them."""
    source = os.environ if env is None else env
    url = source.get("HTTPS_PROXY") or source.get("https_proxy")
    no_proxy = split_no_proxy(source.get("NO_PROXY") or source.get("no_proxy"))
    return (parse_proxy(url) if url else None), no_proxy


def from_setting(
    setting: str | None, no_proxy: str | None = None, env: Mapping[str, str] | None = None
) -> tuple[Proxy | None, tuple[str, ...]]:
    """A proxy setting as ``--proxy`` and ``PULLHEALTH_PROXY`` take it: empty (direct), ``env``
    (HTTPS_PROXY/NO_PROXY as the runtime reads them) or a proxy URL; ``no_proxy`` (a
    comma-separated list) adds entries to the environment's.

    Raises:
        ValueError: the URL does not parse (the message says why, without the URL).
    """
    extra = split_no_proxy(no_proxy)
    text = (setting or "").strip()
    if not text:
        return None, extra
    if text == "env":
        proxy, env_no_proxy = from_environment(env)
        return proxy, env_no_proxy + extra
    return parse_proxy(text), extra


def bypasses(host: str, port: int, no_proxy: Sequence[str]) -> bool:
    """True when NO_PROXY says to connect to host:port directly."""
    host = host.lower().strip("[]")
    for entry in no_proxy:
        if entry == "*":
            return True
        name, want_port = entry, None
        if entry.count(":") == 1 and not entry.startswith("["):
            name, _, p = entry.partition(":")
            want_port = int(p) if p.isdigit() else None
        if want_port is not None and want_port != port:
            continue
        name = name.strip("[]")
        try:
            network = ipaddress.ip_network(name, strict=False)
        except ValueError:
            network = None
        if network is not None:
            try:
                if ipaddress.ip_address(host) in network:
                    return True
            except ValueError:
                pass
            continue
        bare = name.lstrip(".")
        if host == bare or host.endswith("." + bare):
            return True
    return False


async def open_tunnel(
    proxy: Proxy, address: str, target_host: str, target_port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TCP to the proxy, then ``CONNECT target``; returns the open tunnel.

    Raises:
        StepError: PROXY_ERROR when the proxy itself fails (unreachable, silent, refuses
            CONNECT, demands credentials, answers something else), CONNECT_TIMEOUT when it
            says it could not reach the registry (502/503/504).
    """
    where = f"{address}:{proxy.port}"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, proxy.port), timeout)
    except TimeoutError:
        raise _proxy_error(proxy, f"TCP connect to the proxy at {where} timed out", address=where) from None
    except ConnectionRefusedError:
        raise _proxy_error(proxy, f"the proxy at {where} refused the connection", address=where) from None
    except OSError as exc:
        raise _proxy_error(proxy, f"TCP connect to the proxy failed: {exc.strerror}", address=where) from None
    target = f"[{target_host}]:{target_port}" if ":" in target_host else f"{target_host}:{target_port}"
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: pullhealth\r\n"
    auth = proxy.authorization()
    if auth:
        request += f"Proxy-Authorization: {auth}\r\n"
    try:
        writer.write((request + "\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        writer.close()
        raise _proxy_error(
            proxy, f"no answer to CONNECT {target} within {timeout:g}s", address=where
        ) from None
    status_line = head[:MAX_RESPONSE_HEAD].split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if status == 200:
        return reader, writer
    writer.close()
    said = status_line.strip()[:120]
    if status in (401, 407):
        # 407 is the standard answer; some proxies (tinyproxy) answer 401 to a CONNECT
        # with wrong credentials. Either way it is the proxy's own authentication.
        why = "rejected the proxy credentials" if auth else "demands proxy credentials"
        raise _proxy_error(proxy, f"it {why} ({said})", address=where, status=str(status))
    if status == 403:
        raise _proxy_error(proxy, f"it refused CONNECT to {target} ({said})", address=where, status="403")
    if status in (502, 503, 504):
        raise StepError(
            Code.CONNECT_TIMEOUT,
            f"the proxy {proxy.shown} could not reach {target} ({said})",
            address=f"{target} via proxy {proxy.shown}",
        )
    raise _proxy_error(proxy, f"it answered CONNECT {target} with {said!r}", address=where)


def _proxy_error(proxy: Proxy, detail: str, **facts: str) -> StepError:
    """A PROXY_ERROR step failure; the message never carries the proxy's credentials."""
    return StepError(
        Code.PROXY_ERROR, f"egress proxy {proxy.shown}: {detail}", proxy=proxy.shown, detail=detail, **facts
    )
