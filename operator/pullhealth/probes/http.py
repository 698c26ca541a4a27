"""HTTPS requests that use the chain's own DNS answers.

Every request resolves its host through the chain's :class:`Resolver` (so a test or a
pod-specific nameserver is honoured for the registry and the token realm alike), connects
to that address, and still sends the real Host header and SNI name so certificate checks
are made against the name. Bodies are read up to a cap; redirects are not followed.

Every request has a total deadline (connect + TLS + headers + body: a registry that drips
one byte a second cannot hold it longer). Every credential a request carries (the
Authorization value, ``password``/``refresh_token``/``access_token`` form fields) is
remembered by the chain's :class:`~pullhealth.domain.redact.Redactor`, and masked out of every
reply (body and headers) before the probes read it: an echo never reaches a message.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from pullhealth.domain.codes import Code
from pullhealth.domain.redact import Redactor, clip
from pullhealth.probes.dns import DnsFailure, Resolver
from pullhealth.probes.net import StepError
from pullhealth.probes.proxy import Proxy, bypasses

MAX_BODY = 1 << 20
USER_AGENT = "pullhealth/0.1"
# Form fields that carry a credential (their values are remembered as secrets).
_SECRET_FIELDS = frozenset({"password", "refresh_token", "access_token", "client_assertion", "client_secret"})


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
        except (ValueError, RecursionError):  # not JSON, or nested beyond the parser's depth
            return None


class Http:
    """A small HTTPS client bound to one chain's resolver, TLS context and timeout.

    Args:
        resolver: the chain's resolver.
        ssl_context: verification context (system CAs plus the optional bundle).
        timeout: seconds per request, in total (connect, TLS, headers and body).
        on_request: called with the URL host before every request (metrics, counters).
        proxy: the egress proxy, if any; ``no_proxy`` lists hosts reached directly.
        redactor: learns every credential sent and masks replies (a private one if None).
    """

    def __init__(
        self,
        resolver: Resolver,
        ssl_context: ssl.SSLContext,
        timeout: float,
        on_request: Callable[[str], None] | None = None,
        proxy: Proxy | None = None,
        no_proxy: Sequence[str] = (),
        redactor: Redactor | None = None,
    ) -> None:
        self._resolver = resolver
        self.redactor = redactor if redactor is not None else Redactor()
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
        limit: int = MAX_BODY,
    ) -> Reply:
        """Send one request; the reply has every credential of the chain masked out.

        ``limit`` caps the body read (at most :data:`MAX_BODY`); the rest is not read.

        Raises:
            StepError: DNS, connect, TLS or timeout failures, with the matching code; an
                unusable URL (from a registry's challenge) as CHALLENGE_ERROR.
        """
        self._remember(headers, data)
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            port = parts.port
        except ValueError as exc:
            raise StepError(
                Code.CHALLENGE_ERROR,
                f"the registry sent an unusable URL {clip(url, 200, self.redactor)!r}: {exc}",
                detail="an unusable URL in the registry's answer",
            ) from None
        if parts.scheme not in ("https", "http") or not host:
            raise StepError(
                Code.CHALLENGE_ERROR,
                f"the registry sent an unusable URL {clip(url, 200, self.redactor)!r}",
                detail="an unusable URL in the registry's answer",
            )
        # The port the request connects to: http:// without one is 80, not 443.
        port = port or (80 if parts.scheme == "http" else 443)
        # Local names and refused address literals are refused even through a proxy.
        self._resolver.policy.check_peer_name(host, port)
        try:
            return await asyncio.wait_for(
                self._send(method, url, parts, host, port, headers, data, params, min(limit, MAX_BODY)),
                self._timeout,
            )
        except TimeoutError:
            raise StepError(
                Code.CONNECT_TIMEOUT,
                f"{host} did not answer {method} {parts.path} completely within {self._timeout:g}s",
                host=host,
            ) from None

    def _remember(self, headers: Mapping[str, str] | None, data: Mapping[str, str] | None) -> None:
        secrets: list[str] = []
        for key, value in (headers or {}).items():
            if key.lower() in ("authorization", "proxy-authorization") and value:
                secrets.append(value)
                credential = value.partition(" ")[2]
                secrets.append(credential)
        secrets.extend(v for k, v in (data or {}).items() if k in _SECRET_FIELDS and v)
        if secrets:
            self.redactor.add(secrets)

    async def _send(
        self,
        method: str,
        url: str,
        parts: Any,
        host: str,
        port: int,
        headers: Mapping[str, str] | None,
        data: Mapping[str, str] | None,
        params: Mapping[str, str | list[str]] | None,
        limit: int = MAX_BODY,
    ) -> Reply:
        client = self._client
        all_headers = {"Host": parts.netloc.rpartition("@")[2]}
        all_headers.update(headers or {})
        extensions = {"sni_hostname": host}
        for value in all_headers.values():
            if not value.isascii() or not value.isprintable():
                raise StepError(
                    Code.REGISTRY_ERROR,
                    f"a value to send to {host} is not printable ASCII (a header cannot carry it); "
                    "the token or credential is malformed",
                    detail="a token or credential that is not printable ASCII",
                    host=host,
                )
        if self._proxied is not None and self._via_proxy(host, port):
            client, target, extensions = self._proxied, url, {}
        else:
            try:
                address = await self._resolver.address(host, port)
            except DnsFailure as exc:
                raise StepError(exc.code, exc.message, host=host) from None
            netloc = f"[{address}]" if ":" in address else address
            netloc += f":{port}"
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
                    if len(body) >= limit:
                        break
                return self._masked(Reply(response.status_code, response.headers, body[:limit]))
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
            if isinstance(_root_cause(exc), ConnectionRefusedError):
                text = f"{text} (connection refused)"  # httpx says "All connection attempts failed"
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
            # The exception text can quote what the server sent: only its kind is shown.
            raise StepError(
                Code.REGISTRY_ERROR,
                f"{method} {parts.path} on {host} failed: {type(exc).__name__}",
                host=host,
            ) from None

    def _masked(self, reply: Reply) -> Reply:
        """The reply with every known credential masked out of its body and headers."""
        if not self.redactor.known:
            return reply
        headers = httpx.Headers([(k, self.redactor.bytes(v)) for k, v in reply.headers.raw])
        return Reply(reply.status, headers, self.redactor.bytes(reply.body))


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause of an exception chain (bounded)."""
    for _ in range(10):
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc
