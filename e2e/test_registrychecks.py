"""RegistryChecks end to end: real kube-apiserver, the operator as a process, real registries.

The operator runs as ``python -m pullhealth run`` with the admin kubeconfig and the test
world's nameserver and CA (PULLHEALTH_NAMESERVER / PULLHEALTH_CA_FILE), exactly as it
would in a pod that uses a custom resolver and CA bundle.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import yaml

from pullhealth.domain.codes import reason as camel_reason
from support.objects import docker_secret_yaml, regcheck_yaml
from support.world import World


def get(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("-n", ns, "get", "regcheck", name, "-o", "json").stdout
    return dict(json.loads(out))


def wait_status(cluster: Any, wait_for: Any, ns: str, name: str, generation: int = 1) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = get(cluster, ns, name)
        status = obj.get("status") or {}
        return status if status.get("observedGeneration") == generation and status.get("phase") else None

    result: dict[str, Any] = wait_for(done, f"status of {ns}/{name}", timeout=60)
    return result


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def events(cluster: Any, ns: str, name: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("-n", ns, "get", "events", "-o", "json",
                          f"--field-selector=involvedObject.name={name}").stdout
    return [e for e in json.loads(out)["items"] if e["reason"] in ("CheckSucceeded", "CheckFailed",
                                                                   "InvalidSpec")]


CASES = {
    "healthy": ({"registry": "{anon}", "image": "library/alpine:3.19", "auth": {"mode": "anonymous"}},
                "Healthy", "OK"),
    "wrongpass": ({"registry": "{acr}", "image": "team/app:v1", "auth": {"pullSecrets": ["acr-wrong"]}},
                  "Unhealthy", "CREDENTIALS_REJECTED"),
    "goodsecret": ({"registry": "{acr}", "image": "team/app:v1", "auth": {"pullSecrets": ["acr-good"]}},
                   "Healthy", "OK"),
    "sasecret": ({"registry": "{basic}", "image": "team/app:v1", "auth": {"mode": "serviceAccount",
                                                                          "serviceAccountName": "puller"}},
                 "Healthy", "OK"),
    "nosecret": ({"registry": "{acr}", "image": "team/app:v1", "auth": {"pullSecrets": ["absent"]}},
                 "Unhealthy", "PULL_SECRET_MISSING"),
    "badsecret": ({"registry": "{acr}", "image": "team/app:v1", "auth": {"pullSecrets": ["not-docker"]}},
                  "Unhealthy", "PULL_SECRET_INVALID"),
    "othernamespace": ({"registry": "{acr}", "image": "team/app:v1", "auth": {"pullSecrets": ["elsewhere"]}},
                       "Unhealthy", "PULL_SECRET_MISSING"),
    "missingtag": ({"registry": "{anon}", "image": "team/app:nosuchtag"}, "Unhealthy", "TAG_NOT_FOUND"),
    "dnsfail": ({"registry": "{missing}", "image": "team/app:v1"}, "Unhealthy", "DNS_NXDOMAIN"),
    "mi": ({"registry": "{myacr}", "image": "team/app:v1",
            "auth": {"mode": "managedIdentity", "clientId": "{imds_client_id}"}}, "Healthy", "OK"),
    # ACR's guide (issue 25): a stale secret on an anonymously pullable repository; a disabled
    # repository-scoped token.
    "stalesecret": ({"registry": "{myacr}", "image": "public/hello:1", "auth": {"pullSecrets": ["acr-old"]}},
                    "Unhealthy", "PULL_SECRET_STALE"),
    "tokenoff": ({"registry": "{myacr}", "image": "team/app:v1", "auth": {"pullSecrets": ["ci-off"]}},
                 "Unhealthy", "CREDENTIALS_REJECTED"),
}
# The guide's remedy, not generic advice, in the status.
ACR_REMEDY = {"stalesecret": "Remove acr-old from the pod's spec.imagePullSecrets",
              "tokenoff": "az acr token update --name ci-token-off"}


def _fill(spec: dict[str, Any], world: World) -> dict[str, Any]:
    text = json.dumps(spec)
    for key in ("anon", "acr", "myacr", "basic", "missing", "imds_client_id"):
        text = text.replace("{" + key + "}", str(getattr(world, key)))
    return dict(json.loads(text))


def test_registrychecks_end_to_end(dev_cluster: Any, operator: Any, world: World, namespace: str,
                                   wait_for: Any) -> None:
    ns = namespace
    other = f"{ns}-other"
    dev_cluster.kubectl("create", "namespace", other)
    try:
        _scenarios(dev_cluster, operator, world, ns, other, wait_for)
    finally:
        dev_cluster.kubectl("delete", "namespace", other, "--wait=false", "--ignore-not-found")


def _scenarios(cluster: Any, operator: Any, world: World, ns: str, other: str, wait_for: Any) -> None:
    k = cluster.kubectl
    k("-n", ns, "apply", "-f", "-", stdin=docker_secret_yaml("acr-wrong", world.acr, world.acr_puller[0], "nope"))
    k("-n", ns, "apply", "-f", "-", stdin=docker_secret_yaml("acr-good", world.acr, *world.acr_puller))
    k("-n", ns, "apply", "-f", "-", stdin=docker_secret_yaml("basic-cred", world.basic, *world.basic_user))
    k("-n", ns, "apply", "-f", "-", stdin=docker_secret_yaml("acr-old", world.myacr, world.acr_puller[0], "nope"))
    k("-n", ns, "apply", "-f", "-", stdin=docker_secret_yaml("ci-off", world.myacr, *world.acr_token_disabled))
    k("-n", ns, "apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "puller"},
        "imagePullSecrets": [{"name": "basic-cred"}]}))
    # A valid secret with this name exists only in another namespace: it must not be used.
    k("-n", other, "apply", "-f", "-", stdin=docker_secret_yaml("elsewhere", world.acr, *world.acr_puller))
    # A malformed pull secret (wrong type, a password in it) gives a diagnosis, not a traceback.
    k("-n", ns, "create", "secret", "generic", "not-docker", "--from-literal=password=opaque-s3cret")

    for name, (spec, _, _) in CASES.items():
        k("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml(name, _fill(spec, world)))
    for name, (_, phase, code) in CASES.items():
        status = wait_status(cluster, wait_for, ns, name)
        assert (status["phase"], status["code"]) == (phase, code), (name, status)
        ready = status["conditions"][0]
        # CamelCase reason (API conventions); the code itself is status.code.
        assert ready["type"] == "Ready" and ready["reason"] == camel_reason(code), ready
        assert ready["status"] == ("True" if phase == "Healthy" else "False")
        assert status["summary"] and status["checks"] is not None
        if phase == "Unhealthy":
            assert status["remediation"]
        for secret in (world.acr_puller[1], world.basic_user[1], "opaque-s3cret", world.acr_token_disabled[1]):
            assert secret not in json.dumps(status)
        if name in ACR_REMEDY:
            assert any(ACR_REMEDY[name] in step for step in status["remediation"]), status

    # kubectl explain reads as a reference.
    explained = k("explain", "registrycheck.spec").stdout
    assert "Login server of the registry" in explained and "intervalSeconds" in explained

    # Printer columns tell the story without -o yaml.
    table = k("-n", ns, "get", "regcheck").stdout
    header = table.splitlines()[0].split()
    assert header[:6] == ["NAME", "REGISTRY", "IMAGE", "PHASE", "CODE", "LAST"], header
    assert any("TAG_NOT_FOUND" in line and "Unhealthy" in line for line in table.splitlines())

    # One event per result, of the promised reasons.
    for name, (_, phase, _) in CASES.items():
        evs = events(cluster, ns, name)
        reason = "CheckSucceeded" if phase == "Healthy" else "CheckFailed"
        assert [e["reason"] for e in evs] == [reason], (name, evs)
        assert all(e.get("count", 1) == 1 for e in evs)

    # Metrics.
    text = operator.metrics()
    assert f'pullhealth_registry_check_healthy{{name="healthy",namespace="{ns}",registry="{world.anon}"}} 1.0' in text
    assert f'pullhealth_registry_check_healthy{{name="missingtag",namespace="{ns}",registry="{world.anon}"}} 0.0' in text
    assert f'pullhealth_registry_check_runs_total{{code="TAG_NOT_FOUND",name="missingtag",namespace="{ns}"}}' in text
    assert 'pullhealth_registry_check_duration_seconds_bucket{le="0.005",probe="dns"}' in text
    assert f'pullhealth_registry_check_last_run_timestamp_seconds{{name="healthy",namespace="{ns}"}}' in text

    # suspend: a suspended RegistryCheck is never checked.
    k("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml("suspended", {"registry": world.anon, "suspend": True}))
    time.sleep(7)  # more than one timer tick
    assert not get(cluster, ns, "suspended").get("status")

    # The CRD's own validation rejects obviously wrong input before the operator sees it.
    bad = cluster.kubectl("-n", ns, "apply", "-f", "-", check=False,
                          stdin=regcheck_yaml("tooshort", {"registry": world.anon, "intervalSeconds": 5}))
    assert bad.returncode != 0 and "intervalSeconds" in bad.stderr

    # Spec update -> re-check at once with the new generation; the fix flips the condition.
    before = get(cluster, ns, "missingtag")["status"]["conditions"][0]["lastTransitionTime"]
    k("-n", ns, "patch", "regcheck", "missingtag", "--type=merge", "-p", '{"spec":{"image":"team/app:v1"}}')
    status = wait_status(cluster, wait_for, ns, "missingtag", generation=2)
    assert status["phase"] == "Healthy"
    assert sorted(e["reason"] for e in events(cluster, ns, "missingtag")) == ["CheckFailed", "CheckSucceeded"]
    assert status["conditions"][0]["status"] == "True"
    assert status["conditions"][0]["lastTransitionTime"] >= before

    # Invalid spec -> phase Invalid with a message, no retry storm.
    k("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml("invalid", {"registry": world.anon, "image": "Bad/Name"}))
    status = wait_status(cluster, wait_for, ns, "invalid")
    assert status["phase"] == "Invalid" and "lowercase" in status["summary"]

    # Delete -> every series of that RegistryCheck is gone.
    series = f'name="dnsfail",namespace="{ns}"'
    assert series in operator.metrics()
    k("-n", ns, "delete", "regcheck", "dnsfail")
    wait_for(lambda: series not in operator.metrics(), "dnsfail series gone", timeout=30)

    # Operator restart -> statuses kept, no duplicate events, no re-check before the interval.
    last = {n: get(cluster, ns, n)["status"]["lastCheckTime"] for n in ("healthy", "nosecret")}
    operator.stop()
    operator.start()
    time.sleep(8)  # more than one timer tick
    for n, stamp in last.items():
        # Unchanged, unless the 30 s interval really passed meanwhile (a slow, shared CI box).
        now = get(cluster, ns, n)["status"]["lastCheckTime"]
        assert now == stamp or _seconds(now) - _seconds(stamp) >= 30, (n, stamp, now)
        assert len(events(cluster, ns, n)) == 1
    assert len(events(cluster, ns, "invalid")) == 1



def test_secret_and_account_names_outside_dns_1123_are_refused_by_the_api_server(
        dev_cluster: Any, operator: Any, world: World, namespace: str) -> None:
    """Issue 21: "." and ".." (other paths of the namespace's API) never reach the operator."""
    for auth in ({"pullSecrets": [".."]}, {"pullSecrets": ["."]}, {"serviceAccountName": ".."},
                 {"serviceAccountName": "a/b"}, {"mode": "serviceAccount", "serviceAccountName": "."}):
        result = dev_cluster.kubectl("-n", namespace, "apply", "-f", "-", check=False,
                                     stdin=regcheck_yaml("dotted", {"registry": world.anon, "auth": auth}))
        assert result.returncode != 0 and "should match" in result.stderr, (auth, result.stderr)
    ok = dev_cluster.kubectl("-n", namespace, "apply", "-f", "-", stdin=regcheck_yaml(
        "dotted", {"registry": world.anon, "auth": {"pullSecrets": ["team.cred-1"], "serviceAccountName": "builder"}}))
    assert ok.returncode == 0
