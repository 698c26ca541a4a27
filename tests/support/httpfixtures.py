"""Small real loopback servers that misbehave in specific, diagnosable ways."""

from __future__ import annotations

import json
import re
import select
import socket
import struct
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import httpx

from ._common import LOOPBACK, BackgroundHTTPServer, QuietHandler, Stoppable
from .net import make_client
from .pki import PKI

REGISTRY_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}

def acr_firewall_body(client_ip: str) -> dict[str, Any]:
    """ACR's firewall 403 body, naming the client IP the registry saw (a public address,
    or a VNet's private one when the traffic came through a service endpoint)."""
    return {
        "errors": [
            {
                "code": "DENIED",
                "message": f"client with IP '{client_ip}' is not allowed access. "
                "Refer https://aka.ms/acr/firewall to grant access.",
            }
        ]
    }


ACR_FIREWALL_BODY = acr_firewall_body("203.0.113.7")
TOO_MANY_REQUESTS_BODY = {
    "errors": [
        {
            "code": "TOOMANYREQUESTS",
            "message": "You have reached your pull rate limit. "
            "You may increase the limit by authenticating and upgrading.",
        }
    ]
}


def _as_bytes(body: bytes | str | Mapping[str, Any] | list[Any]) -> tuple[bytes, str]:
    if isinstance(body, bytes):
        return body, "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(body).encode(), "application/json"


class _StatusHandler(QuietHandler):
    def _answer(self) -> None:
        fx: StatusServer = self.fixture
        self.server.count(self.route)
        self.read_body()  # drain so keep-alive stays in sync
        self.send_bytes(fx.status, fx.body, fx.headers, fx.content_type)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _answer


class StatusServer(BackgroundHTTPServer):
    """Answers every request, any method and path, with one fixed response.

    Args:
        status: HTTP status code.
        body: bytes, text, or a JSON-able dict/list (sets Content-Type).
        headers: Extra response headers (e.g. ``Retry-After``).
        tls: Serve HTTPS (needs ``cert``) or plain HTTP.
        cert: ``(cert_path, key_path)``, e.g. from :meth:`PKI.issue`.
        content_type: Override the Content-Type derived from ``body``.

    ``hits`` counts requests by path.
    """

    def __init__(
        self,
        status: int,
        body: bytes | str | Mapping[str, Any] | list[Any] = b"",
        headers: Mapping[str, str] | None = None,
        tls: bool = True,
        *,
        cert: tuple[Path, Path] | None = None,
        content_type: str | None = None,
    ) -> None:
        """Configure the response; nothing listens until :meth:`start`."""
        if tls and cert is None:
            raise ValueError("tls=True needs cert=(cert_path, key_path)")
        super().__init__(_StatusHandler, cert if tls else None)
        self.status = status
        self.body, default_type = _as_bytes(body)
        self.content_type = content_type or default_type
        self.headers = dict(headers or {})


class _RoutedHandler(QuietHandler):
    def _answer(self) -> None:
        fx: RoutedServer = self.fixture
        self.server.count(self.route)
        self.read_body()
        for suffix, (status, body, headers) in fx.routes.items():
            if self.route.endswith(suffix):
                payload, content_type = _as_bytes(body)
                self.send_bytes(status, payload, headers, content_type)
                return
        self.send_bytes(404, b"404 page not found\n", None, "text/plain; charset=utf-8")

    do_GET = do_HEAD = do_POST = _answer


class RoutedServer(BackgroundHTTPServer):
    """Answers by path suffix (first match wins), else a plain-text 404 like a web server's.

    Args:
        routes: path suffix -> (status, body, headers); body as for :class:`StatusServer`.
        cert: ``(cert_path, key_path)`` for HTTPS.

    ``hits`` counts requests by path.
    """

    def __init__(
        self,
        routes: Mapping[str, tuple[int, bytes | str | Mapping[str, Any], Mapping[str, str]]],
        *,
        cert: tuple[Path, Path],
    ) -> None:
        """Configure the routes; nothing listens until :meth:`start`."""
        super().__init__(_RoutedHandler, cert)
        self.routes = dict(routes)


def untrusted_tls_server(pki: PKI, hosts: list[str]) -> StatusServer:
    """A registry-looking HTTPS server whose cert chains to the *untrusted* CA."""
    return StatusServer(200, {}, REGISTRY_HEADERS, cert=pki.issue_untrusted([*hosts, LOOPBACK]))


def mismatch_tls_server(pki: PKI, cert_hosts: list[str]) -> StatusServer:
    """A registry-looking HTTPS server, trusted CA, cert naming only ``cert_hosts``.

    Reach it under any other name to get a hostname-mismatch failure.
    """
    return StatusServer(200, {}, REGISTRY_HEADERS, cert=pki.issue(cert_hosts))


# What nginx says when TLS arrives on a plain-HTTP port; the client's TLS stack
# then fails with "wrong version number" / "record layer failure".
_TLS_ON_PLAIN_REPLY = (
    b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\n"
    b"Content-Length: 48\r\nConnection: close\r\n\r\n"
    b"<html><body>400 Bad Request</body></html>\r\n\r\n\r\n"
)


class _PlainHandler(_StatusHandler):
    def handle(self) -> None:
        try:
            first = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if first == b"\x16":  # TLS handshake record: answer like a plain server would
            self.server.count("<tls-client-hello>")
            try:
                self.connection.recv(65536)
                self.connection.sendall(_TLS_ON_PLAIN_REPLY)
            except OSError:
                pass
            return
        super().handle()


class PlainHTTPServer(StatusServer):
    """Plain HTTP on a port clients will talk TLS to.

    HTTP requests get a registry-like 200 (by default); a TLS ClientHello gets a
    plain-text 400 and a close, so the client sees a TLS protocol error quickly
    rather than a hang. ``hits["<tls-client-hello>"]`` counts TLS attempts.
    """

    def __init__(
        self,
        status: int = 200,
        body: bytes | str | Mapping[str, Any] | list[Any] = b"{}",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Configure the plain-HTTP response."""
        super().__init__(status, body, headers or REGISTRY_HEADERS, tls=False)
        self._handler = _PlainHandler


class _Holder(Stoppable):
    """Listening socket whose accepted connections are held open and ignored."""

    def __init__(self, backlog: int = 16, accept: bool = True) -> None:
        self.port = 0
        self.connections = 0
        self._backlog = backlog
        self._accept = accept
        self._sock: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """``("127.0.0.1", port)``."""
        return (LOOPBACK, self.port)

    def start(self) -> Self:
        super().start()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(self._backlog)
        self.port = self._sock.getsockname()[1]
        if self._accept:
            self._thread = threading.Thread(target=self._loop, name="holder", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self._sock, *self._held], [], [], 0.1)
            except (OSError, ValueError):
                return
            for s in readable:
                try:
                    if s is self._sock:
                        conn, _ = s.accept()
                        self._held.append(conn)
                        self.connections += 1
                    elif not s.recv(65536):  # discard input; forget closed peers
                        self._held.remove(s)
                        s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        super().stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for s in [self._sock, *self._held]:
            if s is not None:
                s.close()
        self._sock = None
        self._held.clear()


class SilentServer(_Holder):
    """Accepts TCP connections and never sends a byte (TLS/HTTP read timeouts)."""

    def __init__(self) -> None:
        """Prepare; binds on :meth:`start`."""
        super().__init__(backlog=64, accept=True)


class ResetOnHelloServer(_Holder):
    """Accepts, reads the client's first bytes (the TLS ClientHello) and answers with a
    TCP RST (SO_LINGER 0), as firewalls, DPI and TLS-inspecting middleboxes do."""

    def __init__(self) -> None:
        """Prepare; binds on :meth:`start`."""
        super().__init__(backlog=16, accept=True)

    def _loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self._sock, *self._held], [], [], 0.1)
            except (OSError, ValueError):
                return
            for s in readable:
                try:
                    if s is self._sock:
                        conn, _ = s.accept()
                        self._held.append(conn)
                        self.connections += 1
                        continue
                    s.recv(65536)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self._held.remove(s)
                    s.close()
                except OSError:
                    pass


class BacklogFullListener(_Holder):
    """A listener that never accept()s, its tiny backlog pre-filled.

    Linux drops SYNs to a listener whose accept queue is full, so a further
    ``connect()`` retransmits SYN and times out (it is not refused).
    """

    def __init__(self) -> None:
        """Prepare; binds and fills on :meth:`start`."""
        super().__init__(backlog=0, accept=False)
        self._fillers: list[socket.socket] = []

    def start(self) -> Self:
        """Listen with backlog 0 and connect until a connect attempt times out."""
        super().start()
        for _ in range(16):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.3)
            try:
                s.connect(self.address)
            except OSError:  # the queue is full: SYNs are being dropped now
                s.close()
                return self
            self._fillers.append(s)
        self.stop()
        raise RuntimeError("could not fill the accept queue")

    def stop(self) -> None:
        """Close the fillers and the listener."""
        for s in self._fillers:
            s.close()
        self._fillers.clear()
        super().stop()


class ClosedPort(Stoppable):
    """A loopback port that is bound but not listening: connects get RST.

    Holding the bound socket keeps anything else from taking the port, unlike
    :func:`closed_port`.
    """

    def __init__(self) -> None:
        """Prepare; binds on :meth:`start`."""
        self.port = 0
        self._sock: socket.socket | None = None

    def start(self) -> Self:
        """Bind (without listen)."""
        super().start()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((LOOPBACK, 0))
        self.port = self._sock.getsockname()[1]
        return self

    def stop(self) -> None:
        """Release the port."""
        super().stop()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def closed_port() -> int:
    """A loopback port with nothing listening right now (may be reused later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
    return port


class _BlobHandler(QuietHandler):
    def do_GET(self) -> None:
        fx: BlobStore = self.fixture
        self.server.count(self.route)
        fx.record(self.command, self.route, dict(self.headers.items()))
        root = fx.root.resolve()
        path = (root / self.route.lstrip("/")).resolve()
        if root not in path.parents or not path.is_file():
            self.send_bytes(404, b"<?xml version=\"1.0\"?><Error><Code>BlobNotFound</Code></Error>", None,
                            "application/xml")
            return
        data = path.read_bytes()
        start, end = 0, len(data) - 1
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if ranged and data:
            start = min(int(ranged.group(1)), len(data) - 1)
            end = min(int(ranged.group(2) or end), end)
        part = data[start : end + 1]
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if not fx.rate:
            self.wfile.write(part)
            return
        # Trickle: `rate` bytes a second, in small writes, so the transfer makes slow progress.
        chunk = max(1, fx.rate // 10)
        for i in range(0, len(part), chunk):
            if fx.stopping.is_set():
                return
            self.wfile.write(part[i : i + chunk])
            self.wfile.flush()
            fx.stopping.wait(0.1)

    do_HEAD = do_GET


class BlobStore(BackgroundHTTPServer):
    """A storage account's blob endpoint, as far as a pull uses it: HTTPS ``GET``/``HEAD``
    of files under ``root`` with ``Range`` (``206 Partial Content``), nothing else.

    Real blob storage (Azure Storage, S3, GCS) cannot run here; distribution's ``redirect``
    middleware points blob downloads at ``https://<this host>/<storage path>``, which is the
    registry's own storage directory served read-only. ``rate`` (bytes a second) trickles
    the body: a slow data endpoint. ``requests`` records (method, path, headers) of every
    request, to check what a client sent to the data host.

    Args:
        cert: ``(cert_path, key_path)`` for HTTPS.
        root: the directory served (the registry's storage root); may be set before start.
        rate: bytes a second (0: as fast as possible).
    """

    def __init__(self, cert: tuple[Path, Path], root: Path | None = None, rate: int = 0) -> None:
        """Configure; nothing listens until :meth:`start`."""
        super().__init__(_BlobHandler, cert)
        self.root = root or Path("/nonexistent")
        self.rate = rate
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    def record(self, method: str, path: str, headers: dict[str, str]) -> None:
        """Remember one request (bounded to the last 1000)."""
        with self._lock:
            self.requests.append((method, path, headers))
            del self.requests[:-1000]

    def stop(self) -> None:
        """Stop trickling, then stop serving."""
        self.stopping.set()
        super().stop()


# Hop-by-hop headers (RFC 9110 section 7.6.1) and the length, which the proxy sets itself.
_NOT_FORWARDED = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
                  "transfer-encoding", "upgrade", "host", "content-length"}


class _RateLimitHandler(QuietHandler):
    def _forward(self) -> None:
        fx: RateLimitProxy = self.fixture
        self.server.count(self.route)
        body = self.read_body()
        sent = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
        fx.record(self.command, self.route)
        try:
            with make_client(fx.ca_bundle, timeout=10.0) as client:
                reply = client.request(self.command, f"{fx.upstream}{self.path}", headers=sent,
                                       content=body or None)
        except httpx.HTTPError as exc:
            self.send_bytes(502, f"upstream registry: {exc}\n".encode(), None, "text/plain; charset=utf-8")
            return
        self.send_response(reply.status_code)
        for key, value in reply.headers.multi_items():
            if key.lower() not in _NOT_FORWARDED | {"content-encoding"}:
                self.send_header(key, value)
        if "/manifests/" in self.route and self.command in ("GET", "HEAD"):
            for key, value in fx.ratelimit_headers().items():
                self.send_header(key, value)
        # A HEAD answer carries the manifest's length without the body, as the registry's did.
        length = reply.headers.get("Content-Length", "0") if self.command == "HEAD" else str(len(reply.content))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.content)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


class RateLimitProxy(BackgroundHTTPServer):
    """A real registry behind a reverse proxy that adds Docker Hub's rate-limit headers.

    Docker Hub's manifest answers (``GET`` and ``HEAD`` of ``/v2/<name>/manifests/<ref>``)
    carry ``ratelimit-limit: 100;w=21600`` and ``ratelimit-remaining: 76;w=21600`` (pulls
    in a 21600 s window), and ``docker-ratelimit-source`` naming the client address the
    count belongs to: https://docs.docker.com/docker-hub/usage/pulls/ ("View pull rate and
    limit"). Everything else (the challenge, manifests, digests, blobs, errors) is the
    upstream distribution registry's own answer, forwarded unchanged. The counts are the
    test's (:meth:`set`), not decremented per pull; ``remaining=None`` sends no headers, as
    Docker Hub does for accounts without a pull limit.

    Args:
        upstream: the real registry, ``https://127.0.0.1:PORT`` (its certificate names
            127.0.0.1).
        ca_bundle: the CA the upstream's certificate chains to.
        cert: ``(cert_path, key_path)`` for this proxy's HTTPS.

    ``requests`` records (method, path) of every request (the last 1000).
    """

    def __init__(self, upstream: str, ca_bundle: Path, cert: tuple[Path, Path]) -> None:
        """Configure; nothing listens until :meth:`start`."""
        super().__init__(_RateLimitHandler, cert)
        self.upstream = upstream.rstrip("/")
        self.ca_bundle = ca_bundle
        self.window = 21600
        self.limit = 100
        self.remaining: int | None = 100
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []

    def set(self, remaining: int | None, limit: int = 100) -> None:
        """The counts the next manifest answers carry (``None``: no rate-limit headers)."""
        with self._lock:
            self.limit, self.remaining = limit, remaining

    def ratelimit_headers(self) -> dict[str, str]:
        """The rate-limit headers of a manifest answer now."""
        with self._lock:
            if self.remaining is None:
                return {}
            return {"ratelimit-limit": f"{self.limit};w={self.window}",
                    "ratelimit-remaining": f"{self.remaining};w={self.window}",
                    "docker-ratelimit-source": LOOPBACK}

    def record(self, method: str, path: str) -> None:
        """Remember one request (bounded to the last 1000)."""
        with self._lock:
            self.requests.append((method, path))
            del self.requests[:-1000]
