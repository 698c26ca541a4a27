"""Kubernetes objects tests apply with kubectl, as YAML text."""

from __future__ import annotations

import base64
import json
from typing import Any

import yaml


def docker_secret_yaml(name: str, server: str, user: str, password: str) -> str:
    """A kubernetes.io/dockerconfigjson Secret for one registry."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = json.dumps({"auths": {server: {"auth": auth}}})
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": name},
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    })


def regcheck_yaml(name: str, spec: dict[str, Any], *, interval: int = 30, timeout: int = 5) -> str:
    """A RegistryCheck with a short interval and timeout (overridable through ``spec``).

    ``timeoutSeconds`` is the total of the whole check: 5 s leaves a healthy chain room on
    a loaded CI machine while a silent server still fails fast.
    """
    return yaml.safe_dump({
        "apiVersion": "pullhealth.io/v1alpha1", "kind": "RegistryCheck",
        "metadata": {"name": name}, "spec": {"intervalSeconds": interval, "timeoutSeconds": timeout, **spec},
    })


ADMISSION_LABEL = "pullhealth.io/admission"
ADMISSION_RULES = [
    {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
     "resources": ["pods", "replicationcontrollers"], "scope": "Namespaced"},
    {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
     "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"], "scope": "Namespaced"},
    {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
     "resources": ["jobs", "cronjobs"], "scope": "Namespaced"},
]


def webhook_configuration(name: str, port: int, timeout_seconds: int = 5) -> dict[str, Any]:
    """Like charts/pullhealth/templates/admission.yaml, with a URL instead of a Service."""

    def hook(suffix: str, path: str, expressions: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": f"{suffix}.admission.pullhealth.io",
            "clientConfig": {"url": f"https://127.0.0.1:{port}{path}"},
            "rules": ADMISSION_RULES,
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "timeoutSeconds": timeout_seconds,
            "admissionReviewVersions": ["v1"],
            "matchPolicy": "Equivalent",
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]},
                *expressions,
            ]},
        }

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            hook("warn", "/validate", [{"key": ADMISSION_LABEL, "operator": "NotIn", "values": ["off", "deny"]}]),
            hook("deny", "/validate-deny", [{"key": ADMISSION_LABEL, "operator": "In", "values": ["deny"]}]),
        ],
    }
