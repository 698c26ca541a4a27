"""The admission webhook with the real API server calling it (issue 23).

The operator serves the webhook on 127.0.0.1 with a certificate it generated (kept in a
Secret), and injects its CA into a ValidatingWebhookConfiguration shaped like the chart's
(two webhooks: warn, and deny for namespaces labelled for it; failurePolicy Ignore).
``kubectl apply`` prints the API server's warnings on stderr as ``Warning: ...``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import yaml

from pullhealth import tlscerts
from pullhealth.admission import certs
from support.kubelet import docker_secret, ensure_node
from support.objects import webhook_configuration
from support.operatorproc import OperatorProcess, free_port
from support.world import World

pytestmark = pytest.mark.usefixtures("no_session_operator")

TIMEOUT_SECONDS = 5
LABEL = "pullhealth.io/admission"


def deployment(name: str, image: str, secrets: list[str] | None = None, arch: str | None = None) -> str:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": image}]}
    if secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    if arch:
        spec["nodeSelector"] = {"kubernetes.io/arch": arch}
    return yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": spec}},
    })


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Warning:")]


@pytest.fixture(scope="module")
def webhook(dev_cluster: Any, world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator serving the webhook, and the configuration its CA was injected into."""
    api = kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(dev_cluster.kubeconfig)))
    ensure_node(api)  # amd64: the platform the arm64-only image lacks
    name = f"pullhealth-e2e-{uuid.uuid4().hex[:6]}"
    port = free_port()
    dev_cluster.kubectl("apply", "-f", "-",
                        stdin=json.dumps(webhook_configuration(name, port, TIMEOUT_SECONDS)))
    op = OperatorProcess(
        dev_cluster.kubeconfig, world, tmp_path_factory.mktemp("admission") / "operator.log",
        ["--admission-port", str(port), "--admission-bind-address", "127.0.0.1",
         "--admission-tls-secret", f"default/{name}-tls", "--admission-host", "127.0.0.1",
         "--admission-webhook-name", name],
    )
    op.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the CA injected into both webhooks
            got = json.loads(dev_cluster.kubectl("get", "validatingwebhookconfiguration", name, "-o", "json").stdout)
            if all(w.get("clientConfig", {}).get("caBundle") for w in got["webhooks"]):
                break
            time.sleep(0.3)
        else:
            pytest.fail("caBundle not injected:\n" + op.text()[-3000:])
        yield op
    finally:
        op.stop()
        dev_cluster.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found")
        dev_cluster.kubectl("delete", "secret", "-n", "default", f"{name}-tls", "--ignore-not-found")
        text = op.text()
        for secret in (world.acr_puller[1], world.basic_user[1], "not-the-password"):
            assert secret not in text


def apply(dev_cluster: Any, namespace: str, manifest: str, *extra: str) -> tuple[int, str, float]:
    started = time.monotonic()
    result = dev_cluster.kubectl("apply", "-n", namespace, "-f", "-", *extra, stdin=manifest, check=False)
    return result.returncode, result.stderr, time.monotonic() - started


def exists(dev_cluster: Any, namespace: str, name: str) -> bool:
    got = dev_cluster.kubectl("get", "deployment", "-n", namespace, name, check=False)
    return got.returncode == 0


def test_apply_warns_once_per_unpullable_image_and_creates_the_object(
    dev_cluster: Any, world: World, webhook: OperatorProcess, namespace: str
) -> None:
    user, _ = world.basic_user
    dev_cluster.kubectl("apply", "-n", namespace, "-f", "-",
                        stdin=json.dumps(docker_secret("wrong", world.basic, user, "not-the-password")))
    cases = [
        ("missing-tag", deployment("missing-tag", f"{world.anon}/team/app:v9"), "TAG_NOT_FOUND"),
        ("wrong-secret", deployment("wrong-secret", f"{world.basic}/team/app:v1", ["wrong"]),
         "CREDENTIALS_REJECTED"),
        ("no-platform", deployment("no-platform", f"{world.anon}/multi/arm:1", arch="amd64"), "PLATFORM_NOT_FOUND"),
    ]
    for name, manifest, code in cases:
        rc, stderr, took = apply(dev_cluster, namespace, manifest)
        assert rc == 0, stderr
        got = warnings(stderr)
        assert len(got) == 1, (name, stderr, webhook.text()[-2000:])
        image = yaml.safe_load(manifest)["spec"]["template"]["spec"]["containers"][0]["image"]
        assert got[0].startswith(f"Warning: image {image}: {code} ("), got
        assert "not-the-password" not in stderr
        assert took < TIMEOUT_SECONDS, took
        assert exists(dev_cluster, namespace, name)
    rc, stderr, _ = apply(dev_cluster, namespace, deployment("healthy", f"{world.anon}/team/app:v1"))
    assert rc == 0 and warnings(stderr) == [], stderr
    # An update that changes no image, secret or account is not checked again.
    scaled = deployment("missing-tag", f"{world.anon}/team/app:v9").replace("replicas: 1", "replicas: 2")
    rc, stderr, _ = apply(dev_cluster, namespace, scaled)
    assert rc == 0 and warnings(stderr) == [], stderr


def test_server_dry_run_shows_the_warnings_and_creates_nothing(
    dev_cluster: Any, world: World, webhook: OperatorProcess, namespace: str
) -> None:
    rc, stderr, _ = apply(dev_cluster, namespace, deployment("dry", f"{world.anon}/team/app:v9"), "--dry-run=server")
    assert rc == 0 and len(warnings(stderr)) == 1 and "TAG_NOT_FOUND" in stderr, stderr
    assert not exists(dev_cluster, namespace, "dry")


def test_namespace_labels_opt_out_and_opt_in_to_deny(
    dev_cluster: Any, world: World, webhook: OperatorProcess, namespace: str
) -> None:
    missing = deployment("missing", f"{world.anon}/team/app:v9")
    dev_cluster.kubectl("label", "namespace", namespace, f"{LABEL}=off")
    rc, stderr, _ = apply(dev_cluster, namespace, missing)
    assert rc == 0 and warnings(stderr) == [], stderr
    dev_cluster.kubectl("delete", "deployment", "-n", namespace, "missing")
    dev_cluster.kubectl("label", "--overwrite", "namespace", namespace, f"{LABEL}=deny")
    rc, stderr, _ = apply(dev_cluster, namespace, missing)
    assert rc != 0 and "TAG_NOT_FOUND" in stderr and "denied" in stderr, stderr
    assert not exists(dev_cluster, namespace, "missing")
    rc, stderr, _ = apply(dev_cluster, namespace, deployment("healthy", f"{world.anon}/team/app:v1"))
    assert rc == 0 and warnings(stderr) == [], stderr


def test_operator_stopped_apply_succeeds_in_time_without_warning(
    dev_cluster: Any, world: World, webhook: OperatorProcess, namespace: str
) -> None:
    webhook.stop()
    try:
        rc, stderr, took = apply(dev_cluster, namespace, deployment("down", f"{world.anon}/team/app:v9"))
        assert rc == 0 and warnings(stderr) == [], stderr
        assert took < TIMEOUT_SECONDS + 2, took
        assert exists(dev_cluster, namespace, "down")
    finally:
        webhook.start()


def test_the_ca_in_the_configuration_is_the_secret_s(dev_cluster: Any, webhook: OperatorProcess) -> None:
    name = next(a for a in webhook.extra_args if a.startswith("pullhealth-e2e-"))
    secret = json.loads(dev_cluster.kubectl("get", "secret", "-n", "default", f"{name}-tls", "-o", "json").stdout)
    config = json.loads(dev_cluster.kubectl("get", "validatingwebhookconfiguration", name, "-o", "json").stdout)
    ca = base64.b64decode(secret["data"]["ca.crt"])
    assert all(base64.b64decode(w["clientConfig"]["caBundle"]) == ca for w in config["webhooks"])


def test_replicas_racing_to_create_the_certificate_share_one(dev_cluster: Any, namespace: str) -> None:
    api = kubernetes.config.new_client_from_config(config_file=str(dev_cluster.kubeconfig))
    stores = [certs.SecretStore(api) for _ in range(4)]

    async def race() -> list[tlscerts.Bundle]:
        return list(await asyncio.gather(*(s.load_or_create(namespace, "tls", ["127.0.0.1"]) for s in stores)))

    bundles = asyncio.run(race())
    assert len({b.tls_crt for b in bundles}) == 1 and len({b.ca_crt for b in bundles}) == 1
    stored = json.loads(dev_cluster.kubectl("get", "secret", "-n", namespace, "tls", "-o", "json").stdout)
    assert base64.b64decode(stored["data"]["tls.crt"]).decode() == bundles[0].tls_crt
    # A renewal for a new name keeps the CA (the caBundle stays valid).
    renewed = asyncio.run(stores[0].load_or_create(namespace, "tls", ["127.0.0.1", "other.svc"]))
    assert renewed.ca_crt == bundles[0].ca_crt and renewed.tls_crt != bundles[0].tls_crt


def test_a_blanked_ca_bundle_is_put_back(dev_cluster: Any) -> None:
    name = f"pullhealth-e2e-inject-{uuid.uuid4().hex[:6]}"
    dev_cluster.kubectl("apply", "-f", "-", stdin=json.dumps(webhook_configuration(name, free_port())))
    try:
        api = kubernetes.config.new_client_from_config(config_file=str(dev_cluster.kubeconfig))
        injector = certs.CaInjector(api)
        ca = tlscerts.generate(["127.0.0.1"]).ca_crt
        assert asyncio.run(injector.inject(name, ca)) is True
        assert asyncio.run(injector.inject(name, ca)) is False  # already set: no write
        got = json.loads(dev_cluster.kubectl("get", "validatingwebhookconfiguration", name, "-o", "json").stdout)
        assert all(base64.b64decode(w["clientConfig"]["caBundle"]).decode() == ca for w in got["webhooks"])
        # What a helm upgrade does: the configuration re-applied without a caBundle.
        dev_cluster.kubectl("replace", "-f", "-", stdin=json.dumps(webhook_configuration(name, free_port())))
        assert asyncio.run(injector.inject(name, ca)) is True
    finally:
        dev_cluster.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found")

