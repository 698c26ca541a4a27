"""scripts/setup.sh on a machine whose PATH has no suitable Go: it ends with one that builds.

The toolchain is downloaded once into ~/.cache/pullhealth/go (the same cache setup.sh
uses), so only the first run pays for the download (about 70 MB); a build of a small
program proves the toolchain works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _suitable(go: Path) -> bool:
    out = subprocess.run([str(go), "env", "GOVERSION"], capture_output=True, text=True, timeout=60, check=False)
    parts = out.stdout.strip().removeprefix("go").split(".")
    return out.returncode == 0 and len(parts) > 1 and parts[0] == "1" and int(parts[1]) >= 26


def test_setup_installs_a_go_that_builds_when_path_has_none(tmp_path: Path) -> None:
    # A PATH with every directory of the current one except those holding a suitable Go.
    dirs = [d for d in os.environ["PATH"].split(os.pathsep)
            if d and not ((Path(d) / "go").is_file() and _suitable(Path(d) / "go"))]
    path = os.pathsep.join(dirs)
    env = {**os.environ, "PATH": path}
    env.pop("GOROOT", None)
    if shutil.which("go", path=path) is None:
        # No old Go to bootstrap from either: setup.sh would apt-get install Debian's
        # golang-go. Use the hidden suitable Go as the bootstrap instead, if there is one.
        hidden = shutil.which("go")
        if hidden is None and os.geteuid() != 0:
            pytest.skip("no Go to bootstrap from and not root (apt-get)")
        if hidden is not None:
            env["PULLHEALTH_BOOTSTRAP_GO"] = hidden
    result = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--print-go-dir"], env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    go_dir = Path(result.stdout.strip().splitlines()[-1])
    go = go_dir / "go"
    assert _suitable(go), go
    assert str(go_dir) not in dirs

    (tmp_path / "go.mod").write_text("module hello\n\ngo 1.26\n")
    (tmp_path / "main.go").write_text('package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("built") }\n')
    build_env = {**env, "PATH": f"{go_dir}{os.pathsep}{path}", "GOTOOLCHAIN": "local", "GOFLAGS": ""}
    subprocess.run([str(go), "build", "-o", str(tmp_path / "hello"), "."], cwd=tmp_path, env=build_env,
                   capture_output=True, text=True, timeout=300, check=True)
    assert subprocess.run([str(tmp_path / "hello")], capture_output=True, text=True, timeout=30,
                          check=True).stdout == "built\n"
    # Idempotent: a second run finds the cached toolchain at once.
    again = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--print-go-dir"], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert again.stdout.strip() == str(go_dir) and "downloading" not in again.stderr
