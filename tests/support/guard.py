"""A safety net: tests may only connect to loopback (or Unix sockets).

Installed for the whole test session by tests/conftest.py. A connect to any other
address raises at once instead of leaving the machine, so a bug in the code under test
(or in a fixture's DNS data, which hands out public documentation addresses) cannot send
traffic anywhere else.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex


class OffLoopbackConnect(ConnectionRefusedError):
    """Raised instead of connecting to a non-loopback address."""


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = address[0] if isinstance(address, tuple) else address
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        raise OffLoopbackConnect(f"test guard: connect to unresolved name {host!r} refused") from None
    if not ip.is_loopback:
        raise OffLoopbackConnect(f"test guard: connect to non-loopback {host} refused")


def _connect(self: socket.socket, address: Any) -> None:
    _check(self, address)
    _original_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    _check(self, address)
    return _original_connect_ex(self, address)


def install() -> None:
    """Patch socket connects for this process."""
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]


def uninstall() -> None:
    """Restore the original connects."""
    socket.socket.connect = _original_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _original_connect_ex  # type: ignore[method-assign]
