"""Debian's real tinyproxy as the cluster's egress HTTP proxy (CONNECT), on loopback.

Only IP-literal targets are used through it in tests (127.0.0.1:PORT): tinyproxy resolves
names with the system resolver, which must never be asked about test names.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from support._common import ManagedProcess, Stoppable, free_port

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"


class TinyProxy(Stoppable):
    """tinyproxy allowing CONNECT to the given ports only, optionally with Basic auth.

    Args:
        connect_ports: ports CONNECT may reach (others get 403).
        basic_auth: (user, password) the proxy requires (407 without them).
    """

    def __init__(self, connect_ports: Sequence[int], basic_auth: tuple[str, str] | None = None) -> None:
        self.connect_ports = list(connect_ports)
        self.basic_auth = basic_auth
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="pullhealth-tinyproxy-"))
        self._proc: ManagedProcess | None = None

    @property
    def address(self) -> str:
        """127.0.0.1:PORT."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Write the config, start tinyproxy in the foreground and wait until it listens."""
        super().start()
        os.chmod(self.workdir, 0o777)  # tinyproxy drops to nobody and writes its log here
        lines = [
            "User nobody", "Group nogroup", f"Port {self.port}", "Listen 127.0.0.1", "Timeout 5",
            "MaxClients 32", "Allow 127.0.0.1", "DisableViaHeader Yes", "LogLevel Info",
            f'LogFile "{self.workdir}/tinyproxy.log"',
        ]
        lines += [f"ConnectPort {p}" for p in self.connect_ports]
        if self.basic_auth:
            lines.append(f"BasicAuth {self.basic_auth[0]} {self.basic_auth[1]}")
        conf = self.workdir / "tinyproxy.conf"
        conf.write_text("\n".join(lines) + "\n")
        self._proc = ManagedProcess([TINYPROXY, "-d", "-c", str(conf)], self.workdir / "stdout.log").start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if not self._proc.alive():
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tinyproxy did not start: {(self.workdir / 'stdout.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop tinyproxy and remove its files."""
        super().stop()
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)
