"""Locating the helm binary built by hack/build-helm.sh (or given by $HELM / PATH)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def find_helm() -> str | None:
    """$HELM, helm on PATH, or the binary hack/build-helm.sh built; None if none."""
    candidates = [os.environ.get("HELM", ""), shutil.which("helm") or ""]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        built = subprocess.run(
            ["bash", str(ROOT / "hack" / "build-helm.sh"), "--print-dir"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
        candidates.append(str(Path(built) / "helm"))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def require_helm() -> str:
    """The helm binary; skips the test without it, fails without it in CI."""
    found = find_helm()
    if found is None:
        reason = "no helm binary: run hack/build-helm.sh (or set HELM)"
        if os.environ.get("PULLHEALTH_REQUIRE_E2E"):
            pytest.fail(f"PULLHEALTH_REQUIRE_E2E is set but {reason}", pytrace=False)
        pytest.skip(reason)
    return found
