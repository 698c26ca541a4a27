"""Hostile and slow registries: no echoed secret reaches an output, no check outlives its
timeout, no crafted answer crashes the chain.

The registries are real loopback servers (tests/support/hostile.py): one echoes every
credential it receives in every place a client may show; one drips its answers one byte
a second.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pullhealth import cli
from pullhealth.chain.probechain import ChainOptions, Target, check_credentials, run_chain
from pullhealth.domain.codes import Code
from pullhealth.domain.credentials import Credential, CredentialKind
from pullhealth.domain.reference import parse_target
from support.hostile import MODES, DripRegistry, HostileRegistry, planted_forms
from support.world import TEST_DESTINATIONS

USER = "mallory"
PASSWORDS = ["Plain-s3cret-42", "pässwörd-ü€-42"]


@pytest.fixture(scope="module")
def hostile(world: Any) -> Iterator[HostileRegistry]:
    with HostileRegistry(world.pki) as srv:
        yield srv


@pytest.fixture(scope="module")
def drip(world: Any) -> Iterator[DripRegistry]:
    with DripRegistry(world.pki) as srv:
        yield srv


def _cli(world: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str,
         stdin: str = "") -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin + "\n"))
    rc = cli.main(["check", *args, "--nameserver", world.nameserver, "--ca-file", str(world.ca_bundle)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.out


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("repo", sorted(MODES))
def test_echoed_credentials_never_reach_cli_output(
    world: Any, hostile: HostileRegistry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture, repo: str, password: str,
) -> None:
    ref = f"{hostile.host}/{repo}:v1"
    outputs = []
    for output in ("json", "text"):
        rc, out = _cli(world, monkeypatch, capsys, ref, "--timeout", "5", "--username", USER,
                       "--password-stdin", "-o", output, stdin=password)
        assert rc == 1, out
        outputs.append(out)
    doc = json.loads(outputs[0])  # valid JSON, whatever was echoed
    assert doc["code"] not in ("OK", "UNKNOWN"), doc
    text = "\n".join(outputs) + caplog.text
    for form in planted_forms(USER, password, hostile.tokens):
        assert form not in text, (repo, form, text)
    # The echo was there, masked: in the OCI error envelope (the only part of an answer ever
    # shown); a plain-text body (broken, grant) is not shown at all, and a token realm's
    # answer shows its status and OCI codes only (docs/security.md).
    assert "***" in text or repo in ("echo/ratelimit", "echo/broken", "echo/grant", "echo/reject",
                                     "echo/oauth"), text
    if repo in ("echo/reject", "echo/oauth"):
        assert "401" in text, text
    if repo in ("echo/broken", "echo/grant"):
        assert "Authorization" not in text and "Bearer " not in text, text


async def test_echoed_credentials_are_masked_in_the_diagnosis_itself(world: Any, hostile: HostileRegistry) -> None:
    for password in PASSWORDS:
        for repo in sorted(MODES):
            registry, image = parse_target(f"{hostile.host}/{repo}:v1")
            cred = Credential(CredentialKind.BASIC, "secret team/regcred", USER, password)
            d = await check_credentials(registry, image, [cred], ChainOptions(destinations=TEST_DESTINATIONS,
                nameserver=world.nameserver, ca_file=str(world.ca_bundle), timeout=5))
            dumped = d.model_dump_json() + json.dumps(d.wire(), ensure_ascii=False)
            for form in planted_forms(USER, password, hostile.tokens):
                assert form not in dumped, (repo, form)


@pytest.mark.parametrize("drip_headers", [False, True])
def test_a_dripping_registry_ends_the_cli_check_within_its_timeout(
    world: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], drip_headers: bool
) -> None:
    with DripRegistry(world.pki, interval=0.5, drip_headers=drip_headers) as srv:
        started = time.monotonic()
        rc, out = _cli(world, monkeypatch, capsys, f"{srv.host}/team/app:v1", "--timeout", "2",
                       "--anonymous", "-o", "json")
        elapsed = time.monotonic() - started
    assert rc == 1
    doc = json.loads(out)
    assert elapsed < 2 + 1.0, elapsed
    assert doc["code"] == "CONNECT_TIMEOUT", doc
    failed = [c for c in doc["checks"] if c["status"] == "failed"]
    assert [c["name"] for c in failed] == ["challenge"], failed
    assert "2s" in failed[0]["message"]


async def test_the_total_covers_every_credential_tried(world: Any, drip: DripRegistry) -> None:
    registry, image = parse_target(f"{drip.host}/team/app:v1")
    creds = [Credential(CredentialKind.BASIC, f"secret s{i}", "u", f"p{i}-secret") for i in range(4)]
    started = time.monotonic()
    d = await check_credentials(registry, image, creds, ChainOptions(
        nameserver=world.nameserver, ca_file=str(world.ca_bundle), timeout=1.5, destinations=TEST_DESTINATIONS))
    assert time.monotonic() - started < 1.5 + 1.0
    assert d.code is Code.CONNECT_TIMEOUT


async def test_invalid_targets_become_diagnoses_not_exceptions(world: Any) -> None:
    opts = ChainOptions(nameserver=world.nameserver, ca_file=str(world.ca_bundle), timeout=2)
    for registry in ["h.test:99999", "a." + "x" * 64 + ".test", "a..b.test"]:
        d = await run_chain(Target(registry), opts)
        assert d.code is Code.INVALID_IMAGE_NAME, (registry, d)


def test_parsers_of_registry_input_validate_types() -> None:
    import base64 as b64

    from pullhealth.probes.challenge import parse_www_authenticate
    from pullhealth.probes.manifest import platform_of
    from pullhealth.probes.token import granted_actions

    def jwt(claims: object) -> str:
        body = b64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        return f"eyJhbGciOiJub25lIn0.{body}.sig"

    for access in ["pull", 42, {"type": "repository"}, None]:
        assert granted_actions(jwt({"access": access}), "team/app") is None
    weird = [{"type": "repository", "name": "team/app", "actions": "pull"},
             {"type": "repository", "name": "team/app", "actions": ["pull", 7, None]}]
    assert granted_actions(jwt({"access": weird}), "team/app") == ("pull",)
    for realm in ["https://[x", "https://h.test:99999/t", "ftp://h.test/t", "https://", "https://hé.test/t"]:
        assert parse_www_authenticate(f'Bearer realm="{realm}",service="s"') is None, realm
    assert parse_www_authenticate('Bearer realm="https://[fd00::1]:5000/token",service="s"') is not None
    assert platform_of({"platform": {"os": ["linux"], "architecture": "amd64"}}) is None
    assert platform_of({"platform": {"os": "linux", "architecture": "arm64", "variant": 8}}) == "linux/arm64"
