"""docs/acr-guide.md stays true: every row names a real code, ACR case and test, every ACR
case and check-health error has a row, and the four cases that used to be generic get their
own diagnosis or remedy in `pullhealth check` and `pullhealth explain` (pod annotations:
e2e/test_pods.py)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pullhealth.domain import acrguide, codes
from pullhealth.domain.classify import classify
from pullhealth.domain.codes import ACR_CASES, CATALOG, Code
from pullhealth.pods.podcheck import event_message, probable_cause

ROOT = Path(__file__).resolve().parents[1]


def test_docs_acr_guide_md_is_generated_from_the_table() -> None:
    path = ROOT / "docs" / "acr-guide.md"
    assert path.read_text() == acrguide.acr_guide_markdown(), (
        "regenerate: python -m pullhealth.domain.acrguide > docs/acr-guide.md"
    )


@pytest.mark.parametrize("row", acrguide.GUIDE, ids=[r.guide[:40] for r in acrguide.GUIDE])
def test_every_row_has_a_code_and_an_existing_test(row: acrguide.Row) -> None:
    assert row.code is not None and row.tests
    for ref in row.tests:
        path, _, name = ref.partition("::")
        source = (ROOT / path).read_text()
        assert f"def {name}(" in source, ref
    for case in (row.case or "").split(" / "):
        if case:
            assert any(c.code is row.code and c.name == case for c in ACR_CASES), (row.guide, case)


def test_every_acr_case_and_check_health_error_has_a_row() -> None:
    named = {(r.code, name) for r in acrguide.GUIDE for name in (r.case or "").split(" / ") if name}
    assert {(c.code, c.name) for c in ACR_CASES} <= named
    errors = {info.check_health_error for info in CATALOG.values() if info.check_health_error}
    assert errors <= {r.guide for r in acrguide.CHECK_HEALTH}


def test_check_health_errors() -> None:
    for row in acrguide.CHECK_HEALTH:
        assert row.code is not None and row.code.info.check_health_error == row.guide, row.guide
        assert row.guide in (classify(row.guide).code.info.check_health_error or ""), row.guide
    for other in acrguide.CHECK_HEALTH_ELSEWHERE:
        assert classify(other).code is Code.UNKNOWN, other


def test_log_codes_and_messages() -> None:
    for row in (*acrguide.LOG_CODES, *acrguide.CASES):
        if row.sample:
            assert classify(row.sample).code is row.code, (row.guide, classify(row.sample))
    private = classify("denied: client with IP '10.240.0.4' is not allowed access. Refer "
                       "https://aka.ms/acr/firewall to grant access.")
    assert private.facts.get("case") == "vnet-service-endpoint"
    assert Code.FIREWALL_FORBIDDEN in classify(acrguide.CASES[-1].sample or "").candidates


def test_aadsts_codes_pick_the_case() -> None:
    body = '{{"error":"invalid_client","error_description":"{}: ...","error_codes":[{}]}}'
    expired = classify("Sign in to AAD failed with: adal: Refresh request failed. Response body: "
                       + body.format("AADSTS7000222", 7000222))
    wrong = classify("Sign in to AAD failed with: adal: Refresh request failed. Response body: "
                     + body.format("AADSTS7000215", 7000215))
    assert expired.code is wrong.code is Code.IDENTITY_UNAVAILABLE
    assert expired.facts["case"] == "sp-secret-expired" and "expired" in expired.summary
    assert wrong.facts["case"] == "sp-secret-wrong" and "wrong" in wrong.summary
    assert any("az ad app credential" in s for s in wrong.remediation)


def test_permission_denied_names_abac_and_propagation() -> None:
    facts = {"registry": "myacr.azurecr.io", "repository": "team/app"}
    text = " ".join(codes.remediation(Code.PERMISSION_DENIED, facts))
    assert "roleAssignmentMode" in text and "Container Registry Repository Reader" in text
    assert "AcrPull is not honoured" in text and "propagate" in text and "pullhealth recheck" in text
    exchange = " ".join(codes.remediation(Code.TOKEN_EXCHANGE_DENIED, facts))
    assert "roleAssignmentMode" in exchange and "propagate" in exchange
    # explain, from ACR's text for a token without pull
    d = classify('Failed to pull image "myacr.azurecr.io/team/app:v1": failed to resolve reference: '
                 "insufficient_scope: authorization failed")
    assert d.code is Code.PERMISSION_DENIED and "roleAssignmentMode" in " ".join(d.remediation)
    # other registries unchanged
    for registry in ("ghcr.io", "registry-1.docker.io", "harbor.example.com"):
        other = " ".join(codes.remediation(Code.PERMISSION_DENIED, {"registry": registry}))
        assert "roleAssignmentMode" not in other and "az " not in other


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}"}
    return subprocess.run([sys.executable, "-m", "pullhealth", *args], capture_output=True, text=True,
                          timeout=60, env=env, check=False)


def test_explain_and_annotations() -> None:
    text = ('Failed to pull image "myacr.azurecr.io/myimage:latest": rpc error: code = Unknown desc = Error '
            "response from daemon: Get https://myacr.azurecr.io/v2/myimage/manifests/latest: unauthorized: "
            "Application not registered with AAD.")
    proc = _run("explain", text, "--output", "json")
    doc = json.loads(proc.stdout)
    assert doc["code"] == "AAD_APP_NOT_REGISTERED" and "CREDENTIALS_REJECTED" in doc["candidates"]
    assert any("az ad sp create --id <app-id>" in s for s in doc["remediation"])
    # The pod annotation and Event are built from the same diagnosis.
    d = classify(text)
    assert "Application not registered with AAD" in probable_cause(d)
    assert event_message(d).startswith("AAD_APP_NOT_REGISTERED: ")
    # ACR's wrong-credentials text: the remedy tells the credential kinds apart (tokens included)
    # and names the stale-secret case; ECR's does not.
    rejected = _run("explain", 'Failed to pull image "myacr.azurecr.io/team/app:v1": failed to authorize: '
                    "failed to fetch oauth token: unexpected status: 401 Unauthorized").stdout
    assert "az acr token show" in rejected and "anonymousPullEnabled" in rejected
    ecr = _run("explain", 'Failed to pull image "1.dkr.ecr.eu-west-1.amazonaws.com/a:1": failed to authorize: '
               "failed to fetch oauth token: unexpected status: 401 Unauthorized").stdout
    assert "az " not in ecr


def _config(tmp_path: Path, server: str, user: str, password: str) -> Path:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {server: {"auth": auth}}}))
    return path


def _check(world: Any, ref: str, cfg: Path) -> tuple[int, dict[str, Any], str]:
    proc = _run("check", ref, "--nameserver", world.nameserver, "--ca-file", str(world.ca_bundle),
                "--timeout", "3", "--output", "json", "--docker-config", str(cfg))
    return proc.returncode, json.loads(proc.stdout), proc.stdout + proc.stderr


def test_cli_check_stale_secret(world: Any, tmp_path: Path) -> None:
    cfg = _config(tmp_path, world.myacr, world.acr_puller[0], "rotated-away")
    rc, doc, out = _check(world, f"{world.myacr}/public/hello:1", cfg)
    assert rc == 1 and doc["code"] == "PULL_SECRET_STALE", doc
    assert "anonymous pull of public/hello works" in doc["summary"] and "is stale" in doc["summary"]
    assert f"docker config file {cfg}" in doc["summary"] and "docker login" in " ".join(doc["remediation"])
    assert "rotated-away" not in out and base64.b64encode(b"puller:rotated-away").decode() not in out


def test_cli_check_token_and_app_not_registered(world: Any, tmp_path: Path) -> None:
    cfg = _config(tmp_path, world.myacr, *world.acr_token_disabled)
    rc, doc, out = _check(world, f"{world.myacr}/team/app:v1", cfg)
    assert rc == 1 and doc["code"] == "CREDENTIALS_REJECTED", doc
    assert "repository-scoped token ci-token-off" in doc["summary"]
    assert any("az acr token update --name ci-token-off" in s for s in doc["remediation"])
    assert world.acr_token_disabled[1] not in out
    cfg = _config(tmp_path, world.myacr, "55555555-5555-4555-8555-555555555555", "x-secret")
    rc, doc, _ = _check(world, f"{world.myacr}/team/app:v1", cfg)
    assert rc == 1 and doc["code"] == "AAD_APP_NOT_REGISTERED", doc
