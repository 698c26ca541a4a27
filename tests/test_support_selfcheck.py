"""Prove the integration fixtures are real servers behaving as advertised."""

from __future__ import annotations

import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from support.httpfixtures import BacklogFullListener
from support.net import make_client, resolve_a, split_nameserver
from support.registry import DOCKER_MANIFEST, MANIFEST_ACCEPT, OCI_INDEX
from support.tokenserver import decode_jwt
from support.world import LEAK_ADDRESS, World


def _query(nameserver: str, name: str, rtype: str = "A") -> dns.message.Message:
    host, port = split_nameserver(nameserver)
    return dns.query.udp(dns.message.make_query(name, rtype), host, port=port, timeout=2)


def _hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def _manifest(
    client: httpx.Client, addr: str, repo: str, ref: str, token: str | None = None
) -> httpx.Response:
    headers = {"Accept": MANIFEST_ACCEPT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.get(f"https://{addr}/v2/{repo}/manifests/{ref}", headers=headers)


def _registry_token(client: httpx.Client, world: World, repo: str, auth: tuple[str, str] | None) -> str:
    resp = client.get(
        world.token_realm,
        auth=auth,
        params={"service": world.acr_service, "scope": f"repository:{repo}:pull"},
    )
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["token"]
    return token


@pytest.fixture
def client(world: World) -> httpx.Client:
    """Client resolving via dnsmasq and trusting the test CA."""
    return make_client(world.ca_bundle, nameserver=world.nameserver)


# ---- DNS ---------------------------------------------------------------------


def test_dnsmasq_answers_a_cname_and_nxdomain(world: World) -> None:
    a = _query(world.nameserver, "anon.test")
    assert a.rcode() == dns.rcode.NOERROR
    assert [r.to_text() for rr in a.answer for r in rr] == ["127.0.0.1"]

    cname = _query(world.nameserver, "pe.azurecr.io")
    types = [rr.rdtype for rr in cname.answer]
    assert types == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert resolve_a(world.nameserver, "pe.azurecr.io") == ["127.0.0.1"]
    assert resolve_a(world.nameserver, "leak.azurecr.io") == [LEAK_ADDRESS]

    for name in ("missing.test", "nope.azurecr.io"):
        assert _query(world.nameserver, name).rcode() == dns.rcode.NXDOMAIN


def test_blackhole_nameserver_times_out(world: World) -> None:
    t0 = time.monotonic()
    with pytest.raises(dns.exception.Timeout):
        host, port = split_nameserver(world.blackhole_nameserver)
        dns.query.udp(dns.message.make_query("anon.test", "A"), host, port=port, timeout=0.5)
    assert time.monotonic() - t0 < 2


# ---- registries ---------------------------------------------------------------


def test_anonymous_registry_serves_pushed_images(world: World, client: httpx.Client) -> None:
    resp = _manifest(client, world.anon, "library/alpine", "3.19")
    assert resp.status_code == 200
    assert resp.headers["Docker-Content-Digest"] == world.digests["anon.test/library/alpine:3.19"]
    assert resp.headers["Content-Type"] == DOCKER_MANIFEST

    index = _manifest(client, world.anon, "multi/arm", "1")
    assert index.status_code == 200
    assert index.headers["Content-Type"] == OCI_INDEX
    platforms = [m["platform"] for m in index.json()["manifests"]]
    assert platforms == [{"architecture": "arm64", "os": "linux"}]


def test_htpasswd_registry_needs_basic_auth(world: World, client: httpx.Client) -> None:
    anon = _manifest(client, world.basic, "team/app", "v1")
    assert anon.status_code == 401
    assert anon.headers["WWW-Authenticate"].startswith("Basic ")
    client.auth = world.basic_user
    ok = _manifest(client, world.basic, "team/app", "v1")
    assert ok.status_code == 200
    assert ok.headers["Docker-Content-Digest"] == world.digests["basic.test/team/app:v1"]
    client.auth = (world.basic_user[0], "wrong")
    assert _manifest(client, world.basic, "team/app", "v1").status_code == 401


def test_token_registry_flow_and_scope_enforcement(world: World, client: httpx.Client) -> None:
    challenge = _manifest(client, world.acr, "team/app", "v1")
    assert challenge.status_code == 401
    assert f'realm="{world.token_realm}"' in challenge.headers["WWW-Authenticate"]
    assert f'service="{world.acr_service}"' in challenge.headers["WWW-Authenticate"]

    token = _registry_token(client, world, "team/app", world.acr_puller)
    header, claims = decode_jwt(token)
    assert header["alg"] == "RS256" and header["x5c"]
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
    ok = _manifest(client, world.acr, "team/app", "v1", token)
    assert ok.status_code == 200
    assert ok.headers["Docker-Content-Digest"] == world.digests["acr.test/team/app:v1"]

    # The same registry answers as pe.azurecr.io (private endpoint via CNAME).
    assert _manifest(client, world.privatelink, "team/app", "v1", token).status_code == 200

    anon_token = _registry_token(client, world, "public/hello", None)
    assert _manifest(client, world.acr, "public/hello", "1", anon_token).status_code == 200

    for auth in (world.acr_nopull, None):  # token issued, but its access omits pull
        weak = _registry_token(client, world, "team/app", auth)
        assert decode_jwt(weak)[1]["access"] == []
        denied = _manifest(client, world.acr, "team/app", "v1", weak)
        assert denied.status_code == 401
        assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]


def test_token_server_errors_and_oauth2_post(world: World, client: httpx.Client) -> None:
    bad = client.get(
        world.token_realm,
        auth=("puller", "wrong"),
        params={"service": world.acr_service, "scope": "repository:team/app:pull"},
    )
    assert bad.status_code == 401
    assert bad.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert "WWW-Authenticate" in bad.headers

    url = world.token_realm  # POST to the same path
    form = {
        "grant_type": "password",
        "username": "puller",
        "password": "puller-pass",
        "service": world.acr_service,
        "scope": "repository:team/app:pull",
        "client_id": "pullhealth",
    }
    ok = client.post(url, data=form)
    assert ok.status_code == 200
    assert _manifest(client, world.acr, "team/app", "v1", ok.json()["access_token"]).status_code == 200
    assert client.post(url, data={**form, "password": "x"}).status_code == 401


def test_azure_exchange_flows_reach_the_registry(world: World, client: httpx.Client) -> None:
    token_base = world.token_realm.rsplit("/", 1)[0]

    def pull_with_aad(aad_token: str) -> int:
        ex = client.post(
            f"{token_base}/exchange",
            data={
                "grant_type": "access_token",
                "service": world.acr_service,
                "access_token": aad_token,
                "tenant": world.aad_tenant,
            },
        )
        assert ex.status_code == 200, ex.text
        at = client.post(
            world.token_realm,
            data={
                "grant_type": "refresh_token",
                "service": world.acr_service,
                "refresh_token": ex.json()["refresh_token"],
                "scope": "repository:team/app:pull",
            },
        )
        assert at.status_code == 200
        return _manifest(client, world.acr, "team/app", "v1", at.json()["access_token"]).status_code

    assert pull_with_aad(world.aad_token) == 200

    imds = make_client(None)
    q = {"api-version": "2018-02-01", "resource": "https://management.azure.com/"}
    url = f"{world.imds_url}/metadata/identity/oauth2/token"
    assert imds.get(url, params={**q, "client_id": world.imds_client_id}).status_code == 400
    mi = imds.get(url, params={**q, "client_id": world.imds_client_id}, headers={"Metadata": "true"})
    assert mi.status_code == 200 and mi.json()["token_type"] == "Bearer"
    assert pull_with_aad(mi.json()["access_token"]) == 200
    unknown = imds.get(url, params={**q, "client_id": "nobody"}, headers={"Metadata": "true"})
    assert unknown.json() == {"error": "invalid_request", "error_description": "Identity not found"}
    nogrant = imds.get(
        url, params={**q, "client_id": world.imds_nogrant_client_id}, headers={"Metadata": "true"}
    ).json()["access_token"]
    assert pull_with_aad(nogrant) == 401

    aad_url = f"{world.aad_authority}/{world.aad_tenant}/oauth2/v2.0/token"
    wi_form = {
        "grant_type": "client_credentials",
        "client_id": world.wi_client_id,
        "scope": "https://management.azure.com/.default",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": world.wi_token_file.read_text(),
    }
    wi = imds.post(aad_url, data=wi_form)
    assert wi.status_code == 200
    assert pull_with_aad(wi.json()["access_token"]) == 200
    assert "AADSTS700016" in imds.post(aad_url, data={**wi_form, "client_id": "x"}).text
    assert imds.post(aad_url, data={**wi_form, "client_assertion": "forged"}).status_code == 401

    rejected = client.post(
        f"{token_base}/exchange",
        data={"grant_type": "access_token", "service": world.acr_service, "access_token": "bogus"},
    )
    assert rejected.status_code == 401
    assert rejected.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_token_server_counts_concurrent_requests(world: World) -> None:
    ts = world.tokenserver
    ts.reset_requests()

    def fetch(_: int) -> int:
        with make_client(world.ca_bundle, nameserver=world.nameserver) as c:
            return c.get(world.token_realm, params={"service": world.acr_service}).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(fetch, range(8))) == [200] * 8
    assert ts.requests == {"/oauth2/token": 8}


# ---- misbehaving endpoints -------------------------------------------------------


def test_status_servers(world: World, client: httpx.Client) -> None:
    fw = client.get(f"https://{world.firewall}/v2/")
    assert fw.status_code == 403 and "aka.ms/acr/firewall" in fw.json()["errors"][0]["message"]
    rl = client.get(f"https://{world.ratelimit}/v2/x/manifests/y")
    assert rl.status_code == 429 and rl.headers["Retry-After"] == "30"
    assert rl.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert client.get(f"https://{world.broken}/v2/").status_code == 500
    nr = client.get(f"https://{world.notregistry}/v2/")
    assert nr.status_code == 404 and nr.headers["Content-Type"].startswith("text/plain")


def _tls_connect(world: World, addr: str, timeout: float = 2.0) -> None:
    host, port = _hostport(addr)
    ctx = ssl.create_default_context(cafile=str(world.ca_bundle))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=host),
    ):
        pass


def test_tls_failures(world: World) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _tls_connect(world, world.untrusted)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _tls_connect(world, world.mismatch)
    _tls_connect(world, f"other.test:{_hostport(world.mismatch)[1]}")  # the control case
    with pytest.raises(ssl.SSLError):
        _tls_connect(world, world.plain)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        _tls_connect(world, world.silent, timeout=0.5)
    assert time.monotonic() - t0 < 2


def test_connect_failures(world: World) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", _hostport(world.refused)[1]), timeout=1)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        socket.create_connection(("127.0.0.1", _hostport(world.backlog)[1]), timeout=1)
    assert 0.9 < time.monotonic() - t0 < 3


def test_backlog_listener_standalone() -> None:
    with BacklogFullListener() as bl, pytest.raises(TimeoutError):
        socket.create_connection(bl.address, timeout=1)


def test_clients_refuse_non_loopback(world: World, client: httpx.Client) -> None:
    with pytest.raises(httpx.ConnectError, match="non-loopback"):
        client.get(f"https://{world.leak}/v2/")


def test_guard_refuses_off_loopback_connects() -> None:
    from support.guard import OffLoopbackConnect

    with socket.socket() as s, pytest.raises(OffLoopbackConnect):
        s.connect(("203.0.113.10", 443))


def test_acr_guide_fixtures_answer_like_acr(world: World, client: httpx.Client) -> None:
    """The fixtures behind tests/test_acr_cases.py: ACR's 401 bodies, a disabled token, a
    scope map's empty access claim, anonymous pull on public/*, the firewall's 403 naming a
    private client IP, and a private zone holding one region's data endpoint only."""
    params = {"service": world.acr_service, "scope": "repository:team/app:pull"}

    def refused(auth: tuple[str, str]) -> str:
        resp = client.get(world.token_realm, auth=auth, params=params)
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Basic ")
        error = resp.json()["errors"][0]
        assert error["code"] == "UNAUTHORIZED"
        return str(error["message"])

    assert refused(("55555555-5555-4555-8555-555555555555", "x")) == "Application not registered with AAD."
    assert refused(world.acr_token_disabled).startswith("authentication required")
    assert refused((world.acr_token[0], "wrong")).startswith("authentication required")
    # The same refusal on the OAuth2 form (what containerd sends with credentials).
    form = client.post(world.token_realm, data={**params, "grant_type": "password", "client_id": "x",
                                                "username": "nobody", "password": "x"})
    assert form.status_code == 401 and form.json()["errors"][0]["message"] == "Application not registered with AAD."
    # A token whose scope map lacks the repository authenticates; its access claim is empty.
    _, claims = decode_jwt(_registry_token(client, world, "team/app", world.acr_token_other))
    assert claims["access"] == []
    # Anonymous pull is enabled on public/* only.
    _, claims = decode_jwt(_registry_token(client, world, "public/hello", None))
    assert claims["access"] == [{"type": "repository", "name": "public/hello", "actions": ["pull"]}]
    # The firewall's 403 names what the registry saw: a VNet address through a service endpoint.
    body = client.get(f"https://{world.vnet_firewall}/v2/").json()
    assert "client with IP '10.240.0.4' is not allowed access" in body["errors"][0]["message"]
    # The private zone has eastus's data endpoint, not westeurope's.
    assert resolve_a(world.nameserver, "pe.eastus.data.azurecr.io") == ["127.0.0.1"]
    answer = _query(world.nameserver, "pe.westeurope.data.azurecr.io")
    assert answer.rcode() == dns.rcode.NXDOMAIN
