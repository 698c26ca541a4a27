"""Recovery you can see (issue 24), against the real API server and registry; the test plays kubelet.

A pod fails on a tag that does not exist yet (kubelet's recorded text, e2e/test_pods.py's
way); the tag is pushed to the world's registry: the operator's next check of the pod's own
pull path finds it fixed, annotates ``pullhealth.io/recoverable-since`` and posts one
``PullRecoverable`` Event saying by when kubelet retries. With the admin's
``--restart-recovered-pods labelled`` a ReplicaSet's pod in a labelled namespace is
deleted (its ReplicaSet makes another); a bare pod, and a ReplicaSet's pod in an unlabelled
namespace, never are.

With ``--restart-recovered-pods all`` and the chart's RBAC narrowed (``support.chart.limited_account``:
``delete`` on pods removed, ``create`` on Events removed, or the chart's role with
``pods.restartRecovered`` off): the pod is announced but never deleted, the refusal is one
log line, not one per pod or per recheck, and the refused writes are counted. An admission
policy refusing the delete with 422 (not RBAC's 403) is one WARNING, and nothing is deleted.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from support.chart import Installed, install_chart, limited_account, render, wait_deletes_refused
from support.helm import require_helm
from support.kubelet import NODE, annotations, fail_pull, kubelet_message, make_pod
from support.operatorproc import OperatorProcess, records
from support.world import World

RECOVERABLE = "pullhealth.io/recoverable-since"
RETRY_BY = "pullhealth.io/retry-by"
LABEL = "pullhealth.io/restart-recovered-pods"


@pytest.fixture(scope="module")
def recovering(dev_cluster: Any, world: World, operator: Any,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator with a short pod interval and restarts in labelled namespaces (the
    session's operator is stopped meanwhile: one writer)."""
    log = tmp_path_factory.mktemp("recovery") / "operator.log"
    with OperatorProcess.others_stopped():
        op = OperatorProcess(dev_cluster.kubeconfig, world, log, [
            "--pod-interval", "2", "--restart-recovered-pods", "labelled", "--restarts-per-minute", "5"])
        with op:
            yield op
        op.check_log_clean()


def replica_set(apps: Any, ns: str, name: str, image: str) -> None:
    """A ReplicaSet whose pods are bound to the kubelet-less node (the test plays kubelet)."""
    apps.create_namespaced_replica_set(ns, {
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": image}]}}}})


def live_pods(api: Any, ns: str, app: str) -> list[dict[str, Any]]:
    items = api.list_namespaced_pod(ns, label_selector=f"app={app}").items
    return [dict(api.api_client.sanitize_for_serialization(p)) for p in items]


def events_of(api: Any, ns: str, uid: str, reason: str) -> list[Any]:
    items = api.list_namespaced_event(ns, field_selector=f"involvedObject.uid={uid}").items
    return [e for e in items if e.reason == reason]


def metric(op: OperatorProcess, action: str) -> float:
    return counter(op, f'pullhealth_pod_recoveries_total{{action="{action}"}}')


def counter(op: OperatorProcess, series: str) -> float:
    for line in op.metrics().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_fixed_cause_is_announced_and_opted_in_pods_restart(
        dev_cluster: Any, recovering: OperatorProcess, world: World, namespace: str, api: Any,
        wait_for: Any) -> None:
    apps = kubernetes.client.AppsV1Api(api.api_client)
    unlabelled = f"{namespace}-u"
    dev_cluster.kubectl("label", "namespace", namespace, f"{LABEL}=true")
    dev_cluster.kubectl("create", "namespace", unlabelled)
    try:
        tag = f"soon-{uuid.uuid4().hex[:8]}"
        image = f"{world.anon}/team/app:{tag}"
        message = kubelet_message("tag_not_found", image)
        replica_set(apps, namespace, "web", image)
        replica_set(apps, unlabelled, "web", image)
        failing: dict[tuple[str, str], dict[str, Any]] = {}
        for ns in (namespace, unlabelled):
            [pod] = wait_for(lambda n=ns: live_pods(api, n, "web"), f"the ReplicaSet's pod in {ns}")
            fail_pull(api, ns, pod, image, message)
            failing[(ns, "web")] = pod
        bare = make_pod(api, namespace, "bare", image)
        fail_pull(api, namespace, bare, image, message)
        failing[(namespace, "bare")] = bare
        failed_at = datetime.now(UTC)
        for (ns, _), pod in failing.items():
            name = pod["metadata"]["name"]
            got = wait_for(lambda n=ns, p=name: annotations(api, n, p).get("pullhealth.io/diagnosis"),
                           f"diagnosis of {ns}/{name}", timeout=60)
            assert got == "TAG_NOT_FOUND"
        # Not fixed yet: re-checked every interval, nothing announced.
        time.sleep(5)
        for (ns, _), pod in failing.items():
            assert RECOVERABLE not in annotations(api, ns, pod["metadata"]["name"])
        assert metric(recovering, "announced") == 0.0

        world.registries["anon"].push_image("team/app", tag)

        for (ns, _), pod in failing.items():
            uid = pod["metadata"]["uid"]
            [event] = wait_for(lambda n=ns, u=uid: events_of(api, n, u, "PullRecoverable"),
                               f"PullRecoverable on {ns}/{pod['metadata']['name']}", timeout=90)
            assert event.type == "Normal" and event.involved_object.field_path == "spec.containers{app}"
            assert event.reporting_component == "pullhealth.io/operator"
            assert event.message.startswith("was TAG_NOT_FOUND: the pull of container app works again")
            assert "kubelet retries by about " in event.message
        # The bare pod: annotated with when kubelet retries (its Failed Event + 300 s, to the second).
        ann = annotations(api, namespace, "bare")
        assert ann["pullhealth.io/diagnosis"] == "TAG_NOT_FOUND"
        retry = datetime.strptime(ann[RETRY_BY], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert timedelta(seconds=290) <= retry - failed_at <= timedelta(seconds=310), (retry, failed_at)
        assert ann[RETRY_BY] in events_of(api, namespace, bare["metadata"]["uid"], "PullRecoverable")[0].message
        datetime.strptime(ann[RECOVERABLE], "%Y-%m-%dT%H:%M:%SZ")

        # The labelled namespace's ReplicaSet pod is deleted (Event first), a new one made.
        old = failing[(namespace, "web")]
        old_uid = old["metadata"]["uid"]

        def replaced() -> bool:
            pods = live_pods(api, namespace, "web")
            gone = all(p["metadata"]["uid"] != old_uid or p["metadata"].get("deletionTimestamp") for p in pods)
            return gone and any(p["metadata"]["uid"] != old_uid for p in pods)

        wait_for(replaced, "the labelled namespace's pod deleted and replaced", timeout=60)
        [notice] = events_of(api, namespace, old_uid, "PullRecoveryRestart")
        assert notice.type == "Normal" and "its controller ReplicaSet/web creates one" in notice.message
        assert "was TAG_NOT_FOUND" in notice.message
        assert metric(recovering, "deleted") == 1.0
        # Announced once each, however many rechecks ran since.
        time.sleep(6)
        for (ns, _), pod in failing.items():
            assert len(events_of(api, ns, pod["metadata"]["uid"], "PullRecoverable")) == 1
        assert metric(recovering, "announced") == 3.0
        # Never a bare pod, never a namespace the admin's mode does not cover.
        bare_now = api.read_namespaced_pod("bare", namespace)
        assert bare_now.metadata.uid == bare["metadata"]["uid"] and bare_now.metadata.deletion_timestamp is None
        [kept] = live_pods(api, unlabelled, "web")
        assert kept["metadata"]["uid"] == failing[(unlabelled, "web")]["metadata"]["uid"]
        assert not kept["metadata"].get("deletionTimestamp")
        assert not events_of(api, namespace, bare["metadata"]["uid"], "PullRecoveryRestart")
        assert metric(recovering, "deleted") == 1.0

        # The bare pod finally runs: every annotation of ours goes, PullRecovered says so.
        from support.kubelet import recover
        recover(api, namespace, "bare", image)
        wait_for(lambda: not any(k.startswith("pullhealth.io/") for k in annotations(api, namespace, "bare")),
                 "annotations removed", timeout=30)
        wait_for(lambda: events_of(api, namespace, bare["metadata"]["uid"], "PullRecovered"),
                 "PullRecovered", timeout=30)
    finally:
        dev_cluster.kubectl("delete", "namespace", unlabelled, "--wait=false", "--ignore-not-found")


def test_a_node_local_cause_is_never_announced(recovering: OperatorProcess, world: World, namespace: str,
                                               api: Any, wait_for: Any) -> None:
    # A pull cut off by kubelet's deadline (PULL_TIMED_OUT) of an image the registry serves:
    # the operator's healthy path says nothing about the node's pull.
    image = f"{world.anon}/library/alpine:3.19"
    pod = make_pod(api, namespace, "slow", image)
    fail_pull(api, namespace, pod, image, f'Failed to pull image "{image}": rpc error: code = DeadlineExceeded '
              "desc = context deadline exceeded")
    got = wait_for(lambda: annotations(api, namespace, "slow").get("pullhealth.io/diagnosis"), "diagnosis")
    assert got in ("PULL_TIMED_OUT", "CONNECT_TIMEOUT")
    time.sleep(6)  # several pod intervals
    assert RECOVERABLE not in annotations(api, namespace, "slow")
    assert not events_of(api, namespace, pod["metadata"]["uid"], "PullRecoverable")


# --- RBAC refusals of the opt-in restart ----------------------------------------------

DELETE_REFUSED = "cannot delete the recoverable pod (forbidden)"
EVENT_REFUSED = "cannot post the PullRecoveryRestart Event (RBAC)"
NAMESPACE_REFUSED = "labels (RBAC)"
FORBIDDEN = 'pullhealth_patch_forbidden_total{{resource="{}"}}'


@pytest.fixture(scope="module")
def restart_chart(dev_cluster: Any) -> Iterator[Installed]:
    """The chart with ``pods.restartRecovered=all`` (its ClusterRole grants delete on pods and
    get on namespaces), its own names: narrowed copies of its role are what the tests run with."""
    with install_chart(dev_cluster, require_helm(), "pullhealth-rr", "fullnameOverride=pullhealth-rr",
                       "pods.restartRecovered=all") as chart:
        yield chart


def no_pod_delete(rule: dict[str, Any]) -> None:
    if rule["resources"] == ["pods"]:
        rule["verbs"] = [v for v in rule["verbs"] if v != "delete"]


def no_event_create(rule: dict[str, Any]) -> None:
    if rule["apiGroups"] == ["events.k8s.io"]:
        rule["verbs"] = [v for v in rule["verbs"] if v != "create"]


def recovering_replica_sets(api: Any, world: World, ns: str, names: tuple[str, ...],
                            wait_for: Callable[..., Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """ReplicaSets whose pods fail on a tag that does not exist yet, each diagnosed by the
    running operator; returns the tag (not pushed yet) and the pods by ReplicaSet."""
    apps = kubernetes.client.AppsV1Api(api.api_client)
    tag = f"soon-{uuid.uuid4().hex[:8]}"
    image = f"{world.anon}/team/app:{tag}"
    pods: dict[str, dict[str, Any]] = {}
    for name in names:
        replica_set(apps, ns, name, image)
        [pods[name]] = wait_for(lambda n=name: live_pods(api, ns, n), f"the ReplicaSet {name}'s pod")
        fail_pull(api, ns, pods[name], image, kubelet_message("tag_not_found", image))
    for pod in pods.values():
        name = pod["metadata"]["name"]
        got = wait_for(lambda p=name: annotations(api, ns, p).get("pullhealth.io/diagnosis"),
                       f"diagnosis of {name}", timeout=60)
        assert got == "TAG_NOT_FOUND"
    return tag, pods


def assert_kept(api: Any, ns: str, pods: dict[str, dict[str, Any]]) -> None:
    """Every pod still the one created, not being deleted, and announced recoverable."""
    for app, pod in pods.items():
        [now] = live_pods(api, ns, app)
        assert now["metadata"]["uid"] == pod["metadata"]["uid"], f"{app}'s pod was replaced"
        assert not now["metadata"].get("deletionTimestamp"), f"{app}'s pod is being deleted"
        assert RECOVERABLE in (now["metadata"].get("annotations") or {})


@contextlib.contextmanager
def restarting_operator(dev_cluster: Any, restart_chart: Installed, world: World, tmp_path: Path,
                        narrow: Callable[[dict[str, Any]], None]) -> Iterator[OperatorProcess]:
    """The only operator running: the restart chart's role narrowed by ``narrow``, restarts
    on in every namespace, pods rechecked every second."""
    with OperatorProcess.others_stopped(), \
            limited_account(dev_cluster, restart_chart, tmp_path, narrow) as kubeconfig, \
            OperatorProcess(kubeconfig, world, tmp_path / "operator.log", [
                "--pod-interval", "2", "--restart-recovered-pods", "all"]) as op:
        yield op


def announced_recoverable(api: Any, world: World, ns: str, wait_for: Callable[..., Any]) -> dict[str, dict[str, Any]]:
    """Two ReplicaSets' pods failing on a tag, the tag pushed, both announced PullRecoverable."""
    tag, pods = recovering_replica_sets(api, world, ns, ("web", "api"), wait_for)
    world.registries["anon"].push_image("team/app", tag)
    for pod in pods.values():
        wait_for(lambda u=pod["metadata"]["uid"]: events_of(api, ns, u, "PullRecoverable"),
                 f"PullRecoverable on {pod['metadata']['name']}", timeout=90)
    return pods


def errors_of(op: OperatorProcess) -> list[str]:
    return [str(r.get("message")) for r in records(op.lines()) if r.get("severity") in ("error", "fatal")]


@pytest.mark.parametrize("narrow", [no_pod_delete, None], ids=["delete-removed", "chart-value-off"])
def test_a_refused_delete_keeps_the_pod_announced_and_is_logged_once(
        dev_cluster: Any, restart_chart: Installed, world: World, namespace: str, api: Any,
        wait_for: Any, tmp_path: Path, narrow: Callable[[dict[str, Any]], None] | None) -> None:
    """Without delete on pods (an admin removed it, or the chart's role with
    pods.restartRecovered off, which also lacks get on namespaces): two recovered ReplicaSet
    pods are announced as usual and kept; one ERROR saying what to grant, not one per pod or
    per recheck; a new failing pod is still diagnosed afterwards."""
    off = next(o for o in render(require_helm(), restart_chart.namespace) if o["kind"] == "ClusterRole")

    def chart_value_off(rule: dict[str, Any]) -> None:
        """Exactly the rules the chart renders with pods.restartRecovered off."""
        if rule not in off["rules"]:
            rule["verbs"] = []

    refusal = DELETE_REFUSED if narrow is no_pod_delete else NAMESPACE_REFUSED
    with restarting_operator(dev_cluster, restart_chart, world, tmp_path, narrow or chart_value_off) as op:
        pods = announced_recoverable(api, world, namespace, wait_for)
        wait_for(lambda: refusal in op.text(), "the refusal logged", timeout=30)
        time.sleep(8)  # several rechecks of both pods (every second with --pod-interval 2)

        said = [m for m in errors_of(op) if refusal in m]
        assert len(said) == 1, said
        if narrow is no_pod_delete:
            assert 'cannot delete resource "pods"' in said[0], said  # the API server's own words
            assert "grant delete on pods" in said[0] and "pods.restartRecovered" in said[0], said
            # One attempt (of either pod), then none for 10 minutes (hot retries: one a second).
            assert counter(op, FORBIDDEN.format("pods")) == 1.0
        else:
            assert 'cannot get resource "namespaces"' in said[0], said
            assert "grant get on namespaces" in said[0] and "pods.restartRecovered" in said[0], said
            assert counter(op, FORBIDDEN.format("pods")) == 0.0  # no delete tried
        assert errors_of(op) == said, errors_of(op)
        assert "Traceback" not in op.text()
        assert_kept(api, namespace, pods)
        for pod in pods.values():
            uid = pod["metadata"]["uid"]
            assert len(events_of(api, namespace, uid, "PullRecoverable")) == 1
            # No Event announces a deletion the API server refuses.
            assert not events_of(api, namespace, uid, "PullRecoveryRestart")
        assert metric(op, "announced") >= len(pods) and metric(op, "deleted") == 0.0

        # The rest of the operator carries on: a new failing pod is diagnosed.
        image = f"{world.anon}/team/app:never-{uuid.uuid4().hex[:6]}"
        fail_pull(api, namespace, make_pod(api, namespace, "later", image), image,
                  kubelet_message("tag_not_found", image))
        got = wait_for(lambda: annotations(api, namespace, "later").get("pullhealth.io/diagnosis"),
                       "a later pod diagnosed", timeout=60)
        assert got == "TAG_NOT_FOUND"
        op.check_log_clean()


def test_a_refused_event_means_no_delete_and_is_logged_once(
        dev_cluster: Any, restart_chart: Installed, world: World, namespace: str, api: Any,
        wait_for: Any, tmp_path: Path) -> None:
    """Without create on Events the operator may delete pods but must not: the
    PullRecoveryRestart Event comes first, and no pod is deleted without it. Annotations are
    written as usual (the pod path's own Events are refused and logged by it)."""
    with restarting_operator(dev_cluster, restart_chart, world, tmp_path, no_event_create) as op:
        tag, pods = recovering_replica_sets(api, world, namespace, ("web", "api"), wait_for)
        world.registries["anon"].push_image("team/app", tag)
        for pod in pods.values():
            name = pod["metadata"]["name"]
            wait_for(lambda p=name: RECOVERABLE in annotations(api, namespace, p), f"{name} announced recoverable",
                     timeout=90)
        wait_for(lambda: EVENT_REFUSED in op.text(), "the refusal logged", timeout=30)
        time.sleep(1)  # the refusal is counted after it is logged
        refused = counter(op, FORBIDDEN.format("events"))
        time.sleep(8)  # several rechecks of both pods

        said = [m for m in errors_of(op) if EVENT_REFUSED in m]
        assert len(said) == 1, said
        assert "grant create on events.k8s.io events" in said[0], said
        assert "No pod is deleted without its Event" in said[0], said
        # Each pod's PullDiagnosed and PullRecoverable (refused, annotated without them) and one
        # PullRecoveryRestart counted, then no attempt for 10 minutes (hot retries: one a second).
        assert refused >= 2 * len(pods) + 1 and counter(op, FORBIDDEN.format("events")) == refused
        assert "Traceback" not in op.text()
        assert_kept(api, namespace, pods)  # the delete was allowed (its dry run was made), not made
        assert metric(op, "announced") >= len(pods) and metric(op, "deleted") == 0.0
        op.check_log_clean()


@contextlib.contextmanager
def refuse_deletes(dev_cluster: Any, ns: str) -> Iterator[None]:
    """A ValidatingAdmissionPolicy (and its binding) refusing every pod delete in ``ns`` with
    ``reason: Invalid``: the API server answers 422, an admission refusal that is not RBAC's."""
    name = f"refuse-deletes-{uuid.uuid4().hex[:6]}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                         "operations": ["DELETE"], "resources": ["pods"]}]},
                 "validations": [{"expression": "false", "reason": "Invalid",
                                  "message": "this namespace keeps its pods (test policy)"}]},
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}},
    }
    k = dev_cluster.kubectl
    k("apply", "-f", "-", stdin=yaml.safe_dump_all([policy, binding]))
    try:
        yield
    finally:
        k("delete", "validatingadmissionpolicybinding", name, "--ignore-not-found", "--wait=false")
        k("delete", "validatingadmissionpolicy", name, "--ignore-not-found", "--wait=false")


def test_an_admission_refusal_of_the_delete_keeps_the_pod_and_is_logged_once(
        dev_cluster: Any, restart_chart: Installed, world: World, namespace: str, api: Any,
        wait_for: Any, tmp_path: Path) -> None:
    """With the chart's full restart RBAC but an admission policy refusing pod deletes with
    422 (not 403): the pods are announced and kept, no PullRecoveryRestart Event is posted
    (the dry run is refused first), and the failure is one WARNING carrying the API server's
    words, not one per attempt."""
    probe = make_pod(api, namespace, "probe", "r.test/a:1")["metadata"]["name"]
    with refuse_deletes(dev_cluster, namespace):
        wait_deletes_refused(dev_cluster, namespace, probe, wait_for)
        with restarting_operator(dev_cluster, restart_chart, world, tmp_path, lambda rule: None) as op:
            pods = announced_recoverable(api, world, namespace, wait_for)
            wait_for(lambda: "cannot delete the recoverable pod (HTTP 422" in op.text(), "the failure logged",
                     timeout=30)
            time.sleep(8)  # several rechecks of both pods (every second with --pod-interval 2)

            said = [str(r.get("message")) for r in records(op.lines())
                    if "cannot delete the recoverable pod" in str(r.get("message"))]
            assert len(said) == 1, said
            assert "this namespace keeps its pods (test policy)" in said[0], said  # the API server's words
            assert "HTTP 422" in said[0] and "1 failed deletion(s)" in said[0], said
            assert not errors_of(op), errors_of(op)
            assert counter(op, FORBIDDEN.format("pods")) == 0.0  # not an RBAC refusal
            assert_kept(api, namespace, pods)
            for pod in pods.values():
                assert not events_of(api, namespace, pod["metadata"]["uid"], "PullRecoveryRestart")
            assert "Traceback" not in op.text()
            op.check_log_clean()
