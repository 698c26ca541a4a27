"""Workload image checks end to end (issue 22): the real API server, the real registries.

The module runs its own operator with ``--workloads`` and short intervals (the session's
operator does not check workloads: the feature is opt-in). Workloads are created in a
fresh namespace; the kube-controller-manager of the dev cluster makes their ReplicaSets,
Jobs and pods (owned: checked through their owner). What must come out: an Event on each
workload whose image cannot be pulled, with the right code, and the gauge's series; none
for the healthy ones; the dashboard's workload panels showing them in a real Prometheus;
a running pod's tag moved and then deleted in the registry noticed within one interval.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from support.chart import render
from support.helm import require_helm
from support.kubelet import NO_KUBELET_TAINT, NODE, docker_secret, ensure_node
from support.operatorproc import OperatorProcess
from support.prometheus import require_prometheus, rule_file, running
from support.world import World

pytestmark = pytest.mark.usefixtures("no_session_operator")

INTERVAL = 10  # --workload-interval and --pod-interval (the shared cache's lifetime)
RATE = 120  # --workload-rate: chains a minute per registry (0.5 s apart)
REASONS = ("ImageUnpullable", "ImageTagDeleted", "ImageTagMoved", "ImagePullable")


@pytest.fixture(scope="module")
def clients(dev_cluster: Any) -> Iterator[tuple[Any, Any, Any]]:
    client = kubernetes.config.new_client_from_config(config_file=str(dev_cluster.kubeconfig))
    core = kubernetes.client.CoreV1Api(client)
    ensure_node(core)
    yield core, kubernetes.client.AppsV1Api(client), kubernetes.client.BatchV1Api(client)


@pytest.fixture(scope="module")
def checker(dev_cluster: Any, world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    dev_cluster.kubectl("apply", "-f", str(Path(__file__).resolve().parents[1] / "crds"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd/registrychecks.pullhealth.io",
                        "--timeout=60s")
    op = OperatorProcess(
        dev_cluster.kubeconfig, world, tmp_path_factory.mktemp("workloads") / "operator.log",
        ["--workloads", "--workload-interval", str(INTERVAL), "--pod-interval", str(INTERVAL),
         "--workload-rate", str(RATE)],
    )
    with op:
        yield op
    op.check_log_clean("rotated")


def template(image: str, *, init: str | None = None, secrets: list[str] | None = None,
             arch: str | None = None, app: str = "x", selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": image}]}
    if init:
        spec["initContainers"] = [{"name": "setup", "image": init}]
    if secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    if arch or selector:
        spec["nodeSelector"] = {**({"kubernetes.io/arch": arch} if arch else {}), **(selector or {})}
    return {"metadata": {"labels": {"app": app}}, "spec": spec}


def deployment(name: str, pod: dict[str, Any], replicas: int = 1, kind: str = "Deployment") -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"matchLabels": pod["metadata"]["labels"]}, "template": pod}
    if kind != "DaemonSet":
        spec["replicas"] = replicas
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def events_of(core: Any, ns: str, name: str) -> list[Any]:
    items = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return [e for e in items if e.reason in REASONS]


def event_with(core: Any, ns: str, name: str, reason: str, code: str) -> Callable[[], Any]:
    return lambda: next((e for e in events_of(core, ns, name)
                         if e.reason == reason and e.message.startswith(code)), None)


def series(op: OperatorProcess, ns: str) -> dict[tuple[str, str, str], str]:
    """(kind, workload, container) -> code of this namespace's gauge series."""
    found = {}
    for line in op.metrics().splitlines():
        if line.startswith("pullhealth_workload_image_problems{") and f'namespace="{ns}"' in line:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            found[(labels["kind"], labels["workload"], labels["container"])] = labels["code"]
    return found


def test_workloads_with_unpullable_images_are_reported(
    checker: OperatorProcess, clients: Any, world: World, namespace: str, wait_for: Any, tmp_path: Path
) -> None:
    core, apps, batch = clients
    ns = namespace
    # A tag of this test alone (it is pushed at the end: other modules' missing tags stay missing).
    gone = f"gone-{uuid.uuid4().hex[:8]}"
    missing = f"{world.anon}/team/app:{gone}"
    good = f"{world.anon}/team/app:v1"
    core.create_namespaced_secret(ns, docker_secret("stale", world.acr, world.acr_puller[0], "rotated"))
    apps.create_namespaced_deployment(ns, deployment("missing-tag", template(missing)))
    apps.create_namespaced_deployment(ns, deployment("scaled-to-zero", template(missing), replicas=0))
    apps.create_namespaced_deployment(
        ns, deployment("wrong-secret", template(f"{world.acr}/team/app:v1", secrets=["stale"])))
    # An index with linux/arm64 only; the workload's pods may run on amd64 nodes only.
    apps.create_namespaced_deployment(
        ns, deployment("no-amd64", template(f"{world.anon}/multi/arm:1", arch="amd64")))
    apps.create_namespaced_deployment(ns, deployment("healthy", template(good)))
    # Their pods are kept off every node (no node has the label): only the template is checked.
    nowhere = {"pullhealth.io/e2e-nowhere": "true"}
    apps.create_namespaced_stateful_set(
        ns, deployment("db", template(missing, app="db", selector=nowhere), kind="StatefulSet"))
    apps.create_namespaced_daemon_set(
        ns, deployment("agent", template(missing, app="agent", selector=nowhere), kind="DaemonSet"))
    apps.create_namespaced_replica_set(  # no Deployment owns it: checked itself
        ns, deployment("lone", template(missing, app="lone", selector=nowhere), kind="ReplicaSet"))
    batch.create_namespaced_cron_job(ns, {
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "suspend": True, "jobTemplate": {"spec": {"template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "job", "image": missing}]}}}}}})
    batch.create_namespaced_job(ns, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "initContainers": [{"name": "setup", "image": missing}],
            "containers": [{"name": "main", "image": good}]}}}})

    expected = [
        ("Deployment", "missing-tag", "app", "TAG_NOT_FOUND"),
        ("Deployment", "scaled-to-zero", "app", "TAG_NOT_FOUND"),
        ("Deployment", "wrong-secret", "app", "CREDENTIALS_REJECTED"),
        ("Deployment", "no-amd64", "app", "PLATFORM_NOT_FOUND"),
        ("CronJob", "nightly", "job", "TAG_NOT_FOUND"),
        ("Job", "migrate", "setup", "TAG_NOT_FOUND"),
        ("StatefulSet", "db", "app", "TAG_NOT_FOUND"),
        ("DaemonSet", "agent", "app", "TAG_NOT_FOUND"),
        ("ReplicaSet", "lone", "app", "TAG_NOT_FOUND"),
    ]
    for kind, name, container, code in expected:
        event = wait_for(event_with(core, ns, name, "ImageUnpullable", code), f"{code} Event on {kind} {name}",
                         timeout=60)
        assert event.type == "Warning"
        assert event.involved_object.kind == kind and event.involved_object.name == name
        assert f"{{{container}}}" in (event.involved_object.field_path or ""), event.involved_object
        assert "rotated" not in event.message
    platform = events_of(core, ns, "no-amd64")[0].message
    assert "linux/amd64" in platform and "linux/arm64" in platform, platform
    def all_series() -> dict[tuple[str, str, str], str] | None:
        found = series(checker, ns)
        return found if len(found) >= len(expected) else None

    got = wait_for(all_series, "gauge series")
    assert got == {(kind, name, container): code for kind, name, container, code in expected}
    shown_on_the_dashboard(checker, tmp_path, ns, expected, wait_for)
    # The healthy workload and the Job's healthy container: no Event, no series.
    assert events_of(core, ns, "healthy") == []
    assert [e for e in events_of(core, ns, "migrate") if "{main}" in (e.involved_object.field_path or "")] == []
    # `pullhealth workloads -n NS` lists them from the operator's Events (exit 1: problems).
    listed = subprocess.run(
        [sys.executable, "-m", "pullhealth", "workloads", "-n", ns, "-o", "json"],
        env={**os.environ, "KUBECONFIG": str(checker.kubeconfig)}, capture_output=True, text=True, timeout=60,
    )
    assert listed.returncode == 1, listed.stderr
    rows = {(r["kind"], r["name"], r["container"]): r["code"] for r in json.loads(listed.stdout)}
    assert rows == {(kind, name, container): code for kind, name, container, code in expected}
    # Re-checks (every INTERVAL s) post nothing more: one Event per change.
    count = sum(len(events_of(core, ns, name)) for _, name, _, _ in expected)
    before = checker.metrics()
    wait_for(lambda: _checks(checker.metrics()) >= _checks(before) + len(expected), "another pass",
             timeout=4 * INTERVAL + 30)
    assert sum(len(events_of(core, ns, name)) for _, name, _, _ in expected) == count
    # Nothing is written to the workloads themselves.
    assert not (apps.read_namespaced_deployment("missing-tag", ns).metadata.annotations or {}).get(
        "pullhealth.io/diagnosis")

    # Fixed: the tag is pushed; the next check posts ImagePullable and drops the series.
    world.registries["anon"].push_image("team/app", gone)
    wait_for(lambda: next((e for e in events_of(core, ns, "missing-tag") if e.reason == "ImagePullable"), None),
             "ImagePullable after the tag was pushed", timeout=4 * INTERVAL + 30)
    wait_for(lambda: ("Deployment", "missing-tag", "app") not in series(checker, ns), "series removed")


@contextlib.contextmanager
def prometheus_on(checker: OperatorProcess, tmp_path: Path, *sets: str) -> Iterator[Any]:
    """A real Prometheus scraping the operator every second with the chart's rules, rendered
    with ``sets`` (an alert's short ``for``)."""
    rendered = render(require_helm(), "pullhealth", "prometheusRule.enabled=true", *sets)
    rules = rule_file(next(o for o in rendered if o["kind"] == "PrometheusRule"))
    prometheus_bin, _ = require_prometheus()
    with running(prometheus_bin, tmp_path, rules, [{
            "job_name": "pullhealth", "scrape_interval": "1s", "scrape_timeout": "1s",
            "static_configs": [{"targets": [f"127.0.0.1:{checker.metrics_port}"]}]}]) as prom:
        yield prom


def shown_on_the_dashboard(checker: OperatorProcess, tmp_path: Path, ns: str,
                           expected: list[tuple[str, str, str, str]], wait_for: Any) -> None:
    """The chart dashboard's workload panels and its PullhealthWorkloadImageUnpullable alert
    (rendered with a 1 s ``for``), evaluated by a real Prometheus scraping the operator: the
    table lists each problem container, the by-code panel counts them, one alert each."""
    board = json.loads((Path(__file__).resolve().parents[1] / "charts" / "pullhealth" / "dashboards"
                        / "pullhealth.json").read_text())
    panels = {p["title"]: p["targets"][0] for p in board["panels"] if p["title"].startswith("Workload")}
    assert len(panels) == 2, panels.keys()
    with prometheus_on(checker, tmp_path, "prometheusRule.workloadImageUnpullableFor=1s") as prom:
        table, by_code = (panels[t]["expr"] for t in sorted(panels, key=lambda t: "by code" in t))

        def rows() -> set[tuple[str, str, str, str]] | None:
            found = {(r["metric"]["kind"], r["metric"]["workload"], r["metric"]["container"], r["metric"]["code"])
                     for r in prom.query(table) if r["metric"].get("namespace") == ns}
            return found if len(found) >= len(expected) else None

        assert wait_for(rows, "the dashboard's workload table") == set(expected)
        counted = {r["metric"]["code"]: float(r["value"][1]) for r in prom.query(by_code)}
        for code in {c for *_, c in expected}:
            assert counted.get(code, 0) >= sum(1 for *_, c in expected if c == code), counted

        def firing() -> set[tuple[str, str, str, str]] | None:
            found = {(a["labels"]["kind"], a["labels"]["workload"], a["labels"]["container"], a["labels"]["code"])
                     for a in prom.alerts("PullhealthWorkloadImageUnpullable") if a["labels"].get("namespace") == ns}
            return found if len(found) >= len(expected) else None

        assert wait_for(firing, "PullhealthWorkloadImageUnpullable for each", timeout=60) == set(expected)


def _checks(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("pullhealth_workload_checks_total "))


def test_a_running_pods_tag_moved_then_deleted_is_reported(
    checker: OperatorProcess, clients: Any, world: World, namespace: str, wait_for: Any, tmp_path: Path
) -> None:
    """A running pod's tag moved (ImageTagMoved), then deleted (ImageTagDeleted, its series,
    and the chart's PullhealthImageTagDeleted firing in a real Prometheus)."""
    core, _, _ = clients
    ns = namespace
    anon = world.registries["anon"]
    tag = f"t{uuid.uuid4().hex[:8]}"
    running = anon.push_image("team/drift", tag)
    image = f"{world.anon}/team/drift:{tag}"
    core.create_namespaced_pod(ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runner"},
                                    "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": image}]}})
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # What kubelet writes once the container runs: the repo digest the tag resolved to.
    core.patch_namespaced_pod_status("runner", ns, {"status": {"phase": "Running", "containerStatuses": [
        {"name": "app", "image": image, "imageID": f"{world.anon}/team/drift@{running}", "ready": True,
         "restartCount": 0, "state": {"running": {"startedAt": started}}}]}})

    # The tag moves (a new push): the running content is no longer what the tag gives.
    moved = anon.push_image("team/drift", tag, platforms=["linux/amd64"])
    assert moved != running
    event = wait_for(event_with(core, ns, "runner", "ImageTagMoved", "TAG_MOVED"), "ImageTagMoved",
                     timeout=60)
    assert event.type == "Normal" and running in event.message and moved in event.message

    # The tag is deleted: noticed within one interval (plus the shared cache's lifetime).
    anon.delete_manifest("team/drift", moved)
    event = wait_for(event_with(core, ns, "runner", "ImageTagDeleted", "TAG_DELETED"), "ImageTagDeleted",
                     timeout=INTERVAL * 1.1 + INTERVAL + 20)
    assert event.type == "Warning" and running in event.message
    got = wait_for(lambda: series(checker, ns).get(("Pod", "runner", "app")) == "TAG_DELETED" or None,
                   "TAG_DELETED series")
    assert got
    with prometheus_on(checker, tmp_path, "prometheusRule.imageTagDeletedFor=1s") as prom:
        alert = wait_for(lambda: next((a for a in prom.alerts("PullhealthImageTagDeleted")
                                       if a["labels"].get("namespace") == ns), None),
                         "PullhealthImageTagDeleted firing", timeout=60)
        assert (alert["labels"]["kind"], alert["labels"]["workload"], alert["labels"]["container"]) == (
            "Pod", "runner", "app"), alert
        assert "runs a tag that no longer exists" in alert["annotations"]["summary"], alert


def test_a_registry_answering_429_is_backed_off(
    checker: OperatorProcess, clients: Any, world: World, namespace: str, wait_for: Any
) -> None:
    """The world's rate-limited registry answers 429 with Retry-After: 30. The workload is
    due every INTERVAL s, yet its registry is asked again only after Retry-After; a 429 is
    the operator's own answer, not the workload's problem: no Event."""
    core, apps, _ = clients
    ns = namespace
    server = world.servers["ratelimit"]
    before = sum(server.hits.values())
    apps.create_namespaced_deployment(ns, deployment("limited", template(f"{world.ratelimit}/team/app:v1")))
    wait_for(lambda: sum(server.hits.values()) > before, "the first request to the rate-limited registry")
    first = sum(server.hits.values())
    time.sleep(2.5 * INTERVAL)  # an observation window: two more re-checks were due in it
    assert sum(server.hits.values()) - first <= 1, server.hits
    assert events_of(core, ns, "limited") == []


def test_a_tainted_pool_counts_only_for_workloads_that_tolerate_it(
    checker: OperatorProcess, clients: Any, world: World, namespace: str, wait_for: Any
) -> None:
    """An amd64 node and an arm64 node tainted ``e2e-arch=arm64:NoSchedule`` (the way a
    dedicated pool is kept for the pods meant for it). The same amd64-only image: the
    workload tolerating the taint may land on arm64 too and is reported PLATFORM_NOT_FOUND;
    the one without the toleration is checked for linux/amd64 alone and is fine."""
    core, apps, _ = clients
    ns = namespace
    label = f"taints-{uuid.uuid4().hex[:6]}"
    pool = {"pullhealth.io/e2e-pool": label}  # these two nodes alone
    arm_only = {"key": "e2e-arch", "value": "arm64", "effect": "NoSchedule"}
    names = (f"pullhealth-e2e-{label}-amd", f"pullhealth-e2e-{label}-arm")
    ensure_node(core, names[0], "amd64", labels=pool)
    ensure_node(core, names[1], "arm64", labels=pool, taints=[arm_only])
    image = f"{world.anon}/multi/amd:1"  # an index with linux/amd64 only

    def workload(name: str, tolerated: list[dict[str, str]], init: str | None = None) -> None:
        pod = template(image, app=name, selector=pool, init=init)
        pod["spec"]["tolerations"] = [{**taint, "operator": "Equal"} for taint in tolerated]
        apps.create_namespaced_deployment(ns, deployment(name, pod, replicas=0))

    try:
        workload("tolerates-arm", [NO_KUBELET_TAINT, arm_only])
        # Seen once the operator's Node watch has the arm64 node (and so the amd64 one before it).
        event = wait_for(event_with(core, ns, "tolerates-arm", "ImageUnpullable", "PLATFORM_NOT_FOUND"),
                         "PLATFORM_NOT_FOUND on the Deployment tolerating the arm64 taint", timeout=60)
        assert "linux/arm64" in event.message, event.message
        # Its init container's missing tag tells when it was checked: the same check's Events.
        workload("stays-off-arm", [NO_KUBELET_TAINT], init=f"{world.anon}/team/app:gone-{uuid.uuid4().hex[:8]}")
        wait_for(event_with(core, ns, "stays-off-arm", "ImageUnpullable", "TAG_NOT_FOUND"),
                 "the other Deployment checked", timeout=60)
        said = [(e.involved_object.field_path, e.message) for e in events_of(core, ns, "stays-off-arm")]
        assert all("{setup}" in (path or "") for path, _ in said), said
        assert ("Deployment", "stays-off-arm", "app") not in series(checker, ns)
    finally:
        for name in names:
            core.delete_node(name)
