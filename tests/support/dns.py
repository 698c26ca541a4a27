"""DNS fixtures: a real dnsmasq with a private zone, and a never-answering server."""

from __future__ import annotations

import select
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Self

import dns.exception
import dns.message
import dns.query

from ._common import LOOPBACK, ManagedProcess, Stoppable, free_port

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"

# Names under these domains are answered only from our records: anything else
# is an authoritative NXDOMAIN and nothing is ever forwarded upstream.
DEFAULT_LOCAL_DOMAINS = ("test", "azurecr.io")


class Dnsmasq(Stoppable):
    """Debian's dnsmasq in the foreground, serving A and CNAME records on loopback.

    Example::

        with Dnsmasq({"anon.test": "127.0.0.1"}, {"pe.azurecr.io": "pe.privatelink.azurecr.io"}) as d:
            resolver.nameservers = ...  # use d.nameserver == "127.0.0.1:PORT"

    CNAME targets must themselves have an A record here (a dnsmasq rule).
    """

    def __init__(
        self,
        a_records: Mapping[str, str | Iterable[str]],
        cnames: Mapping[str, str] | None = None,
        *,
        local_domains: Iterable[str] = DEFAULT_LOCAL_DOMAINS,
        ttl: int = 30,
        workdir: Path | None = None,
    ) -> None:
        """Describe the zone; nothing runs until :meth:`start`.

        Args:
            a_records: name -> IPv4 address (or several).
            cnames: alias -> canonical name.
            local_domains: Domains answered only locally (NXDOMAIN otherwise).
            ttl: TTL of every answer.
            workdir: Where config and log go (a temp dir by default).
        """
        self.a_records = {k: [v] if isinstance(v, str) else list(v) for k, v in a_records.items()}
        self.cnames = dict(cnames or {})
        self.local_domains = list(local_domains)
        self.ttl = ttl
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="dnsmasq-"))
        self.port = 0
        self._proc: ManagedProcess | None = None

    @property
    def nameserver(self) -> str:
        """``"127.0.0.1:PORT"``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        """dnsmasq's query log (``log-queries`` is on)."""
        return self.workdir / "dnsmasq.log"

    def _config(self) -> str:
        lines = ["log-queries", f"log-facility={self.log_path}", f"local-ttl={self.ttl}"]
        for name, addrs in self.a_records.items():
            lines.append(f"host-record={name},{','.join(addrs)}")
        for alias, target in self.cnames.items():
            lines.append(f"cname={alias},{target},{self.ttl}")
        for domain in self.local_domains:
            lines.append(f"local=/{domain}/")
        return "\n".join(lines) + "\n"

    def start(self) -> Self:
        """Start dnsmasq and wait (at most ~5 s) until it answers a query."""
        super().start()
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "dnsmasq.conf"
        conf.write_text(self._config())
        last_error = ""
        for _attempt in range(3):  # a free port can be stolen before dnsmasq binds it
            self.port = free_port(udp_too=True)
            self._proc = ManagedProcess(
                [
                    DNSMASQ,
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    f"--listen-address={LOOPBACK}",
                    f"--port={self.port}",
                    f"--conf-file={conf}",
                    "--pid-file=",
                    "--user=root",
                ],
                self.workdir / "dnsmasq.stderr",
            ).start()
            if self._wait_ready(5.0):
                return self
            last_error = self._proc.log_tail()
            self._proc.stop()
            self._proc = None
        self.stop()
        raise RuntimeError(f"dnsmasq did not come up:\n{last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self._proc is not None
        probe_name = next(iter(self.a_records), "probe.test")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._proc.alive():
            try:
                dns.query.udp(dns.message.make_query(probe_name, "A"), LOOPBACK, port=self.port, timeout=0.2)
                return True
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)  # ICMP port-unreachable returns at once: do not spin
        return False

    def stop(self) -> None:
        """Stop dnsmasq and remove its temp dir if we created it."""
        super().stop()
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class BlackholeDNS(Stoppable):
    """UDP+TCP on one loopback port that reads DNS queries and never answers.

    ``queries`` counts UDP datagrams and TCP connections received.
    """

    def __init__(self) -> None:
        """Prepare; sockets are bound in :meth:`start`."""
        self.port = 0
        self.queries = 0
        self._lock = threading.Lock()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def nameserver(self) -> str:
        """``"127.0.0.1:PORT"``."""
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        """Bind both sockets on the same port and start swallowing traffic."""
        super().start()
        for _ in range(20):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((LOOPBACK, 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.bind((LOOPBACK, port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            self._udp, self._tcp, self.port = udp, tcp, port
            break
        else:
            raise RuntimeError("could not bind UDP+TCP on one port")
        self._thread = threading.Thread(target=self._loop, name="blackhole-dns", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        assert self._udp is not None and self._tcp is not None
        while not self._stop.is_set():
            socks = [self._udp, self._tcp, *self._held]
            try:
                readable, _, _ = select.select(socks, [], [], 0.1)
            except (OSError, ValueError):
                return  # sockets closed by stop()
            for s in readable:
                try:
                    if s is self._udp:
                        s.recvfrom(4096)
                        self._bump()
                    elif s is self._tcp:
                        conn, _ = s.accept()
                        self._held.append(conn)  # keep it open: the client must time out
                        self._bump()
                    elif not s.recv(4096):
                        self._held.remove(s)
                        s.close()
                except OSError:
                    pass

    def _bump(self) -> None:
        with self._lock:
            self.queries += 1

    def stop(self) -> None:
        """Stop the thread and close every socket."""
        super().stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for s in [self._udp, self._tcp, *self._held]:
            if s is not None:
                s.close()
        self._udp = self._tcp = None
        self._held.clear()
