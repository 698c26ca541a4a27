"""HTTPS requests that use the chain's own DNS answers.

Every request resolves its host through the chain's :class:`Resolver` (so a test or a
pod-specific nameserver is honoured for the registry and the token realm alike), connects
to that address, and still sends the real Host header and SNI name so certificate checks
are made against the name. Bodies are read up to a cap; redirects are not followed.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from pullhealth.codes import Code
from pullhealth.probes.dns import DnsFailure, Resolver
from pullhealth.probes.net import StepError
from pullhealth.probes.proxy import Proxy, bypasses

MAX_BODY = 1 << 20
USER_AGENT = "pullhealth/0.1"


@dataclass(frozen=True)
class Reply:
    """A bounded HTTP response."""

    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> object:
        """The body as JSON, or None when it is not JSON."""
        import json

        try:
            return json.loads(self.body)
        except ValueError:
            return None


class Http:
    """A small HTTPS client bound to one chain's resolver, TLS context and timeout.

    Args:
        resolver: the chain's resolver.
        ssl_context: verification context (system CAs plus the optional bundle).
        timeout: seconds per request.
        on_request: called with the URL host before every request (metrics, counters).
    """

    def __init__(
        self,
        resolver: Resolver,
        ssl_context: ssl.SSLContext,
        timeout: float,
        on_request: Callable[[str], None] | None = None,
        proxy: Proxy | None = None,
        no_proxy: Sequence[str] = (),
    ) -> None:
        self._resolver = resolver
        self._timeout = timeout
        self._on_request = on_request
        self._proxy = proxy
        self._no_proxy = tuple(no_proxy)
        common: dict[str, Any] = {
            "verify": ssl_context,
            "timeout": httpx.Timeout(timeout),
            "follow_redirects": False,
            "trust_env": False,
            "headers": {"User-Agent": USER_AGENT},
        }
        self._client = httpx.AsyncClient(**common)
        # Through the proxy the proxy resolves names: requests keep their URL as is.
        self._proxied = httpx.AsyncClient(proxy=proxy.url, **common) if proxy else None

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()
        if self._proxied is not None:
            await self._proxied.aclose()

    def _via_proxy(self, host: str, port: int) -> bool:
        return self._proxy is not None and not bypasses(host, port, self._no_proxy)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        params: Mapping[str, str | list[str]] | None = None,
    ) -> Reply:
        """Send one request.

        Raises:
            StepError: DNS, connect, TLS or timeout failures, with the matching code.
        """
        parts = urlsplit(url)
        host = parts.hostname or ""
        client = self._client
        all_headers = {"Host": parts.netloc.rpartition("@")[2]}
        all_headers.update(headers or {})
        extensions = {"sni_hostname": host}
        if self._proxied is not None and self._via_proxy(host, parts.port or 443):
            client, target, extensions = self._proxied, url, {}
        else:
            try:
                address = await self._resolver.address(host)
            except DnsFailure as exc:
                raise StepError(exc.code, exc.message, host=host) from None
            netloc = f"[{address}]" if ":" in address else address
            if parts.port:
                netloc += f":{parts.port}"
            target = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        if self._on_request:
            self._on_request(host)
        try:
            async with client.stream(
                method,
                target,
                headers=all_headers,
                data=data,
                params=params,
                extensions=extensions,
            ) as response:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= MAX_BODY:
                        break
                return Reply(response.status_code, response.headers, body[:MAX_BODY])
        except httpx.ProxyError as exc:
            raise StepError(
                Code.FIREWALL_FORBIDDEN,
                f"the egress proxy refused the tunnel to {host}: {exc}",
                host="the egress proxy",
                detail=f" (it refused the tunnel to {host})",
            ) from None
        except httpx.ConnectTimeout:
            raise StepError(Code.CONNECT_TIMEOUT, f"connecting to {host} timed out", host=host) from None
        except httpx.TimeoutException:
            raise StepError(
                Code.CONNECT_TIMEOUT,
                f"{host} did not answer {method} {parts.path} within {self._timeout:g}s",
                host=host,
            ) from None
        except httpx.ConnectError as exc:
            text = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in text:
                code = Code.TLS_HOSTNAME_MISMATCH if "hostname" in text.lower() else Code.TLS_UNTRUSTED
            elif "refused" in text.lower():
                code = Code.CONNECT_REFUSED
            elif "SSL" in text or "TLS" in text:
                code = Code.TLS_PROTOCOL_ERROR
            else:
                code = Code.CONNECT_TIMEOUT
            raise StepError(code, f"connecting to {host} failed: {text}", host=host) from None
        except httpx.HTTPError as exc:
            raise StepError(
                Code.REGISTRY_ERROR, f"{method} {parts.path} on {host} failed: {exc}", host=host
            ) from None
