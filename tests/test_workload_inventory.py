"""Workload image checks, the pure part: which objects and containers, platforms, judging
a probe result, and what to report on a change (pullhealth.workloads.inventory)."""

from __future__ import annotations

from typing import Any

from pullhealth import metrics
from pullhealth.domain import placement
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import make
from pullhealth.domain.model import CheckResult, StepStatus
from pullhealth.domain.reference import parse
from pullhealth.workloads import inventory
from pullhealth.workloads.inventory import Container

IMAGE = "reg.test/team/app:v1"
RUNNING = "reg.test/team/app@sha256:" + "a" * 64
CURRENT = "sha256:" + "b" * 64


def obj(kind: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "metadata": {"uid": "u1", "namespace": "ns", "name": "w", **meta}}
    path = inventory.KINDS[kind][1]
    node = body
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = spec
    return body


def pod_spec(*images: str, init: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]}
    if init:
        spec["initContainers"] = [{"name": "init", "image": init}]
    return spec


OWNED = [{"kind": "Deployment", "name": "d", "uid": "x", "controller": True}]


def test_each_kind_gives_its_template_containers_init_first() -> None:
    for kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"):
        work = inventory.workload(obj(kind, {**pod_spec(IMAGE), "imagePullSecrets": [{"name": "s"}],
                                             "serviceAccountName": "sa"}))
        assert work is not None, kind
        assert [c.key for c in work.containers] == ["containers/c0"]
        assert work.pull_spec == {"imagePullSecrets": [{"name": "s"}], "serviceAccountName": "sa"}
    work = inventory.workload(obj("Job", pod_spec(IMAGE, init="reg.test/init:1")))
    assert work is not None
    assert [(c.list, c.image) for c in work.containers] == [("initContainers", "reg.test/init:1"),
                                                             ("containers", IMAGE)]


def test_owned_replicasets_and_jobs_and_finished_jobs_are_not_checked() -> None:
    assert inventory.workload(obj("ReplicaSet", pod_spec(IMAGE), ownerReferences=OWNED)) is None
    assert inventory.workload(obj("Job", pod_spec(IMAGE), ownerReferences=OWNED)) is None
    done = obj("Job", pod_spec(IMAGE))
    done["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert inventory.workload(done) is None
    # Scaled to zero and suspended: still checked (scale-up is when it bites).
    zero = obj("Deployment", pod_spec(IMAGE))
    zero["spec"]["replicas"] = 0
    assert inventory.workload(zero) is not None
    suspended = obj("CronJob", pod_spec(IMAGE))
    suspended["spec"]["suspend"] = True
    assert inventory.workload(suspended) is not None


def test_objects_being_deleted_are_not_checked() -> None:
    gone = "2026-12-03T20:00:00Z"
    assert inventory.workload(obj("Deployment", pod_spec(IMAGE), deletionTimestamp=gone)) is None
    terminating = running_pod(owned=False)
    assert inventory.workload(terminating) is not None
    terminating["metadata"]["deletionTimestamp"] = gone
    assert inventory.workload(terminating) is None


def running_pod(owned: bool, image_id: str = RUNNING) -> dict[str, Any]:
    pod = obj("Pod", {**pod_spec(IMAGE, "reg.test/side:1"), "nodeName": "n1"},
              **({"ownerReferences": OWNED} if owned else {}))
    pod["status"] = {"phase": "Running", "containerStatuses": [
        {"name": "c0", "imageID": image_id, "state": {"running": {}}},
        {"name": "c1", "imageID": "", "state": {"waiting": {"reason": "ErrImagePull"}}},
    ]}
    return pod


def test_pods_bare_ones_whole_owned_ones_only_their_running_tags() -> None:
    bare = inventory.workload(running_pod(owned=False))
    assert bare is not None and bare.node == "n1"
    assert [(c.name, c.image_id) for c in bare.containers] == [("c0", RUNNING), ("c1", "")]
    owned = inventory.workload(running_pod(owned=True))
    assert owned is not None
    assert [(c.name, c.image_id) for c in owned.containers] == [("c0", RUNNING)]
    # A config digest (no repository) says nothing about the tag: an owned pod has nothing to check.
    assert inventory.workload(running_pod(owned=True, image_id="sha256:" + "c" * 64)) is None


def test_hostile_objects_are_read_defensively() -> None:
    for body in ({}, {"kind": "Deployment"}, {"kind": "Deployment", "metadata": "x"},
                 obj("Deployment", {"containers": "nope"}), obj("Deployment", {"containers": [None, {"image": 3}]}),
                 {**obj("Deployment", pod_spec(IMAGE)), "kind": "Secret"}, obj("Deployment", pod_spec("x" * 2000))):
        assert inventory.workload(body) is None
    many = inventory.workload(obj("Deployment", pod_spec(*[IMAGE] * 50)))
    assert many is not None and len(many.containers) == inventory.MAX_CONTAINERS


def node(name: str, arch: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
                                                  **labels}}}


def platforms(nodes: list[dict[str, Any]], work: inventory.Workload, default: str) -> tuple[str, ...]:
    """What a workload check is run for: its pull spec's placement, its pod's node."""
    return placement.node_platforms(nodes, work.pull_spec, default, work.node)


def test_platforms_follow_the_node_selector_and_a_pods_node() -> None:
    nodes = [node("a", "amd64"), node("b", "arm64", pool="arm")]
    work = inventory.workload(obj("Deployment", pod_spec(IMAGE)))
    assert work is not None
    assert platforms(nodes, work, "linux/amd64") == ("linux/amd64", "linux/arm64")
    selected = inventory.workload(obj("Deployment", {**pod_spec(IMAGE), "nodeSelector": {"pool": "arm"}}))
    assert selected is not None and platforms(nodes, selected, "linux/amd64") == ("linux/arm64",)
    pod = inventory.workload(running_pod(owned=False))
    assert pod is not None and platforms([*nodes, node("n1", "arm64")], pod, "x") == ("linux/arm64",)
    assert platforms([], work, "linux/amd64") == ("linux/amd64",)
    # Required node affinity narrows too (kept compactly in the workload, and part of its inputs).
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}]}}}
    pinned = inventory.workload(obj("Deployment", {**pod_spec(IMAGE), "affinity": {
        **affinity, "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}}}))
    assert pinned is not None and platforms(nodes, pinned, "linux/amd64") == ("linux/arm64",)
    assert pinned.pull_spec == {"affinity": affinity} and pinned.inputs != work.inputs


def ok(digest: str = CURRENT, platforms: str = "") -> Any:
    details = {"digest": digest, **({"platforms": platforms} if platforms else {})}
    check = CheckResult(name="manifest", status=StepStatus.PASSED, details=details)
    return make(Code.OK, {"registry": "reg.test", "verdict": "ok"}, checks=[check])


def test_judge_platform_coverage_over_every_node_platform() -> None:
    container, image = Container("containers", "app", IMAGE), parse(IMAGE)
    index = ok(platforms="linux/amd64")
    assert inventory.judge(container, image, index, ["linux/amd64"]).code is Code.OK
    missing = inventory.judge(container, image, index, ["linux/amd64", "linux/arm64"])
    assert missing.code is Code.PLATFORM_NOT_FOUND
    assert "linux/arm64" in missing.summary and "available: linux/amd64" in missing.summary
    # A single manifest (no index) says nothing about its platform: not judged.
    assert inventory.judge(container, image, ok(), ["linux/amd64", "linux/arm64"]).code is Code.OK


def test_judge_a_running_tag_deleted_or_moved() -> None:
    running = Container("containers", "app", IMAGE, RUNNING)
    image = parse(IMAGE)
    same = inventory.judge(running, image, ok(digest=RUNNING.rpartition("@")[2]), ["linux/amd64"])
    assert same.code is Code.OK
    moved = inventory.judge(running, image, ok(), ["linux/amd64"])
    assert moved.code is Code.TAG_MOVED and CURRENT in moved.summary and RUNNING.rpartition("@")[2] in moved.summary
    gone = make(Code.TAG_NOT_FOUND, {"registry": "reg.test"})
    deleted = inventory.judge(running, image, gone, ["linux/amd64"])
    assert deleted.code is Code.TAG_DELETED and "container app" in deleted.summary
    # Not running it: the tag's absence is the plain TAG_NOT_FOUND.
    assert inventory.judge(Container("containers", "app", IMAGE), image, gone, ["x"]).code is Code.TAG_NOT_FOUND
    # A digest reference cannot move.
    pinned = "reg.test/team/app@" + CURRENT
    assert inventory.judge(Container("containers", "app", pinned, RUNNING), parse(pinned), ok("sha256:" + "d" * 64),
                           ["linux/amd64"]).code is Code.OK


def deployment() -> inventory.Workload:
    work = inventory.workload(obj("Deployment", pod_spec(IMAGE, "reg.test/side:1")))
    assert work is not None
    return work


def test_plan_posts_only_on_a_change() -> None:
    work = deployment()
    app, side = work.containers
    tag = make(Code.TAG_NOT_FOUND, {"registry": "reg.test"})
    first = inventory.plan(work, {}, [(app, ok()), (side, tag)])
    assert first.state == {"containers/c0": "OK", "containers/c1": "TAG_NOT_FOUND"}
    assert [(k, c, e.reason, e.type) for k, c, e in first.events] == [
        ("containers/c1", "TAG_NOT_FOUND", "ImageUnpullable", "Warning")]
    event = first.events[0][2]
    assert event.regarding.kind == "Deployment" and event.regarding.api_version == "apps/v1"
    assert event.regarding.field_path == "spec.template.spec.containers{c1}"
    assert event.note.startswith("TAG_NOT_FOUND for container c1 (reg.test/side:1): ")
    assert first.findings == (("containers/c1", "TAG_NOT_FOUND"),)
    # The same results again: nothing to post.
    assert inventory.plan(work, first.state, [(app, ok()), (side, tag)]).events == ()
    # Fixed: ImagePullable; the finding is gone.
    fixed = inventory.plan(work, first.state, [(app, ok()), (side, ok())])
    assert [(e.reason, e.type) for _, _, e in fixed.events] == [("ImagePullable", "Normal")]
    assert fixed.findings == ()
    # The name is the same for a retry (a restarted operator finds the Event), another for a new code.
    again = inventory.plan(work, {}, [(app, ok()), (side, tag)])
    assert again.events[0][2].name == event.name and again.events[0][2].occurrence == event.occurrence


def test_plan_keeps_what_was_reported_when_the_operator_could_not_tell() -> None:
    work = deployment()
    app, side = work.containers
    timeout = make(Code.CONNECT_TIMEOUT, {"registry": "reg.test"})
    refused = make(Code.DESTINATION_REFUSED, {"registry": "reg.test"})
    plan = inventory.plan(work, {"containers/c0": "TAG_NOT_FOUND"}, [(app, timeout), (side, refused)])
    assert plan.events == () and plan.state == {"containers/c0": "TAG_NOT_FOUND"}
    assert plan.findings == (("containers/c0", "TAG_NOT_FOUND"),)


def test_plan_reasons_of_a_running_tag() -> None:
    work = deployment()
    app = work.containers[0]
    moved = make(Code.TAG_MOVED, {"registry": "reg.test"})
    deleted = make(Code.TAG_DELETED, {"registry": "reg.test"})
    assert [(e.reason, e.type) for _, _, e in inventory.plan(work, {}, [(app, moved)]).events] == [
        ("ImageTagMoved", "Normal")]
    assert [(e.reason, e.type) for _, _, e in inventory.plan(work, {}, [(app, deleted)]).events] == [
        ("ImageTagDeleted", "Warning")]


def test_the_problem_gauge_is_bounded_and_replaced_per_workload() -> None:
    from prometheus_client import CollectorRegistry, Gauge

    gauge = Gauge("t_problems", "t", ["namespace", "kind", "workload", "container", "code"],
                  registry=CollectorRegistry())
    problems = metrics.WorkloadProblems(gauge, limit=2)

    def exported() -> set[tuple[str, ...]]:
        return {tuple(s.labels.values()) for m in gauge.collect() for s in m.samples}

    problems.set("u1", "ns", "Deployment", "a", [("app", "TAG_NOT_FOUND")])
    problems.set("u2", "ns", "Deployment", "b", [("app", "TAG_NOT_FOUND"), ("side", "AUTH_REQUIRED")])
    assert len(exported()) == 2  # the bound: the rest counted as unexported
    assert metrics.WORKLOAD_PROBLEMS_UNEXPORTED._value.get() == 1
    problems.set("u1", "ns", "Deployment", "a", [])
    problems.set("u2", "ns", "Deployment", "b", [("app", "TAG_NOT_FOUND"), ("side", "AUTH_REQUIRED")])
    assert exported() == {("ns", "Deployment", "b", "app", "TAG_NOT_FOUND"),
                          ("ns", "Deployment", "b", "side", "AUTH_REQUIRED")}
    problems.forget("u2")
    assert exported() == set()
    assert metrics.WORKLOAD_PROBLEMS_UNEXPORTED._value.get() == 0
