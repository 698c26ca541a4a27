"""Scale: kubelet's back-off churn costs the API server nothing; kubelet's pull-failure
Events reach diagnosis through one watch (bench/scale.py and bench/churn.py measure it)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import kubernetes
import pytest

from pullhealth.eventwatch import KubeletFailures
from support.kubelet import NODE, ensure_node, fail_pull, kubelet_message, make_pod
from support.world import World

# What diagnosing a pod reads and writes (verb, resource).
POD_DIAGNOSIS = {("GET", "nodes"), ("GET", "serviceaccounts"), ("GET", "secrets"), ("LIST", "events"),
                 ("PATCH", "pods"), ("POST", "events.k8s.io/events")}


@pytest.fixture(scope="module")
def api(dev_cluster: Any) -> kubernetes.client.CoreV1Api:
    client = kubernetes.config.new_client_from_config(config_file=str(dev_cluster.kubeconfig))
    core = kubernetes.client.CoreV1Api(client)
    ensure_node(core)
    return core


def requests(api: Any) -> Counter[tuple[str, str]]:
    """The API server's own apiserver_request_total by (verb, [group/]resource)."""
    client = api.api_client
    method, url, headers, body, post = client.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    text = client.call_api(method, url, headers, body, post, _request_timeout=30).read().decode()
    out: Counter[tuple[str, str]] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels_text, value = line[len("apiserver_request_total{"):].rsplit("} ", 1)
            labels = {k: v.strip('"') for k, v in (p.split("=", 1) for p in labels_text.split(",") if "=" in p)}
            if labels.get("resource") and not labels.get("subresource"):
                what = (labels["group"] + "/" if labels.get("group") else "") + labels["resource"]
                out[(labels["verb"], what)] += int(float(value))
    return out


def quiet(api: Any, settle: float = 2.0, timeout: float = 60.0) -> Counter[tuple[str, str]]:
    """The request counts once the pod-diagnosis requests stop changing for ``settle`` s.

    The API server counts requests cluster-wide: a shared operator restarted by an earlier
    module re-diagnoses that module's failing pods for a while, and those requests must
    not be charged to this test.
    """
    deadline = time.monotonic() + timeout
    last = requests(api)
    while True:
        time.sleep(settle)
        now = requests(api)
        if all(now[key] == last[key] for key in POD_DIAGNOSIS) or time.monotonic() > deadline:
            return now
        last = now


def test_backoff_churn_costs_no_api_request(operator: Any, world: World, namespace: str, api: Any,
                                            wait_for: Any) -> None:
    image = f"{world.anon}/team/app:churn-missing"
    message = kubelet_message("tag_not_found", image)
    pod = make_pod(api, namespace, "churn", image)
    fail_pull(api, namespace, pod, image, message)
    wait_for(lambda: (api.read_namespaced_pod("churn", namespace).metadata.annotations or {})
             .get("pullhealth.io/diagnosis"), "the pod diagnosed")
    before = quiet(api)  # our own patch's event (and anyone else's work) is behind us
    chains = operator.probe_requests(world.anon)
    text = message.split(": ", 1)[-1]
    for i in range(10):
        reason = ("ImagePullBackOff", "ErrImagePull")[i % 2]
        api.patch_namespaced_pod_status("churn", namespace, {"status": {"containerStatuses": [{
            "name": "app", "image": image, "imageID": "", "ready": False, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": text}}}]}})
        time.sleep(0.2)
    time.sleep(2.0)
    after = requests(api)
    spent = {key: after[key] - before[key] for key in POD_DIAGNOSIS if after[key] != before[key]}
    assert spent == {}, spent
    assert operator.probe_requests(world.anon) == chains
    assert api.read_namespaced_pod("churn", namespace).metadata.annotations["pullhealth.io/diagnosis"] == "TAG_NOT_FOUND"


def test_kubelet_failures_come_from_one_watch(dev_cluster: Any, namespace: str, api: Any, wait_for: Any) -> None:
    watch = KubeletFailures(api.api_client, [namespace])
    watch.start()
    try:
        wait_for(lambda: watch.synced, "the first list")
        assert watch.messages("no-such-uid") == []
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def failed(message: str) -> Any:
            return api.create_namespaced_event(namespace, {
                "metadata": {"generateName": "p."},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "p", "namespace": namespace,
                                   "uid": "pod-uid-1"},
                "reason": "Failed", "type": "Warning", "message": message,
                "source": {"component": "kubelet", "host": NODE}, "firstTimestamp": now, "lastTimestamp": now})

        pulled = failed('Failed to pull image "r.io/a:1": not found')
        failed("Error: container exited")  # a Failed Event that is not about a pull
        wait_for(lambda: watch.messages("pod-uid-1"), "the pull failure seen")
        assert watch.messages("pod-uid-1") == ['Failed to pull image "r.io/a:1": not found']
        api.delete_namespaced_event(pulled.metadata.name, namespace)
        wait_for(lambda: watch.messages("pod-uid-1") == [], "the deleted Event forgotten")
    finally:
        watch.stop()


def test_pods_of_one_namespace_share_their_reads(operator: Any, world: World, namespace: str, api: Any,
                                                 wait_for: Any) -> None:
    image = f"{world.anon}/team/app:shared-reads"
    message = kubelet_message("tag_not_found", image)
    before = quiet(api)
    for i in range(20):
        fail_pull(api, namespace, make_pod(api, namespace, f"shared-{i}", image), image, message)

    def all_done() -> bool:
        items = api.list_namespaced_pod(namespace).items
        return all((p.metadata.annotations or {}).get("pullhealth.io/diagnosis") for p in items)

    wait_for(all_done, "20 pods diagnosed", timeout=120)
    time.sleep(1.0)
    after = requests(api)
    spent = {key: after[key] - before[key] for key in POD_DIAGNOSIS}
    # One Node and one ServiceAccount read for all 20 (none when still cached), kubelet's
    # Events from the watch; one patch and one Event per pod.
    assert spent[("GET", "nodes")] <= 1 and spent[("GET", "serviceaccounts")] <= 1, spent
    # kubelet's Events come from the one watch: no list per pod (20 pods would be 20 lists).
    # The watch itself re-lists when the API server ends it, which may fall in this window.
    assert spent[("LIST", "events")] <= 1, spent
    # (a patch racing the test's status write is retried: 409 then 200)
    assert spent[("PATCH", "pods")] >= 20 and spent[("POST", "events.k8s.io/events")] == 20, spent
