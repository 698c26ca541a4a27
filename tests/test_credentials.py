"""Pull secrets parse like kubelet reads them, and match like kubelet's keyring."""

import base64
import json

import pytest

from pullhealth.domain.codes import Code
from pullhealth.domain.credentials import (
    CredentialKind,
    SecretProblem,
    lookup,
    parse_docker_config,
    parse_pull_secret,
)
from pullhealth.domain.reference import parse


def _config(auths: dict[str, dict[str, str]]) -> str:
    return json.dumps({"auths": auths})


def _auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def _secret(name: str, stype: str, key: str, raw: bytes) -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "type": stype,
        "data": {key: base64.b64encode(raw).decode()},
    }


def test_auth_field_and_username_password_are_both_read() -> None:
    entries = parse_docker_config(
        _config(
            {
                "a.io": _auth("alice", "pw:with:colons"),
                "b.io": {"username": "bob", "password": "pb"},
            }
        ),
        "test",
    )
    creds = {e.key: e.credential for e in entries}
    assert creds["a.io"].username == "alice" and creds["a.io"].secret == "pw:with:colons"
    assert creds["b.io"].kind is CredentialKind.BASIC


def test_identitytoken_and_acr_token_user_become_refresh_tokens() -> None:
    entries = parse_docker_config(
        _config(
            {
                "x.azurecr.io": {"identitytoken": "rt-1"},
                "y.azurecr.io": _auth("00000000-0000-0000-0000-000000000000", "rt-2"),
            }
        ),
        "test",
    )
    assert all(e.credential.kind is CredentialKind.REFRESH_TOKEN for e in entries)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"auths": {"a.io": {"auth": "!!!"}}}', "not valid base64"),
        (
            b'{"auths": {"a.io": {"auth": "' + base64.b64encode(b"nocolon") + b'"}}}',
            "user:password",
        ),
        (b'{"auths": {"a.io": {}}}', "no auth"),
        (b'{"credsStore": "desktop"}', "credential helper"),
    ],
)
def test_bad_configs_give_pull_secret_invalid_without_values(raw: bytes, why: str) -> None:
    with pytest.raises(SecretProblem, match=why) as info:
        parse_docker_config(raw, "secret ns/s")
    assert info.value.code is Code.PULL_SECRET_INVALID
    assert "nocolon" not in info.value.detail


def test_pull_secret_types_and_keys() -> None:
    good = _secret(
        "s",
        "kubernetes.io/dockerconfigjson",
        ".dockerconfigjson",
        _config({"a.io": _auth("u", "p")}).encode(),
    )
    assert parse_pull_secret(good, "ns")[0].credential.source == "secret ns/s"
    legacy = _secret(
        "l", "kubernetes.io/dockercfg", ".dockercfg", json.dumps({"a.io": _auth("u", "p")}).encode()
    )
    assert parse_pull_secret(legacy, "ns")[0].key == "a.io"
    opaque = _secret("o", "Opaque", ".dockerconfigjson", b"{}")
    with pytest.raises(SecretProblem, match="type 'Opaque'"):
        parse_pull_secret(opaque, "ns")
    wrong_key = _secret("w", "kubernetes.io/dockerconfigjson", "config.json", b"{}")
    with pytest.raises(SecretProblem, match=r"no key \.dockerconfigjson"):
        parse_pull_secret(wrong_key, "ns")
    bad_b64 = {
        "metadata": {"name": "b"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": "%%%"},
    }
    with pytest.raises(SecretProblem, match="not valid base64"):
        parse_pull_secret(bad_b64, "ns")


def _user(server: str) -> str:
    return server.replace("/", "_").replace(":", "_")


def _keys(*servers: str) -> list:  # type: ignore[type-arg]
    return parse_docker_config(_config({s: _auth(_user(s), "p") for s in servers}), "t")


@pytest.mark.parametrize(
    ("servers", "image", "expected_users"),
    [
        (["https://myacr.azurecr.io"], "myacr.azurecr.io/team/app:1", ["https___myacr.azurecr.io"]),
        (["myacr.azurecr.io/team"], "myacr.azurecr.io/team/app", ["myacr.azurecr.io_team"]),
        (["myacr.azurecr.io/other"], "myacr.azurecr.io/team/app", []),
        (["*.azurecr.io"], "myacr.azurecr.io/app", ["*.azurecr.io"]),
        (["*.azurecr.io"], "a.b.azurecr.io/app", []),
        (["reg.io:5000"], "reg.io/app", []),
        (["reg.io:5000"], "reg.io:5000/app", ["reg.io_5000"]),
        (["https://index.docker.io/v1/"], "nginx", ["https___index.docker.io_v1_"]),
        (["docker.io"], "library/nginx", ["docker.io"]),
        (["q.io", "q.io/team"], "q.io/team/app", ["q.io_team", "q.io"]),
        (["https://myacr.azurecr.io/v2/"], "myacr.azurecr.io/x", ["https___myacr.azurecr.io_v2_"]),
    ],
)
def test_keyring_matching_follows_kubelet(
    servers: list[str], image: str, expected_users: list[str]
) -> None:
    found = lookup(_keys(*servers), parse(image))
    assert [c.username for c in found] == expected_users


def test_credential_repr_and_describe_hide_the_secret() -> None:
    cred = parse_docker_config(_config({"a.io": _auth("alice", "topsecret")}), "secret ns/s")[
        0
    ].credential
    assert "topsecret" not in repr(cred)
    assert "topsecret" not in cred.describe()
    assert cred.describe() == "user alice from secret ns/s"
    assert len(cred.fingerprint) == 12 and "topsecret" not in cred.fingerprint


def test_registry_only_matching_includes_docker_hub_aliases() -> None:
    from pullhealth.domain.credentials import for_target

    entries = _keys("https://index.docker.io/v1/", "myacr.azurecr.io", "other.io/team")
    assert [c.username for c in for_target(entries, "docker.io", None)] == ["https___index.docker.io_v1_"]
    assert [c.username for c in for_target(entries, "myacr.azurecr.io", None)] == ["myacr.azurecr.io"]
    assert [c.username for c in for_target(entries, "other.io", None)] == ["other.io_team"]
