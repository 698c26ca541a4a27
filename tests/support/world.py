"""The full set of integration servers ("the world") started by ``tests/conftest.py``.

Every hostname below exists only in the dnsmasq zone: pass
``nameserver=world.nameserver`` to the code under test, or use
:func:`support.net.make_client` for direct HTTP checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pullhealth.probes.destinations import build_policy

from .azure import AADServer, AADTokenBook, IMDSServer, WorkloadApp, make_federated_token
from .dns import BlackholeDNS, Dnsmasq
from .httpfixtures import (
    ACR_FIREWALL_BODY,
    REGISTRY_HEADERS,
    TOO_MANY_REQUESTS_BODY,
    BacklogFullListener,
    BlobStore,
    ClosedPort,
    PlainHTTPServer,
    RateLimitProxy,
    SilentServer,
    StatusServer,
    acr_firewall_body,
    mismatch_tls_server,
    untrusted_tls_server,
)
from .pki import PKI
from .registry import Registry
from .tokenserver import Grant, TokenPolicy, TokenServer

LEAK_ADDRESS = "203.0.113.10"  # TEST-NET-3: resolved in tests, never connected to
AAD_TENANT = "72f988bf-0000-4000-8000-00000000c0de"
IMDS_CLIENT_ID = "11111111-1111-4111-8111-111111111111"
IMDS_NOGRANT_CLIENT_ID = "22222222-2222-4222-8222-222222222222"
WI_CLIENT_ID = "33333333-3333-4333-8333-333333333333"
SP_APP_ID = "44444444-4444-4444-8444-444444444444"  # a service principal's application id
VNET_CLIENT_IP = "10.240.0.4"  # what ACR's firewall sees through a VNet service endpoint


# The operator's destination policy refuses loopback by default; the test world lives on
# 127.0.0.1 only, so tests allow exactly that address (attack tests use 127.0.0.2+).
TEST_ALLOW_CIDR = "127.0.0.1/32"
TEST_DESTINATIONS = build_policy(allow=[TEST_ALLOW_CIDR])


@dataclass(frozen=True)
class World:
    """Addresses, credentials and handles of the session's servers.

    Every ``host:port`` string uses a name that resolves (only) via ``nameserver``.
    """

    nameserver: str  # dnsmasq, "127.0.0.1:PORT"
    blackhole_nameserver: str  # never answers (UDP and TCP)
    ca_bundle: Path  # trust this for every TLS fixture except `untrusted`
    untrusted_ca_bundle: Path  # the CA behind `untrusted` (not in ca_bundle)
    # registries (real docker-registry 2.8)
    anon: str  # anonymous pull
    basic: str  # htpasswd Basic auth
    acr: str  # token auth via `token`; anonymous pull allowed on public/* only
    privatelink: str  # pe.azurecr.io -> CNAME pe.privatelink.azurecr.io -> same registry as acr
    myacr: str  # myacr.azurecr.io: the same registry, and the token realm's host (like ACR)
    leak: str  # leak.azurecr.io -> CNAME -> 203.0.113.10 (public; resolve only!)
    token: str  # token server host:port
    token_realm: str  # https://myacr.azurecr.io:P/oauth2/token (the registry's own host, like ACR)
    acr_service: str  # token `service`/aud, "acr.test"
    # misbehaving endpoints
    firewall: str  # HTTPS 403 ACR firewall DENIED body
    acr_firewall: str  # fw.azurecr.io: the same 403, public client IP, on an ACR name
    vnet_firewall: str  # vnetfw.azurecr.io: ACR's 403 naming a private client IP (service endpoint)
    ratelimit: str  # HTTPS 429 TOOMANYREQUESTS + Retry-After: 30
    broken: str  # HTTPS 500
    notregistry: str  # HTTPS 404 text/plain
    silent: str  # TCP accepts, never speaks (TLS handshake timeout)
    backlog: str  # connect() times out (SYN dropped)
    plain: str  # plain HTTP where TLS is expected
    untrusted: str  # HTTPS, cert from the untrusted CA
    mismatch: str  # HTTPS, trusted cert for other.test only
    refused: str  # resolves to 127.0.0.1, port closed (RST)
    missing: str  # NXDOMAIN
    # hub.test: `anon` behind a proxy adding Docker Hub's ratelimit-limit / -remaining
    # headers to manifest answers; the test sets the counts (hub_limits.set)
    hub: str
    # the data path: registries whose blob GETs redirect to another host (distribution's
    # `redirect` storage middleware), as ACR redirects to <registry>.<region>.data.azurecr.io
    datapath: str  # data.test (htpasswd, data_user): blobs redirect to data_host, which serves them
    data_host: str  # blobs.test:P, the data host of `datapath` (a BlobStore over its storage)
    datablocked: str  # dfw.azurecr.io (anonymous): blobs redirect to blocked_data_host, where nothing listens
    blocked_data_host: str  # dfw.eastus.data.azurecr.io:P (resolves to 127.0.0.1, port closed)
    data_user: tuple[str, str]  # on `datapath`
    # credentials
    basic_user: tuple[str, str]  # on `basic`
    acr_puller: tuple[str, str]  # pull on team/* at `acr`
    acr_nopull: tuple[str, str]  # token issued, access omits pull
    acr_admin: tuple[str, str]  # push/pull on everything at `acr`
    acr_token: tuple[str, str]  # repository-scoped token (az acr token): scope map team/* pull
    acr_token_disabled: tuple[str, str]  # a token with status disabled (right password)
    acr_token_other: tuple[str, str]  # a token whose scope map has other/* only (empty access)
    acr_sp: tuple[str, str]  # a service principal (GUID user name) with pull on team/*
    acr_admin_user: tuple[str, str]  # myacr.azurecr.io's admin user (named like the registry)
    # Azure identity
    aad_tenant: str
    aad_token: str  # pre-minted AAD token accepted by /oauth2/exchange (pull team/*)
    imds_url: str  # http://127.0.0.1:P (real: http://169.254.169.254)
    imds_client_id: str  # user-assigned MI -> identity with pull on team/*
    imds_nogrant_client_id: str  # MI the exchange accepts but with no ACR grants
    aad_authority: str  # http://127.0.0.1:P ; token URL = {authority}/{tenant}/oauth2/v2.0/token
    wi_client_id: str  # workload-identity app with pull on team/*
    wi_token_file: Path  # AZURE_FEDERATED_TOKEN_FILE content accepted for wi_client_id
    # handles
    pki: PKI
    dns: Dnsmasq
    tokenserver: TokenServer  # .requests counts per path
    aad_book: AADTokenBook
    imds: IMDSServer  # .hits counts requests (security tests: no request for refused identities)
    aad: AADServer  # .apps can take more workload identity apps; .hits counts requests
    registries: Mapping[str, Registry]  # "anon" | "basic" | "acr" | "datapath" | "datablocked"
    servers: Mapping[str, StatusServer]  # "firewall", "ratelimit", "broken", ...
    blobs: BlobStore  # the data host of `datapath`: .requests records what clients sent it
    hub_limits: RateLimitProxy  # the proxy behind `hub`: .set(remaining, limit), .requests
    digests: Mapping[str, str]  # "anon.test/library/alpine:3.19" -> manifest digest


def start_world(stack: contextlib.ExitStack, root: Path) -> World:
    """Start every server under ``root``; ``stack`` stops them (reverse order)."""
    pki = PKI(root / "pki")
    book = AADTokenBook(AAD_TENANT)
    team_pull = [Grant.of("team/*", "pull")]
    policy = TokenPolicy(
        users={"puller": "puller-pass", "nopull": "nopull-pass", "admin": "admin-pass",
               "ci-token": "ci-token-pass", "ci-token-off": "ci-token-off-pass",
               "other-token": "other-token-pass", SP_APP_ID: "sp-secret", "myacr": "myacr-admin-pass"},
        grants={
            "puller": team_pull,
            # Allowed to authenticate and read metadata, but never to pull.
            "nopull": [Grant.of("team/*", "metadata_read"), Grant.of("*", "pull", deny=True)],
            "admin": [Grant.of("*", "*")],
            "aad-puller": team_pull,
            "mi-puller": team_pull,
            "wi-puller": team_pull,
            # Repository-scoped tokens: a scope map's content/read is pull.
            "ci-token": team_pull,
            "ci-token-off": team_pull,
            "other-token": [Grant.of("other/*", "pull")],
            SP_APP_ID: team_pull,
            "myacr": team_pull,  # myacr.azurecr.io's admin user is named like the registry
        },
        disabled={"ci-token-off"},
        # Like an ACR with anonymous pull enabled, limited here to public/*.
        anonymous=[Grant.of("public/*", "pull")],
    )
    tokensrv = stack.enter_context(
        TokenServer(
            pki,
            policy,
            # ACR serves its token endpoints on the registry's own host: the realm names
            # myacr.azurecr.io (another port here), so identity exchanges stay on that host.
            hostname="myacr.azurecr.io",
            aliases=("token.test",),
            service="acr.test",
            aad_book=book,
            workdir=root / "token",
        )
    )

    regs = {
        "anon": Registry("anonymous", pki, ["anon.test"], workdir=root / "anon"),
        "basic": Registry(
            "htpasswd",
            pki,
            ["basic.test"],
            users={"alice": "s3cret-alice"},
            admin=("pusher", "pusher-pass"),
            workdir=root / "basic",
        ),
        "acr": Registry(
            "token",
            pki,
            ["acr.test", "myacr.azurecr.io", "pe.azurecr.io", "pe.privatelink.azurecr.io"],
            admin=("admin", "admin-pass"),
            token_realm=tokensrv.realm,
            token_service="acr.test",
            token_issuer=tokensrv.issuer,
            token_rootcertbundle=tokensrv.rootcertbundle,
            workdir=root / "acr",
        ),
    }
    for reg in regs.values():
        stack.enter_context(reg)
    digests = {}
    for key, repo, tag, platforms in [
        ("anon", "library/alpine", "3.19", None),
        ("anon", "team/app", "v1", None),
        ("anon", "multi/arm", "1", ["linux/arm64"]),
        ("anon", "multi/amd", "1", ["linux/amd64"]),
        ("basic", "team/app", "v1", None),
        ("acr", "team/app", "v1", None),
        ("acr", "public/hello", "1", None),
    ]:
        reg = regs[key]
        digests[f"{reg.host}/{repo}:{tag}"] = reg.push_image(repo, tag, platforms=platforms)

    servers: dict[str, StatusServer] = {
        "firewall": StatusServer(403, ACR_FIREWALL_BODY, cert=pki.issue(["firewall.test"])),
        "acr_firewall": StatusServer(403, ACR_FIREWALL_BODY, cert=pki.issue(["fw.azurecr.io"])),
        "vnet_firewall": StatusServer(403, acr_firewall_body(VNET_CLIENT_IP), cert=pki.issue(["vnetfw.azurecr.io"])),
        "ratelimit": StatusServer(
            429,
            TOO_MANY_REQUESTS_BODY,
            {"Retry-After": "30", **REGISTRY_HEADERS},
            cert=pki.issue(["ratelimit.test"]),
        ),
        "broken": StatusServer(500, "internal server error\n", cert=pki.issue(["broken.test"])),
        "notregistry": StatusServer(404, "404 page not found\n", cert=pki.issue(["notregistry.test"])),
        "plain": PlainHTTPServer(),
        "untrusted": untrusted_tls_server(pki, ["untrusted.test"]),
        "mismatch": mismatch_tls_server(pki, ["other.test"]),
    }
    for srv in servers.values():
        stack.enter_context(srv)
    # Docker Hub's rate-limit headers on a real registry's answers (the anonymous one).
    hub = stack.enter_context(RateLimitProxy(f"https://127.0.0.1:{regs['anon'].port}", pki.ca_bundle,
                                             pki.issue(["hub.test"])))
    for ref in ("library/alpine:3.19", "multi/amd:1"):
        digests[f"hub.test/{ref}"] = digests[f"{regs['anon'].host}/{ref}"]
    silent = stack.enter_context(SilentServer())
    backlog = stack.enter_context(BacklogFullListener())
    refused = stack.enter_context(ClosedPort())

    # The data path: the login server answers, blob downloads go to another host.
    blobs = stack.enter_context(BlobStore(pki.issue(["blobs.test"])))
    data_reg = Registry("htpasswd", pki, ["data.test"], users={"dora": "d4ta-pass"},
                        admin=("pusher", "pusher-pass"), workdir=root / "data",
                        redirect=f"https://blobs.test:{blobs.port}")
    blobs.root = data_reg.storage
    blocked_host = f"dfw.eastus.data.azurecr.io:{refused.port}"
    blocked_reg = Registry("anonymous", pki, ["dfw.azurecr.io", "datablocked.test"],
                           workdir=root / "datablocked", redirect=f"https://{blocked_host}")
    for reg in (data_reg, blocked_reg):
        stack.enter_context(reg)
        digests[f"{reg.host}/team/app:v1"] = reg.push_image("team/app", "v1")
    digests[f"{data_reg.host}/multi/amd:1"] = data_reg.push_image("multi/amd", "1", platforms=["linux/amd64"])

    imds = stack.enter_context(
        IMDSServer(book, user_identities={IMDS_CLIENT_ID: "mi-puller", IMDS_NOGRANT_CLIENT_ID: "mi-nogrant"})
    )
    federated = make_federated_token("system:serviceaccount:default:puller")
    wi_token_file = root / "azure-identity-token"
    wi_token_file.write_text(federated)
    aad = stack.enter_context(AADServer(book, {WI_CLIENT_ID: WorkloadApp("wi-puller", {federated})}))
    aad_token, _ = book.mint("aad-puller")

    local = "127.0.0.1"
    a_records = {
        name: local
        for name in [
            "anon.test",
            "basic.test",
            "acr.test",
            "token.test",
            "firewall.test",
            "ratelimit.test",
            "hub.test",
            "broken.test",
            "notregistry.test",
            "silent.test",
            "backlog.test",
            "plain.test",
            "untrusted.test",
            "mismatch.test",
            "other.test",
            "refused.test",
            "pe.privatelink.azurecr.io",
            "myacr.azurecr.io",
            "fw.azurecr.io",
            "vnetfw.azurecr.io",
            # pe.azurecr.io's data endpoint in eastus, in the private zone like the login server
            # (westeurope's record is missing: the guide's private-endpoint data-endpoint case).
            "pe.eastus.data.privatelink.azurecr.io",
            # Trust-boundary tests (e2e/test_security.py): an attacker's registry (one name
            # inside the ACR domains), the host its realm points at, an "internal" service.
            "evil.test",
            "evil.azurecr.io",
            "collector.test",
            "internal.test",
            # the data path
            "data.test",
            "blobs.test",
            "dfw.azurecr.io",
            "datablocked.test",
            "dfw.eastus.data.azurecr.io",
        ]
    }
    a_records["internal2.test"] = "127.0.0.2"  # outside the tests' allowed 127.0.0.1/32
    a_records["leak.privatelink.azurecr.io"] = LEAK_ADDRESS
    dnsmasq = stack.enter_context(
        Dnsmasq(
            a_records,
            {"pe.azurecr.io": "pe.privatelink.azurecr.io", "leak.azurecr.io": "leak.privatelink.azurecr.io",
             "pe.eastus.data.azurecr.io": "pe.eastus.data.privatelink.azurecr.io"},
            workdir=root / "dns",
        )
    )
    blackhole = stack.enter_context(BlackholeDNS())

    def at(name: str, port: int) -> str:
        return f"{name}:{port}"

    return World(
        nameserver=dnsmasq.nameserver,
        blackhole_nameserver=blackhole.nameserver,
        ca_bundle=pki.ca_bundle,
        untrusted_ca_bundle=pki.untrusted_ca_bundle,
        anon=regs["anon"].address,
        basic=regs["basic"].address,
        acr=regs["acr"].address,
        privatelink=at("pe.azurecr.io", regs["acr"].port),
        myacr=at("myacr.azurecr.io", regs["acr"].port),
        leak="leak.azurecr.io:443",
        token=at("token.test", tokensrv.port),
        token_realm=tokensrv.realm,
        acr_service=tokensrv.service,
        firewall=at("firewall.test", servers["firewall"].port),
        acr_firewall=at("fw.azurecr.io", servers["acr_firewall"].port),
        vnet_firewall=at("vnetfw.azurecr.io", servers["vnet_firewall"].port),
        ratelimit=at("ratelimit.test", servers["ratelimit"].port),
        broken=at("broken.test", servers["broken"].port),
        notregistry=at("notregistry.test", servers["notregistry"].port),
        silent=at("silent.test", silent.port),
        backlog=at("backlog.test", backlog.port),
        plain=at("plain.test", servers["plain"].port),
        untrusted=at("untrusted.test", servers["untrusted"].port),
        mismatch=at("mismatch.test", servers["mismatch"].port),
        refused=at("refused.test", refused.port),
        missing="missing.test:443",
        hub=at("hub.test", hub.port),
        datapath=data_reg.address,
        data_host=f"blobs.test:{blobs.port}",
        datablocked=blocked_reg.address,
        blocked_data_host=blocked_host,
        data_user=("dora", "d4ta-pass"),
        basic_user=("alice", "s3cret-alice"),
        acr_puller=("puller", "puller-pass"),
        acr_nopull=("nopull", "nopull-pass"),
        acr_admin=("admin", "admin-pass"),
        acr_token=("ci-token", "ci-token-pass"),
        acr_token_disabled=("ci-token-off", "ci-token-off-pass"),
        acr_token_other=("other-token", "other-token-pass"),
        acr_sp=(SP_APP_ID, "sp-secret"),
        acr_admin_user=("myacr", "myacr-admin-pass"),
        aad_tenant=AAD_TENANT,
        aad_token=aad_token,
        imds_url=imds.url,
        imds_client_id=IMDS_CLIENT_ID,
        imds_nogrant_client_id=IMDS_NOGRANT_CLIENT_ID,
        aad_authority=aad.authority,
        wi_client_id=WI_CLIENT_ID,
        wi_token_file=wi_token_file,
        pki=pki,
        dns=dnsmasq,
        tokenserver=tokensrv,
        aad_book=book,
        imds=imds,
        aad=aad,
        registries={**regs, "datapath": data_reg, "datablocked": blocked_reg},
        servers=servers,
        blobs=blobs,
        hub_limits=hub,
        digests=digests,
    )
