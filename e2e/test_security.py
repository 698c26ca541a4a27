"""The trust boundary against a real API server: a RegistryCheck author (a namespace user)
cannot steer the operator's identities, network position or other namespaces' data.

The operator runs with exactly the chart's RBAC (a token of the chart's ServiceAccount),
against loopback stand-ins: an attacker's registry (``evil.test`` and, inside the ACR
domains, ``evil.azurecr.io``) whose realm points at another host (``collector.test``), an
IMDS and an Azure AD fixture that record every request, and an "internal" service on
127.0.0.2, outside the tests' allowed 127.0.0.1/32. docs/security.md is the threat model.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import yaml

from support import guard
from support.azure import WorkloadApp
from support.chart import Installed, install_chart
from support.helm import require_helm
from support.httpfixtures import StatusServer
from support.objects import docker_secret_yaml, regcheck_yaml
from support.operatorproc import OperatorProcess
from support.world import World

if TYPE_CHECKING:
    from conftest import Cluster

guard.install()
# This module runs its own operator with the chart's rights; the session's would race it.
pytestmark = pytest.mark.usefixtures("no_session_operator")

Waiter = Callable[..., Any]
INTERNAL_SECRET = "INTERNAL-ANSWER-do-not-echo-7f3a"
OTHER_CLIENT_ID = "99999999-9999-4999-8999-999999999999"
WI_OPEN_CLIENT_ID = "55555555-5555-4555-8555-555555555555"


class Collector:
    """Every place an attacker wants credentials sent: HTTPS and plain-HTTP token endpoints."""

    def __init__(self, world: World) -> None:
        self.https = StatusServer(200, {"token": "t", "access_token": "t", "refresh_token": "r"},
                                  cert=world.pki.issue(["collector.test"]))
        self.http = StatusServer(200, {"token": "t"}, tls=False)

    def hits(self) -> int:
        return sum(self.https.hits.values()) + sum(self.http.hits.values())


class Listener:
    """A TCP listener on 127.0.0.2 that counts connections (an 'internal' service)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.2", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def chart(dev_cluster: Cluster) -> Iterator[Installed]:
    """The chart with workload identity on (its RBAC then includes serviceaccounts/token)."""
    with install_chart(dev_cluster, require_helm(), "pullhealth-sec",
                       "security.identities.workloadIdentity=true") as installed:
        yield installed


@pytest.fixture(scope="module")
def attacker(world: World) -> Iterator[dict[str, Any]]:
    collector = Collector(world)
    collector.https.start()
    collector.http.start()
    realm_https = f"https://collector.test:{collector.https.port}/token"
    realm_http = f"http://collector.test:{collector.http.port}/token"
    evil = StatusServer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                        {"WWW-Authenticate": f'Bearer realm="{realm_https}",service="evil"'},
                        cert=world.pki.issue(["evil.test", "evil.azurecr.io"]))
    evil_plain_realm = StatusServer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                                    {"WWW-Authenticate": f'Bearer realm="{realm_http}",service="evil"'},
                                    cert=world.pki.issue(["evil.test"]))
    internal = StatusServer(404, f"<html>{INTERNAL_SECRET}</html>", cert=world.pki.issue(["internal.test"]),
                            content_type="text/html")
    listener = Listener()
    for server in (evil, evil_plain_realm, internal):
        server.start()
    try:
        yield {"collector": collector, "evil": f"evil.test:{evil.port}", "evil_acr": f"evil.azurecr.io:{evil.port}",
               "evil_plain_realm": f"evil.test:{evil_plain_realm.port}", "internal": f"internal.test:{internal.port}",
               "internal_server": internal, "listener": listener}
    finally:
        for server in (evil, evil_plain_realm, internal, collector.https, collector.http):
            server.stop()
        listener.close()


@pytest.fixture()
def operator_as_chart(chart: Installed, world: World, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator with the chart's ServiceAccount token and the chart's defaults, plus
    workload identity on (the flag the chart's value passes)."""
    with chart_operator(chart, world, tmp_path) as op:
        yield op


@pytest.fixture()
def operator_in_namespace(chart: Installed, world: World, tmp_path: Path, namespace: str) -> Iterator[OperatorProcess]:
    """The same operator watching only the test's namespace: the IMDS fixture then counts
    only this test's requests (a cluster-wide operator also diagnoses the ACR pods that
    earlier modules left failing, with the kubelet identity: legitimate IMDS requests)."""
    with chart_operator(chart, world, tmp_path, "--namespace", namespace) as op:
        yield op


def chart_operator(chart: Installed, world: World, tmp_path: Path, *args: str) -> OperatorProcess:
    kubeconfig = chart.token_kubeconfig(tmp_path / "operator.kubeconfig")
    return OperatorProcess(kubeconfig, world, tmp_path / "operator.log", ["--workload-identity", *args],
                           env={"AZURE_AUTHORITY_HOST": world.aad_authority})


def status_of(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("-n", ns, "get", "regcheck", name, "-o", "json").stdout
    return dict(json.loads(out).get("status") or {})


def run_checks(cluster: Cluster, ns: str, wait_for: Waiter, cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for name, spec in cases.items():
        cluster.kubectl("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml(name, spec))
    return {name: wait_for(lambda n=name: (s := status_of(cluster, ns, n)).get("code") and s,
                           f"status of {name}", timeout=60) for name in cases}


def test_identity_never_requested_for_other_registries_or_client_ids(
    dev_cluster: Cluster, operator_in_namespace: OperatorProcess, world: World, attacker: dict[str, Any],
    namespace: str, wait_for: Waiter,
) -> None:
    world.imds.reset_hits()
    statuses = run_checks(dev_cluster, namespace, wait_for, {
        # The author's own registry, outside the ACR domains: no IMDS request at all.
        "mi-evil": {"registry": attacker["evil"], "image": "x/y:1",
                    "auth": {"mode": "managedIdentity", "clientId": world.imds_client_id}},
        # An ACR registry but a client id the admin did not allow: no IMDS request.
        "mi-other-id": {"registry": world.myacr, "image": "team/app:v1",
                        "auth": {"mode": "managedIdentity", "clientId": OTHER_CLIENT_ID}},
    })
    for name, status in statuses.items():
        assert (status["phase"], status["code"]) == ("Unhealthy", "IDENTITY_NOT_ALLOWED"), (name, status)
    assert "not in the operator's ACR domains" in statuses["mi-evil"]["summary"]
    assert OTHER_CLIENT_ID in statuses["mi-other-id"]["summary"]
    assert world.imds.hits == {}, world.imds.hits
    assert attacker["collector"].hits() == 0


def test_identity_token_goes_only_to_the_registry_own_exchange(
    dev_cluster: Cluster, operator_as_chart: OperatorProcess, world: World, attacker: dict[str, Any],
    namespace: str, wait_for: Waiter,
) -> None:
    """An ACR-domain registry whose realm names another host: the token is not sent there."""
    world.imds.reset_hits()
    statuses = run_checks(dev_cluster, namespace, wait_for, {
        "mi-evil-acr": {"registry": attacker["evil_acr"], "image": "x/y:1",
                        "auth": {"mode": "managedIdentity"}},
        # The legitimate path: ACR (realm on the registry's own host) with the kubelet identity.
        "mi-acr": {"registry": world.myacr, "image": "team/app:v1", "auth": {"mode": "managedIdentity"}},
    })
    assert statuses["mi-evil-acr"]["code"] == "TOKEN_REALM_REFUSED", statuses["mi-evil-acr"]
    assert "collector.test" in statuses["mi-evil-acr"]["summary"]
    assert attacker["collector"].hits() == 0
    assert (statuses["mi-acr"]["phase"], statuses["mi-acr"]["code"]) == ("Healthy", "OK"), statuses["mi-acr"]
    # IMDS was asked for the ACR audience only (never the management audience).
    token = next(c for c in statuses["mi-acr"]["checks"] if c["name"] == "identity")
    assert "ACR audience" in token["message"], token


def test_credentials_never_sent_to_a_plain_http_realm(
    dev_cluster: Cluster, operator_as_chart: OperatorProcess, world: World, attacker: dict[str, Any],
    namespace: str, wait_for: Waiter,
) -> None:
    k = dev_cluster.kubectl
    k("-n", namespace, "apply", "-f", "-",
      stdin=docker_secret_yaml("evil-cred", attacker["evil_plain_realm"], "me", "plain-http-password"))
    k("-n", namespace, "apply", "-f", "-", stdin=docker_secret_yaml("acr-good", world.acr, *world.acr_puller))
    statuses = run_checks(dev_cluster, namespace, wait_for, {
        "plain-realm": {"registry": attacker["evil_plain_realm"], "image": "x/y:1",
                        "auth": {"pullSecrets": ["evil-cred"]}},
        # Issue 21: anonymous too: no GET to a plain-HTTP realm, so no token from it is
        # forwarded to the author's registry.
        "plain-realm-anon": {"registry": attacker["evil_plain_realm"], "image": "x/y:1",
                             "auth": {"mode": "anonymous"}},
        # Docker Hub style: the realm on another host over HTTPS is followed, and named.
        "realm-elsewhere": {"registry": world.acr, "image": "team/app:v1", "auth": {"pullSecrets": ["acr-good"]}},
    })
    assert statuses["plain-realm"]["code"] == "TOKEN_REALM_REFUSED", statuses["plain-realm"]
    assert statuses["plain-realm-anon"]["code"] == "TOKEN_REALM_REFUSED", statuses["plain-realm-anon"]
    assert attacker["collector"].http.hits == {}
    assert (statuses["realm-elsewhere"]["phase"], statuses["realm-elsewhere"]["code"]) == ("Healthy", "OK")
    token = next(c for c in statuses["realm-elsewhere"]["checks"] if c["name"] == "token")
    assert "at the token service myacr.azurecr.io" in token["message"], token


def test_workload_identity_uses_only_the_account_own_client_id(
    dev_cluster: Cluster, operator_as_chart: OperatorProcess, world: World, namespace: str, wait_for: Waiter,
) -> None:
    k = dev_cluster.kubectl
    # An app whose federated credential accepts the tokens the API server mints here.
    world.aad.apps[WI_OPEN_CLIENT_ID] = WorkloadApp("wi-puller", set())
    k("-n", namespace, "create", "serviceaccount", "wi")
    k("-n", namespace, "annotate", "serviceaccount", "wi", f"azure.workload.identity/client-id={WI_OPEN_CLIENT_ID}",
      f"azure.workload.identity/tenant-id={world.aad_tenant}")
    world.aad.reset_hits()
    statuses = run_checks(dev_cluster, namespace, wait_for, {
        "wi-override": {"registry": world.myacr, "image": "team/app:v1",
                        "auth": {"mode": "workloadIdentity", "serviceAccountName": "wi", "clientId": OTHER_CLIENT_ID}},
    })
    assert statuses["wi-override"]["code"] == "IDENTITY_NOT_ALLOWED", statuses["wi-override"]
    assert world.aad.hits == {}, world.aad.hits
    # The legitimate path: the account's own annotated client id, token minted by the API server.
    statuses = run_checks(dev_cluster, namespace, wait_for, {
        "wi-own": {"registry": world.myacr, "image": "team/app:v1",
                   "auth": {"mode": "workloadIdentity", "serviceAccountName": "wi"}},
    })
    assert (statuses["wi-own"]["phase"], statuses["wi-own"]["code"]) == ("Healthy", "OK"), statuses["wi-own"]["summary"]
    assert sum(world.aad.hits.values()) >= 1


def test_workload_identity_off_by_default(
    dev_cluster: Cluster, installed_default: Installed, world: World, namespace: str, wait_for: Waiter,
    tmp_path: Path,
) -> None:
    kubeconfig = installed_default.token_kubeconfig(tmp_path / "operator.kubeconfig")
    can = dev_cluster.kubectl("auth", "can-i", "create", "serviceaccounts", "-A", "--subresource=token",
                              check=False, kubeconfig=kubeconfig)
    assert can.stdout.strip() == "no"
    world.aad.reset_hits()
    with OperatorProcess(kubeconfig, world, tmp_path / "operator.log") as op:
        statuses = run_checks(dev_cluster, namespace, wait_for, {
            "wi-off": {"registry": world.myacr, "image": "team/app:v1", "auth": {"mode": "workloadIdentity"}},
        })
        log = op.text()
    assert statuses["wi-off"]["code"] == "IDENTITY_NOT_ALLOWED", statuses["wi-off"]
    assert "workload identity checks are off" in statuses["wi-off"]["summary"]
    assert world.aad.hits == {}
    assert "forbidden" not in log


@pytest.fixture(scope="module")
def installed_default(dev_cluster: Cluster, chart: Installed) -> Iterator[Installed]:
    """The chart with default values (another release name: both live at once)."""
    with install_chart(dev_cluster, require_helm(), "pullhealth-secdef", "fullnameOverride=pullhealth-secdef") as inst:
        yield inst


def test_refused_destinations_get_no_packet_and_say_why(
    dev_cluster: Cluster, operator_as_chart: OperatorProcess, attacker: dict[str, Any], namespace: str,
    wait_for: Waiter,
) -> None:
    server = api_server(dev_cluster)
    listener: Listener = attacker["listener"]
    statuses = run_checks(dev_cluster, namespace, wait_for, {
        "internal-ip": {"registry": f"127.0.0.2:{listener.port}", "image": "x/y:1"},
        "internal-name": {"registry": f"internal2.test:{listener.port}", "image": "x/y:1"},
        "metadata": {"registry": "169.254.169.254", "image": "x/y:1"},
        "node-loopback": {"registry": "localhost:5000", "image": "app:v1"},
        "api-server": {"registry": server, "image": "x/y:1"},
    })
    for name, status in statuses.items():
        assert (status["phase"], status["code"]) == ("Unhealthy", "DESTINATION_REFUSED"), (name, status)
    assert listener.accepted == 0
    assert "node's own loopback" in statuses["node-loopback"]["summary"]
    assert "Kubernetes API server" in statuses["api-server"]["summary"]
    assert "link-local" in statuses["metadata"]["summary"]


def api_server(cluster: Cluster) -> str:
    """host:port of the API server, from the admin kubeconfig."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    parts = urlsplit(config["clusters"][0]["cluster"]["server"])
    return f"{parts.hostname}:{parts.port}"


def test_no_echo_of_an_internal_service_answer(
    dev_cluster: Cluster, operator_as_chart: OperatorProcess, attacker: dict[str, Any], namespace: str,
    wait_for: Waiter,
) -> None:
    """A reachable (allowed) internal HTTPS service: its status code is reported, its body never."""
    statuses = run_checks(dev_cluster, namespace, wait_for, {
        "internal-body": {"registry": attacker["internal"], "image": "x/y:1"},
    })
    status = statuses["internal-body"]
    assert status["code"] == "CHALLENGE_ERROR", status
    assert INTERNAL_SECRET not in json.dumps(status)
    events = dev_cluster.kubectl("-n", namespace, "get", "events", "-o", "json").stdout
    assert INTERNAL_SECRET not in events


def test_no_status_names_another_namespace_secret(
    dev_cluster: Cluster, operator_as_chart: OperatorProcess, world: World, namespace: str, wait_for: Waiter,
) -> None:
    """Same registry, same (wrong) credential, two namespaces: each status names its own secret."""
    k = dev_cluster.kubectl
    other = f"{namespace}-b"
    k("create", "namespace", other)
    try:
        spec = {"registry": world.acr, "image": "team/app:v1"}
        for ns, secret in ((namespace, "team-a-cred"), (other, "team-b-cred")):
            k("-n", ns, "apply", "-f", "-", stdin=docker_secret_yaml(secret, world.acr, "puller", "wrong-pass"))
            k("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml("shared", {**spec, "auth": {"pullSecrets": [secret]}}))
        a = wait_for(lambda: (s := status_of(dev_cluster, namespace, "shared")).get("code") and s, "status a")
        b = wait_for(lambda: (s := status_of(dev_cluster, other, "shared")).get("code") and s, "status b")
        assert a["code"] == b["code"] == "CREDENTIALS_REJECTED", (a, b)
        assert "team-a-cred" in json.dumps(a) and "team-b-cred" not in json.dumps(a) and other not in json.dumps(a)
        assert "team-b-cred" in json.dumps(b) and "team-a-cred" not in json.dumps(b)
    finally:
        k("delete", "namespace", other, "--wait=false", "--ignore-not-found")
