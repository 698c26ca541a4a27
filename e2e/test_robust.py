"""Hostile and slow registries through the operator: nothing leaks, nothing hangs.

A registry + token service that echoes every credential it receives (ASCII and non-ASCII
passwords, the issued tokens) is checked by RegistryChecks and by failing pods; then every
surface is searched: RegistryCheck status, Events, pod annotations, operator logs, metrics.
A registry that drips one byte a second must end a RegistryCheck within its timeoutSeconds,
and must not hold up the diagnosis of pods on healthy registries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from support.hostile import DripRegistry, HostileRegistry, planted_forms
from support.kubelet import annotations, docker_secret, fail_pull, kubelet_message, make_pod
from support.objects import regcheck_yaml
from support.world import World

USER = "mallory"
PASSWORDS = ["Plain-s3cret-42", "pässwörd-ü€-42"]
REPOS = ["echo/reject", "echo/oauth", "echo/broken", "echo/grant", "echo/deny"]


@pytest.fixture(scope="module")
def hostile(world: World) -> Iterator[HostileRegistry]:
    with HostileRegistry(world.pki) as srv:
        yield srv


def _status(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("-n", ns, "get", "regcheck", name, "-o", "json").stdout
    return dict(json.loads(out).get("status") or {})


def test_echoed_secrets_reach_no_surface(dev_cluster: Any, operator: Any, world: World, namespace: str,
                                         api: Any, hostile: HostileRegistry, wait_for: Any) -> None:
    ns = namespace
    names = []
    for i, password in enumerate(PASSWORDS):
        api.create_namespaced_secret(ns, docker_secret(f"cred-{i}", hostile.host, USER, password))
        for repo in REPOS:
            name = f"{repo.split('/')[1]}-{i}"
            names.append(name)
            spec = {"registry": hostile.host, "image": f"{repo}:v1",
                    "auth": {"mode": "pullSecrets", "pullSecrets": [f"cred-{i}"]}}
            dev_cluster.kubectl("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml(name, spec, timeout=5))
            image = f"{hostile.host}/{repo}:v1"
            pod = make_pod(api, ns, name, image, [f"cred-{i}"])
            # kubelet's own message carries what the registry echoed to the node.
            echoed = f" (registry said: invalid login {USER}:{password})"
            fail_pull(api, ns, pod, image, kubelet_message("token_wrong_password", image) + echoed)
    for name in names:
        status = wait_for(lambda n=name: (s := _status(dev_cluster, ns, n)).get("code") and s,
                          f"status of {name}", timeout=90)
        assert status["phase"] == "Unhealthy" and status["code"] not in ("OK", "UNKNOWN"), status
        wait_for(lambda n=name: annotations(api, ns, n).get("pullhealth.io/diagnosis"), f"pod {name}",
                 timeout=90)
    time.sleep(1)  # let the Events land
    events = json.loads(dev_cluster.kubectl("-n", ns, "get", "events", "-o", "json").stdout)["items"]
    # The test plays kubelet: its own Failed events and the pods' waiting messages carry the
    # echo on purpose; what pullhealth writes must not.
    ours = [e for e in events if (e.get("source") or {}).get("component") != "kubelet"]
    assert ours, "no Event from pullhealth"
    pods = json.loads(dev_cluster.kubectl("-n", ns, "get", "pods", "-o", "json").stdout)["items"]
    surfaces = {
        "registrychecks": dev_cluster.kubectl("-n", ns, "get", "regcheck", "-o", "json").stdout,
        "events": json.dumps(ours),
        "annotations": json.dumps([p["metadata"].get("annotations") for p in pods]),
        "log": operator.text(),
        "metrics": operator.metrics(),
    }
    # JSON with non-ASCII escaped or raw: look at both.
    for key in ("registrychecks", "events", "annotations"):
        surfaces[f"{key} (decoded)"] = json.dumps(json.loads(surfaces[key]), ensure_ascii=False)
    assert hostile.tokens, "the hostile token service issued no token: the grant paths did not run"
    for password in PASSWORDS:
        for form in planted_forms(USER, password, hostile.tokens):
            for where, text in surfaces.items():
                assert form not in text, (where, form)
    # The echoes were there, masked (not merely absent).
    assert "***" in surfaces["registrychecks"]


def test_a_dripping_registry_is_bounded_and_starves_nobody(
    dev_cluster: Any, operator: Any, world: World, namespace: str, api: Any, wait_for: Any
) -> None:
    ns = namespace
    with DripRegistry(world.pki, interval=1.0) as drip:
        created = time.monotonic()
        spec = {"registry": drip.host, "image": "team/app:v1", "auth": {"mode": "anonymous"}}
        dev_cluster.kubectl("-n", ns, "apply", "-f", "-", stdin=regcheck_yaml("drip", spec, timeout=3))
        # Pods failing on the slow registry (distinct images: no sharing), then one on a healthy one.
        for i in range(12):
            image = f"{drip.host}/team/app:v{i}"
            pod = make_pod(api, ns, f"slow-{i}", image)
            fail_pull(api, ns, pod, image, kubelet_message("token_wrong_password", image))
        time.sleep(1)
        healthy_image = f"{world.anon}/team/app:nosuchtag"
        pod = make_pod(api, ns, "healthy-registry", healthy_image)
        started = time.monotonic()
        fail_pull(api, ns, pod, healthy_image, kubelet_message("tag_not_found", healthy_image))
        got = wait_for(lambda: annotations(api, ns, "healthy-registry").get("pullhealth.io/diagnosis"),
                       "the pod on the healthy registry", timeout=30)
        assert got == "TAG_NOT_FOUND"
        assert time.monotonic() - started < 8, "a slow registry held up pods on other registries"

        status = wait_for(lambda: (s := _status(dev_cluster, ns, "drip")).get("code") and s,
                          "status of the drip RegistryCheck", timeout=30)
        assert time.monotonic() - created < 3 + 5 + 3  # timeout + one tick + margin
        assert status["code"] == "CONNECT_TIMEOUT", status
        failed = [c for c in status["checks"] if c["status"] == "failed"]
        assert [c["name"] for c in failed] == ["challenge"] and "3s" in failed[0]["message"], failed
        assert sum(c.get("durationMs", 0) for c in status["checks"]) < 3000 + 500, status["checks"]
        # The pods on the slow registry end too: within the pod timeout (10 s) plus margin,
        # four at a time.
        # Four at a time (per-registry bound), each chain ending at the 10 s pod timeout.
        took = []
        for i in range(12):
            ann = wait_for(lambda n=f"slow-{i}": (a := annotations(api, ns, n)).get("pullhealth.io/diagnosis")
                           and a, f"slow-{i}", timeout=60)
            assert ann["pullhealth.io/diagnosis"] == "CONNECT_TIMEOUT"
            created_at = api.read_namespaced_pod(f"slow-{i}", ns).metadata.creation_timestamp
            diagnosed = datetime.strptime(ann["pullhealth.io/diagnosed-at"], "%Y-%m-%dT%H:%M:%SZ")
            took.append((diagnosed.replace(tzinfo=UTC) - created_at).total_seconds())
        for k, seconds in enumerate(sorted(took)):
            assert seconds <= (k // 4 + 1) * 10 + 4, sorted(took)
