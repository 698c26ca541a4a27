"""The ACR troubleshooting guide's cases, each against fixtures that answer as ACR does.

Every case decided from evidence: the token service's 401 body and the JWT ``access``
claim (tests/support/tokenserver.py), the firewall's 403 naming the client IP
(httpfixtures.acr_firewall_body), dnsmasq's answer for a data endpoint, IMDS's answer
(support/azure.py), and one anonymous token request after credentials were rejected.
docs/acr-guide.md (domain/acrguide.py) names these tests per case.
"""

from __future__ import annotations

from typing import Any

from pullhealth.chain.probechain import ChainOptions, Target, check_credentials, run_chain
from pullhealth.domain.codes import Code
from pullhealth.domain.credentials import Credential, CredentialKind
from pullhealth.domain.model import Diagnosis
from pullhealth.domain.reference import parse_target
from support.world import TEST_DESTINATIONS


def _opts(world: Any, **kw: Any) -> ChainOptions:
    base: dict[str, Any] = {"nameserver": world.nameserver, "ca_file": str(world.ca_bundle), "timeout": 3.0,
                            "destinations": TEST_DESTINATIONS}
    base.update(kw)
    return ChainOptions(**base)


def _secret(user_pass: tuple[str, str], name: str = "regcred") -> Credential:
    return Credential(CredentialKind.BASIC, f"secret default/{name}", user_pass[0], user_pass[1])


async def _check(world: Any, ref: str, credential: Credential | None = None, **kw: Any) -> Diagnosis:
    registry, image = parse_target(ref)
    target = Target(registry, image, credential) if credential else Target(registry, image)
    return await run_chain(target, _opts(world, **kw))


def _text(d: Diagnosis) -> str:
    return " ".join([d.summary, *d.remediation])


# --- repository-scoped tokens (az acr token) -------------------------------------------------

async def test_repository_scoped_token_pulls(world: Any) -> None:
    d = await _check(world, f"{world.myacr}/team/app:v1", _secret(world.acr_token))
    assert d.code is Code.OK, d.checks


async def test_disabled_token_gets_the_token_remedy(world: Any) -> None:
    d = await _check(world, f"{world.myacr}/team/app:v1", _secret(world.acr_token_disabled))
    assert d.code is Code.CREDENTIALS_REJECTED, d.checks
    assert d.facts["case"] == "acr-token"
    text = _text(d)
    assert "repository-scoped token ci-token-off" in d.summary
    assert "az acr token show --name ci-token-off" in text
    assert "az acr token update --name ci-token-off --registry <registry> --status enabled" in text
    assert "az acr token credential generate" in text
    assert "admin" not in text  # not "rotate the admin password"


async def test_scope_map_without_the_repository_is_an_empty_access_claim(world: Any) -> None:
    d = await _check(world, f"{world.myacr}/team/app:v1", _secret(world.acr_token_other))
    assert d.code is Code.PERMISSION_DENIED, d.checks
    assert d.facts["case"] == "acr-token"
    token = next(c for c in d.checks if c.name == "token")
    assert "grants nothing on team/app" in token.message  # the JWT's access claim was empty
    text = _text(d)
    assert "az acr scope-map update" in text and "--add-repository team/app content/read" in text
    assert "samples/* is valid" in text and "sample/*/teamA" in text and "sample/teamA*" in text


# --- anonymous pull enabled, a stale pull secret ---------------------------------------------

async def test_anonymous_pull_works_so_the_rejected_secret_is_stale(world: Any) -> None:
    world.tokenserver.reset_requests()
    d = await _check(world, f"{world.myacr}/public/hello:1", _secret((world.acr_puller[0], "old-pass"), "acr-old"))
    assert d.code is Code.PULL_SECRET_STALE, d.checks
    assert "anonymous pull of public/hello works" in d.summary and "pull secret acr-old is stale" in d.summary
    assert any("Remove acr-old from the pod's spec.imagePullSecrets" in s for s in d.remediation)
    assert "old-pass" not in d.model_dump_json()
    # One extra request: the anonymous token (the rejected one plus that one).
    assert world.tokenserver.requests.get("/oauth2/token") == 2


async def test_no_anonymous_pull_keeps_credentials_rejected(world: Any) -> None:
    d = await _check(world, f"{world.myacr}/team/app:v1", _secret((world.acr_puller[0], "old-pass")))
    assert d.code is Code.CREDENTIALS_REJECTED, d.checks
    assert d.facts["case"] == "acr-token"  # "puller" is neither the registry's name nor a GUID


async def test_stale_secret_on_another_registry_has_no_az_advice(world: Any) -> None:
    # The same evidence on a non-ACR host (acr.test): the code, with generic commands.
    d = await _check(world, f"{world.acr}/public/hello:1", _secret((world.acr_puller[0], "old-pass")))
    assert d.code is Code.PULL_SECRET_STALE, d.checks
    assert "az " not in " ".join(d.remediation) and "case" not in d.facts


async def test_kubelet_order_then_the_anonymous_retry(world: Any) -> None:
    registry, image = parse_target(f"{world.myacr}/public/hello:1")
    d = await check_credentials(registry, image, [_secret((world.acr_puller[0], "old"))], _opts(world))
    assert d.code is Code.PULL_SECRET_STALE


# --- "unauthorized: Application not registered with AAD" ----------------------------------

async def test_unknown_user_name_is_application_not_registered(world: Any) -> None:
    unknown = ("55555555-5555-4555-8555-555555555555", "whatever")
    d = await _check(world, f"{world.myacr}/team/app:v1", _secret(unknown))
    assert d.code is Code.AAD_APP_NOT_REGISTERED, d.checks
    assert "Application not registered with AAD" in d.summary
    text = _text(d)
    assert "az ad sp show --id <app-id>" in text and "az ad sp create --id <app-id>" in text


# --- service principal: expired or wrong client secret ---------------------------------------

async def test_service_principal_rejected_names_expired_vs_wrong(world: Any) -> None:
    ok = await _check(world, f"{world.myacr}/team/app:v1", _secret(world.acr_sp))
    assert ok.code is Code.OK, ok.checks
    d = await _check(world, f"{world.myacr}/team/app:v1", _secret((world.acr_sp[0], "expired-secret")))
    assert d.code is Code.CREDENTIALS_REJECTED and d.facts["case"] == "acr-service-principal"
    assert f"az ad app credential list --id {world.acr_sp[0]}" in _text(d)


# --- firewall: VNet service endpoint vs public IP rule ---------------------------------------

async def test_private_client_ip_in_the_403_is_a_service_endpoint(world: Any) -> None:
    d = await _check(world, f"{world.vnet_firewall}/team/app:v1")
    assert d.code is Code.FIREWALL_FORBIDDEN and d.facts["case"] == "vnet-service-endpoint"
    assert "10.240.0.4" in d.summary
    assert any("az acr network-rule add --name <registry> --subnet" in s for s in d.remediation)


async def test_public_client_ip_in_the_403_is_an_ip_rule(world: Any) -> None:
    d = await _check(world, f"{world.acr_firewall}/team/app:v1")
    assert d.code is Code.FIREWALL_FORBIDDEN and "case" not in d.facts
    assert any("--ip-address 203.0.113.7" in s for s in d.remediation)


# --- private endpoint: the data endpoint missing from the zone -------------------------------

async def test_data_endpoint_missing_from_the_private_zone(world: Any) -> None:
    ok = await _check(world, f"{world.privatelink}/team/app:v1", _secret(world.acr_puller),
                      data_endpoint="pe.eastus.data.azurecr.io", expect_private_endpoint=True)
    assert ok.code is Code.OK, ok.checks
    d = await _check(world, f"{world.privatelink}/team/app:v1", _secret(world.acr_puller),
                     data_endpoint="pe.westeurope.data.azurecr.io")
    assert d.code is Code.PRIVATE_ENDPOINT_DNS and d.facts["case"] == "data-endpoint-missing", d.checks
    assert "pe.westeurope.data.azurecr.io" in d.summary
    assert any("privatelink.azurecr.io -n <registry>.<region>.data" in s for s in d.remediation)


async def test_data_endpoint_missing_without_a_private_endpoint_stays_nxdomain(world: Any) -> None:
    d = await _check(world, f"{world.myacr}/team/app:v1", data_endpoint="myacr.westeurope.data.azurecr.io")
    assert d.code is Code.DNS_NXDOMAIN, d.checks


# --- managed identity not on the node -------------------------------------------------------

async def test_identity_not_found_on_the_node(world: Any) -> None:
    from pullhealth.probes.identity import managed_identity_token

    async def imds(resource: str) -> Any:
        return await managed_identity_token(client_id="66666666-6666-4666-8666-666666666666",
                                            endpoint=world.imds_url, resource=resource, timeout=2.0)

    registry, image = parse_target(f"{world.myacr}/team/app:v1")
    d = await run_chain(Target(registry, image, identity=imds), _opts(world))
    assert d.code is Code.IDENTITY_UNAVAILABLE and d.facts["case"] == "imds-identity-not-found", d.checks
    assert "az vmss identity show" in _text(d)


# --- admin user, refresh tokens --------------------------------------------------------------

async def test_admin_user_rejected(world: Any) -> None:
    ok = await _check(world, f"{world.myacr}/team/app:v1", _secret(world.acr_admin_user))
    assert ok.code is Code.OK, ok.checks
    d = await _check(world, f"{world.myacr}/team/app:v1", _secret((world.acr_admin_user[0], "regenerated")))
    assert d.code is Code.CREDENTIALS_REJECTED and d.facts["case"] == "acr-admin", d.checks
    assert "az acr show --name <registry> --query adminUserEnabled" in _text(d)


async def test_expired_refresh_token(world: Any) -> None:
    stale = Credential(CredentialKind.REFRESH_TOKEN, "secret default/acr-login", None, "an-expired-refresh-token")
    d = await _check(world, f"{world.myacr}/team/app:v1", stale)
    assert d.code is Code.CREDENTIALS_REJECTED and d.facts["case"] == "acr-refresh-token", d.checks
    assert "an-expired-refresh-token" not in d.model_dump_json()


async def test_one_anonymous_retry_per_check_however_many_secrets(world: Any) -> None:
    registry, image = parse_target(f"{world.myacr}/public/hello:1")
    stale = [_secret((world.acr_puller[0], f"old-{i}"), f"cred-{i}") for i in range(3)]
    world.tokenserver.reset_requests()
    d = await check_credentials(registry, image, stale, _opts(world))
    assert d.code is Code.PULL_SECRET_STALE and "cred-0" in d.summary
    assert world.tokenserver.requests.get("/oauth2/token") == 3 + 1  # three rejections, one anonymous


async def test_identity_without_pull_names_which_identity(world: Any) -> None:
    from pullhealth.probes.identity import managed_identity_token

    async def imds(resource: str) -> Any:
        return await managed_identity_token(client_id=world.imds_nogrant_client_id, endpoint=world.imds_url,
                                            resource=resource, timeout=2.0)

    registry, image = parse_target(f"{world.myacr}/team/app:v1")
    d = await run_chain(Target(registry, image, identity=imds), _opts(world))
    assert d.code is Code.PERMISSION_DENIED and d.facts["case"] == "acr-identity", d.checks
    text = _text(d)
    assert "identityProfile.kubeletidentity.clientId" in text and "az role assignment list --assignee" in text
    assert "roleAssignmentMode" in text and "propagate" in text
    # The pod annotation (probable cause, at most 256 characters) keeps the ABAC hint.
    from pullhealth.pods.podcheck import probable_cause

    assert "AcrPull on an ABAC registry" in probable_cause(d), probable_cause(d)


async def test_fifty_pods_with_one_stale_secret_ask_anonymously_once(world: Any) -> None:
    # The pod flow shares one chain per registry + credential + image (the single flight):
    # however many pods fail with the same stale secret, the registry sees one rejected
    # token request and one anonymous one.
    import asyncio

    from pullhealth.chain.singleflight import SingleFlight

    flight: SingleFlight[Diagnosis] = SingleFlight(ttl=60)
    registry, image = parse_target(f"{world.myacr}/public/hello:1")
    stale = _secret((world.acr_puller[0], "rotated"), "acr-old")

    async def work() -> Diagnosis:
        return await check_credentials(registry, image, [stale], _opts(world))

    world.tokenserver.reset_requests()
    results = await asyncio.gather(*(flight.get(registry, (registry, stale.fingerprint, "public/hello:1"), work)
                                     for _ in range(50)))
    assert {d.code for d in results} == {Code.PULL_SECRET_STALE}
    assert flight.runs == 1 and world.tokenserver.requests.get("/oauth2/token") == 2
