"""The Helm chart without a cluster: CRD drift, values hygiene, lint, rendered objects.

Rendering needs the helm binary (``hack/build-helm.sh`` builds it from Go modules);
without it those tests skip, or fail when PULLHEALTH_REQUIRE_E2E is set (CI).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pullhealth import metrics
from support.helm import require_helm

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "pullhealth"
RELEASE = "ph"
RELEASE_NS = "pullhealth-system"

# Every (apiGroup, resource) the operator may touch, with the verbs it needs. The
# templates and docs/install.md say why for each; a rule outside this table fails.
NAMESPACED_RULES: dict[tuple[str, str], set[str]] = {
    ("pullhealth.io", "registrychecks"): {"get", "list", "watch", "patch"},
    ("pullhealth.io", "registrychecks/status"): {"get", "patch"},
    ("", "pods"): {"get", "list", "watch", "patch"},
    ("", "events"): {"list", "watch"},
    ("events.k8s.io", "events"): {"create", "get", "patch"},
    ("", "secrets"): {"get"},
    ("", "serviceaccounts"): {"get", "list", "watch"},
}
# Only with security.identities.workloadIdentity=true: minting service-account tokens.
WORKLOAD_IDENTITY_RULE = {("", "serviceaccounts/token"): {"create"}}
# With workloads.enabled: the workload kinds are read (list and watch), never written.
WORKLOADS_RULE = {
    ("apps", kind): {"list", "watch"} for kind in ("deployments", "statefulsets", "daemonsets", "replicasets")
} | {("batch", kind): {"list", "watch"} for kind in ("jobs", "cronjobs")}
# With metrics.secure (the default): TokenReview + SubjectAccessReview for each scrape.
METRICS_RULE = {
    ("authentication.k8s.io", "tokenreviews"): {"create"},
    ("authorization.k8s.io", "subjectaccessreviews"): {"create"},
}
CRD_RULE = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    # cluster-scoped: the platform of the node a failing pod runs on
    ("", "nodes"): {"get", "list", "watch"},
    **METRICS_RULE,
}
NAMESPACES_RULE = {("", "namespaces"): {"get", "list", "watch"}}
# Only with pods.restartRecovered other than "off": deleting recovered pods, reading the
# namespace's opt-in label.
RESTART_VERBS = {"delete"}
RESTART_NAMESPACES_RULE = {("", "namespaces"): {"get"}}
PEERING_VERBS = {"get", "list", "watch", "patch"}


# -- helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> str:
    """The helm binary; skips without it, fails without it in CI."""
    return require_helm()


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


def render(helm: str, *sets: str, api_versions: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """``helm template`` with ``--set`` values (and API versions the cluster serves), parsed."""
    args = ["template", RELEASE, str(CHART), "--namespace", RELEASE_NS]
    for version in api_versions:
        args += ["--api-versions", version]
    for value in sets:
        args += ["--set", value]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = of_kind(objects, kind)
    return obj


def rule_table(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """A Role's rules as (apiGroup, resource) -> verbs."""
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"], rule
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(c)


def values_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every mapping key in values."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            yield path
            yield from values_keys(value, path + ".")


# -- files --------------------------------------------------------------------------


def test_chart_crd_is_an_identical_copy_of_the_canonical_one() -> None:
    name = "registrychecks.pullhealth.io.yaml"
    assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
        f"charts/pullhealth/crds/{name} drifted: cp crds/{name} charts/pullhealth/crds/"
    )


def test_chart_crds_are_only_ours_and_kopf_peering() -> None:
    names = set()
    for path in (CHART / "crds").iterdir():
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] == "CustomResourceDefinition"
            names.add(doc["metadata"]["name"])
    assert names == {"registrychecks.pullhealth.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def test_every_value_has_a_comment_and_a_camel_case_name() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^(\s*)([^\s#:-][^:]*):(\s|$)")
    problems = []
    for i, line in enumerate(lines):
        match = key.match(line)
        if not match:
            continue
        name = match.group(2)
        if not re.fullmatch(r"[a-z][a-zA-Z0-9]*", name):
            problems.append(f"line {i + 1}: {name!r} is not camelCase")
        above = next((p.strip() for p in reversed(lines[:i]) if p.strip()), "")
        if not above.startswith("#") and "#" not in line:
            problems.append(f"line {i + 1}: {name!r} has no comment")
    assert not problems, "\n".join(problems)


def _validate(instance: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """A small JSON Schema subset checker, for machines without the jsonschema package."""
    errors: list[str] = []
    types = schema.get("type")
    kinds: dict[str, type | tuple[type, ...]] = {
        "object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float),
    }
    if types is not None:
        names = types if isinstance(types, list) else [types]
        ok = any(isinstance(instance, kinds[t]) and not (t in ("integer", "number") and isinstance(instance, bool))
                 for t in names)
        if not ok:
            return [f"{path or '/'}: {instance!r} is not {types}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} not in {schema['enum']}")
    if isinstance(instance, str) and "pattern" in schema and not re.search(schema["pattern"], instance):
        errors.append(f"{path}: {instance!r} does not match {schema['pattern']}")
    if isinstance(instance, (int, float)) and "minimum" in schema and instance < schema["minimum"]:
        errors.append(f"{path}: {instance} < {schema['minimum']}")
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        errors += [f"{path}/{r}: required" for r in schema.get("required", []) if r not in instance]
        for name, value in instance.items():
            if name in props:
                errors += _validate(value, props[name], f"{path}/{name}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}/{name}: not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _validate(value, schema["additionalProperties"], f"{path}/{name}")
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(instance):
            errors += _validate(item, schema["items"], f"{path}/{i}")
    return errors


def validate(instance: Any, schema: dict[str, Any]) -> list[str]:
    try:
        import jsonschema  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return _validate(instance, schema)
    validator = jsonschema.Draft7Validator(schema)
    return [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def test_values_schema_accepts_the_defaults_and_rejects_mistakes() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert validate(values, schema) == []
    for bad in ({"logFormat": "xml"}, {"replicaCount": "two"}, {"rbac": {"create": "yes"}},
                {"watchNamespace": ["a"]}, {"watchNamespaces": ["Not_A_Namespace"]},
                {"prometheusRule": {"registryCheckUnhealthyFor": "ten minutes"}},
                {"networkPolicy": {"enabled": "yes"}}, {"networkPolicy": {"registryPorts": [70000]}},
                {"networkPolicy": {"registryPorts": []}}):
        assert validate({**values, **{k: ({**values[k], **v} if isinstance(v, dict) and k in values else v)
                                      for k, v in bad.items()}}, schema), bad


def test_values_schema_describes_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []
    for path in values_keys(values):
        node: dict[str, Any] | None = schema
        for part in path.split("."):
            node = node or {}
            extra = node.get("additionalProperties")
            node = node.get("properties", {}).get(part) or (extra if isinstance(extra, dict) else None)
        if node is None:
            missing.append(path)
    assert not missing, missing


# -- helm ---------------------------------------------------------------------------

SCENARIOS = {
    "default": [],
    "watchNamespaces": ["watchNamespaces={a,b}"],
    "peering": ["peering.enabled=true", "replicaCount=2"],
    "peeringNamespaces": ["peering.enabled=true", "watchNamespaces={a,b}"],
    "monitoring": ["prometheusRule.enabled=true", "metrics.serviceMonitor.enabled=true",
                   "grafanaDashboard.enabled=true"],
    "networkPolicy": ["networkPolicy.enabled=true"],
    "admissionCertManager": ["admission.enabled=true", "admission.certManager.enabled=true"],
    "restartRecovered": ["pods.restartRecovered=labelled"],
    "workloads": ["workloads.enabled=true"],
    "workloadsNamespaces": ["workloads.enabled=true", "watchNamespaces={a,b}"],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_helm_lint_is_clean(helm: str, scenario: str) -> None:
    args = ["lint", "--strict", str(CHART)]
    for value in SCENARIOS[scenario]:
        args += ["--set", value]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_has_the_standard_labels(helm: str, scenario: str) -> None:
    for obj in render(helm, *SCENARIOS[scenario]):
        labels = obj["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, (obj["kind"], obj["metadata"]["name"], key)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_security_context_is_restricted(helm: str, scenario: str) -> None:
    objects = render(helm, *SCENARIOS[scenario])
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    sc = container(objects)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not sc.get("privileged")
    for volume in pod["volumes"]:
        assert "hostPath" not in volume


def test_default_render(helm: str) -> None:
    objects = render(helm)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["replicas"] == 1
    c = container(objects)
    assert c["image"] == "pullhealth:0.1.0"
    assert c["command"] == ["pullhealth", "run"]
    assert c["args"] == ["--all-namespaces", "--metrics-port=8080", "--metrics-bind-address=0.0.0.0", "--metrics-secure",
                         "--liveness=http://0.0.0.0:8081/healthz",
                         "--log-format=json", "--registry-check-workers=8", "--pod-interval=60", "--per-registry=4", "--workers=16",
                         "--api-concurrency=48",
                         "--acr-domains=.azurecr.io,.azurecr.cn,.azurecr.us"]
    # Every argument the chart passes is one `pullhealth run` accepts.
    from pullhealth.cli import _parser

    parsed = _parser().parse_args([*c["command"][1:], *c["args"]])
    assert parsed.pod_interval == 60 and not parsed.no_pods and parsed.api_concurrency == 48
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    sa = one(objects, "ServiceAccount")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    service = one(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": RELEASE_NS}]
    assert binding["roleRef"]["name"] == one(objects, "ClusterRole")["metadata"]["name"]


def test_metrics_are_protected_by_default(helm: str) -> None:
    """Issue 21: /metrics behind TokenReview + SubjectAccessReview, scraped over HTTPS with
    Prometheus' token; plain only when the admin says so."""
    objects = render(helm, "metrics.serviceMonitor.enabled=true", "metrics.readers[0].name=prometheus-k8s",
                     "metrics.readers[0].namespace=monitoring")
    endpoint = one(objects, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == {"insecureSkipVerify": True}
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    reader = [r for r in of_kind(objects, "ClusterRole") if r["metadata"]["name"].endswith("-metrics-reader")]
    assert [rule["nonResourceURLs"] for rule in reader[0]["rules"]] == [["/metrics"]]
    binding = [b for b in of_kind(objects, "ClusterRoleBinding") if b["roleRef"]["name"] == reader[0]["metadata"]["name"]]
    assert binding[0]["subjects"] == [{"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}]
    plain = render(helm, "metrics.secure=false", "metrics.serviceMonitor.enabled=true")
    assert "--no-metrics-secure" in container(plain)["args"]
    assert "scheme" not in one(plain, "ServiceMonitor")["spec"]["endpoints"][0]
    assert not set(METRICS_RULE) & set(rule_table(one(plain, "ClusterRole")))


def test_default_cluster_role_is_exactly_the_documented_rules(helm: str) -> None:
    role = one(render(helm), "ClusterRole")
    assert rule_table(role) == {**CRD_RULE, **NAMESPACED_RULES}
    assert rule_table(role)[("", "secrets")] == {"get"}


def test_every_rule_of_every_scenario_is_documented(helm: str) -> None:
    allowed = {**CRD_RULE, **NAMESPACES_RULE, **NAMESPACED_RULES, **WORKLOAD_IDENTITY_RULE, **WORKLOADS_RULE,
               ("kopf.dev", "clusterkopfpeerings"): PEERING_VERBS, ("kopf.dev", "kopfpeerings"): PEERING_VERBS,
               ("", "pods"): NAMESPACED_RULES[("", "pods")] | RESTART_VERBS}
    for scenario, sets in SCENARIOS.items():
        for role in of_kind(render(helm, *sets), "ClusterRole") + of_kind(render(helm, *sets), "Role"):
            for key, verbs in rule_table(role).items():
                assert key in allowed and verbs <= allowed[key], (scenario, role["kind"], key, verbs)
                if key == ("", "secrets"):
                    assert verbs == {"get"}, (scenario, "secrets must not be listed or watched")


def test_minting_service_account_tokens_only_with_workload_identity(helm: str) -> None:
    assert ("", "serviceaccounts/token") not in rule_table(one(render(helm), "ClusterRole"))
    on = render(helm, "security.identities.workloadIdentity=true")
    assert rule_table(one(on, "ClusterRole")) == {**CRD_RULE, **NAMESPACED_RULES, **WORKLOAD_IDENTITY_RULE}
    assert "--workload-identity" in container(on)["args"]
    for role in of_kind(render(helm, "security.identities.workloadIdentity=true", *SCENARIOS["watchNamespaces"]),
                        "Role"):
        assert rule_table(role) == {**NAMESPACED_RULES, **WORKLOAD_IDENTITY_RULE}


def test_deleting_recovered_pods_only_when_the_admin_enables_it(helm: str) -> None:
    from pullhealth.cli import _parser
    from pullhealth.runtime.settings import from_args

    default = render(helm)
    assert "delete" not in rule_table(one(default, "ClusterRole"))[("", "pods")]
    assert not [a for a in container(default)["args"] if a.startswith("--restart")]
    for mode in ("labelled", "all"):
        on = render(helm, f"pods.restartRecovered={mode}", "pods.restartsPerMinute=3")
        pods_rule = {("", "pods"): NAMESPACED_RULES[("", "pods")] | RESTART_VERBS}
        assert rule_table(one(on, "ClusterRole")) == {**CRD_RULE, **NAMESPACED_RULES, **pods_rule,
                                                      **RESTART_NAMESPACES_RULE}
        c = container(on)
        parsed = from_args(_parser().parse_args([*c["command"][1:], *c["args"]]))
        assert (parsed.restart_recovered_pods, parsed.restarts_per_minute) == (mode, 3)
    scoped = render(helm, "pods.restartRecovered=labelled", *SCENARIOS["watchNamespaces"])
    for role in of_kind(scoped, "Role"):
        assert rule_table(role)[("", "pods")] == NAMESPACED_RULES[("", "pods")] | RESTART_VERBS
    assert rule_table(one(scoped, "ClusterRole"))[("", "namespaces")] >= {"get"}
    # With pods off nothing is deleted, so nothing is granted.
    off = render(helm, "pods.restartRecovered=all", "pods.enabled=false")
    assert "delete" not in rule_table(one(off, "ClusterRole"))[("", "pods")]


VAP = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"


def test_pod_admission_policy_when_the_cluster_serves_it(helm: str) -> None:
    objects = render(helm, api_versions=(VAP,))
    policy = one(objects, "ValidatingAdmissionPolicy")
    binding = one(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    sa = one(objects, "ServiceAccount")["metadata"]["name"]
    [condition] = policy["spec"]["matchConditions"]
    assert f"system:serviceaccount:{RELEASE_NS}:{sa}" in condition["expression"]
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"] == ["UPDATE"]
    # Older clusters (no such API) and an explicit opt-out get none.
    assert not of_kind(render(helm), "ValidatingAdmissionPolicy")
    assert not of_kind(render(helm, "security.podAdmissionPolicy.enabled=false", api_versions=(VAP,)),
                       "ValidatingAdmissionPolicy")


def test_pod_delete_policy_only_with_restarts(helm: str) -> None:
    assert len(of_kind(render(helm, api_versions=(VAP,)), "ValidatingAdmissionPolicy")) == 1
    objects = render(helm, "pods.restartRecovered=all", api_versions=(VAP,))
    [deletes] = [p for p in of_kind(objects, "ValidatingAdmissionPolicy") if p["metadata"]["name"].endswith("-deletes")]
    assert deletes["spec"]["matchConstraints"]["resourceRules"][0]["operations"] == ["DELETE"]
    rules = " ".join(v["expression"] for v in deletes["spec"]["validations"])
    assert "pullhealth.io/recoverable-since" in rules and '"ReplicaSet", "StatefulSet", "DaemonSet"' in rules
    sa = one(objects, "ServiceAccount")["metadata"]["name"]
    assert f"system:serviceaccount:{RELEASE_NS}:{sa}" in deletes["spec"]["matchConditions"][0]["expression"]
    bindings = of_kind(objects, "ValidatingAdmissionPolicyBinding")
    assert {b["spec"]["policyName"] for b in bindings} == {p["metadata"]["name"]
                                                            for p in of_kind(objects, "ValidatingAdmissionPolicy")}
    assert len(of_kind(render(helm, "pods.restartRecovered=all", "security.podAdmissionPolicy.enabled=false",
                              api_versions=(VAP,)), "ValidatingAdmissionPolicy")) == 0


def test_security_values_render_to_valid_cli_arguments(helm: str) -> None:
    from pullhealth.cli import _parser
    from pullhealth.runtime.settings import from_args

    objects = render(helm, "security.identities.managedIdentityClientIds={11111111-1111-4111-8111-111111111111}",
                     "security.identities.armAudience=true", "security.destinations.allowCidrs={169.254.0.0/16}",
                     "security.destinations.denyCidrs={10.1.0.0/16,10.2.0.0/16}",
                     "security.destinations.registryHosts={*.azurecr.io}", "pods.enabled=false")
    c = container(objects)
    parsed = from_args(_parser().parse_args([*c["command"][1:], *c["args"]]))
    assert parsed.managed_identities == ("11111111-1111-4111-8111-111111111111",)
    assert parsed.arm_audience and not parsed.workload_identity
    assert parsed.allow_cidrs == ("169.254.0.0/16",) and parsed.deny_cidrs == ("10.1.0.0/16", "10.2.0.0/16")
    assert parsed.registry_hosts == ("*.azurecr.io",)
    # The ACR domains and kubelet identity are the trust policy's: passed with pods off too.
    assert not parsed.pods and parsed.acr_domains == ".azurecr.io,.azurecr.cn,.azurecr.us"


def test_reading_secrets_cluster_wide_is_opt_in(helm: str) -> None:
    role = one(render(helm, "rbac.readSecretsClusterWide=true"), "ClusterRole")
    assert rule_table(role)[("", "secrets")] == {"get", "list", "watch"}


def test_rbac_create_false_renders_no_rbac(helm: str) -> None:
    objects = render(helm, "rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=existing")
    assert not [o for o in objects if o["apiVersion"].startswith("rbac.")]
    assert not of_kind(objects, "ServiceAccount")
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def test_watch_namespaces_uses_roles(helm: str) -> None:
    objects = render(helm, *SCENARIOS["watchNamespaces"])
    # Cluster-wide only what is cluster-scoped by nature.
    assert rule_table(one(objects, "ClusterRole")) == {**CRD_RULE, **NAMESPACES_RULE}
    roles = of_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["a", "b"]
    for role in roles:
        assert rule_table(role) == NAMESPACED_RULES
    sa = one(objects, "ServiceAccount")["metadata"]["name"]
    bindings = of_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["a", "b"]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": RELEASE_NS}]
        assert binding["roleRef"]["kind"] == "Role"
    args = container(objects)["args"]
    assert "--namespace=a" in args and "--namespace=b" in args and "--all-namespaces" not in args


def test_peering_all_namespaces(helm: str) -> None:
    objects = render(helm, *SCENARIOS["peering"])
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["replicas"] == 2
    assert "--peering=pullhealth" in container(objects)["args"]
    peering = one(objects, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1" and peering["metadata"]["name"] == "pullhealth"
    table = rule_table(one(objects, "ClusterRole"))
    assert table[("kopf.dev", "clusterkopfpeerings")] == PEERING_VERBS
    assert ("kopf.dev", "kopfpeerings") not in table


def test_peering_in_watched_namespaces(helm: str) -> None:
    objects = render(helm, *SCENARIOS["peeringNamespaces"])
    assert sorted(p["metadata"]["namespace"] for p in of_kind(objects, "KopfPeering")) == ["a", "b"]
    assert not of_kind(objects, "ClusterKopfPeering")
    for role in of_kind(objects, "Role"):
        assert rule_table(role)[("kopf.dev", "kopfpeerings")] == PEERING_VERBS


def test_replicas_without_peering_are_refused(helm: str) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", "replicaCount=2")
    assert result.returncode != 0 and "peering" in result.stderr


def _metric_names() -> set[str]:
    """Series names pullhealth exports (from the one registry in pullhealth.metrics)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"]}
        names.update(family.name + s for s in suffixes.get(family.type, []))
    return names


def test_monitoring_objects(helm: str) -> None:
    objects = render(helm, *SCENARIOS["monitoring"])
    rules = {r["alert"]: r for r in one(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert sorted(rules) == ["PullhealthImageTagDeleted", "PullhealthOperatorAbsent",
                             "PullhealthPodsFailingImagePulls", "PullhealthRegistryBudgetLow",
                             "PullhealthRegistryCheckStale",
                             "PullhealthRegistryCheckUnhealthy", "PullhealthSlowImagePulls",
                             "PullhealthWorkloadImageUnpullable"]
    assert rules["PullhealthWorkloadImageUnpullable"]["for"] == "15m"
    assert rules["PullhealthImageTagDeleted"]["for"] == "10m"
    assert rules["PullhealthRegistryBudgetLow"]["for"] == "5m" and "< 0.1 *" in rules["PullhealthRegistryBudgetLow"]["expr"]
    assert rules["PullhealthRegistryCheckUnhealthy"]["for"] == "10m"
    assert rules["PullhealthSlowImagePulls"]["for"] == "15m" and "> 120" in rules["PullhealthSlowImagePulls"]["expr"]
    assert rules["PullhealthPodsFailingImagePulls"]["for"] == "5m"
    assert rules["PullhealthOperatorAbsent"]["for"] == "5m"
    assert rules["PullhealthRegistryCheckStale"]["for"] == "5m"
    for rule in rules.values():
        assert rule["labels"]["severity"] == "warning"
        assert rule["annotations"]["runbook_url"].startswith("https://github.com/pullhealth/pullhealth/blob/main/docs/")
    # The runbook sections exist: docs/alerting.md has one per alert, codes.md one per code.
    alerting = (ROOT / "docs" / "alerting.md").read_text()
    for name in rules:
        assert f"\n## {name}\n" in alerting, name
    assert rules["PullhealthPodsFailingImagePulls"]["annotations"]["runbook_url"].endswith(
        "/codes.md#{{ $labels.code | toLower }}")
    # The operator's own pod labels are aggregated away (the alert survives a restart).
    assert rules["PullhealthRegistryCheckUnhealthy"]["expr"].startswith("max by (namespace, name, registry)")
    assert rules["PullhealthRegistryCheckUnhealthy"]["keep_firing_for"] == "3m"
    without = render(helm, *SCENARIOS["monitoring"], "prometheusRule.keepFiringFor=")
    assert not any("keep_firing_for" in r for r in one(without, "PrometheusRule")["spec"]["groups"][0]["rules"])
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    # OperatorAbsent looks for the job Prometheus Operator names after the Service.
    assert f'job="{service["metadata"]["name"]}"' in rules["PullhealthOperatorAbsent"]["expr"]
    dashboard = one(objects, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["pullhealth.json"])
    assert board["panels"]
    # Every metric the alerts and the dashboard query is one pullhealth exports.
    queries = " ".join(r["expr"] for r in rules.values())
    queries += " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    used = set(re.findall(r"\bpullhealth_[a-z_]+", queries))
    assert used and used <= _metric_names(), used - _metric_names()



def test_pod_options_and_no_pods_render_to_valid_cli_arguments(helm: str) -> None:
    from pullhealth.cli import _parser

    for sets, check in (
        (["pods.enabled=false"], lambda a: a.no_pods),
        (["pods.interval=30", "pods.kubeletClientId=11111111-1111-4111-8111-111111111111",
          "watchNamespaces={a,b}"],
         lambda a: a.pod_interval == 30 and a.kubelet_client_id.startswith("1111") and a.namespaces == ["a", "b"]),
    ):
        objects = render(helm, *sets)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        c = deployment["spec"]["template"]["spec"]["containers"][0]
        assert check(_parser().parse_args([*c["command"][1:], *c["args"]])), c["args"]


def test_workload_checks_are_opt_in_read_only_and_reach_their_flags(helm: str) -> None:
    from pullhealth.cli import _parser

    assert not set(WORKLOADS_RULE) & set(rule_table(one(render(helm), "ClusterRole")))
    objects = render(helm, "workloads.enabled=true", "workloads.interval=120", "workloads.workers=3")
    table = rule_table(one(objects, "ClusterRole"))
    assert {key: table[key] for key in WORKLOADS_RULE} == WORKLOADS_RULE
    assert table[("", "secrets")] == {"get"}  # no new Secret read: pull secrets by name only
    c = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = _parser().parse_args([*c["command"][1:], *c["args"]])
    assert args.workloads and args.workload_interval == 120 and args.workload_workers == 3


def test_proxy_values_become_the_operator_environment(helm: str) -> None:
    def env_of(*sets: str) -> dict[str, str]:
        deployment = next(o for o in render(helm, *sets) if o["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container.get("env") or []}

    assert "PULLHEALTH_PROXY" not in env_of()
    assert env_of("proxy.fromEnvironment=true")["PULLHEALTH_PROXY"] == "env"
    both = env_of("proxy.fromEnvironment=true", "proxy.url=http://proxy.corp:3128", "proxy.noProxy=.svc")
    assert both["PULLHEALTH_PROXY"] == "http://proxy.corp:3128" and both["PULLHEALTH_NO_PROXY"] == ".svc"


def _egress_ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for p in rule.get("ports", [])}


def test_network_policy_is_off_by_default_and_one_value_turns_it_on(helm: str) -> None:
    assert not of_kind(render(helm), "NetworkPolicy")
    objects = render(helm, "networkPolicy.enabled=true")
    policy = one(objects, "NetworkPolicy")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["metadata"]["namespace"] == RELEASE_NS
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    # Egress only: ingress (Prometheus scraping /metrics) is not restricted.
    assert policy["spec"]["policyTypes"] == ["Egress"]
    rules = policy["spec"]["egress"]
    dns, registries, api, imds = rules
    assert _egress_ports(dns) == {("UDP", 53), ("TCP", 53)} and "to" not in dns
    assert _egress_ports(registries) == {("TCP", 443)}
    assert [peer["ipBlock"]["cidr"] for peer in registries["to"]] == ["0.0.0.0/0", "::/0"]
    assert _egress_ports(api) == {("TCP", 443), ("TCP", 6443)} and "to" not in api
    assert imds["to"] == [{"ipBlock": {"cidr": "169.254.169.254/32"}}] and _egress_ports(imds) == {("TCP", 80)}


def test_network_policy_values_narrow_it(helm: str) -> None:
    objects = render(helm, "networkPolicy.enabled=true", "networkPolicy.dns=false", "networkPolicy.imds=false",
                     "networkPolicy.registryPorts={443,5000,3128}", "networkPolicy.registryCidrs={10.20.0.0/16}",
                     "networkPolicy.apiServerCidrs={10.0.0.1/32}", "networkPolicy.apiServerPorts={443}",
                     "networkPolicy.extraEgress[0].ports[0].port=9000")
    registries, api, extra = one(objects, "NetworkPolicy")["spec"]["egress"]
    assert _egress_ports(registries) == {("TCP", 443), ("TCP", 5000), ("TCP", 3128)}
    assert registries["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}] and _egress_ports(api) == {("TCP", 443)}
    assert extra == {"ports": [{"port": 9000}]}


def test_pods_know_their_name_for_events_claims_and_peering(helm: str) -> None:
    """POD_NAME (reportingInstance, claim holder) and POD_ID (kopf's peer identity) come
    from the downward API; HA mode passes --peering and rolls updates."""
    for values in ((), ("peering.enabled=true", "replicaCount=2")):
        deployment = one(render(helm, *values), "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("valueFrom") for e in container["env"]}
        for name in ("POD_NAME", "POD_ID"):
            assert env[name] == {"fieldRef": {"fieldPath": "metadata.name"}}, env
    assert "--peering=pullhealth" in container["args"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"


# -- the node agent -----------------------------------------------------------------

AGENT_RULES: dict[tuple[str, str], set[str]] = {
    ("", "pods"): {"list", "watch"},
    ("events.k8s.io", "events"): {"create"},
}


def agent_objects(helm: str, *sets: str) -> list[dict[str, Any]]:
    return [o for o in render(helm, "agent.enabled=true", *sets)
            if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "agent"]


def test_agent_is_opt_in(helm: str) -> None:
    assert not of_kind(render(helm), "DaemonSet")
    result = run_helm(helm, "lint", "--strict", str(CHART), "--set", "agent.enabled=true")
    assert result.returncode == 0 and "[WARNING]" not in result.stdout, result.stdout + result.stderr


def test_agent_rbac_is_exactly_pods_list_watch_and_events_create(helm: str) -> None:
    objects = agent_objects(helm)
    assert sorted(o["kind"] for o in objects) == ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount"]
    assert rule_table(one(objects, "ClusterRole")) == AGENT_RULES
    sa = one(objects, "ServiceAccount")["metadata"]["name"]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": RELEASE_NS}]
    assert binding["roleRef"]["name"] == one(objects, "ClusterRole")["metadata"]["name"]
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa
    operator_sa = [o for o in render(helm, "agent.enabled=true") if o["kind"] == "ServiceAccount"]
    assert len({o["metadata"]["name"] for o in operator_sa}) == 2  # its own account, not the operator's


def test_agent_pod_uses_the_nodes_network_and_reads_the_node_read_only(helm: str) -> None:
    daemonset = one(agent_objects(helm), "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "Default"
    assert not pod.get("hostPID") and not pod.get("hostIPC")
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and not sc.get("privileged")
    host_paths = {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {
        "node-ca": {"path": "/etc/ssl/certs", "type": "Directory"},
        "containerd-config": {"path": "/etc/containerd", "type": "Directory"},
    }
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    for name in host_paths:
        assert mounts[name]["readOnly"] is True
    # No credential is mounted: the one Secret is the report key it signs its notes with.
    assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == ["ph-pullhealth-agent-report-key"]
    assert mounts["report-key"]["readOnly"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert c["resources"]["requests"] == {"cpu": "10m", "memory": "96Mi"}
    # Every argument the chart passes is one `pullhealth agent` accepts.
    from pullhealth.cli import _parser

    parsed = _parser().parse_args([*c["command"][1:], *c["args"]])
    assert parsed.certs_dir == "/host/containerd/certs.d"
    assert parsed.ca_bundle == "/host/ca/ca-certificates.crt"


def test_agent_enabled_makes_the_operator_read_its_events(helm: str) -> None:
    assert "--node-agent" not in container(render(helm))["args"]
    assert "--node-agent" in container(render(helm, "agent.enabled=true"))["args"]


def test_agent_values_reach_its_flags(helm: str) -> None:
    daemonset = one(agent_objects(helm, "agent.privateEndpoints={myacr.azurecr.io}",
                                  "agent.allowCidrs={10.0.0.0/8}", "agent.registryHosts={*.azurecr.io}",
                                  "agent.caBundle.hostPath=/etc/pki/tls/certs",
                                  "agent.caBundle.file=ca-bundle.crt"), "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--private-endpoints=myacr.azurecr.io" in args
    assert "--allow-cidr=10.0.0.0/8" in args and "--registry-host=*.azurecr.io" in args
    assert "--ca-bundle=/host/ca/ca-bundle.crt" in args
    assert {"name": "node-ca", "hostPath": {"path": "/etc/pki/tls/certs", "type": "Directory"}} in pod["volumes"]


def test_agent_probes_what_the_operator_may_by_default_and_signs_with_the_shared_key(helm: str) -> None:
    """Issue 21: the agent's destination lists default to the operator's; the agent and the
    operator mount the same report key (the operator takes only notes signed with it)."""
    objects = agent_objects(helm, "security.destinations.registryHosts={*.azurecr.io}",
                            "security.destinations.denyCidrs={10.9.0.0/16}")
    args = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--registry-host=*.azurecr.io" in args and "--deny-cidr=10.9.0.0/16" in args
    assert "--report-key-file=/etc/pullhealth/report-key/key" in args
    [key] = [o for o in render(helm, "agent.enabled=true") if o["kind"] == "Secret"]
    assert key["metadata"]["name"] == "ph-pullhealth-agent-report-key" and len(key["data"]["key"]) >= 32
    assert not [o for o in render(helm) if o["kind"] == "Secret"]  # no agent, no key
    operator = container(render(helm, "agent.enabled=true"))
    assert "--agent-report-key-file=/etc/pullhealth/report-key/key" in operator["args"]


# -- the admission webhook (docs/admission.md) ----------------------------------------


def test_admission_is_off_by_default(helm: str) -> None:
    objects = render(helm)
    assert not of_kind(objects, "ValidatingWebhookConfiguration")
    assert not any(a.startswith("--admission") for a in container(objects)["args"])


def test_admission_renders_a_fail_open_webhook_with_its_flags_and_narrow_rbac(helm: str) -> None:
    objects = render(helm, "admission.enabled=true")
    name = f"{RELEASE}-pullhealth-admission"
    config = one(objects, "ValidatingWebhookConfiguration")
    assert config["metadata"]["name"] == name
    assert [w["name"] for w in config["webhooks"]] == ["warn.admission.pullhealth.io", "deny.admission.pullhealth.io"]
    for hook in config["webhooks"]:
        assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
        assert 1 <= hook["timeoutSeconds"] <= 5
        assert hook["clientConfig"]["service"]["name"] == name
        expressions = hook["namespaceSelector"]["matchExpressions"]
        assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]} in expressions
        kinds = {r for rule in hook["rules"] for r in rule["resources"]}
        assert kinds == {"pods", "replicationcontrollers", "deployments", "statefulsets", "daemonsets",
                         "replicasets", "jobs", "cronjobs"}
        assert all(rule["operations"] == ["CREATE", "UPDATE"] for rule in hook["rules"])
    warn, deny = config["webhooks"]
    assert warn["clientConfig"]["service"]["path"] == "/validate"
    assert deny["clientConfig"]["service"]["path"] == "/validate-deny"
    assert {"key": "pullhealth.io/admission", "operator": "In", "values": ["deny"]} in \
        deny["namespaceSelector"]["matchExpressions"]
    service = next(s for s in of_kind(objects, "Service") if s["metadata"]["name"] == name)
    assert service["spec"]["ports"] == [{"name": "admission", "port": 443, "targetPort": "admission",
                                         "protocol": "TCP"}]
    c = container(objects)
    assert {"name": "admission", "containerPort": 9443, "protocol": "TCP"} in c["ports"]
    from pullhealth.cli import _parser

    parsed = _parser().parse_args([*c["command"][1:], *c["args"]])
    assert parsed.admission_port == 9443 and parsed.admission_budget == 2.0
    assert parsed.admission_tls_secret == f"{RELEASE_NS}/{name}-tls" and parsed.admission_webhook_name == name
    assert f"{name}.{RELEASE_NS}.svc" in parsed.admission_hosts
    # RBAC: exactly the one Secret (and create) and the one configuration, by name.
    role = next(r for r in of_kind(objects, "Role") if r["metadata"]["name"] == name)
    assert role["metadata"]["namespace"] == RELEASE_NS
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [f"{name}-tls"], "verbs": ["get", "update"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    cluster_role = next(r for r in of_kind(objects, "ClusterRole") if r["metadata"]["name"] == name)
    assert cluster_role["rules"] == [{"apiGroups": ["admissionregistration.k8s.io"],
                                      "resources": ["validatingwebhookconfigurations"],
                                      "resourceNames": [name], "verbs": ["get", "patch"]}]
    # The operator's main role is unchanged.
    main = next(r for r in of_kind(objects, "ClusterRole") if r["metadata"]["name"] != name)
    assert rule_table(main) == {**CRD_RULE, **NAMESPACED_RULES}


def test_admission_with_cert_manager(helm: str) -> None:
    objects = render(helm, "admission.enabled=true", "admission.certManager.enabled=true")
    name = f"{RELEASE}-pullhealth-admission"
    config = one(objects, "ValidatingWebhookConfiguration")
    assert config["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{RELEASE_NS}/{name}"}
    certificate = one(objects, "Certificate")
    assert certificate["spec"]["secretName"] == f"{name}-tls"
    assert certificate["spec"]["issuerRef"] == {"name": name, "kind": "Issuer"}
    assert one(objects, "Issuer")["spec"] == {"selfSigned": {}}
    assert not any(r["metadata"]["name"] == name for r in of_kind(objects, "Role") + of_kind(objects, "ClusterRole"))
    c = container(objects)
    assert "--admission-cert-dir=/etc/pullhealth/admission" in c["args"]
    assert not any(a.startswith(("--admission-tls-secret", "--admission-webhook-name")) for a in c["args"])
    assert {"name": "admission-tls", "mountPath": "/etc/pullhealth/admission", "readOnly": True} in c["volumeMounts"]
    named = render(helm, "admission.enabled=true", "admission.certManager.enabled=true",
                   "admission.certManager.issuerRef.name=corp-ca", "admission.certManager.issuerRef.kind=ClusterIssuer")
    assert one(named, "Certificate")["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}
    assert not of_kind(named, "Issuer")


def test_admission_with_watched_namespaces_sends_only_those(helm: str) -> None:
    config = one(render(helm, "admission.enabled=true", "watchNamespaces={a,b}"), "ValidatingWebhookConfiguration")
    for hook in config["webhooks"]:
        assert {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]} in \
            hook["namespaceSelector"]["matchExpressions"]
