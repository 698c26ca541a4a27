"""The trust boundary's pure rules, and the chain honouring them against real local servers.

The end-to-end attacks (operator with the chart's RBAC) are in e2e/test_security.py.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from pullhealth.chain.probechain import ChainOptions, Target, run_chain
from pullhealth.chain.trust import TrustPolicy, is_acr
from pullhealth.domain.codes import Code
from pullhealth.domain.credentials import Credential, CredentialKind
from pullhealth.domain.reference import parse_target
from pullhealth.probes.destinations import DestinationPolicy, build_policy
from pullhealth.probes.identity import ACR_RESOURCE, ARM_RESOURCE, managed_identity_token
from pullhealth.probes.net import StepError
from pullhealth.probes.token import check_realm, realm_elsewhere
from support.world import TEST_DESTINATIONS

DEFAULT = DestinationPolicy()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254",
    "0.0.0.0", "::", "224.0.0.1", "ff02::1", "240.0.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
])
def test_default_policy_refuses_special_addresses(address: str) -> None:
    with pytest.raises(StepError) as err:
        DEFAULT.check_address("r.example", address, 443)
    assert err.value.code is Code.DESTINATION_REFUSED
    assert err.value.message.startswith("r.example resolves to ") and "policy refuses" in err.value.message


@pytest.mark.parametrize("address", ["10.1.2.3", "172.16.0.10", "192.168.1.1", "10.0.0.10", "fd12:3456::1",
                                     "20.50.60.70", "2603:1030::5"])
def test_private_endpoints_cluster_ips_and_public_addresses_are_allowed(address: str) -> None:
    DEFAULT.check_address("myacr.azurecr.io", address, 443)


def test_admin_deny_and_allow_cidrs() -> None:
    policy = build_policy(allow=["169.254.10.0/24"], deny=["10.9.0.0/16"])
    policy.check_address("r", "169.254.10.5", 443)
    with pytest.raises(StepError):
        policy.check_address("r", "169.254.169.254", 80)
    with pytest.raises(StepError) as err:
        policy.check_address("r", "10.9.1.1", 443)
    assert "denied by the admin" in err.value.message
    # A denial wins over an allow.
    both = build_policy(allow=["10.0.0.0/8"], deny=["10.9.0.0/16"])
    with pytest.raises(StepError):
        both.check_address("r", "10.9.1.1", 443)
    with pytest.raises(ValueError, match="not a CIDR"):
        build_policy(allow=["10.0.0.0/33"])


def test_api_server_is_refused_even_inside_an_allowed_range() -> None:
    policy = build_policy(allow=["127.0.0.1/32"], protected=[("127.0.0.1", 6443), ("10.0.0.1", None)])
    policy.check_address("registry.test", "127.0.0.1", 5000)  # the test world's registry
    for address, port in (("127.0.0.1", 6443), ("10.0.0.1", 443), ("10.0.0.1", 80)):
        with pytest.raises(StepError) as err:
            policy.check_address("x", address, port)
        assert "Kubernetes API server" in err.value.message


def test_local_names_are_the_node_loopback_whatever_is_allowed() -> None:
    for policy in (DEFAULT, TEST_DESTINATIONS):
        for host in ("localhost", "LOCALHOST.", "ip6-localhost"):
            with pytest.raises(StepError) as err:
                policy.check_peer_name(host, 5000)
            assert "node's own loopback" in err.value.message
    DestinationPolicy.unrestricted().check_peer_name("localhost", 5000)


def test_registry_host_allow_list() -> None:
    policy = build_policy(hosts=["*.azurecr.io", "registry-1.docker.io"])
    policy.check_host("myacr.azurecr.io")
    policy.check_host("registry-1.docker.io")
    with pytest.raises(StepError) as err:
        policy.check_host("evil.example")
    assert err.value.code is Code.DESTINATION_REFUSED


def test_unrestricted_policy_is_for_the_cli_only() -> None:
    DestinationPolicy.unrestricted().check_address("x", "169.254.169.254", 80)
    assert ChainOptions().destinations == DestinationPolicy()  # the default is the safe one


AAD = Credential(CredentialKind.AAD, "the identity")
BASIC = Credential(CredentialKind.BASIC, "secret ns/s", "u", "p")


def test_realm_rules() -> None:
    # Docker Hub: another host over HTTPS is fine for a pull secret, and named.
    check_realm("https://auth.docker.io/token", "registry-1.docker.io", BASIC)
    assert realm_elsewhere("https://auth.docker.io/token", "registry-1.docker.io") == "auth.docker.io"
    # ACR: the registry's own host (any port) for an Azure AD token.
    check_realm("https://myacr.azurecr.io/oauth2/token", "myacr.azurecr.io", AAD)
    check_realm("https://myacr.azurecr.io:443/oauth2/token", "myacr.azurecr.io", AAD)
    check_realm("https://myacr.azurecr.io:8443/oauth2/token", "myacr.azurecr.io:5000", AAD)
    assert realm_elsewhere("https://MyAcr.azurecr.io/oauth2/token", "myacr.azurecr.io") is None
    for realm, registry, credential in (
        ("https://collector.example/token", "myacr.azurecr.io", AAD),
        ("https://myacr.azurecr.io.evil.example/oauth2/token", "myacr.azurecr.io", AAD),
        ("http://myacr.azurecr.io/oauth2/token", "myacr.azurecr.io", AAD),
        ("http://auth.example/token", "registry.example", BASIC),
        # A registry on 443 (every ACR): a realm on another port is another service.
        ("https://myacr.azurecr.io:8443/oauth2/token", "myacr.azurecr.io", AAD),
        ("https://myacr.azurecr.io:8443/oauth2/token", "myacr.azurecr.io:443", AAD),
        # Anonymous follows HTTPS realms only too: a token from a plain-HTTP realm is not asked.
        ("http://auth.example/token", "registry.example", Credential(CredentialKind.ANONYMOUS, "anonymous")),
    ):
        with pytest.raises(StepError) as err:
            check_realm(realm, registry, credential)
        assert err.value.code is Code.TOKEN_REALM_REFUSED, realm
    check_realm("https://auth.example/token", "registry.example", Credential(CredentialKind.ANONYMOUS, "anonymous"))


def test_trust_policy_identities() -> None:
    trust = TrustPolicy(kubelet_client_id="k-id", managed_identity_client_ids=frozenset({"A-ID"}))
    assert trust.managed_identity_allowed(None) and trust.managed_identity_allowed("k-id")
    assert trust.managed_identity_allowed("a-id")
    assert not trust.managed_identity_allowed("other")
    assert trust.audiences == (ACR_RESOURCE,)
    assert TrustPolicy(arm_audience=True).audiences == (ACR_RESOURCE, ARM_RESOURCE)
    assert is_acr("myacr.azurecr.io:443", trust.acr_domains)
    assert not is_acr("azurecr.io.evil.example", trust.acr_domains)
    assert not is_acr("evil.test", trust.acr_domains)


# --- the chain against the local world


def _options(world: Any, **kw: Any) -> ChainOptions:
    return ChainOptions(nameserver=world.nameserver, ca_file=str(world.ca_bundle), timeout=3.0,
                        destinations=TEST_DESTINATIONS, **kw)


async def test_default_policy_sends_no_packet_to_loopback(world: Any) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        registry, image = parse_target(f"refused.test:{port}/library/alpine:3.19")
        d = await run_chain(Target(registry, image), ChainOptions(nameserver=world.nameserver, timeout=3.0))
        assert d.code is Code.DESTINATION_REFUSED, d.checks
        failed = next(c for c in d.checks if c.status.value == "failed")
        assert failed.name == "tcp" and "loopback" in failed.message
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
        # The same address, allowed: the connection is made.
        allowed = await run_chain(Target(registry, image), _options(world))
        assert allowed.code is not Code.DESTINATION_REFUSED
        listener.accept()[0].close()
    finally:
        listener.close()


async def test_non_registry_bodies_are_never_echoed(world: Any) -> None:
    registry, image = parse_target(f"{world.notregistry}/team/app:v1")
    d = await run_chain(Target(registry, image), _options(world))
    assert d.code is Code.CHALLENGE_ERROR
    assert "page not found" not in d.model_dump_json()


def _identity(world: Any) -> Any:
    async def source(resource: str) -> Any:
        return await managed_identity_token(client_id=world.imds_client_id, endpoint=world.imds_url,
                                            resource=resource)

    return source


async def test_acr_audience_first_and_a_refused_arm_audience_is_named(world: Any) -> None:
    registry, image = parse_target(f"{world.myacr}/team/app:v1")
    ok = await run_chain(Target(registry, image, identity=_identity(world)), _options(world))
    assert ok.code is Code.OK, ok.checks
    assert "ACR audience" in next(c for c in ok.checks if c.name == "identity").message
    world.tokenserver.arm_audience_enabled = False
    try:
        acr_only = await run_chain(Target(registry, image, identity=_identity(world)), _options(world))
        assert acr_only.code is Code.OK, acr_only.checks
        both = await run_chain(
            Target(registry, image, identity=_identity(world), audiences=(ACR_RESOURCE, ARM_RESOURCE)),
            _options(world),
        )
    finally:
        world.tokenserver.arm_audience_enabled = True
    assert both.code is Code.AAD_AUDIENCE_REJECTED, both.checks
    assert "ARM" in both.summary and "authentication-as-arm" in " ".join(both.remediation)


async def test_identity_token_is_not_asked_for_a_realm_on_another_host(world: Any) -> None:
    asked: list[str] = []

    async def source(resource: str) -> Any:
        asked.append(resource)
        return await _identity(world)(resource)

    # acr.test's realm is on myacr.azurecr.io: fine for a password, not for an identity.
    registry, image = parse_target(f"{world.acr}/team/app:v1")
    d = await run_chain(Target(registry, image, identity=source), _options(world))
    assert d.code is Code.TOKEN_REALM_REFUSED, d.checks
    assert asked == []
    ok = await run_chain(Target(registry, image, Credential(CredentialKind.BASIC, "t", *world.acr_puller)),
                         _options(world))
    assert ok.code is Code.OK, ok.checks
    assert "at the token service myacr.azurecr.io" in next(c for c in ok.checks if c.name == "token").message
