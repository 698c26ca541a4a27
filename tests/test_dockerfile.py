"""The Dockerfile, checked without a Docker engine.

Static checks read the Dockerfile (stages, non-root user, OCI labels, entrypoint). The
install test then *executes* its pip steps, stage by stage, in a temporary directory:
the build context is the repository filtered through .dockerignore, each stage's
absolute paths live under its own directory, and ``pip`` is a fresh ``python -m venv``
standing in for the image's interpreter. The venv must then run ``pullhealth``.

That test is slow-ish (tens of seconds: it installs the dependencies from PyPI, through
pip's cache) but stays in the default run: it is the only check that the wheel installs
and starts outside this checkout.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
UID = 10001


@dataclass
class Stage:
    """One FROM ... section: its base image, name and instructions."""

    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for instr, args in self.steps if instr == instruction]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The Dockerfile as global ARGs and stages (continuations joined, comments dropped)."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            if instr == "ARG":
                key, _, value = args.partition("=")
                global_args[key] = value
        else:
            stages[-1].steps.append((instr, args.strip()))
    return global_args, stages


def key_values(args: str) -> dict[str, str]:
    """LABEL / ENV / ARG key=value pairs (values may be quoted)."""
    pairs = {}
    for word in shlex.split(args):
        key, _, value = word.partition("=")
        pairs[key] = value
    return pairs


def final_stage() -> Stage:
    return parse(DOCKERFILE.read_text())[1][-1]


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


# -- static -------------------------------------------------------------------------


def test_two_stages_on_python_slim() -> None:
    _, stages = parse(DOCKERFILE.read_text())
    assert [s.base for s in stages] == ["python:3.11-slim", "python:3.11-slim"]
    assert stages[0].name == "build"
    assert any("pip wheel --no-deps" in run for run in stages[0].all("RUN"))
    assert any(copy.startswith("--from=build ") for copy in stages[1].all("COPY"))


def test_runs_as_the_charts_non_root_user() -> None:
    stage = final_stage()
    users = stage.all("USER")
    assert users and users[-1].split(":")[0] == str(UID)
    chart = yaml.safe_load((ROOT / "charts" / "pullhealth" / "values.yaml").read_text())
    assert chart["securityContext"]["runAsUser"] == UID == chart["podSecurityContext"]["runAsUser"]
    creates = " ".join(stage.all("RUN"))
    assert f"--uid {UID}" in creates and f"--gid {UID}" in creates


def test_entrypoint_and_cmd_are_exec_form() -> None:
    stage = final_stage()
    assert json.loads(stage.all("ENTRYPOINT")[-1]) == ["pullhealth", "run"]
    assert json.loads(stage.all("CMD")[-1]) == ["--all-namespaces", "--log-format", "json"]
    assert stage.all("EXPOSE")[-1].split() == ["8080", "8081"]


def test_oci_labels_and_version_agree() -> None:
    stage = final_stage()
    labels: dict[str, str] = {}
    for label in stage.all("LABEL"):
        labels.update(key_values(label))
    keys = {f"org.opencontainers.image.{k}" for k in ("source", "title", "description", "version", "licenses")}
    assert keys <= labels.keys()
    args = {k: v for a in stage.all("ARG") for k, v in key_values(a).items()}
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    chart = yaml.safe_load((ROOT / "charts" / "pullhealth" / "Chart.yaml").read_text())
    assert args["VERSION"] == project_version() == chart["appVersion"]
    license_text = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert labels["org.opencontainers.image.licenses"] == license_text


# -- the lock file ------------------------------------------------------------------

LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, tuple[str, list[str]]]:
    """requirements.lock as {normalised name: (version, hashes)}."""
    from packaging.utils import canonicalize_name

    entries: dict[str, tuple[str, list[str]]] = {}
    text = LOCK.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        name, _, version = words[0].partition("==")
        assert version, f"not pinned: {line}"
        entries[canonicalize_name(name)] = (version, [w.split("=", 1)[1] for w in words[1:] if w.startswith("--hash=")])
    return entries


def test_lock_pins_every_dependency_with_hashes() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = locked()
    assert all(hashes and all(h.startswith("sha256:") for h in hashes) for _, hashes in lock.values()), lock
    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    for dep in deps:
        name = canonicalize_name(dep.name)
        assert name in lock, f"{dep.name} is in pyproject.toml but not in requirements.lock: re-run pip-compile"
        assert dep.specifier.contains(lock[name][0]), f"locked {name}=={lock[name][0]} does not satisfy {dep}"
    # The image installs the lock, and only with hashes.
    runs = " ".join(final_stage().all("RUN"))
    assert "--require-hashes" in runs and "requirements.lock" in runs


# -- the build context --------------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics (last matching pattern wins; `!` re-includes)."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            result = not negate
    return result


def build_context(dest: Path) -> list[str]:
    """Copy the files `docker build .` would send; return their relative paths."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.strip().startswith("#")]
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True, timeout=30).stdout.splitlines()
    sent = []
    for rel in files:
        if ignored(rel, patterns) or not (ROOT / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
        sent.append(rel)
    return sent


def test_build_context_is_small(tmp_path: Path) -> None:
    sent = build_context(tmp_path)
    assert {"pyproject.toml", "requirements.lock", "README.md", "operator/pullhealth/__init__.py"} <= set(sent)
    assert not [p for p in sent if p.startswith(("tests/", "e2e/", ".git/", "charts/", ".venv/"))]
    assert not [p for p in sent if "__pycache__" in p]


# -- executing the install steps ----------------------------------------------------


class Runner:
    """Runs the Dockerfile's file and pip steps; each stage's / is a directory."""

    def __init__(self, tmp: Path, context: Path, venv: Path) -> None:
        self.tmp = tmp
        self.context = context
        self.venv = venv
        self.roots: dict[str, Path] = {}

    def inside(self, root: Path, workdir: str, path: str) -> Path:
        return root / (path if path.startswith("/") else f"{workdir}/{path}").lstrip("/")

    def run_stage(self, index: int, stage: Stage) -> None:
        root = self.tmp / f"stage{index}"
        root.mkdir()
        self.roots[stage.name or str(index)] = root
        workdir = "/"
        env = {"PATH": f"{self.venv / 'bin'}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root")}
        for instr, args in stage.steps:
            if instr == "WORKDIR":
                workdir = args if args.startswith("/") else f"{workdir}/{args}"
                self.inside(root, "/", workdir).mkdir(parents=True, exist_ok=True)
            elif instr == "ENV":
                # pip's cache stays on in the test: no point downloading the same wheels twice.
                env.update({k: v for k, v in key_values(args).items() if k != "PIP_NO_CACHE_DIR"})
            elif instr == "COPY":
                self.copy(root, workdir, args)
            elif instr == "RUN" and re.search(r"\bpip\b", args):
                # Absolute paths of the image become paths under this stage's root.
                command = re.sub(r"(?<![\w.:/-])/(?=[\w.])", f"{root}/", args)
                result = subprocess.run(["bash", "-euo", "pipefail", "-c", command],
                                        cwd=self.inside(root, "/", workdir), env=env,
                                        capture_output=True, text=True, timeout=600, check=False)
                assert result.returncode == 0, f"RUN {args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    def copy(self, root: Path, workdir: str, args: str) -> None:
        words = args.split()
        source_root = self.context
        if words[0].startswith("--from="):
            source_root = self.roots[words[0].split("=", 1)[1]]
            words = words[1:]
        *sources, dest = words
        target = self.inside(root, workdir, dest)
        for source in sources:
            src = source_root / source.lstrip("/")
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True)
            elif dest.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target / src.name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)


def test_install_steps_produce_a_working_pullhealth(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    build_context(context)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    runner = Runner(tmp_path, context, venv)
    _, stages = parse(DOCKERFILE.read_text())
    for i, stage in enumerate(stages):
        runner.run_stage(i, stage)
    wheels = list((runner.roots["build"] / "dist").glob("*.whl"))
    assert [w.name for w in wheels] == [f"pullhealth-{project_version()}-py3-none-any.whl"]

    # Run from an empty directory with a clean environment: only the installed wheel counts.
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    cwd = tmp_path / "empty"
    cwd.mkdir()

    def run(*args: str) -> str:
        result = subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        return result.stdout

    assert "run" in run("pullhealth", "--help")
    assert "DNS_NXDOMAIN" in run("pullhealth", "codes")
    # ENTRYPOINT + CMD parse (with --help, so that nothing connects anywhere).
    stage = stages[-1]
    argv = json.loads(stage.all("ENTRYPOINT")[-1]) + json.loads(stage.all("CMD")[-1])
    assert "--metrics-port" in run(*argv, "--help")
    where = run("python", "-c", "import pullhealth, pathlib; p = pathlib.Path(pullhealth.__file__).parent; "
                                "print(p); print((p / 'py.typed').exists())").split()
    assert where[0].startswith(str(venv)) and where[1] == "True"
