"""The chart's alerts, evaluated by a real Prometheus scraping the real operator.

Debian's ``prometheus`` runs on loopback with the scrape job Prometheus Operator would
generate from the chart's rendered ServiceMonitor (``support.prometheus.scrape_config``
translates the rendered object, relabelings included) and the rendered PrometheusRule's
groups as its rule file. The operator runs with a token of the chart's ServiceAccount and
ClusterRole. Through Prometheus' HTTP API the test checks that:

- an unhealthy RegistryCheck fires PullhealthRegistryCheckUnhealthy with the check's own
  ``namespace`` label (honorLabels), not the operator's;
- the alert keeps firing, with the same ``activeAt``, across an operator restart into a
  "new pod" (new address and pod name, as after a rollout), and its series come back from
  the status without a new check;
- PullhealthOperatorAbsent fires while the operator is down and resolves after;
- PullhealthRegistryCheckStale fires when checks stop refreshing the status (the operator
  keeps running, but its right to write the status is revoked);
- PullhealthRegistryBudgetLow fires for a registry whose manifest answers carry Docker
  Hub's ``ratelimit-remaining`` below a tenth of its ``ratelimit-limit`` (the world's
  ``hub``: a real registry behind a proxy adding the headers), labelled with the
  registry's name (the chart's ``metrics.registries``), and resolves when a recheck reads
  a higher count.

To keep each test under two minutes the chart is rendered with short scrape intervals
(1 s) and short ``for:`` values (test-only ``--set`` overrides; the expressions and
``keep_firing_for`` are the shipped ones). Prometheus evaluates rules every second.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support import guard
from support.helm import require_helm
from support.objects import regcheck_yaml
from support.operatorproc import OperatorProcess, free_port
from support.prometheus import require_prometheus, rule_file, running, scrape_config
from support.world import World

if TYPE_CHECKING:
    from conftest import Cluster

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "pullhealth"

guard.install()

Waiter = Callable[..., Any]

# Test-only overrides: fast scrapes and short `for:` (the shipped values are minutes).
FAST = [
    # This Prometheus scrapes the operator over plain HTTP without a token (secure serving
    # has its own test: e2e/test_metric_series.py).
    "metrics.secure=false",
    "metrics.serviceMonitor.enabled=true", "prometheusRule.enabled=true",
    "metrics.serviceMonitor.interval=1s", "metrics.serviceMonitor.scrapeTimeout=1s",
    "prometheusRule.registryCheckUnhealthyFor=2s", "prometheusRule.operatorAbsentFor=2s",
    "prometheusRule.registryCheckStaleFor=1s", "prometheusRule.registryBudgetLowFor=2s",
]


def render(helm: str, release: str, namespace: str, *sets: str) -> list[dict[str, Any]]:
    import subprocess

    args = [helm, "template", release, str(CHART), "--namespace", namespace]
    for value in sets:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind]
    return obj


def operator_flags(objects: list[dict[str, Any]], *names: str) -> list[str]:
    """The rendered Deployment's operator arguments that set one of ``names``."""
    (container,) = [c for c in one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "operator"]
    return [a for a in container["args"] if a.split("=", 1)[0] in names]


@pytest.fixture
def chart_rbac(
    dev_cluster: Cluster, world: World, wait_for: Waiter
) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """The CRD, and the chart's ServiceAccount, ClusterRole and binding in a fresh release namespace."""
    helm = require_helm()
    release = f"alerts-{uuid.uuid4().hex[:6]}"
    ns = f"pullhealth-{release}"
    # The registries labelled by name: the world's usual ones and the rate-limited hub.
    named = ",".join((world.anon, world.basic, world.acr, world.hub))
    objects = render(helm, release, ns, *FAST, f"metrics.registries={{{named}}}")
    rbac = [o for o in objects if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    k = dev_cluster.kubectl
    k("apply", "-f", str(ROOT / "crds" / "registrychecks.pullhealth.io.yaml"))
    wait_for(lambda: "True" in k("get", "crd", "registrychecks.pullhealth.io", "-o",
                                 "jsonpath={.status.conditions[?(@.type=='Established')].status}").stdout,
             "the CRD established")
    k("create", "namespace", ns)
    try:
        k("apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
        yield release, ns, objects
    finally:
        for obj in rbac:
            if obj["kind"] != "ServiceAccount":
                k("delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", "--wait=false")
        k("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


@pytest.fixture
def chart_operator(
    dev_cluster: Cluster, world: World, chart_rbac: tuple[str, str, list[dict[str, Any]]], tmp_path: Path,
) -> Iterator[OperatorProcess]:
    """The operator with a token of the chart's ServiceAccount (not started), the only one:
    a running cluster-admin operator (the session's) would check and write too."""
    _, release_ns, objects = chart_rbac
    sa = one(objects, "ServiceAccount")["metadata"]["name"]
    token = dev_cluster.kubectl("-n", release_ns, "create", "token", sa, "--duration=1h").stdout.strip()
    kubeconfig = dev_cluster.token_kubeconfig(token, tmp_path / "operator.kubeconfig")
    # The chart's --metrics-registries (from metrics.registries), as the Deployment passes it.
    op = OperatorProcess(kubeconfig, world, tmp_path / "operator.log",
                         operator_flags(objects, "--metrics-registries"))
    with OperatorProcess.others_stopped():
        try:
            yield op
        finally:
            op.stop()


def monitoring(
    chart_rbac: tuple[str, str, list[dict[str, Any]]]
) -> tuple[str, str, dict[str, Any], dict[str, Any], str]:
    """(release, release namespace, ServiceMonitor, Service, rule file) of the rendered chart."""
    release, release_ns, objects = chart_rbac
    return (release, release_ns, one(objects, "ServiceMonitor"), one(objects, "Service"),
            rule_file(one(objects, "PrometheusRule")))


def test_alerts_fire_survive_a_restart_and_notice_absence_and_staleness(
    dev_cluster: Cluster, chart_operator: OperatorProcess, world: World, namespace: str, wait_for: Waiter,
    chart_rbac: tuple[str, str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    prometheus_bin, _ = require_prometheus()
    release, release_ns, monitor, service, rules = monitoring(chart_rbac)
    objects = chart_rbac[2]
    k = dev_cluster.kubectl
    op = chart_operator

    def scrape(pod: str) -> list[dict[str, Any]]:
        return scrape_config(monitor, service, f"127.0.0.1:{op.metrics_port}", pod)

    op.start()
    with running(prometheus_bin, tmp_path, rules, scrape(f"{release}-pod-1")) as prom:
        # A target that the rendered selector, namespace and port relabelings keep.
        up = wait_for(lambda: prom.query(f'up{{namespace="{release_ns}"}} == 1'), "operator scraped")
        assert up[0]["metric"]["job"] == service["metadata"]["name"], up
        assert up[0]["metric"]["pod"] == f"{release}-pod-1", up

        # "bad" fails (missing tag; interval 300 s, retried sooner while failing, never
        # stale in this test); "ticking" is healthy and checked every 30 s.
        k("-n", namespace, "apply", "-f", "-", stdin=regcheck_yaml(
            "bad", {"registry": world.anon, "image": "team/app:v9", "auth": {"mode": "anonymous"}},
            interval=300))
        k("-n", namespace, "apply", "-f", "-", stdin=regcheck_yaml(
            "ticking", {"registry": world.anon, "image": "library/alpine:3.19",
                        "auth": {"mode": "anonymous"}}, interval=30))

        def unhealthy() -> list[dict[str, Any]]:
            return [a for a in prom.alerts("PullhealthRegistryCheckUnhealthy")
                    if a["labels"]["name"] == "bad"]

        (alert,) = wait_for(unhealthy, "PullhealthRegistryCheckUnhealthy firing", timeout=60)
        # The check's own namespace, not the operator's (honorLabels), and a runbook.
        assert alert["labels"]["namespace"] == namespace, alert
        assert alert["labels"]["registry"] == world.anon and alert["labels"]["severity"] == "warning"
        assert f"kubectl -n {namespace} get registrycheck bad" in alert["annotations"]["description"]
        assert alert["annotations"]["runbook_url"].endswith("/alerting.md#pullhealthregistrycheckunhealthy")
        assert not prom.query(f'{{exported_namespace="{namespace}"}}')
        active_at = alert["activeAt"]
        wait_for(lambda: prom.query(f'pullhealth_registry_check_last_run_timestamp_seconds{{name="ticking",'
                                    f'namespace="{namespace}"}}'), "ticking checked")
        assert not prom.alerts("PullhealthOperatorAbsent", "firing")

        # From now on the operator may not write statuses: checks stop showing up.
        role = one(objects, "ClusterRole")
        revoked = json.loads(json.dumps(role))
        for rule in revoked["rules"]:
            if "registrychecks/status" in rule["resources"]:
                rule["verbs"] = [v for v in rule["verbs"] if v != "patch"]
        k("apply", "-f", "-", stdin=yaml.safe_dump(revoked))
        time.sleep(1)  # a write in flight lands or is refused
        status = json.loads(k("-n", namespace, "get", "regcheck", "bad", "-o", "json").stdout)["status"]
        assert status["code"] == "TAG_NOT_FOUND"
        written = datetime.strptime(status["lastCheckTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        last_run = f'pullhealth_registry_check_last_run_timestamp_seconds{{namespace="{namespace}",name="bad"}}'
        wait_for(lambda: [s for s in prom.query(last_run) if float(s["value"][1]) == written.timestamp()],
                 "the last written check scraped", timeout=15)

        # The operator goes away: OperatorAbsent fires, the check's alert keeps firing.
        op.stop()
        absent = wait_for(lambda: prom.alerts("PullhealthOperatorAbsent"), "OperatorAbsent firing",
                          timeout=30)
        assert absent[0]["labels"]["namespace"] == release_ns
        assert absent[0]["annotations"]["runbook_url"].endswith("/alerting.md#pullhealthoperatorabsent")
        assert [a["activeAt"] for a in unhealthy()] == [active_at]
        assert not prom.query(last_run)  # its series are gone with the target

        # It comes back as a new pod (new address, new pod name): the series are rebuilt
        # from the status at once, with the status' own values (no result written since).
        op.metrics_port = free_port()
        prom.configure(scrape(f"{release}-pod-2"))
        op.start()
        wait_for(lambda: prom.query(f'up{{pod="{release}-pod-2"}} == 1'), "new pod scraped", timeout=30)
        back = wait_for(lambda: prom.query(last_run), "last run series back", timeout=15)
        assert float(back[0]["value"][1]) == written.timestamp(), back
        assert back[0]["metric"]["pod"] == f"{release}-pod-2"
        wait_for(lambda: not prom.alerts("PullhealthOperatorAbsent"), "OperatorAbsent resolved", timeout=30)
        assert [a["activeAt"] for a in unhealthy()] == [active_at]
        time.sleep(3)  # a few more evaluations on the rebuilt series alone
        assert [a["activeAt"] for a in unhealthy()] == [active_at]

        # "ticking" is still checked every 30 s, but no result reaches its status: within
        # 2 x 30 s of its last written check, RegistryCheckStale fires.
        stale = wait_for(lambda: prom.alerts("PullhealthRegistryCheckStale"), "RegistryCheckStale firing",
                         timeout=90)
        assert [(a["labels"]["namespace"], a["labels"]["name"]) for a in stale] == [(namespace, "ticking")]
        assert stale[0]["annotations"]["runbook_url"].endswith("/alerting.md#pullhealthregistrycheckstale")
        assert [a["activeAt"] for a in unhealthy()] == [active_at]
        assert "cannot write the status (RBAC)" in op.text()


def ratelimit_series(op: OperatorProcess, registry: str) -> tuple[float | None, float | None]:
    """(limit, remaining) on the operator's /metrics for ``registry``'s label."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(op.metrics()):
        if family.name in ("pullhealth_registry_ratelimit_limit", "pullhealth_registry_ratelimit_remaining"):
            for sample in family.samples:
                if sample.labels.get("registry") == registry:
                    found[family.name] = sample.value
    return found.get("pullhealth_registry_ratelimit_limit"), found.get("pullhealth_registry_ratelimit_remaining")


def test_registry_budget_low_fires_from_a_registrys_ratelimit_headers_and_resolves(
    dev_cluster: Cluster, chart_operator: OperatorProcess, world: World, namespace: str, wait_for: Waiter,
    chart_rbac: tuple[str, str, list[dict[str, Any]]], tmp_path: Path,
) -> None:
    prometheus_bin, _ = require_prometheus()
    release, _, monitor, service, rules = monitoring(chart_rbac)
    k = dev_cluster.kubectl
    op = chart_operator
    hub, name = world.hub_limits, "PullhealthRegistryBudgetLow"
    assert f"--metrics-registries={world.anon},{world.basic},{world.acr},{world.hub}" in op.extra_args

    # Docker Hub's answer for an address with 5 of its 100 pulls left (below a tenth).
    hub.set(5)
    try:
        op.start()
        scrape = scrape_config(monitor, service, f"127.0.0.1:{op.metrics_port}", f"{release}-pod-1")
        with running(prometheus_bin, tmp_path, rules, scrape) as prom:
            hub.requests.clear()
            k("-n", namespace, "apply", "-f", "-", stdin=regcheck_yaml(
                "hub", {"registry": world.hub, "image": "library/alpine:3.19", "auth": {"mode": "anonymous"}},
                interval=300))
            # The header values on /metrics, under the registry's own name; read from the
            # manifest answer of the check's chain.
            wait_for(lambda: ratelimit_series(op, world.hub) == (100.0, 5.0), "the hub's budget on /metrics",
                     timeout=60)
            assert ("HEAD", "/v2/library/alpine/manifests/3.19") in hub.requests
            (alert,) = wait_for(lambda: prom.alerts(name), "PullhealthRegistryBudgetLow firing", timeout=60)
            assert alert["labels"]["registry"] == world.hub and alert["labels"]["severity"] == "warning", alert
            assert alert["annotations"]["summary"] == f"Registry {world.hub} has 5 pulls left in its rate-limit window"
            assert alert["annotations"]["runbook_url"].endswith("/alerting.md#pullhealthregistrybudgetlow")
            assert float(alert["value"]) == 5
            # The chart dashboard's budget panel shows the same: 5 of 100 left.
            board = json.loads((ROOT / "charts" / "pullhealth" / "dashboards" / "pullhealth.json").read_text())
            (panel,) = [p["targets"][0] for p in board["panels"] if p["title"] == "Registry rate-limit budget left"]
            (row,) = [r for r in prom.query(panel["expr"]) if r["metric"].get("registry") == world.hub]
            assert float(row["value"][1]) == 0.05, row

            # The window moved on: 80 left. A recheck reads it at once (the check's interval
            # is 300 s), and the alert resolves.
            hub.set(80)
            k("-n", namespace, "annotate", "--overwrite", "regcheck", "hub",
              f"pullhealth.io/recheck={uuid.uuid4().hex[:8]}")
            wait_for(lambda: ratelimit_series(op, world.hub) == (100.0, 80.0), "the raised budget on /metrics",
                     timeout=60)
            wait_for(lambda: not prom.alerts(name) and not prom.alerts(name, "pending"),
                     "PullhealthRegistryBudgetLow resolved", timeout=30)
    finally:
        hub.set(100)
