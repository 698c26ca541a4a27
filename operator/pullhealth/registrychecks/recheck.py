"""``pullhealth recheck``: ask the operator to check RegistryChecks now, and wait for it.

The request is the ``pullhealth.io/recheck`` annotation set to a new value (what ``kubectl
annotate`` does by hand); the operator answers it at once and records the value in
``status.observedRecheck``, which is what :func:`wait` looks for.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from pullhealth.registrychecks.registrycheck import RECHECK_ANNOTATION

GROUP, VERSION, PLURAL = "pullhealth.io", "v1alpha1", "registrychecks"
REQUEST_TIMEOUT = 30


class RecheckError(Exception):
    """The RegistryCheck does not exist or may not be annotated (message says which)."""


def request(api: kubernetes.client.ApiClient, namespace: str, name: str) -> str:
    """Set the annotation to a new value; returns it.

    Raises:
        RecheckError: not found, or RBAC refused the patch.
    """
    token = str(time.time_ns())
    patch = {"metadata": {"annotations": {RECHECK_ANNOTATION: token}}}
    try:
        kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, patch, _request_timeout=REQUEST_TIMEOUT
        )
    except ApiException as exc:
        if exc.status == 404:
            raise RecheckError(f"registrycheck {namespace}/{name} not found") from None
        if exc.status == 403:
            raise RecheckError(f"not allowed to patch registrycheck {namespace}/{name} (RBAC)") from None
        raise RecheckError(f"patch of registrycheck {namespace}/{name} failed: HTTP {exc.status}") from None
    return token


def wait(
    api: kubernetes.client.ApiClient, namespace: str, name: str, token: str, timeout: float
) -> Mapping[str, Any] | None:
    """The status once it answers ``token``; None when ``timeout`` seconds pass first."""
    custom = kubernetes.client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            obj = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            raise RecheckError(f"reading registrycheck {namespace}/{name}: HTTP {exc.status}") from None
        status = (obj.get("status") if isinstance(obj, dict) else None) or {}
        if status.get("observedRecheck") == token:
            return dict(status)
        time.sleep(0.5)
    return None
