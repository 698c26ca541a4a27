"""Debian's Prometheus on loopback, configured from the chart's rendered monitoring objects.

Prometheus Operator turns a ServiceMonitor into a scrape job with Kubernetes service
discovery and a fixed list of relabelings. The test cluster has no kubelet (a Service gets
no endpoints, and loopback addresses are refused in Endpoints), so
:func:`scrape_config` builds the same job with a static target that carries the
``__meta_kubernetes_*`` labels discovery would have attached, followed by the relabelings
Prometheus Operator generates (namespace and label selector, port, the standard target
labels) and the ServiceMonitor's own. The selector therefore really has to match the
rendered Service, and ``honorLabels`` really decides who owns ``namespace``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support._common import terminate
from support.operatorproc import free_port

_RELABEL_KEYS = {
    "sourceLabels": "source_labels",
    "separator": "separator",
    "targetLabel": "target_label",
    "regex": "regex",
    "modulus": "modulus",
    "replacement": "replacement",
    "action": "action",
}


def require_prometheus() -> tuple[str, str]:
    """The prometheus and promtool binaries; skip without them (fail under CI)."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if not all(found):
        reason = "no prometheus/promtool: install Debian's prometheus package (scripts/setup.sh does)"
        if os.environ.get("PULLHEALTH_REQUIRE_E2E"):
            pytest.fail(f"PULLHEALTH_REQUIRE_E2E is set but {reason}", pytrace=False)
        pytest.skip(reason)
    return str(found[0]), str(found[1])


def rule_file(prometheus_rule: dict[str, Any]) -> str:
    """A PrometheusRule's groups as a Prometheus rule file (what the operator mounts)."""
    return yaml.safe_dump({"groups": prometheus_rule["spec"]["groups"]}, sort_keys=False)


def _label_name(key: str) -> str:
    """Kubernetes label key -> the name Prometheus discovery gives it."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def _relabel(config: dict[str, Any]) -> dict[str, Any]:
    """A prometheus-operator RelabelConfig (camelCase) as Prometheus' relabel_config."""
    out = {_RELABEL_KEYS[key]: value for key, value in config.items()}
    if "action" in out:
        out["action"] = str(out["action"]).lower()
    return out


def scrape_config(
    monitor: dict[str, Any], service: dict[str, Any], target: str, pod: str, container: str = "operator"
) -> list[dict[str, Any]]:
    """The scrape jobs Prometheus Operator generates for ``monitor``, with ``target`` as the
    one endpoint address that discovery would find behind ``service`` (pod ``pod``)."""
    spec = monitor["spec"]
    svc_meta = service["metadata"]
    jobs = []
    for index, endpoint in enumerate(spec["endpoints"]):
        port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
        discovered = {
            "__meta_kubernetes_namespace": svc_meta["namespace"],
            "__meta_kubernetes_service_name": svc_meta["name"],
            "__meta_kubernetes_endpoints_name": svc_meta["name"],
            "__meta_kubernetes_endpoint_port_name": port["name"],
            "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_container_name": container,
        }
        for key, value in (svc_meta.get("labels") or {}).items():
            discovered[f"__meta_kubernetes_service_label_{_label_name(key)}"] = value
            discovered[f"__meta_kubernetes_service_labelpresent_{_label_name(key)}"] = "true"
        relabel: list[dict[str, Any]] = [
            {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
            {"source_labels": ["__meta_kubernetes_namespace"], "action": "keep",
             "regex": "|".join(re.escape(n) for n in spec["namespaceSelector"]["matchNames"])},
        ]
        for key, value in spec["selector"]["matchLabels"].items():
            relabel.append({"action": "keep", "regex": f"({value});true", "source_labels": [
                f"__meta_kubernetes_service_label_{_label_name(key)}",
                f"__meta_kubernetes_service_labelpresent_{_label_name(key)}"]})
        relabel += [
            {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"],
             "regex": endpoint["port"]},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"},
            {"target_label": "endpoint", "replacement": endpoint["port"]},
            *(_relabel(r) for r in endpoint.get("relabelings") or []),
        ]
        job = {
            "job_name": f"serviceMonitor/{monitor['metadata']['namespace']}/{monitor['metadata']['name']}/{index}",
            "honor_labels": bool(endpoint.get("honorLabels", False)),
            "scrape_interval": endpoint.get("interval", "30s"),
            "scrape_timeout": endpoint.get("scrapeTimeout", "10s"),
            "metrics_path": endpoint.get("path", "/metrics"),
            "scheme": endpoint.get("scheme", "http"),
            "static_configs": [{"targets": [target], "labels": discovered}],
            "relabel_configs": relabel,
        }
        if endpoint.get("metricRelabelings"):
            job["metric_relabel_configs"] = [_relabel(r) for r in endpoint["metricRelabelings"]]
        jobs.append(job)
    return jobs


class Prometheus:
    """A Prometheus server on 127.0.0.1 with its own storage, rule file and config."""

    def __init__(self, binary: str, workdir: Path, rules: str, evaluation_interval: str = "1s") -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.rules_path = workdir / "rules.yml"
        self.rules_path.write_text(rules)
        self.evaluation_interval = evaluation_interval
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(self, scrape_configs: list[dict[str, Any]]) -> None:
        """Write the config; a running server reloads it (SIGHUP), as after a pod change."""
        self.config_path.write_text(yaml.safe_dump({
            "global": {"evaluation_interval": self.evaluation_interval},
            "rule_files": [str(self.rules_path)],
            "scrape_configs": scrape_configs,
        }, sort_keys=False))
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.config_path}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/-/ready", timeout=2):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("prometheus did not become ready:\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        """Terminate (then kill) Prometheus."""
        terminate(self.proc, grace=20.0)

    def _get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector."""
        return list(self._get("/api/v1/query", query=promql)["result"])

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        """Active alerts called ``name`` in ``state`` (pending or firing)."""
        return [a for a in self._get("/api/v1/alerts")["alerts"]
                if a["labels"].get("alertname") == name and a["state"] == state]

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets")["activeTargets"])

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(binary: str, workdir: Path, rules: str, scrape: list[dict[str, Any]]) -> Iterator[Prometheus]:
    """A configured, ready Prometheus, stopped afterwards."""
    prom = Prometheus(binary, workdir, rules)
    prom.configure(scrape)
    with prom:
        yield prom
