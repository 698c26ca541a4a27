"""The data path: a ranged GET of one small blob through the registry's redirect.

Real parts: Debian's docker-registry with distribution's ``redirect`` storage middleware
(blob GETs answered with a 307 to another host, as ACR answers with its data endpoint), and
a small HTTPS blob store serving the registry's storage directory with ``Range`` (real
blob storage cannot run here). The login server works in every case; only the data host
differs: healthy, nothing listening, not in DNS, an untrusted certificate, a storage
firewall's 403, an address or name the destination policy refuses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pullhealth.chain.probechain import ChainOptions, Target, run_chain, run_network_path
from pullhealth.domain.codes import Code
from pullhealth.domain.credentials import Credential, CredentialKind
from pullhealth.domain.model import Diagnosis, StepStatus
from pullhealth.domain.reference import parse_target
from pullhealth.probes.destinations import build_policy
from support.httpfixtures import REGISTRY_HEADERS, RoutedServer, StatusServer, untrusted_tls_server
from support.registry import Registry
from support.world import TEST_ALLOW_CIDR, TEST_DESTINATIONS
from test_cli import check as cli_check

# What an Azure Storage account's firewall answers (its documented error code).
STORAGE_403 = (
    '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationFailure</Code><Message>This request '
    "is not authorized to perform this operation.</Message></Error>"
)


def _opts(world: Any, **kw: Any) -> ChainOptions:
    base: dict[str, Any] = {"nameserver": world.nameserver, "ca_file": str(world.ca_bundle), "timeout": 5.0,
                            "destinations": TEST_DESTINATIONS}
    base.update(kw)
    return ChainOptions(**base)


async def _check(world: Any, ref: str, credential: Credential | None = None, **kw: Any) -> Diagnosis:
    registry, image = parse_target(ref)
    target = Target(registry, image, credential) if credential else Target(registry, image)
    return await run_chain(target, _opts(world, **kw))


def _dora(world: Any) -> Credential:
    return Credential(CredentialKind.BASIC, "test", *world.data_user)


def _step(d: Diagnosis, name: str) -> Any:
    return next(c for c in d.checks if c.name == name)


async def test_blob_through_the_redirect_is_ok_and_names_the_data_host(world: Any) -> None:
    world.blobs.record("-", "-", {})  # a marker: requests after it are this test's
    mark = len(world.blobs.requests)
    d = await _check(world, f"{world.datapath}/team/app:v1", _dora(world))
    assert d.code is Code.OK, d.checks
    blob = _step(d, "blob")
    assert blob.status is StepStatus.PASSED
    assert blob.details["dataHost"] == world.data_host
    assert blob.details["status"] == "206"  # the Range was honoured: one KiB at most, never the blob
    assert f"from the data endpoint {world.data_host}" in blob.message
    # The data host got the ranged GET, and never the registry's credential.
    sent = world.blobs.requests[mark:]
    assert sent and all(method == "GET" for method, _, _ in sent)
    for _, path, headers in sent:
        assert path.startswith("/docker/registry/v2/blobs/sha256/")
        assert headers.get("Range") == "bytes=0-1023"
        assert not any(k.lower() == "authorization" for k in headers), headers
        assert world.data_user[1] not in str(headers)


async def test_index_fetches_the_platforms_config_blob(world: Any) -> None:
    d = await _check(world, f"{world.datapath}/multi/amd:1", _dora(world))
    assert d.code is Code.OK, d.checks
    assert _step(d, "blob").details["dataHost"] == world.data_host


async def test_a_registry_serving_blobs_itself_is_ok(world: Any) -> None:
    d = await _check(world, f"{world.anon}/library/alpine:3.19")
    assert d.code is Code.OK, d.checks
    blob = _step(d, "blob")
    assert blob.status is StepStatus.PASSED and "dataHost" not in blob.details
    assert "from the registry itself (no redirect)" in blob.message


async def test_acr_data_endpoint_refused_while_the_login_server_works(world: Any) -> None:
    d = await _check(world, f"{world.datablocked}/team/app:v1")
    assert d.code is Code.DATA_ENDPOINT_UNREACHABLE, d.checks
    assert _step(d, "manifest").status is StepStatus.PASSED
    blob = _step(d, "blob")
    assert blob.status is StepStatus.FAILED and blob.details["data_step"] == "tcp"
    assert d.facts["data_host"] == world.blocked_data_host
    assert d.facts["data_code"] == "CONNECT_REFUSED"
    assert world.blocked_data_host in d.summary and "at the tcp step" in d.summary
    steps = " ".join(d.remediation)
    assert "<registry>.<region>.data.azurecr.io" in steps and world.blocked_data_host in steps
    assert "az acr show-endpoints" in steps and "privatelink.azurecr.io" in steps


async def test_another_registry_gets_generic_remediation(world: Any) -> None:
    port = world.datablocked.rsplit(":", 1)[1]
    d = await _check(world, f"datablocked.test:{port}/team/app:v1")
    assert d.code is Code.DATA_ENDPOINT_UNREACHABLE, d.checks
    steps = " ".join(d.remediation)
    assert "az " not in steps and "azurecr" not in steps.replace(world.blocked_data_host, "")
    assert "egress rules" in steps and world.blocked_data_host in steps


def test_cli_names_the_data_endpoint(world: Any) -> None:
    rc, doc, out = cli_check(world, f"{world.datablocked}/team/app:v1")
    assert rc == 1 and doc["code"] == "DATA_ENDPOINT_UNREACHABLE", doc
    assert [c["name"] for c in doc["checks"]][-2:] == ["manifest", "blob"]
    assert world.blocked_data_host in doc["summary"]
    user, password = world.data_user
    rc, doc, out = cli_check(world, f"{world.datapath}/team/app:v1", "--username", user, "--password-stdin",
                             stdin=password + "\n")
    assert rc == 0 and doc["checks"][-1]["name"] == "blob", doc
    assert password not in out


@contextlib.contextmanager
def _redirecting(world: Any, tmp: Path, base: str) -> Iterator[str]:
    """A registry on data.test (127.0.0.1) whose blob GETs redirect to ``base``."""
    with Registry("anonymous", world.pki, ["data.test"], workdir=tmp, redirect=base) as reg:
        reg.push_image("team/app", "v1")
        yield f"data.test:{reg.port}/team/app:v1"


async def test_data_host_not_in_dns_is_the_dns_step(world: Any, tmp_path: Path) -> None:
    with _redirecting(world, tmp_path, "https://nosuch.westeurope.data.azurecr.io") as ref:
        d = await _check(world, ref)
    assert d.code is Code.DATA_ENDPOINT_UNREACHABLE, d.checks
    assert d.facts["data_step"] == "dns" and d.facts["data_code"] == "DNS_NXDOMAIN"
    assert d.facts["data_host"] == "nosuch.westeurope.data.azurecr.io"


async def test_untrusted_certificate_on_the_data_host_is_the_tls_step(world: Any, tmp_path: Path) -> None:
    with untrusted_tls_server(world.pki, ["blobs.test"]) as srv, \
            _redirecting(world, tmp_path, f"https://blobs.test:{srv.port}") as ref:
        d = await _check(world, ref)
    assert d.code is Code.DATA_ENDPOINT_UNREACHABLE, d.checks
    assert d.facts["data_step"] == "tls" and d.facts["data_code"] == "TLS_UNTRUSTED"


async def test_storage_firewall_403_is_the_http_step(world: Any, tmp_path: Path) -> None:
    with StatusServer(403, STORAGE_403, content_type="application/xml",
                      cert=world.pki.issue(["blobs.test"])) as srv, \
            _redirecting(world, tmp_path, f"https://blobs.test:{srv.port}") as ref:
        d = await _check(world, ref)
    assert d.code is Code.DATA_ENDPOINT_UNREACHABLE, d.checks
    assert d.facts["data_step"] == "http"
    assert "HTTP 403" in d.summary and "storage firewall" in d.summary
    assert "AuthorizationFailure" not in d.summary  # the data host's body is never echoed


@pytest.mark.parametrize(("base", "why"), [
    ("https://127.0.0.2:9", "127.0.0.2"),  # outside the tests' allowed 127.0.0.1/32
    ("https://localhost:9", "loopback"),
    ("https://169.254.169.254", "link-local"),
    ("https://internal2.test:9", "127.0.0.2"),  # a name resolving to a refused address
])
async def test_redirect_to_a_refused_destination_is_refused(world: Any, tmp_path: Path, base: str,
                                                            why: str) -> None:
    with _redirecting(world, tmp_path, base) as ref:
        d = await _check(world, ref)
    assert d.code is Code.DESTINATION_REFUSED, d.checks
    blob = _step(d, "blob")
    assert blob.status is StepStatus.FAILED and "the blob redirect's host" in blob.message
    assert why in blob.message or why in str(blob.details), blob


async def test_redirect_outside_the_admins_host_allow_list_is_refused(world: Any) -> None:
    # The admin allows the login server only: its data endpoint is refused before any connect,
    # as a token realm on another host is.
    policy = build_policy(allow=[TEST_ALLOW_CIDR], hosts=["dfw.azurecr.io"])
    d = await _check(world, f"{world.datablocked}/team/app:v1", destinations=policy)
    assert d.code is Code.DESTINATION_REFUSED, [(c.name, c.message) for c in d.checks]
    assert d.checks[-1].name == "blob" and "registry host allow-list" in d.checks[-1].message
    assert d.facts["data_host"] == world.blocked_data_host


async def test_data_path_off(world: Any) -> None:
    d = await _check(world, f"{world.datablocked}/team/app:v1", data_path=False)
    assert d.code is Code.OK, d.checks
    assert "blob" not in {c.name for c in d.checks}


async def test_a_hostile_redirect_leaks_nothing(world: Any) -> None:
    """A registry whose redirect carries user info, a signature and a fragment: the data host
    gets neither the registry's credential nor the URL's user info, and no output shows the
    signature or the password."""
    digest = "sha256:" + "a" * 64
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": 2},
                "layers": []}
    headers = {**REGISTRY_HEADERS, "Docker-Content-Digest": "sha256:" + "b" * 64,
               "Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    location = f"https://mallory:url-pass-123@{world.data_host}/stolen?sig=SIGNATURE-0123456789#frag"
    routes = {
        "/v2/": (200, {}, REGISTRY_HEADERS),
        "/manifests/v1": (200, manifest, headers),
        "/manifests/sha256:" + "b" * 64: (200, manifest, headers),
        f"/blobs/{digest}": (307, b"", {"Location": location}),
    }
    mark = len(world.blobs.requests)
    with RoutedServer(routes, cert=world.pki.issue(["127.0.0.1"])) as srv:
        d = await _check(world, f"127.0.0.1:{srv.port}/team/app:v1",
                         Credential(CredentialKind.BASIC, "test", "alice", "registry-pass-456"))
    assert d.code is Code.REGISTRY_ERROR, [(c.name, c.message) for c in d.checks]  # the data host's 404
    assert d.facts["data_host"] == world.data_host
    shown = d.model_dump_json()
    for secret in ("SIGNATURE-0123456789", "url-pass-123", "registry-pass-456", "mallory"):
        assert secret not in shown, secret
    sent = world.blobs.requests[mark:]
    assert [path for _, path, _ in sent] == ["/stolen"]
    assert not any(k.lower() == "authorization" for k in sent[0][2]), sent


@pytest.mark.parametrize(
    ("attr", "code", "step"),
    [
        ("data_host", Code.OK, ""),
        ("refused", Code.CONNECT_REFUSED, "tcp"),
        ("silent", Code.CONNECT_TIMEOUT, "tls"),
        ("untrusted", Code.TLS_UNTRUSTED, "tls"),
        ("missing", Code.DNS_NXDOMAIN, "dns"),
    ],
)
async def test_the_network_path_alone_has_the_chains_steps_and_deadline(
    world: Any, attr: str, code: Code, step: str
) -> None:
    # The node agent's check of a data host: dns, tcp and tls, no HTTP request.
    d = await run_network_path(getattr(world, attr), _opts(world, timeout=1.0))
    assert d.code is code, d.checks
    assert [c.name for c in d.checks] == ["dns", "tcp", "tls"][: len(d.checks)]
    failed = [c.name for c in d.checks if c.status is StepStatus.FAILED]
    assert failed == ([step] if step else [])


async def test_the_network_path_refuses_what_the_policy_refuses(world: Any) -> None:
    d = await run_network_path(world.anon, _opts(world, destinations=build_policy()))
    # Refused once resolved (before any connection): no tls step ran.
    assert d.code is Code.DESTINATION_REFUSED and [c.name for c in d.checks] == ["dns", "tcp"]
    assert d.checks[-1].status is StepStatus.FAILED
