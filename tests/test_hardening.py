"""Issue 21's attacks, replayed against the real surfaces (the CLI, the operator's chain
with its destination policy) and the local world's servers: each must now be refused.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from pullhealth import cli
from pullhealth.chain.probechain import ChainOptions, Target, run_chain
from pullhealth.domain.codes import Code
from pullhealth.domain.reference import parse_target
from pullhealth.probes.destinations import build_policy
from support.httpfixtures import StatusServer
from support.world import TEST_ALLOW_CIDR

INTERNAL = "INTERNAL-session-answer-9c1e"
UNAUTHORIZED = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}


def _cli(world: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    rc = cli.main(["check", *args, "--nameserver", world.nameserver, "--ca-file", str(world.ca_bundle)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.out


def _evil(world: Any, realm: str) -> StatusServer:
    """An author's registry whose challenge names ``realm``."""
    return StatusServer(401, UNAUTHORIZED, {"WWW-Authenticate": f'Bearer realm="{realm}",service="evil"'},
                        cert=world.pki.issue(["evil.test"]))


@pytest.fixture()
def internal_http() -> Iterator[StatusServer]:
    """A plain-HTTP 'internal service' that hands out a session token to anyone."""
    with StatusServer(200, {"token": INTERNAL, "access_token": INTERNAL}, tls=False) as srv:
        yield srv


@pytest.fixture()
def internal_https(world: Any) -> Iterator[StatusServer]:
    """An HTTPS 'internal service' whose refusal is OCI-shaped and says something private."""
    body = {"errors": [{"code": "DENIED", "message": f"{INTERNAL}: user db-admin, vault.prod.internal"}]}
    with StatusServer(403, body, cert=world.pki.issue(["collector.test"])) as srv:
        yield srv


def test_anonymous_realm_over_plain_http_is_not_followed(
    world: Any, internal_http: StatusServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with _evil(world, f"http://collector.test:{internal_http.port}/internal/session") as evil:
        rc, out = _cli(world, monkeypatch, capsys, f"evil.test:{evil.port}/x/y:1", "--anonymous", "-o", "json")
        registry_hits = evil.hits
    doc = json.loads(out)
    assert rc == 1 and doc["code"] == "TOKEN_REALM_REFUSED", doc
    assert internal_http.hits == {}, internal_http.hits  # no GET, so no token to forward
    assert INTERNAL not in out
    # The registry saw /v2/ only: no request carried the internal answer to it.
    assert set(registry_hits) == {"/v2/"}, registry_hits


def test_realm_answers_show_status_and_code_never_the_message(
    world: Any, internal_https: StatusServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with _evil(world, f"https://collector.test:{internal_https.port}/internal/session") as evil:
        for output in ("json", "text"):
            rc, out = _cli(world, monkeypatch, capsys, f"evil.test:{evil.port}/x/y:1", "--anonymous", "-o", output)
            assert rc == 1
            assert INTERNAL not in out and "db-admin" not in out and "vault.prod" not in out, out
            assert "403" in out and "DENIED" in out, out
    assert sum(internal_https.hits.values()) >= 1


async def test_a_realm_host_outside_the_admin_allow_list_is_not_reached(
    world: Any, internal_https: StatusServer
) -> None:
    with _evil(world, f"https://collector.test:{internal_https.port}/internal/session") as evil:
        registry, image = parse_target(f"evil.test:{evil.port}/x/y:1")
        policy = build_policy(allow=[TEST_ALLOW_CIDR], hosts=["evil.test", "*.azurecr.io"])
        d = await run_chain(Target(registry, image), ChainOptions(
            nameserver=world.nameserver, ca_file=str(world.ca_bundle), timeout=3.0, destinations=policy))
    assert d.code is Code.DESTINATION_REFUSED, d.checks
    assert next(c for c in d.checks if c.status.value == "failed").name == "token"
    assert internal_https.hits == {}


# --- output: what a certificate tells of an internal host (issue 21, item 4)

INTERNAL_SANS = ["vault.prod.contoso.internal", "db-admin.corp.internal"]


def test_a_mismatched_certificate_does_not_list_internal_names(
    world: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with StatusServer(200, {}, cert=world.pki.issue(INTERNAL_SANS)) as srv:
        for output in ("json", "text"):
            rc, out = _cli(world, monkeypatch, capsys, f"internal.test:{srv.port}/x/y:1", "--anonymous", "-o", output)
            assert rc == 1
            assert "TLS_HOSTNAME_MISMATCH" in out, out
            assert "vault" not in out and "db-admin" not in out, out
            assert "another name" in out, out


def test_names_in_the_requested_host_domain_are_still_shown() -> None:
    from pullhealth.probes.net import names_shown

    sans = ("*.azurecr.io", "vault.prod.contoso.internal", "myacr.westeurope.data.azurecr.io", "10.0.0.5")
    assert names_shown(sans, "myacr.azurecr.io") == ("*.azurecr.io", "myacr.westeurope.data.azurecr.io")
    assert names_shown(sans, "evil.test") == ()  # the parent is a top-level domain: nothing
    assert names_shown(("10.0.0.5", "10.0.0.6"), "10.0.0.5") == ("10.0.0.5",)


def test_the_issuer_of_a_certificate_for_another_name_is_not_shown(
    world: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same untrusted CA: for the requested name its issuer is shown (an intercepting
    # proxy's), for another name it is not (another service's PKI).
    with StatusServer(200, {}, cert=world.pki.issue_untrusted(["internal.test"])) as ours, \
            StatusServer(200, {}, cert=world.pki.issue_untrusted(INTERNAL_SANS)) as theirs:
        _, shown = _cli(world, monkeypatch, capsys, f"internal.test:{ours.port}/x/y:1", "--anonymous", "-o", "json")
        _, hidden = _cli(world, monkeypatch, capsys, f"internal.test:{theirs.port}/x/y:1", "--anonymous", "-o",
                         "json")
    issuer = "pullhealth UNTRUSTED CA"
    assert issuer in shown, shown
    assert json.loads(shown)["code"] == json.loads(hidden)["code"] == "TLS_UNTRUSTED"
    assert issuer and issuer not in hidden, hidden
    assert "vault" not in hidden and "not shown" in hidden, hidden


async def test_plain_http_without_a_port_is_checked_on_port_80(world: Any) -> None:
    """http://host/ connects to 80: the policy must be asked about 80, not 443."""
    from pullhealth.probes.dns import Resolver
    from pullhealth.probes.http import Http
    from pullhealth.probes.net import StepError, make_ssl_context

    policy = build_policy(allow=[TEST_ALLOW_CIDR], protected=[("127.0.0.1", 80)])
    http = Http(Resolver(world.nameserver, 2.0, policy), make_ssl_context(None), 2.0)
    try:
        with pytest.raises(StepError) as err:
            await http.request("GET", "http://internal.test/token")
        assert err.value.code is Code.DESTINATION_REFUSED, err.value.message
        with pytest.raises(StepError) as err:
            await http.request("GET", "http://127.0.0.1/token")
        assert err.value.code is Code.DESTINATION_REFUSED, err.value.message
    finally:
        await http.aclose()


# --- proxy mode refuses every spelling the direct mode refuses (issue 21, item 8)

SPELLINGS = ["127.1", "2130706433", "0x7f000001", "2852039166", "0177.0.0.1", "0x7f.1", "registry.localhost",
             "localhost", "169.254.43518", "[::ffff:127.0.0.1]", "168.63.129.16", "2822734096"]


@pytest.mark.parametrize("host", SPELLINGS)
async def test_proxy_mode_sends_no_connect_for_a_refused_spelling(world: Any, host: str) -> None:
    import socket

    from pullhealth.probes.destinations import DestinationPolicy
    from pullhealth.probes.proxy import Proxy

    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(4)
    proxy.setblocking(False)
    try:
        registry, image = parse_target(f"{host}:5000/x/y:1")
        d = await run_chain(Target(registry, image), ChainOptions(
            nameserver=world.nameserver, timeout=2.0, destinations=DestinationPolicy(),
            proxy=Proxy("127.0.0.1", proxy.getsockname()[1])))
        assert d.code is Code.DESTINATION_REFUSED, d.checks
        with pytest.raises(BlockingIOError):
            proxy.accept()  # the proxy never saw a connection, so no CONNECT
    finally:
        proxy.close()


@pytest.mark.parametrize("address", ["168.63.129.16", "100.100.100.200", "fd00:ec2::23", "fd00:ec2::254",
                                     "2002:a9fe:a9fe::1", "2002:a9fe:a9fe:ffff::", "0.0.0.1"])
def test_metadata_and_host_agent_addresses_are_refused(address: str) -> None:
    from pullhealth.probes.destinations import DestinationPolicy
    from pullhealth.probes.net import StepError

    with pytest.raises(StepError) as err:
        DestinationPolicy().check_address("registry.example", address, 443)
    assert err.value.code is Code.DESTINATION_REFUSED
    # 100.64.0.0/10 (carrier-grade NAT, where some clusters' nodes live) stays allowed.
    DestinationPolicy().check_address("registry.example", "100.100.100.199", 443)


# --- limits: identity tokens cached per identity + audience (issue 21, item 9)


async def test_imds_is_asked_once_per_identity_and_audience_while_the_token_is_fresh(world: Any) -> None:
    from pullhealth.probes.identity import ARM_RESOURCE, TokenCache, managed_identity_token

    cache = TokenCache(limit=4)
    world.imds.reset_hits()
    for _ in range(5):
        token = await managed_identity_token(client_id=world.imds_client_id, endpoint=world.imds_url, cache=cache)
    assert sum(world.imds.hits.values()) == 1, world.imds.hits
    await managed_identity_token(client_id=world.imds_client_id, endpoint=world.imds_url, cache=cache,
                                 resource=ARM_RESOURCE)
    assert sum(world.imds.hits.values()) == 2  # another audience is another token
    assert token.audience == "ACR" and len(cache) == 2


async def test_a_workload_identity_token_is_reused_only_for_the_same_account(world: Any) -> None:
    from pullhealth.probes.identity import TokenCache, workload_identity_token
    from pullhealth.probes.net import StepError
    from support.world import WI_CLIENT_ID

    cache = TokenCache()
    federated = world.wi_token_file.read_text().strip()
    world.aad.reset_hits()
    for _ in range(3):
        await workload_identity_token(client_id=WI_CLIENT_ID, tenant_id=world.aad_tenant, federated_token=federated,
                                      authority=world.aad_authority, cache=cache)
    assert sum(world.aad.hits.values()) == 1, world.aad.hits
    # Another account naming the same client id: not served from the cache, and refused.
    with pytest.raises(StepError):
        await workload_identity_token(client_id=WI_CLIENT_ID, tenant_id=world.aad_tenant,
                                      federated_token=_other_subject(federated), authority=world.aad_authority,
                                      cache=cache)
    assert sum(world.aad.hits.values()) == 2


def _other_subject(token: str) -> str:
    import base64

    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "system:serviceaccount:attacker:default"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{head}.{forged}.{sig}"


def test_the_token_cache_is_bounded_and_expires_early() -> None:
    from pullhealth.probes.identity import AadToken, TokenCache

    cache = TokenCache(limit=2, margin=300)
    for i in range(3):
        cache.put(("k", str(i)), AadToken(f"t{i}", "x"), 3600)
    assert len(cache) == 2 and cache.get(("k", "0")) is None and cache.get(("k", "2")) is not None
    cache.put(("short",), AadToken("s", "x"), 0.01)  # half its life at most: gone at once
    import time

    time.sleep(0.02)
    assert cache.get(("short",)) is None
    cache.put(("unknown",), AadToken("u", "x"), None)
    assert cache.get(("unknown",)) is None
