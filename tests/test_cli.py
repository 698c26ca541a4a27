"""The CLI end to end, as a subprocess, against the real local servers.

Checks the JSON contract, exit codes (0 healthy, 1 problem, 2 usage) and that no
password, token or auth blob is ever printed.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}"}
    return subprocess.run(
        [sys.executable, "-m", "pullhealth", *args], input=stdin, capture_output=True, text=True,
        timeout=60, env=env, check=False,
    )


def check(world: Any, ref: str, *extra: str, stdin: str = "") -> tuple[int, dict[str, Any], str]:
    proc = run("check", ref, "--nameserver", world.nameserver, "--ca-file", str(world.ca_bundle),
               "--timeout", "2", "--output", "json", *extra, stdin=stdin)
    return proc.returncode, json.loads(proc.stdout), proc.stdout + proc.stderr


def test_healthy_json_contract_and_exit_0(world: Any) -> None:
    rc, doc, _ = check(world, f"{world.anon}/library/alpine:3.19")
    assert rc == 0
    assert set(doc) == {"reference", "registry", "code", "summary", "remediation", "checks"}
    assert doc["code"] == "OK" and doc["registry"] == world.anon
    assert [c["name"] for c in doc["checks"]] == ["dns", "tcp", "tls", "challenge", "token", "manifest", "blob"]
    assert set(doc["checks"][0]) == {"name", "status", "code", "message", "durationMs"}


def test_problem_exit_1_with_remediation(world: Any) -> None:
    rc, doc, _ = check(world, f"{world.anon}/team/app:nosuchtag")
    assert rc == 1 and doc["code"] == "TAG_NOT_FOUND"
    # A plain registry gets plain commands, no `az acr` advice (codes.KIND_REMEDIATION).
    assert doc["remediation"] and "skopeo list-tags" in doc["remediation"][0]
    assert not any("az " in step for step in doc["remediation"])


def test_password_stdin_and_no_leak(world: Any) -> None:
    user, password = world.acr_puller
    rc, doc, out = check(world, f"{world.acr}/team/app:v1", "--username", user, "--password-stdin",
                         stdin=password + "\n")
    assert rc == 0, doc
    assert password not in out
    rc, doc, out = check(world, f"{world.acr}/team/app:v1", "--username", user, "--password-stdin",
                         stdin="wrong-" + password + "\n")
    assert rc == 1 and doc["code"] == "CREDENTIALS_REJECTED"
    assert password not in out and "wrong-" not in out


def _docker_config(tmp_path: Path, server: str, user: str, password: str) -> Path:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {server: {"auth": auth}}}))
    return path


def test_docker_config_credentials_and_no_blob_leak(world: Any, tmp_path: Path) -> None:
    user, password = world.basic_user
    cfg = _docker_config(tmp_path, f"https://{world.basic}", user, password)
    rc, doc, out = check(world, f"{world.basic}/team/app:v1", "--docker-config", str(cfg))
    assert rc == 0, doc
    blob = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert password not in out and blob not in out
    # text output too
    proc = run("check", f"{world.basic}/team/app:v1", "--nameserver", world.nameserver,
               "--ca-file", str(world.ca_bundle), "--docker-config", str(cfg))
    assert proc.returncode == 0 and password not in proc.stdout and "user alice" in proc.stdout


def test_docker_config_without_entry_is_no_match(world: Any, tmp_path: Path) -> None:
    cfg = _docker_config(tmp_path, "other.example", "u", "p")
    rc, doc, _ = check(world, f"{world.acr}/team/app:v1", "--docker-config", str(cfg))
    assert rc == 1 and doc["code"] == "PULL_SECRET_NO_MATCH"
    # ...but a public image needs no entry
    rc, doc, _ = check(world, f"{world.acr}/public/hello:1", "--docker-config", str(cfg))
    assert rc == 0, doc


def test_malformed_docker_config_is_a_diagnosis_not_a_traceback(world: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.json"
    cfg.write_text('{"auths": {"x": {"auth": "%%%secret%%%"}}}')
    rc, doc, out = check(world, f"{world.acr}/team/app:v1", "--docker-config", str(cfg))
    assert rc == 1 and doc["code"] == "PULL_SECRET_INVALID"
    # A file is not a Secret: no `kubectl create secret` naming the file's path.
    assert doc["summary"].startswith(f"the docker config file {cfg} cannot be used")
    assert not any("create secret" in step or "get secret" in step for step in doc["remediation"])
    assert "Traceback" not in out and "secret%%%" not in out


def test_invalid_reference_is_a_diagnosis(world: Any) -> None:
    rc, doc, _ = check(world, "Bad/Name:x")
    assert rc == 1 and doc["code"] == "INVALID_IMAGE_NAME"
    assert "lowercase" in doc["summary"]


@pytest.mark.parametrize(
    "args",
    [
        ["check"],
        ["check", "x.io", "--username", "u"],
        ["check", "x.io", "--password-stdin"],
        ["check", "x.io", "--output", "xml"],
        ["check", "x.io", "--docker-config", "/nonexistent/config.json"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    proc = run(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_text_output_reads_like_check_health(world: Any) -> None:
    proc = run("check", f"{world.anon}/library/alpine:3.19", "--nameserver", world.nameserver,
               "--ca-file", str(world.ca_bundle))
    assert proc.returncode == 0
    assert "DNS lookup to anon.test at IP 127.0.0.1 : OK" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("OK: ")


def test_explain_json_and_stdin() -> None:
    text = 'Failed to pull image "a.io/x:1": failed to resolve reference "a.io/x:1": a.io/x:1: not found'
    proc = run("explain", "-", "--output", "json", stdin=text)
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert set(doc) == {"code", "summary", "remediation", "candidates"}
    assert doc["code"] == "IMAGE_NOT_FOUND"
    assert set(doc["candidates"]) == {"REPOSITORY_NOT_FOUND", "TAG_NOT_FOUND"}


def test_explain_never_echoes_credentials() -> None:
    # UNKNOWN echoes the text in its summary, so redaction is what keeps the secrets out.
    text = ("strange failure; request had Authorization: Basic YWxpY2U6czNjcmV0LWFsaWNl "
            "and refresh_token=abc.def.ghi")
    proc = run("explain", text)
    assert proc.stdout.startswith("UNKNOWN: ") and "strange failure" in proc.stdout
    assert "YWxpY2U6czNjcmV0LWFsaWNl" not in proc.stdout and "abc.def.ghi" not in proc.stdout


def test_explain_proxy_texts_are_proxy_error_without_the_proxy_password() -> None:
    text = ("Error while pulling image: Get https://index.docker.io/v1/repositories/library/x/images: http: "
            "error connecting to proxy http://bob:hunter2-proxy@10.0.0.9:3128: dial tcp 10.0.0.9:3128: "
            "connect: connection refused")
    proc = run("explain", text)
    assert proc.returncode == 0 and proc.stdout.startswith("PROXY_ERROR: "), proc.stdout
    assert "hunter2-proxy" not in proc.stdout
    assert "NO_PROXY" in proc.stdout and "httpProxyConfig" in proc.stdout
    wants = run("explain", "Get https://r.io/v2/: Proxy Authentication Required")
    assert wants.stdout.startswith("PROXY_ERROR: ")


def test_version_and_one_code() -> None:
    from pullhealth import __version__

    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"pullhealth {__version__}"
    proc = run("codes", "tag_not_found")
    assert proc.returncode == 0 and proc.stdout.startswith("\n## TAG_NOT_FOUND\n")
    assert "## REPOSITORY_NOT_FOUND" not in proc.stdout
    proc = run("codes", "NO_SUCH_CODE")
    assert proc.returncode == 2 and "TAG_NOT_FOUND" in proc.stderr


def test_run_flags_come_from_the_settings() -> None:
    """`pullhealth run --help` lists every Settings flag once, with its default's help."""
    import dataclasses

    from pullhealth.runtime import settings

    proc = run("run", "--help")
    assert proc.returncode == 0, proc.stderr
    flags = [f for f in dataclasses.fields(settings.Settings) if "help" in f.metadata]
    for f in flags:
        name = (f.metadata["names"] or ("--" + f.name.replace("_", "-"),))[0]
        assert name in proc.stdout, name
    assert "trust boundary" in proc.stdout
    proc = run("run", "--namespace", "a", "--all-namespaces")
    assert proc.returncode == 2 and "not allowed with" in proc.stderr


def test_dev_cluster_help_and_option_order(tmp_path: Path) -> None:
    def dev(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pullhealth_dev", *args],
                              capture_output=True, text=True, timeout=60)

    proc = dev("cluster", "--help")
    assert proc.returncode == 0 and "--state-dir" in proc.stdout
    # The order its usage shows: options first, then the command.
    proc = dev("cluster", "--state-dir", str(tmp_path / "state"), "status")
    assert "unrecognized" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert dev("--help").stdout.startswith("usage: pullhealth-dev cluster")
    # The dev world is not part of the runtime command (nor of its wheel).
    assert "dev-cluster" not in run("--help").stdout


def test_healthy_summary_says_what_was_proven(world: Any) -> None:
    _, doc, _ = check(world, f"{world.anon}/library/alpine:3.19")
    assert doc["summary"].endswith("library/alpine:3.19 can be pulled anonymously"), doc["summary"]
    _, doc, _ = check(world, world.anon)
    assert "no credentials were used and no image was checked" in doc["summary"], doc["summary"]
    assert "can be pulled" not in doc["summary"]
