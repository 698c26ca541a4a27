"""Day-2 lifecycle: deletes never wait for the operator, fixes show up fast, recheck on demand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import yaml

from support.objects import docker_secret_yaml, regcheck_yaml
from support.world import World

OLD_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def _get(cluster: Any, ns: str, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl("-n", ns, "get", "regcheck", name, "-o", "json", "--ignore-not-found").stdout
    return dict(json.loads(out)) if out.strip() else None


def _status(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    return dict((_get(cluster, ns, name) or {}).get("status") or {})


def test_delete_does_not_wait_for_the_operator(dev_cluster: Any, operator: Any, world: World, namespace: str,
                                               wait_for: Any) -> None:
    k, ns = dev_cluster.kubectl, namespace
    k("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml("gone", {"registry": world.anon, "auth": {"mode": "anonymous"}}))
    # An object from an older operator version, with kopf's finalizer: the operator removes it.
    old = yaml.safe_load(regcheck_yaml("upgraded", {"registry": world.anon, "auth": {"mode": "anonymous"}}))
    old["metadata"]["finalizers"] = [OLD_FINALIZER]
    k("-n", ns, "apply", "-f", "-", stdin=yaml.safe_dump(old))
    for name in ("gone", "upgraded"):
        wait_for(lambda n=name: _status(dev_cluster, ns, n).get("phase") == "Healthy", f"{name} checked", timeout=60)
    wait_for(lambda: not (_get(dev_cluster, ns, "upgraded") or {})["metadata"].get("finalizers"),
             "the old finalizer removed", timeout=30)
    assert not (_get(dev_cluster, ns, "gone") or {})["metadata"].get("finalizers")

    operator.stop()
    try:
        for name in ("gone", "upgraded"):
            started = time.monotonic()
            k("-n", ns, "delete", "regcheck", name, "--timeout=10s")
            assert _get(dev_cluster, ns, name) is None
            assert time.monotonic() - started < 10
    finally:
        operator.start()


def test_a_fix_shows_up_within_a_minute_and_at_once_on_recheck(
    dev_cluster: Any, operator: Any, world: World, namespace: str, wait_for: Any
) -> None:
    k, ns = dev_cluster.kubectl, namespace
    # Default interval (300 s): only the failure back-off makes the fix show up soon.
    for name, secret in (("waits", "later-a"), ("asks", "later-b")):
        spec = {"registry": world.acr, "image": "team/app:v1", "auth": {"pullSecrets": [secret]},
                "intervalSeconds": 300}
        k("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml(name, spec))
    for name in ("waits", "asks"):
        wait_for(lambda n=name: _status(dev_cluster, ns, n).get("code") == "PULL_SECRET_MISSING",
                 f"{name} failing", timeout=60)

    k("-n", ns, "apply", "-f", "-", stdin=docker_secret_yaml("later-a", world.acr, *world.acr_puller))
    created = time.monotonic()
    wait_for(lambda: _status(dev_cluster, ns, "waits").get("phase") == "Healthy", "healthy after the fix",
             timeout=60)
    assert time.monotonic() - created < 60

    # The recheck annotation runs the check at once (well before the 30 s first retry).
    k("-n", ns, "apply", "-f", "-", stdin=docker_secret_yaml("later-b", world.acr, *world.acr_puller))
    k("-n", ns, "annotate", "regcheck", "asks", f"pullhealth.io/recheck={int(time.time())}")
    asked = time.monotonic()
    status = wait_for(lambda: (s := _status(dev_cluster, ns, "asks")).get("phase") == "Healthy" and s,
                      "healthy after the recheck", timeout=15)
    assert time.monotonic() - asked < 15
    token = _get(dev_cluster, ns, "asks")["metadata"]["annotations"]["pullhealth.io/recheck"]  # type: ignore[index]
    assert status["observedRecheck"] == token
    # Answered once: the same annotation does not check again.
    stamp = status["lastCheckTime"]
    time.sleep(3)
    assert _status(dev_cluster, ns, "asks")["lastCheckTime"] == stamp


def test_a_scheme_in_the_registry_is_refused_readably(dev_cluster: Any, operator: Any, namespace: str) -> None:
    bad = dev_cluster.kubectl("-n", namespace, "apply", "-f", "-", check=False,
                              stdin=regcheck_yaml("scheme", {"registry": "https://myacr.azurecr.io"}))
    assert bad.returncode != 0
    assert "without https:// or a path (e.g. myacr.azurecr.io" in bad.stderr, bad.stderr


def test_pullhealth_recheck_checks_now_and_prints_the_result(dev_cluster: Any, operator: Any, world: World,
                                                             namespace: str, wait_for: Any) -> None:
    k, ns = dev_cluster.kubectl, namespace
    spec = {"registry": world.acr, "image": "team/app:v1", "auth": {"pullSecrets": ["later-c"]}, "intervalSeconds": 300}
    k("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml("viacli", spec))
    wait_for(lambda: _status(dev_cluster, ns, "viacli").get("code") == "PULL_SECRET_MISSING", "failing", timeout=60)
    k("-n", ns, "apply", "-f", "-", stdin=docker_secret_yaml("later-c", world.acr, *world.acr_puller))
    env = {**os.environ, "KUBECONFIG": str(dev_cluster.kubeconfig)}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pullhealth", "recheck", "viacli", "-n", ns, "--wait", "20"],
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"{ns}/viacli: Healthy OK: "), result.stdout
    assert time.monotonic() - started < 20
    missing = subprocess.run([sys.executable, "-m", "pullhealth", "recheck", "nosuch", "-n", ns], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "not found" in missing.stderr
