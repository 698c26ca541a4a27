"""Session-wide real servers for integration tests (see ``support.world``)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import guard
from support.world import World, start_world

# Installed at import, before any fixture or test runs: nothing may connect off loopback.
guard.install()

__all__ = ["World", "world"]


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    """Start every fixture server once per session; stop them all at the end."""
    with tempfile.TemporaryDirectory(prefix="pullhealth-world-") as tmp, contextlib.ExitStack() as stack:
        yield start_world(stack, Path(tmp))
