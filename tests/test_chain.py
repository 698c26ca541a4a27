"""The probe chain against real local servers: every locally producible code, for real.

Servers come from the session `world` fixture (tests/conftest.py): Debian's
docker-registry in anonymous, htpasswd and token modes, a token service following the
distribution token spec and ACR's OAuth2 endpoints, dnsmasq with a test zone, and small
HTTP servers for firewall, rate-limit and broken answers.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from pullhealth.chain.probechain import ChainOptions, Target, run_chain
from pullhealth.domain.codes import Code
from pullhealth.domain.credentials import Credential, CredentialKind
from pullhealth.domain.model import Diagnosis, StepStatus
from pullhealth.domain.reference import parse_target
from support.world import TEST_DESTINATIONS


def _opts(world: Any, **kw: Any) -> ChainOptions:
    base: dict[str, Any] = {"nameserver": world.nameserver, "ca_file": str(world.ca_bundle), "timeout": 2.0,
                            "destinations": TEST_DESTINATIONS}
    base.update(kw)
    return ChainOptions(**base)


def _basic(user_pass: tuple[str, str]) -> Credential:
    return Credential(CredentialKind.BASIC, "test", user_pass[0], user_pass[1])


async def _check(world: Any, ref: str, credential: Credential | None = None, **kw: Any) -> Diagnosis:
    registry, image = parse_target(ref)
    target = Target(registry, image, credential) if credential else Target(registry, image)
    return await run_chain(target, _opts(world, **kw))


def _statuses(d: Diagnosis) -> dict[str, str]:
    return {c.name: c.status.value for c in d.checks}


async def test_healthy_anonymous_registry(world: Any) -> None:
    d = await _check(world, f"{world.anon}/library/alpine:3.19")
    assert d.code is Code.OK, d.checks
    assert _statuses(d) == dict.fromkeys(("dns", "tcp", "tls", "challenge", "token", "manifest", "blob"), "passed")
    assert d.checks[0].message.startswith("DNS lookup to anon.test at IP 127.0.0.1")


async def test_healthy_basic_auth_registry(world: Any) -> None:
    d = await _check(world, f"{world.basic}/team/app:v1", _basic(world.basic_user))
    assert d.code is Code.OK, d.checks


async def test_a_basic_realm_is_no_destination_under_a_host_allow_list(world: Any) -> None:
    # Basic's realm is a label ("basic-realm"), not a URL: the allow-list bounds Bearer realms only.
    from pullhealth.probes.destinations import build_policy
    from support.world import TEST_ALLOW_CIDR

    policy = build_policy(allow=[TEST_ALLOW_CIDR], hosts=[world.basic.split(":")[0]])
    d = await _check(world, f"{world.basic}/team/app:v1", _basic(world.basic_user), destinations=policy)
    assert d.code is Code.OK, d.checks


async def test_healthy_token_registry_with_password(world: Any) -> None:
    d = await _check(world, f"{world.acr}/team/app:v1", _basic(world.acr_puller))
    assert d.code is Code.OK, d.checks
    token = next(c for c in d.checks if c.name == "token")
    assert "pull" in token.details["granted"]


async def test_registry_only_check_logs_in_without_image(world: Any) -> None:
    d = await _check(world, world.acr, _basic(world.acr_puller))
    assert d.code is Code.OK
    assert _statuses(d)["manifest"] == "skipped"


async def test_healthy_via_privatelink_cname(world: Any) -> None:
    d = await _check(
        world, f"{world.privatelink}/team/app:v1", _basic(world.acr_puller), expect_private_endpoint=True
    )
    assert d.code is Code.OK, d.checks
    assert "privatelink" in d.checks[0].details["cnames"]


@pytest.mark.parametrize(
    ("attr", "code"),
    [
        ("missing", Code.DNS_NXDOMAIN),
        ("leak", Code.PRIVATE_ENDPOINT_DNS),
        ("refused", Code.CONNECT_REFUSED),
        ("backlog", Code.CONNECT_TIMEOUT),
        ("silent", Code.CONNECT_TIMEOUT),
        ("untrusted", Code.TLS_UNTRUSTED),
        ("mismatch", Code.TLS_HOSTNAME_MISMATCH),
        ("plain", Code.TLS_PROTOCOL_ERROR),
        ("firewall", Code.FIREWALL_FORBIDDEN),
        ("ratelimit", Code.RATE_LIMITED),
        ("broken", Code.REGISTRY_ERROR),
        ("notregistry", Code.CHALLENGE_ERROR),
    ],
)
async def test_path_failures(world: Any, attr: str, code: Code) -> None:
    d = await _check(world, f"{getattr(world, attr)}/team/app:v1", timeout=1.0)
    assert d.code is code, d.checks
    failed = [c for c in d.checks if c.status is StepStatus.FAILED]
    assert len(failed) == 1
    after = d.checks[d.checks.index(failed[0]) + 1 :]
    assert all(c.status is StepStatus.SKIPPED for c in after)


async def test_dns_timeout(world: Any) -> None:
    d = await _check(
        world, f"{world.anon}/library/alpine:3.19", nameserver=world.blackhole_nameserver, timeout=1.0
    )
    assert d.code is Code.DNS_TIMEOUT


async def test_privatelink_leak_names_the_public_address(world: Any) -> None:
    d = await _check(world, f"{world.leak}/team/app:v1")
    assert "203.0.113.10" in d.summary
    assert "privatelink" in d.checks[0].message


async def test_expect_private_endpoint_rejects_public_address_without_cname(world: Any) -> None:
    # leak's CNAME target itself resolves straight to the public address, with no CNAME.
    host = world.leak.replace("leak.", "leak.privatelink.")
    d = await _check(world, f"{host}/team/app:v1", expect_private_endpoint=True)
    assert d.code is Code.PRIVATE_ENDPOINT_DNS


async def test_firewall_names_the_client_ip(world: Any) -> None:
    d = await _check(world, f"{world.firewall}/team/app:v1")
    assert "203.0.113.7" in d.summary


async def test_untrusted_reports_the_issuer(world: Any) -> None:
    d = await _check(world, f"{world.untrusted}/team/app:v1")
    assert "issuer" in d.summary and "<issuer>" not in d.summary


async def test_auth_required_when_anonymous_on_token_registry(world: Any) -> None:
    d = await _check(world, f"{world.acr}/team/app:v1")
    assert d.code is Code.AUTH_REQUIRED, d.checks


async def test_auth_required_when_anonymous_on_basic_registry(world: Any) -> None:
    d = await _check(world, f"{world.basic}/team/app:v1")
    assert d.code is Code.AUTH_REQUIRED


async def test_wrong_password_token_registry(world: Any) -> None:
    d = await _check(world, f"{world.acr}/team/app:v1", _basic((world.acr_puller[0], "wrong")))
    assert d.code is Code.CREDENTIALS_REJECTED


async def test_wrong_password_basic_registry(world: Any) -> None:
    d = await _check(world, f"{world.basic}/team/app:v1", _basic((world.basic_user[0], "wrong")))
    assert d.code is Code.CREDENTIALS_REJECTED


async def test_token_without_pull_scope(world: Any) -> None:
    d = await _check(world, f"{world.acr}/team/app:v1", _basic(world.acr_nopull))
    assert d.code is Code.PERMISSION_DENIED, d.checks


@pytest.mark.parametrize(
    ("ref", "code"),
    [
        ("{anon}/nosuch/repo:v1", Code.REPOSITORY_NOT_FOUND),
        ("{anon}/team/app:nosuchtag", Code.TAG_NOT_FOUND),
        ("{anon}/team/app@sha256:" + "0" * 64, Code.TAG_NOT_FOUND),
        ("{anon}/multi/arm:1", Code.PLATFORM_NOT_FOUND),
    ],
)
async def test_content_failures(world: Any, ref: str, code: Code) -> None:
    d = await _check(world, ref.format(anon=world.anon))
    assert d.code is code, d.checks


async def test_platform_found_when_asked_for_arm64(world: Any) -> None:
    d = await _check(world, f"{world.anon}/multi/arm:1", platform="linux/arm64")
    assert d.code is Code.OK, d.checks


async def test_an_index_read_once_is_not_fetched_again(world: Any) -> None:
    # Docker Hub counts a manifest GET as a pull, a HEAD not: a known index costs a HEAD.
    from pullhealth.probes.manifest import INDEXES

    repo = f"multi/once-{uuid.uuid4().hex[:8]}"
    digest = world.registries["anon"].push_image(repo, "1", platforms=["linux/arm64"])
    assert digest not in INDEXES
    runs = (("linux/arm64", Code.OK, 2), ("linux/arm64", Code.OK, 1), ("linux/amd64", Code.PLATFORM_NOT_FOUND, 1))
    for platform, code, manifest_requests in runs:
        steps: list[str] = []
        d = await _check(world, f"{world.anon}/{repo}:1", platform=platform,
                         on_request=lambda _registry, step, steps=steps: steps.append(step))
        assert d.code is code, d.checks
        assert steps.count("manifest") == manifest_requests, steps  # HEAD + GET, then HEAD alone
    assert digest in INDEXES


# --- Azure identities: IMDS (managed identity) and workload identity, then ACR exchange.


async def test_managed_identity_pulls_through_acr_exchange(world: Any) -> None:
    from pullhealth.probes.identity import managed_identity_token

    async def source(resource: str) -> Any:
        return await managed_identity_token(client_id=world.imds_client_id, endpoint=world.imds_url,
                                            resource=resource)

    registry, image = parse_target(f"{world.myacr}/team/app:v1")
    d = await run_chain(Target(registry, image, identity=source), _opts(world))
    assert d.code is Code.OK, d.checks
    assert _statuses(d)["identity"] == "passed"
    assert "exchange" in next(c for c in d.checks if c.name == "token").details["flow"]


async def test_managed_identity_unknown_client_is_identity_unavailable(world: Any) -> None:
    from pullhealth.probes.identity import managed_identity_token

    async def source(resource: str) -> Any:
        return await managed_identity_token(client_id="99999999-0000-4000-8000-000000000000",
                                            endpoint=world.imds_url, resource=resource)

    registry, image = parse_target(f"{world.myacr}/team/app:v1")
    d = await run_chain(Target(registry, image, identity=source), _opts(world))
    assert d.code is Code.IDENTITY_UNAVAILABLE
    assert "Identity not found" in d.summary


async def test_identity_without_acrpull_is_denied(world: Any) -> None:
    from pullhealth.probes.identity import managed_identity_token

    async def source(resource: str) -> Any:
        return await managed_identity_token(client_id=world.imds_nogrant_client_id, endpoint=world.imds_url,
                                            resource=resource)

    registry, image = parse_target(f"{world.myacr}/team/app:v1")
    d = await run_chain(Target(registry, image, identity=source), _opts(world))
    assert d.code in (Code.PERMISSION_DENIED, Code.TOKEN_EXCHANGE_DENIED), d.checks


async def test_revoked_aad_token_is_token_exchange_denied(world: Any) -> None:
    cred = Credential(CredentialKind.AAD, "test", None, "not-a-token-the-exchange-knows")
    d = await _check(world, f"{world.myacr}/team/app:v1", cred)
    assert d.code is Code.TOKEN_EXCHANGE_DENIED


async def test_workload_identity_pulls(world: Any) -> None:
    from pathlib import Path

    from pullhealth.probes.identity import workload_identity_token

    federated = Path(world.wi_token_file).read_text().strip()

    async def source(resource: str) -> Any:
        return await workload_identity_token(client_id=world.wi_client_id, tenant_id=world.aad_tenant,
                                             federated_token=federated, authority=world.aad_authority,
                                             resource=resource)

    registry, image = parse_target(f"{world.myacr}/team/app:v1")
    d = await run_chain(Target(registry, image, identity=source), _opts(world))
    assert d.code is Code.OK, d.checks


async def test_workload_identity_wrong_client_is_identity_unavailable(world: Any) -> None:
    from pathlib import Path

    from pullhealth.probes.identity import workload_identity_token

    federated = Path(world.wi_token_file).read_text().strip()

    async def source(resource: str) -> Any:
        return await workload_identity_token(client_id="44444444-0000-4000-8000-000000000000",
                                             tenant_id=world.aad_tenant, federated_token=federated,
                                             authority=world.aad_authority, resource=resource)

    registry, image = parse_target(f"{world.myacr}/team/app:v1")
    d = await run_chain(Target(registry, image, identity=source), _opts(world))
    assert d.code is Code.IDENTITY_UNAVAILABLE
    assert "AADSTS" in d.summary or "AAD" in d.summary


async def test_refresh_token_credential(world: Any) -> None:
    # An ACR refresh token (docker config identitytoken) obtained through the exchange.
    from support.net import make_client

    with make_client(world.ca_bundle, nameserver=world.nameserver) as client:
        reply = client.post(f"https://{world.token}/oauth2/exchange",
                            data={"grant_type": "access_token", "service": world.acr_service,
                                  "access_token": world.aad_token})
        assert reply.status_code == 200, reply.text
        refresh = reply.json()["refresh_token"]
    cred = Credential(CredentialKind.REFRESH_TOKEN, "test", None, refresh)
    d = await _check(world, f"{world.myacr}/team/app:v1", cred)
    assert d.code is Code.OK, d.checks


async def test_password_falls_back_to_oauth2_post_form_when_get_is_refused(world: Any) -> None:
    world.tokenserver.allow_get = False
    try:
        world.tokenserver.reset_requests()
        d = await _check(world, f"{world.acr}/team/app:v1", _basic(world.acr_puller))
        assert d.code is Code.OK, d.checks
        assert "POST" in next(c for c in d.checks if c.name == "token").details["flow"]
        wrong = await _check(world, f"{world.acr}/team/app:v1", _basic((world.acr_puller[0], "nope")))
        assert wrong.code is Code.CREDENTIALS_REJECTED
    finally:
        world.tokenserver.allow_get = True


async def test_data_endpoint_is_resolved_and_judged_too(world: Any) -> None:
    ok = await _check(world, f"{world.privatelink}/team/app:v1", _basic(world.acr_puller),
                      data_endpoint="pe.privatelink.azurecr.io", expect_private_endpoint=True)
    assert ok.code is Code.OK, ok.checks
    assert "pe.privatelink.azurecr.io" in ok.checks[0].details["dataEndpoint"]
    leak = await _check(world, f"{world.privatelink}/team/app:v1", _basic(world.acr_puller),
                        data_endpoint="leak.azurecr.io", expect_private_endpoint=True)
    assert leak.code is Code.PRIVATE_ENDPOINT_DNS and "data endpoint" in leak.checks[0].message
    # Behind a private endpoint (pe.azurecr.io CNAMEs to privatelink), a data endpoint
    # missing from the zone is the guide's private-endpoint case (tests/test_acr_cases.py).
    missing = await _check(world, f"{world.privatelink}/team/app:v1", data_endpoint="nosuch.azurecr.io")
    assert missing.code is Code.PRIVATE_ENDPOINT_DNS and "nosuch.azurecr.io" in missing.summary
    assert missing.facts["case"] == "data-endpoint-missing"


async def test_credentials_never_appear_in_results(world: Any) -> None:
    for cred in (_basic(world.acr_puller), _basic((world.acr_puller[0], "wrong-secret-xyz")),
                 _basic(world.basic_user)):
        for ref in (f"{world.acr}/team/app:v1", f"{world.basic}/team/app:v1"):
            d = await _check(world, ref, cred)
            dumped = d.model_dump_json()
            assert cred.secret is not None and cred.secret not in dumped
            assert "Bearer " not in dumped and "Basic " not in dumped


async def test_each_matching_credential_is_tried_like_kubelet(world: Any) -> None:
    from pullhealth.chain.probechain import check_credentials

    registry, image = parse_target(f"{world.acr}/team/app:v1")
    stale = _basic((world.acr_puller[0], "stale"))
    good = _basic(world.acr_puller)
    ok = await check_credentials(registry, image, [stale, good], _opts(world))
    assert ok.code is Code.OK
    bad = await check_credentials(registry, image, [stale, _basic(world.acr_nopull)], _opts(world))
    assert bad.code is Code.CREDENTIALS_REJECTED  # the first credential's failure is reported
    none = await check_credentials(registry, image, [], _opts(world))
    assert none.code is Code.PULL_SECRET_NO_MATCH
    public = await check_credentials(registry, parse_target(f"{world.acr}/public/hello:1")[1], [], _opts(world))
    assert public.code is Code.OK


async def test_resolver_refusing_aaaa_but_answering_a_does_not_fail_the_chain(world: Any) -> None:
    # dnsmasq without an upstream answers the A record it has and REFUSES the AAAA query
    # (corporate DNS does the same with SERVFAIL): the family that answers decides.
    from support.dns import Dnsmasq

    host = world.anon.split(":")[0]
    with Dnsmasq({host: "127.0.0.1"}, local_domains=()) as partial:
        d = await _check(world, f"{world.anon}/library/alpine:3.19", nameserver=partial.nameserver)
        assert d.code is Code.OK, d.checks
        assert d.checks[0].details["addresses"] == "127.0.0.1"
        # no family answers: the lookup fails and names the server's answer
        nothing = await _check(world, "nowhere.example/team/app:v1", nameserver=partial.nameserver)
        assert nothing.code is Code.DNS_TIMEOUT
        assert "A: answered REFUSED; AAAA: answered REFUSED" in nothing.checks[0].message
        assert "REFUSED" in nothing.summary


async def test_manifest_unknown_on_a_registry_without_tag_list_is_tag_not_found(world: Any) -> None:
    # Some registries (pull-through caches, artifact managers) have no tag-list endpoint:
    # GET tags/list is the web server's plain-text 404, which says nothing about the
    # repository. The registry's own MANIFEST_UNKNOWN code decides.
    from support.httpfixtures import REGISTRY_HEADERS, RoutedServer

    unknown = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
    name_unknown = {"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry"}]}
    routes = {
        "/v2/": (200, {}, REGISTRY_HEADERS),
        "/v2/team/app/manifests/nosuchtag": (404, unknown, REGISTRY_HEADERS),
        "/v2/team/gone/manifests/v1": (404, unknown, REGISTRY_HEADERS),
        "/v2/team/gone/tags/list": (404, name_unknown, REGISTRY_HEADERS),
    }
    with RoutedServer(routes, cert=world.pki.issue(["127.0.0.1"])) as server:
        d = await _check(world, f"127.0.0.1:{server.port}/team/app:nosuchtag")
        assert d.code is Code.TAG_NOT_FOUND, d.checks
        assert server.hits.get("/v2/team/app/tags/list") == 1
        # a tag list that answers NAME_UNKNOWN still says the repository is missing
        gone = await _check(world, f"127.0.0.1:{server.port}/team/gone:v1")
        assert gone.code is Code.REPOSITORY_NOT_FOUND, gone.checks


async def test_reset_during_the_handshake_names_a_middlebox(world: Any) -> None:
    from support.httpfixtures import ResetOnHelloServer

    with ResetOnHelloServer() as server:
        d = await _check(world, f"127.0.0.1:{server.port}/team/app:v1")
    assert d.code is Code.FIREWALL_FORBIDDEN, d.checks
    assert _statuses(d)["tcp"] == "passed" and _statuses(d)["tls"] == "failed"
    assert "reset during the TLS handshake" in d.summary and "TLS-inspecting proxy" in d.summary
