"""Shared plumbing: loopback ports, child processes and threaded HTTP(S) servers."""

from __future__ import annotations

import atexit
import contextlib
import json
import socket
import ssl
import subprocess
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

LOOPBACK = "127.0.0.1"


def free_port(*, udp_too: bool = False) -> int:
    """Return a loopback TCP port that is free right now (and UDP too if asked).

    There is an unavoidable race until the caller binds it; callers that start
    child processes retry on "address in use".
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port: int = tcp.getsockname()[1]
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port found")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until true, or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


_LIVE: weakref.WeakSet[Stoppable] = weakref.WeakSet()


class Stoppable:
    """Base for fixtures that own OS resources; usable as a context manager.

    Every live instance is also stopped at interpreter exit so that a crashed
    test session never leaves a dnsmasq or registry behind.
    """

    def start(self) -> Self:
        """Start the fixture; subclasses call ``super().start()`` first."""
        _LIVE.add(self)
        return self

    def stop(self) -> None:
        """Release everything; must be idempotent."""
        _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@atexit.register
def _stop_leftovers() -> None:
    for obj in list(_LIVE):
        with contextlib.suppress(Exception):
            obj.stop()


class ManagedProcess(Stoppable):
    """A child process whose stdout/stderr go to a log file."""

    def __init__(self, argv: list[str], log_path: Path, cwd: Path | None = None) -> None:
        """Remember how to start ``argv``; nothing runs until :meth:`start`."""
        self.argv = argv
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Spawn the process in its own session (Ctrl-C goes to pytest only)."""
        super().start()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, limit: int = 4000) -> str:
        """Last ``limit`` characters of the log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate, then kill after 5 s; always reaps the child."""
        super().stop()
        proc, self.proc = self.proc, None
        terminate(proc, grace=5.0)


class LoopbackHTTPServer(ThreadingHTTPServer):
    """Threaded HTTP server on 127.0.0.1, optionally TLS.

    The TLS handshake runs in the per-connection thread (not in ``accept``) so a
    client that never speaks TLS cannot stall the whole server.
    """

    daemon_threads = True
    allow_reuse_address = True
    # A deep backlog: tests fire concurrent requests to check coalescing.
    request_queue_size = 128

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        ssl_context: ssl.SSLContext | None = None,
        port: int = 0,
    ) -> None:
        """Bind now; serving starts with :meth:`serve_forever`."""
        self.ssl_context = ssl_context
        self.hits: Counter[str] = Counter()
        self.hits_lock = threading.Lock()
        # Set by BackgroundHTTPServer so handlers can read their fixture's settings.
        self.fixture: Any = None
        super().__init__((LOOPBACK, port), handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Wrap the accepted socket in TLS (bounded handshake), then serve it."""
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(10)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return  # client gave up or does not trust us: that is the point of some tests
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def count(self, key: str) -> None:
        """Thread-safely count one request under ``key``."""
        with self.hits_lock:
            self.hits[key] += 1


def server_ssl_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    """A server-side TLS context for a ``(cert_path, key_path)`` pair."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


class BackgroundHTTPServer(Stoppable):
    """Runs a :class:`LoopbackHTTPServer` in a daemon thread."""

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        cert: tuple[Path, Path] | None = None,
    ) -> None:
        """Prepare the server; ``cert`` enables TLS."""
        self._handler = handler
        self._cert = cert
        self.httpd: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS."""
        return self._cert is not None

    @property
    def port(self) -> int:
        """The bound loopback port."""
        if self.httpd is None:
            raise RuntimeError("server not started")
        port: int = self.httpd.server_address[1]
        return port

    @property
    def hits(self) -> dict[str, int]:
        """Snapshot of request counts by path (query string stripped)."""
        if self.httpd is None:
            return {}
        with self.httpd.hits_lock:
            return dict(self.httpd.hits)

    def reset_hits(self) -> None:
        """Zero the request counters."""
        if self.httpd is not None:
            with self.httpd.hits_lock:
                self.httpd.hits.clear()

    def start(self) -> Self:
        """Bind and serve in the background."""
        super().start()
        ctx = server_ssl_context(self._cert) if self._cert else None
        self.httpd = LoopbackHTTPServer(self._handler, ctx)
        self.httpd.fixture = self
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        super().stop()
        httpd, self.httpd = self.httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler base with helpers and no stderr logging."""

    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections must not pin threads forever.
    timeout = 10
    server: LoopbackHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Keep pytest output clean."""

    @property
    def fixture(self) -> Any:
        """The owning :class:`BackgroundHTTPServer` subclass instance."""
        return self.server.fixture

    @property
    def route(self) -> str:
        """Request path without the query string."""
        return self.path.split("?", 1)[0]

    def read_body(self) -> bytes:
        """Read the request body (Content-Length only; bounded to 1 MiB)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, 1 << 20)) if length > 0 else b""

    def send_bytes(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        """Send a complete response with Content-Length."""
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, doc: Any, headers: Mapping[str, str] | None = None) -> None:
        """Send a JSON response."""
        self.send_bytes(status, json.dumps(doc).encode(), headers, "application/json")


def terminate(proc: subprocess.Popen[bytes] | None, grace: float, reap: float = 10.0) -> None:
    """SIGTERM a child process, SIGKILL it after ``grace`` seconds; always reaps it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=reap)
