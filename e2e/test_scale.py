"""Scale: kubelet's back-off churn costs the API server nothing; kubelet's pull-failure
Events reach diagnosis through one watch (bench/scale.py and bench/churn.py measure it)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from pullhealth.pods.kubeletevents import KubeletFailures
from pullhealth.pods.podstream import pod_stream
from support.audit import AuditLog, Request, counted, in_namespace
from support.kubelet import NODE, fail_pull, kubelet_message, make_pod, recover
from support.operatorproc import OperatorProcess
from support.world import World

# What diagnosing a pod reads and writes (verb, [group/]resource).
POD_DIAGNOSIS = {("GET", "nodes"), ("GET", "serviceaccounts"), ("GET", "secrets"), ("LIST", "events"),
                 ("PATCH", "pods"), ("POST", "events.k8s.io/events")}


@pytest.fixture(scope="module")
def audit(dev_cluster: Any) -> AuditLog:
    """The API server's audit log: requests per namespace and object, whoever else is busy."""
    if dev_cluster.harness is None:
        pytest.skip("counts requests from the dev cluster's audit log (not with --kubeconfig)")
    return AuditLog(dev_cluster.harness.audit_log)


def diagnosis_requests(requests: list[Request], namespace: str) -> list[Request]:
    """The pod-diagnosis requests on ``namespace``'s objects, by clients (not the control
    plane's own: the API server's ServiceAccount admission may GET the account of a pod
    created right after its namespace, before its informer has it)."""
    return [r for r in in_namespace(requests, namespace)
            if r.key in POD_DIAGNOSIS and not r.user.startswith("system:")]


def test_backoff_churn_costs_no_api_request(operator: Any, world: World, namespace: str, api: Any,
                                            audit: AuditLog, wait_for: Any) -> None:
    image = f"{world.anon}/team/app:churn-missing"
    message = kubelet_message("tag_not_found", image)
    start = audit.mark()
    pod = make_pod(api, namespace, "churn", image)
    fail_pull(api, namespace, pod, image, message)
    wait_for(lambda: (api.read_namespaced_pod("churn", namespace).metadata.annotations or {})
             .get("pullhealth.io/diagnosis"), "the pod diagnosed")
    # The diagnosis's own Event and annotation patch are written; their echo is behind us.
    wait_for(lambda: counted(diagnosis_requests(audit.since(start), namespace))[("POST", "events.k8s.io/events")],
             "the diagnosis Event written")
    time.sleep(1.0)
    mark = audit.mark()
    chains = operator.probe_requests(world.anon)
    text = message.split(": ", 1)[-1]
    for i in range(10):
        reason = ("ImagePullBackOff", "ErrImagePull")[i % 2]
        api.patch_namespaced_pod_status("churn", namespace, {"status": {"containerStatuses": [{
            "name": "app", "image": image, "imageID": "", "ready": False, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": text}}}]}})
        time.sleep(0.2)
    time.sleep(2.0)
    churn = audit.since(mark)
    assert [r for r in churn if r.namespace == namespace and r.subresource == "status"], \
        "the churn itself is in the audit log"
    spent = diagnosis_requests(churn, namespace)
    assert spent == [], "\n".join(map(str, spent))
    assert operator.probe_requests(world.anon) == chains
    assert api.read_namespaced_pod("churn", namespace).metadata.annotations["pullhealth.io/diagnosis"] == "TAG_NOT_FOUND"


def test_kubelet_failures_come_from_one_watch(dev_cluster: Any, namespace: str, api: Any, wait_for: Any) -> None:
    watch = KubeletFailures(api.api_client, [namespace])
    assert not watch.settled
    watch.start()
    try:
        wait_for(lambda: watch.watching, "the first list")
        assert watch.settled
        assert watch.messages(namespace, "no-such-uid") == []
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
        wait_for(lambda: watch.messages(namespace, "pod-uid-1"), "the pull failure seen")
        assert watch.messages(namespace, "pod-uid-1") == ['Failed to pull image "r.io/a:1": not found']
        api.delete_namespaced_event(pulled.metadata.name, namespace)
        wait_for(lambda: watch.messages(namespace, "pod-uid-1") == [], "the deleted Event forgotten")
    finally:
        watch.stop()


def test_the_pod_stream_hands_over_only_failing_or_annotated_pods(dev_cluster: Any, namespace: str, api: Any,
                                                                   wait_for: Any) -> None:
    with OperatorProcess.others_stopped():  # the session operator would annotate these pods
        _pod_stream_scenario(namespace, api, wait_for)


def _pod_stream_scenario(namespace: str, api: Any, wait_for: Any) -> None:
    image = "r.test/team/app:missing"
    message = kubelet_message("tag_not_found", image)
    make_pod(api, namespace, "ok", "r.test/team/app:1")
    failing = make_pod(api, namespace, "failing", image)
    fail_pull(api, namespace, failing, image, message)
    make_pod(api, namespace, "annotated", "r.test/team/app:1")
    api.patch_namespaced_pod("annotated", namespace, {"metadata": {"annotations": {
        "pullhealth.io/diagnosis": "TAG_NOT_FOUND"}}})
    got: list[tuple[str, str]] = []
    stream = pod_stream(api.api_client, [namespace], lambda kind, pod: got.append((kind, pod["metadata"]["name"])))
    stream.start()
    try:
        wait_for(lambda: len(got) >= 2, "the first list")
        assert sorted(got) == [("LISTED", "annotated"), ("LISTED", "failing")]
        got.clear()
        api.patch_namespaced_pod("ok", namespace, {"metadata": {"labels": {"touched": "1"}}})
        recover(api, namespace, "failing", image)  # stops mattering: handed over once more
        wait_for(lambda: got, "the recovery")
        api.patch_namespaced_pod("failing", namespace, {"metadata": {"labels": {"touched": "1"}}})
        api.delete_namespaced_pod("annotated", namespace, grace_period_seconds=0)
        wait_for(lambda: ("DELETED", "annotated") in got, "the deletion")
        time.sleep(1.0)
        # The recovered pod once (not its later change), the deleted one, never the healthy one.
        assert [g for g in got if g[1] == "failing"] == [("MODIFIED", "failing")], got
        assert got[-1] == ("DELETED", "annotated") and not [g for g in got if g[1] == "ok"], got
        assert stream.events > len(got) + 2  # every pod event was read; most not handed over
    finally:
        stream.stop()


def test_pods_of_one_namespace_share_their_reads(operator: Any, world: World, namespace: str, api: Any,
                                                 audit: AuditLog, wait_for: Any) -> None:
    image = f"{world.anon}/team/app:shared-reads"
    message = kubelet_message("tag_not_found", image)
    mark = audit.mark()
    for i in range(20):
        fail_pull(api, namespace, make_pod(api, namespace, f"shared-{i}", image), image, message)

    def all_done() -> bool:
        items = api.list_namespaced_pod(namespace).items
        return all((p.metadata.annotations or {}).get("pullhealth.io/diagnosis") for p in items)

    wait_for(all_done, "20 pods diagnosed", timeout=120)
    wait_for(lambda: counted(diagnosis_requests(audit.since(mark), namespace))[("POST", "events.k8s.io/events")]
             >= 20, "20 Events written", timeout=30)
    time.sleep(1.0)
    requests = audit.since(mark)
    ours = diagnosis_requests(requests, namespace)
    spent = counted(ours)
    listing = "\n".join(map(str, ours))
    # The namespace's ServiceAccount and the Node come from the operator's watches of
    # them (cluster-wide, outside this namespace): no read per pod, none at all here.
    accounts = [r for r in ours if r.key == ("GET", "serviceaccounts")]
    assert accounts == [], listing
    nodes = [r for r in requests if r.key == ("GET", "nodes") and r.name == NODE]
    assert nodes == [], "\n".join(map(str, nodes))
    # kubelet's Events come from the one watch (all namespaces at once): no list per pod.
    assert spent[("LIST", "events")] == 0, listing
    # One Event per pod; one patch per pod (a patch racing the test's status write is
    # retried: 409 then 200).
    assert spent[("POST", "events.k8s.io/events")] == 20, listing
    assert sum(1 for r in ours if r.key == ("PATCH", "pods") and r.code == 200) == 20, listing
