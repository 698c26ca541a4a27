"""The demo, stopped by ``timeout -s TERM`` half-way, leaves no process and no temp dir.

The demo runs with its own TMPDIR, so everything it creates (the world's registries and
DNS server, the control plane, the operator) has that path in its command line or
environment: after the demo exits, no process may mention it and the directory must be
empty. Two runs, bounded: one stopped while the servers start (8 s), one stopped while
everything runs (``--keep`` holds the demo at its end until the signal).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mentioning(marker: str) -> list[str]:
    """Live processes whose command line or environment contains ``marker``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline or marker.encode() in environ:
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
            found.append(f"{proc.name}: {shown}")
    return found


@pytest.mark.usefixtures("require_binaries")
@pytest.mark.parametrize(("kill_after", "keep"), [(8, False), (50, True)], ids=["starting", "running"])
def test_demo_cleans_up_after_sigterm(tmp_path: Path, kill_after: int, keep: bool) -> None:
    tmpdir = tmp_path / "demo-tmp"
    tmpdir.mkdir()
    kubectl_dir = subprocess.run(["bash", str(ROOT / "hack" / "build-k8s.sh"), "--print-dirs"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()[0]
    env = {**os.environ, "TMPDIR": str(tmpdir), "PATH": f"{kubectl_dir}:{os.environ['PATH']}"}
    started = time.monotonic()
    demo = [sys.executable, str(ROOT / "scripts" / "demo.py"), *(["--keep"] if keep else [])]
    result = subprocess.run(["timeout", "-s", "TERM", str(kill_after), *demo], env=env, capture_output=True,
                            text=True, timeout=kill_after + 120, check=False)
    took = time.monotonic() - started
    assert result.returncode == 124, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "SIGTERM: stopping everything the demo started" in result.stderr
    if keep:
        assert "everything keeps running" in result.stdout, result.stdout[-3000:]
    # Piped, so no ANSI colour codes.
    assert "\033[" not in result.stdout
    deadline = time.monotonic() + 10
    while _mentioning(str(tmpdir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _mentioning(str(tmpdir)), _mentioning(str(tmpdir))
    assert not list(tmpdir.iterdir()), list(tmpdir.iterdir())
    assert took < kill_after + 60, f"cleanup took {took - kill_after:.0f}s"
