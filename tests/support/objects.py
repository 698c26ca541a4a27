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
