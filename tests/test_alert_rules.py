"""The chart's PrometheusRule as Prometheus reads it: `promtool check rules` on the rendered
groups, and `promtool test rules` on the behaviour the docs promise (docs/alerting.md).

Needs helm (hack/build-helm.sh) and Debian's prometheus package (promtool); without them
the tests skip, or fail when PULLHEALTH_REQUIRE_E2E is set (CI).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.helm import require_helm
from support.prometheus import require_prometheus, rule_file

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "pullhealth"
RUNBOOKS = "https://github.com/pullhealth/pullhealth/blob/main/docs"


def rendered_rule(*sets: str) -> dict[str, Any]:
    args = [require_helm(), "template", "ph", str(CHART), "--namespace", "pullhealth",
            "--set", "prometheusRule.enabled=true"]
    for value in sets:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    (rule,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "PrometheusRule"]
    return dict(rule)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    _, binary = require_prometheus()
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("sets", [(), ("prometheusRule.additionalAlertLabels.team=platform",
                                       "prometheusRule.runbookBaseUrl=https://wiki.example/runbooks/")])
def test_promtool_accepts_the_rendered_rules(tmp_path: Path, sets: tuple[str, ...]) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(rule_file(rendered_rule(*sets)))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout, result.stdout


def test_rules_behave_as_documented(tmp_path: Path) -> None:
    """Series gaps (operator restart), staleness and absence, on synthetic series."""
    (tmp_path / "rules.yml").write_text(rule_file(rendered_rule()))
    target = 'job="ph-pullhealth-metrics",namespace="pullhealth"'
    check = 'namespace="team-a",name="acr",registry="acr.example"'
    workload = 'namespace="team-a",kind="Deployment",workload="shop",container="app"'
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # Unhealthy for 20 minutes; the operator restarts at 15m (2 minutes without
                # series) into a new pod: the alert is the same one before and after.
                {"series": f'pullhealth_registry_check_healthy{{{check},pod="op-1"}}',
                 "values": "0x14 stale"},
                {"series": f'pullhealth_registry_check_healthy{{{check},pod="op-2"}}',
                 "values": "_x16 0x8"},
                # Checked every 5 minutes until 10m, then never again (interval 300 s).
                {"series": 'pullhealth_registry_check_last_run_timestamp_seconds{namespace="team-a",name="acr"}',
                 "values": "0 0 0 0 0 300 300 300 300 300 600+0x20"},
                {"series": 'pullhealth_registry_check_interval_seconds{namespace="team-a",name="acr"}',
                 "values": "300+0x30"},
                {"series": f'up{{{target}}}', "values": "1x14 0 0 1x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "9m", "alertname": "PullhealthRegistryCheckUnhealthy", "exp_alerts": []},
                *({"eval_time": t, "alertname": "PullhealthRegistryCheckUnhealthy", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "namespace": "team-a", "name": "acr",
                                   "registry": "acr.example"},
                    "exp_annotations": {
                        "summary": "RegistryCheck team-a/acr cannot pull from acr.example",
                        "description": "The pull path to acr.example has been unhealthy for more than 10m. "
                        "Run: kubectl -n team-a get registrycheck acr -o yaml (status.code, "
                        "status.summary, status.remediation).",
                        "runbook_url": f"{RUNBOOKS}/alerting.md#pullhealthregistrycheckunhealthy"}}]}
                  for t in ("10m", "16m", "20m")),
                # Not stale at 2 x 300 s after the last check; stale once that plus `for:` passed.
                {"eval_time": "20m", "alertname": "PullhealthRegistryCheckStale", "exp_alerts": []},
                {"eval_time": "26m", "alertname": "PullhealthRegistryCheckStale", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "namespace": "team-a", "name": "acr"},
                    "exp_annotations": {
                        "summary": "RegistryCheck team-a/acr has not been checked for 16m 0s",
                        "description": "The operator runs but the status of RegistryCheck team-a/acr was not "
                        "refreshed within twice its intervalSeconds: the operator cannot write the status (see "
                        "pullhealth_patch_forbidden_total and its log) or its checks hang.",
                        "runbook_url": f"{RUNBOOKS}/alerting.md#pullhealthregistrycheckstale"}}]},
                # Down from 15m: absent for `for:` (5m) only from 20m on, but up again at 17m.
                {"eval_time": "16m", "alertname": "PullhealthOperatorAbsent", "exp_alerts": []},
            ],
        }, {
            # Two containers fail in team-a; the operator restarts at 10m (2 minutes without
            # series); the runbook is the code's section of codes.md.
            "interval": "1m",
            "input_series": [
                {"series": 'pullhealth_pod_pull_failures{namespace="team-a",registry="other",code="TAG_NOT_FOUND",'
                           'pod="op-1"}', "values": "2x9 stale"},
                {"series": 'pullhealth_pod_pull_failures{namespace="team-a",registry="other",code="TAG_NOT_FOUND",'
                           'pod="op-2"}', "values": "_x11 2x5"},
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "PullhealthPodsFailingImagePulls", "exp_alerts": []},
                *({"eval_time": t, "alertname": "PullhealthPodsFailingImagePulls", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "namespace": "team-a", "code": "TAG_NOT_FOUND"},
                    "exp_annotations": {
                        "summary": "2 container(s) in team-a failing image pulls with TAG_NOT_FOUND",
                        "description": "Pods in team-a keep failing to pull (TAG_NOT_FOUND). The failing pods carry "
                        "the diagnosis in their pullhealth.io/diagnosis annotation; pullhealth codes explains "
                        "the code.",
                        "runbook_url": f"{RUNBOOKS}/codes.md#tag_not_found"}}]} for t in ("5m", "11m", "14m")),
            ],
        }, {
            # Pulls from slow.example take 120-300 s each (10 a minute), fast.example's under 1 s;
            # few.example had two slow pulls only (under the 3 the rule asks for).
            "interval": "1m",
            "input_series": [
                *({"series": f'pullhealth_image_pull_duration_seconds_bucket{{registry="slow.example",le="{le}"}}',
                   "values": values} for le, values in (("1", "0x40"), ("120", "0x40"), ("300", "0+10x40"),
                                                        ("+Inf", "0+10x40"))),
                {"series": 'pullhealth_image_pull_duration_seconds_count{registry="slow.example"}',
                 "values": "0+10x40"},
                *({"series": f'pullhealth_image_pull_duration_seconds_bucket{{registry="fast.example",le="{le}"}}',
                   "values": "0+10x40"} for le in ("1", "120", "300", "+Inf")),
                {"series": 'pullhealth_image_pull_duration_seconds_count{registry="fast.example"}',
                 "values": "0+10x40"},
                *({"series": f'pullhealth_image_pull_duration_seconds_bucket{{registry="few.example",le="{le}"}}',
                   "values": values} for le, values in (("1", "0x40"), ("120", "0x40"), ("300", "0 1 2x38"),
                                                        ("+Inf", "0 1 2x38"))),
                {"series": 'pullhealth_image_pull_duration_seconds_count{registry="few.example"}',
                 "values": "0 1 2x38"},
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "PullhealthSlowImagePulls", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "PullhealthSlowImagePulls", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "registry": "slow.example"},
                    "exp_annotations": {
                        "summary": "Image pulls from slow.example are slow: p90 4m 42s",
                        "description": "For 15m, 90% of the pulls kubelet reported from slow.example took longer "
                        "than 120 s each (the pull itself, without waiting in kubelet's queue; registry \"other\": "
                        "a registry not in metrics.registries). Large images, a slow registry or data endpoint, or "
                        "a congested node network; pulls that run into the runtime's timeouts fail with "
                        "PULL_TIMED_OUT.",
                        "runbook_url": f"{RUNBOOKS}/alerting.md#pullhealthslowimagepulls"}}]},
            ],
        }, {
            "interval": "1m",
            "input_series": [{"series": f'up{{{target}}}', "values": "1 0x10"}],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "PullhealthOperatorAbsent", "exp_alerts": []},
                {"eval_time": "7m", "alertname": "PullhealthOperatorAbsent", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "namespace": "pullhealth"},
                    "exp_annotations": {
                        "summary": "The pullhealth operator in pullhealth is not scraped",
                        "description": "Prometheus has no successful scrape of job ph-pullhealth-metrics in "
                        "namespace pullhealth: the operator is down, crash-looping, or its metrics cannot be "
                        "reached. Run: kubectl -n pullhealth get pods,endpoints -l "
                        "app.kubernetes.io/name=pullhealth",
                        "runbook_url": f"{RUNBOOKS}/alerting.md#pullhealthoperatorabsent"}}]},
            ],
        }, {
            # Workload checks: a Deployment's missing tag for 28 minutes (the operator
            # restarts at 17m); a running pod's tag deleted from 0m; another's moved (no alert).
            "interval": "1m",
            "input_series": [
                {"series": f'pullhealth_workload_image_problems{{{workload},code="TAG_NOT_FOUND",pod="op-1"}}',
                 "values": "1x16 stale"},
                {"series": f'pullhealth_workload_image_problems{{{workload},code="TAG_NOT_FOUND",pod="op-2"}}',
                 "values": "_x18 1x10"},
                {"series": 'pullhealth_workload_image_problems{namespace="team-a",kind="Pod",workload="web-1",'
                           'container="app",code="TAG_DELETED"}', "values": "1x20"},
                {"series": 'pullhealth_workload_image_problems{namespace="team-a",kind="Pod",workload="web-2",'
                           'container="app",code="TAG_MOVED"}', "values": "1x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "14m", "alertname": "PullhealthWorkloadImageUnpullable", "exp_alerts": []},
                *({"eval_time": t, "alertname": "PullhealthWorkloadImageUnpullable", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "namespace": "team-a", "kind": "Deployment",
                                   "workload": "shop", "container": "app", "code": "TAG_NOT_FOUND"},
                    "exp_annotations": {
                        "summary": "Deployment team-a/shop: the image of container app cannot be pulled "
                        "(TAG_NOT_FOUND)",
                        "description": "The next pod of Deployment team-a/shop (a scale-up, a reschedule, the next "
                        "run) will fail to pull container app's image: TAG_NOT_FOUND. Run: kubectl -n team-a get "
                        "events --field-selector reason=ImageUnpullable, or pullhealth workloads -n team-a.",
                        "runbook_url": f"{RUNBOOKS}/alerting.md#pullhealthworkloadimageunpullable"}}]}
                  for t in ("16m", "18m")),
                {"eval_time": "9m", "alertname": "PullhealthImageTagDeleted", "exp_alerts": []},
                {"eval_time": "11m", "alertname": "PullhealthImageTagDeleted", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "namespace": "team-a", "kind": "Pod",
                                   "workload": "web-1", "container": "app"},
                    "exp_annotations": {
                        "summary": "Pod team-a/web-1 runs a tag that no longer exists (container app)",
                        "description": "The tag container app of team-a/web-1 runs was deleted in its registry: "
                        "the container keeps running, its next pull fails. Push the tag again or pin the digest it "
                        "runs (the ImageTagDeleted Event names it): kubectl -n team-a get events --field-selector "
                        "reason=ImageTagDeleted",
                        "runbook_url": f"{RUNBOOKS}/alerting.md#pullhealthimagetagdeleted"}}]},
            ],
        }, {
            # Docker Hub's budget: 100 pulls a window, 30 left, then 8 from 3m on (below a tenth);
            # another registry at 5 of 10 never fires (half left).
            "interval": "1m",
            "input_series": [
                {"series": 'pullhealth_registry_ratelimit_limit{registry="docker.io",pod="op-1"}', "values": "100x12"},
                {"series": 'pullhealth_registry_ratelimit_remaining{registry="docker.io",pod="op-1"}',
                 "values": "30 30 30 8x9"},
                {"series": 'pullhealth_registry_ratelimit_limit{registry="half.example",pod="op-1"}', "values": "10x12"},
                {"series": 'pullhealth_registry_ratelimit_remaining{registry="half.example",pod="op-1"}',
                 "values": "5x12"},
            ],
            "alert_rule_test": [
                {"eval_time": "7m", "alertname": "PullhealthRegistryBudgetLow", "exp_alerts": []},
                {"eval_time": "9m", "alertname": "PullhealthRegistryBudgetLow", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "registry": "docker.io"},
                    "exp_annotations": {
                        "summary": "Registry docker.io has 8 pulls left in its rate-limit window",
                        "description": "Registry docker.io said (RateLimit-Remaining) it allows fewer than 0.1 of "
                        "its RateLimit-Limit pulls until its window resets: the next pulls from it (kubelet's, from "
                        "the same address or account) will be refused with 429 Too Many Requests (RATE_LIMITED). "
                        "Authenticate pulls (a pull secret raises the limit), use a pull-through cache or mirror, "
                        "or spread out restarts; registry \"other\": a registry not in metrics.registries.",
                        "runbook_url": f"{RUNBOOKS}/alerting.md#pullhealthregistrybudgetlow"}}]},
            ],
        }],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
