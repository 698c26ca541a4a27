"""Every output is valid and redacted: the whole code catalogue, every encoding of a secret.

Redaction runs on values before serialization, so JSON always parses, placeholders such as
``<password>`` survive, prose such as "Basic authentication" is left alone, and a secret
cannot hide behind JSON or URL escaping.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from pullhealth import cli
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import make, redacted
from pullhealth.domain.model import CheckResult, StepStatus
from pullhealth.domain.redact import MASK, Redactor, clip, encodings, redact

ROOT = Path(__file__).resolve().parents[1]
FACTS = {"registry": "myacr.azurecr.io", "host": "myacr.azurecr.io", "namespace": "team", "secret": "regcred",
         "repository": "team/app", "tag": "v1", "image": "myacr.azurecr.io/team/app:v1", "detail": "d",
         "reference": "myacr.azurecr.io/team/app:v1", "platform": "linux/amd64", "address": "10.0.0.4"}
SECRETS = ["hunter2-pass", "pässwörd-ü", 'we"ird\\pass', "tok€n+/=&x"]


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = capsys.readouterr().out
    doc: dict[str, Any] = json.loads(out)
    return doc


@pytest.mark.parametrize("code", list(Code))
def test_every_code_prints_valid_json_with_placeholders_intact(
    code: Code, capsys: pytest.CaptureFixture[str]
) -> None:
    diagnosis = make(code, FACTS)
    cli._print_explain(diagnosis, "json")
    doc = _json_out(capsys)
    assert doc["code"] == code.value
    assert doc["remediation"] == diagnosis.remediation  # nothing eaten
    cli._print_check(diagnosis, FACTS["reference"], "json", Redactor(SECRETS))
    doc = _json_out(capsys)
    assert doc["summary"] == diagnosis.summary and doc["remediation"] == diagnosis.remediation
    cli._print_check(diagnosis, FACTS["reference"], "text", Redactor(SECRETS))
    text = capsys.readouterr().out
    for step in diagnosis.remediation:
        assert step in text
    if "--docker-password" in " ".join(diagnosis.remediation):
        assert "--docker-password=<password>" in text


@pytest.mark.parametrize("code", [Code.AUTH_REQUIRED, Code.PULL_SECRET_MISSING, Code.RATE_LIMITED,
                                  Code.CREDENTIALS_REJECTED])
def test_explain_subprocess_json_parses_for_the_common_failures(code: Code) -> None:
    # The message text that classifies to each code is not needed: UNKNOWN echoes text,
    # and the catalogue test above covers each code's rendering. Here the real CLI runs.
    messages = {
        Code.AUTH_REQUIRED: 'failed to authorize: failed to fetch anonymous token: unexpected status: 401 Unauthorized',
        Code.PULL_SECRET_MISSING: 'Unable to retrieve some image pull secrets (regcred); attempting to pull the image may not succeed.',
        Code.RATE_LIMITED: 'toomanyrequests: You have reached your pull rate limit.',
        Code.CREDENTIALS_REJECTED: 'unexpected status from HEAD request: 401 Unauthorized; password=<password>',
    }
    proc = subprocess.run([sys.executable, "-m", "pullhealth", "explain", messages[code], "-o", "json"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert all("<password>" in s for s in doc["remediation"] if "docker-password" in s)


@pytest.mark.parametrize("secret", SECRETS)
def test_every_encoding_of_a_known_secret_is_masked(secret: str) -> None:
    r = Redactor([secret], [("alice", secret)])
    raw = secret.encode()
    pair = f"alice:{secret}".encode()
    forms = [
        secret, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(pair).decode(), json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""), quote_plus(secret), repr(secret)[1:-1],
    ]
    for form in forms:
        out = r(f"the server said: {form}; bye")
        assert form not in out and MASK in out, form
    # JSON built from masked values never holds the secret in any escaping.
    doc = json.dumps(r.value({"message": f"echo {secret}", "list": [secret]}))
    for form in encodings(secret):
        assert form not in doc


def test_shapes_mask_secrets_but_not_prose_or_placeholders() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    kept = [
        "--docker-password=<password>",
        "kubectl create secret docker-registry <secret> --docker-username=<user> --docker-password=<password>",
        "registry.test requires Basic authentication; none given",
        'WWW-Authenticate: Bearer realm="https://token.test/oauth2/token",service="acr.test"',
        "Bearer realm=https://a.test/token",
        '{"password": "<password>"}',
        "use --password-stdin",
        "http://<user>:<password>@proxy:port in HTTPS_PROXY",
    ]
    for text in kept:
        assert redact(text) == text, text
    masked = {
        f"Authorization: Bearer {jwt}": jwt,
        "Authorization: Basic YWxpY2U6cHc9PQ==": "YWxpY2U6cHc9PQ==",
        '{"auth": "YWxpY2U6cHc="}': "YWxpY2U6cHc=",
        '{"password": "p\\"w\\\\x"}': 'p\\"w',
        "grant_type=password&password=s3cret&x=1": "s3cret",
        "refresh_token=abc.def.ghi": "abc.def.ghi",
        "--docker-password=hunter2": "hunter2",
        "http://user:pr0xy-pass@proxy.test:3128": "pr0xy-pass",
    }
    for text, secret in masked.items():
        out = redact(text)
        assert secret not in out, (text, out)
    assert "x=1" in redact("grant_type=password&password=s3cret&x=1")


def test_truncation_happens_after_masking() -> None:
    r = Redactor(["0123456789-secret"])
    text = "x" * 20 + "0123456789-secret"
    out = clip(text, 25, r)
    assert "0123" not in out and len(out) <= 25
    # A shape cut in half would no longer look like one: masked first, then cut.
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    assert "eyJzdWIi" not in clip("y" * 270 + jwt, 300)


def test_redacted_diagnosis_masks_every_string() -> None:
    secret = "pässwörd-42"
    check = CheckResult(name="token", status=StepStatus.FAILED, code=Code.CREDENTIALS_REJECTED,
                        message=f"echo {secret}", details={"body": secret})
    d = make(Code.CREDENTIALS_REJECTED, {**FACTS, "detail": f"said {secret}"}, checks=[check])
    out = redacted(d, Redactor([secret]))
    assert secret not in out.model_dump_json() and secret not in json.dumps(out.wire(), ensure_ascii=False)
