"""The admission webhook without a cluster: the pure decision, the checks against the
session's real registries (through the pods' pull-path resolver and cache), the HTTPS
server with a generated certificate, and the certificate's renewal rules."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import json
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from pullhealth import tlscerts
from pullhealth.admission import decision
from pullhealth.admission.preflight import Preflight
from pullhealth.admission.server import AdmissionServer, TLSSource, api_timeout
from pullhealth.chain.pullsources import Environment
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.chain.trust import TrustPolicy
from pullhealth.domain import placement
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import make, transient
from pullhealth.domain.model import Diagnosis
from pullhealth.pods.podcheck import PodSettings
from support.kubelet import docker_secret
from support.operatorproc import free_port
from support.world import TEST_DESTINATIONS, World

AMD64 = {"metadata": {"name": "n1", "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}}
ARM64 = {"metadata": {"name": "n2", "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}}}


def deployment(images: list[str], secrets: list[str] = (), **spec: Any) -> dict[str, Any]:  # type: ignore[assignment]
    pod = {"containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)], **spec}
    if secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in secrets]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "team"},
            "spec": {"template": {"spec": pod}}}


def review(obj: Any, kind: str = "Deployment", operation: str = "CREATE", old: Any = None,
           namespace: str = "team") -> dict[str, Any]:
    request = {"uid": "u-1", "kind": {"group": "apps", "version": "v1", "kind": kind}, "namespace": namespace,
               "operation": operation, "object": obj, "oldObject": old, "dryRun": False}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


# --- the decision (pure)


def test_plan_reads_every_kind_template_and_container_list() -> None:
    cron = {"spec": {"jobTemplate": {"spec": {"template": {"spec": {
        "initContainers": [{"name": "i", "image": "a/init:1"}], "containers": [{"name": "c", "image": "a/app:1"}],
    }}}}}}
    plan = decision.plan(review(cron, "CronJob")["request"])
    assert plan.images == ("a/init:1", "a/app:1") and not plan.skipped
    pod = {"metadata": {}, "spec": {"containers": [{"image": "x:1"}, {"image": "x:1"}],
                                    "ephemeralContainers": [{"image": "dbg:1"}]}}
    assert decision.plan(review(pod, "Pod")["request"]).images == ("x:1", "dbg:1")
    many = deployment([f"img/{i}:1" for i in range(40)])
    assert len(decision.plan(review(many)["request"]).images) == decision.MAX_IMAGES


def test_plan_skips_what_needs_no_check() -> None:
    owned = {"metadata": {"ownerReferences": [{"kind": "ReplicaSet", "controller": True}]},
             "spec": {"containers": [{"image": "x:1"}]}}
    assert decision.plan(review(owned, "Pod")["request"]).skipped == "created by a controller"
    old, new = deployment(["x:1"]), deployment(["x:1"], replicas=3)
    new["spec"]["replicas"] = 5
    assert "no image" in decision.plan(review(new, operation="UPDATE", old=old)["request"]).skipped
    changed = deployment(["x:2"])
    assert decision.plan(review(changed, operation="UPDATE", old=old)["request"]).images == ("x:2",)
    secret_added = deployment(["x:1"], ["pull"])
    assert decision.plan(review(secret_added, operation="UPDATE", old=old)["request"]).images == ("x:1",)
    arm_only = deployment(["x:1"])
    arm_only["spec"]["template"]["spec"]["affinity"] = {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}]}}}
    assert decision.plan(review(arm_only, operation="UPDATE", old=old)["request"]).images == ("x:1",)
    assert decision.plan(review(old, operation="DELETE")["request"]).skipped
    # Written by namespace users: malformed shapes are skipped, never raise.
    for hostile in (None, [], {"spec": None}, {"spec": {"template": {"spec": {"containers": "x"}}}},
                    {"spec": {"template": {"spec": {"containers": [None, 3, {"image": 7}]}}}}):
        assert decision.plan(review(hostile)["request"]).skipped


def test_warning_is_one_short_ascii_line_and_deny_only_for_definitive_codes() -> None:
    missing = make(Code.TAG_NOT_FOUND, {"repository": "team/app", "registry": "r.io", "tag": "v9"})
    line = decision.warning("r.io/team/app:v9", missing)
    assert line is not None
    assert line.startswith("image r.io/team/app:v9: TAG_NOT_FOUND (repository team/app on r.io has no tag or "
                           "digest v9); try: List the tags")
    long = make(Code.TAG_NOT_FOUND, {"repository": "é" * 400, "registry": "r.io", "tag": "v9"})
    text = decision.warning("x", long)
    assert text is not None and len(text) <= decision.MAX_WARNING and text.isascii() and "\n" not in text
    assert decision.warning("x", make(Code.OK, {})) is None
    assert decision.warning("x", make(Code.DESTINATION_REFUSED, {"detail": "policy"})) is None
    timeout = make(Code.CONNECT_TIMEOUT, {"registry": "r.io"})
    assert transient(timeout) and "from the operator's network" in str(decision.warning("x", timeout))
    assert decision.denies(missing) and not decision.denies(timeout)
    allowed = decision.response(review(deployment(["x"])), ["w"])
    assert allowed["response"] == {"uid": "u-1", "allowed": True, "warnings": ["w"]}
    refused = decision.response(review(deployment(["x"])), ["w"], ["w"])["response"]
    assert refused["allowed"] is False and refused["status"]["code"] == 403 and "w" in refused["status"]["message"]


def test_platform_found_on_another_node() -> None:
    arm_only = make(Code.PLATFORM_NOT_FOUND, {"platform": "linux/amd64", "detail": "linux/arm64/v8"})
    assert decision.platform_found(arm_only, ("linux/amd64", "linux/arm64"))
    assert not decision.platform_found(arm_only, ("linux/amd64",))


def test_api_timeout_parses_go_durations() -> None:
    assert api_timeout("3s") == 3.0 and api_timeout("500ms") == 0.5 and api_timeout("1m") == 60.0
    assert api_timeout(None) is None and api_timeout("3 seconds") is None


# --- the checks, on the world's real registries


class Objects:
    """A ClusterReader over a dict, counting reads."""

    def __init__(self, objects: Mapping[tuple[str, ...], Mapping[str, Any]]) -> None:
        self.objects = dict(objects)
        self.reads = 0

    async def _get(self, *key: str) -> Mapping[str, Any] | None:
        self.reads += 1
        return self.objects.get(key)

    async def node(self, name: str) -> Mapping[str, Any] | None:
        return await self._get("node", name)

    async def service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return await self._get("account", namespace, name)

    async def secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return await self._get("secret", namespace, name)

    async def service_account_token(self, namespace: str, name: str, audience: str) -> str:
        raise AssertionError("no workload identity here")


def make_preflight(world: World, nodes: list[Any], objects: Mapping[tuple[str, ...], Any] = ()  # type: ignore[assignment]
                   ) -> tuple[Preflight, SingleFlight[Diagnosis], list[str]]:
    requests: list[str] = []
    env = Environment(nameserver=world.nameserver, ca_file=str(world.ca_bundle),
                      imds_endpoint=world.imds_url, trust=TrustPolicy(destinations=TEST_DESTINATIONS))
    cache: SingleFlight[Diagnosis] = SingleFlight(ttl=60.0, is_failure=transient)
    preflight = Preflight(Objects(dict(objects)), env, cache, PodSettings(timeout=3.0),
                          lambda spec, default: placement.node_platforms(nodes, spec, default),
                          lambda registry, step: requests.append(f"{registry} {step}"))
    return preflight, cache, requests


def secret(name: str, server: str, user: str, password: str) -> dict[str, Any]:
    return docker_secret(name, server, user, password)


async def warnings_for(preflight: Preflight, obj: Any, namespace: str = "team", budget: float = 5.0) -> list[str]:
    server = AdmissionServer(preflight, budget, None, "127.0.0.1", 0)
    answer = await server.review(review(obj, namespace=namespace), budget)
    assert answer["response"]["allowed"] is True
    return list(answer["response"].get("warnings", []))


async def test_one_warning_per_failing_image_and_none_for_healthy(world: World) -> None:
    user, _ = world.basic_user
    objects = {("secret", "team", "wrong"): secret("wrong", world.basic, user, "not-the-password")}
    preflight, _, _ = make_preflight(world, [AMD64], objects)
    obj = deployment([f"{world.anon}/team/app:v9", f"{world.basic}/team/app:v1", f"{world.anon}/multi/arm:1",
                      f"{world.anon}/team/app:v1"], ["wrong"])
    got = await warnings_for(preflight, obj)
    assert len(got) == 3, got
    assert got[0].startswith(f"image {world.anon}/team/app:v9: TAG_NOT_FOUND (")
    assert got[1].startswith(f"image {world.basic}/team/app:v1: CREDENTIALS_REJECTED (")
    assert got[2].startswith(f"image {world.anon}/multi/arm:1: PLATFORM_NOT_FOUND (") and "linux/arm64" in got[2]
    assert not any("not-the-password" in line for line in got)
    assert await warnings_for(preflight, deployment([f"{world.anon}/team/app:v1"])) == []
    # With an arm64 node too, the arm64-only image can be pulled somewhere: no warning...
    preflight_arm, _, _ = make_preflight(world, [AMD64, ARM64])
    assert await warnings_for(preflight_arm, deployment([f"{world.anon}/multi/arm:1"])) == []
    # ...unless the pod is pinned to the amd64 nodes.
    pinned = deployment([f"{world.anon}/multi/arm:1"], nodeSelector={"kubernetes.io/arch": "amd64"})
    assert len(await warnings_for(preflight_arm, pinned)) == 1


async def test_one_chain_per_key_however_many_applies(world: World) -> None:
    preflight, cache, requests = make_preflight(world, [AMD64])
    obj = deployment([f"{world.anon}/team/app:nosuch"])
    answers = await asyncio.gather(*(warnings_for(preflight, obj) for _ in range(30)))
    assert all(len(a) == 1 for a in answers)
    assert cache.runs == 1
    first = len(requests)
    assert first > 0
    await warnings_for(preflight, obj)  # warm: answered from the cache, no request
    assert len(requests) == first and cache.runs == 1


async def test_a_namespace_secret_result_answers_only_that_namespace(world: World) -> None:
    user, password = world.basic_user
    objects = {("secret", ns, "pull"): secret("pull", world.basic, user, password) for ns in ("a", "b")}
    preflight, cache, _ = make_preflight(world, [AMD64], objects)
    obj = deployment([f"{world.basic}/team/app:v1"], ["pull"])
    assert await warnings_for(preflight, obj, "a") == []
    assert await warnings_for(preflight, obj, "b") == []
    # Same credential, two namespaces: two chains, each key naming its namespace.
    assert cache.runs == 2
    # A namespace without the secret does not get the answer the others' secrets earned.
    got = await warnings_for(preflight, obj, "c")
    assert len(got) == 1 and "PULL_SECRET_MISSING" in got[0], got
    assert cache.runs == 3


async def test_answer_within_budget_while_the_chain_goes_on(world: World) -> None:
    preflight, cache, _ = make_preflight(world, [AMD64])
    preflight = dataclasses.replace(preflight, max_pending=2)
    started = time.monotonic()
    got = await warnings_for(preflight, deployment([f"{world.silent}/team/app:v1"]), budget=0.3)
    assert got == [] and time.monotonic() - started < 1.0
    assert len(cache) == 1 and len(preflight.pending) == 1  # still running: the next apply joins it
    # The same image again joins the running check; its answer is not waited for longer.
    started = time.monotonic()
    assert await warnings_for(preflight, deployment([f"{world.silent}/team/app:v1"]), budget=0.3) == []
    assert time.monotonic() - started < 1.0 and cache.runs == 1 and len(preflight.pending) == 2
    # Past max_pending, new images are not checked at all: no chain, no backlog.
    images = [f"{world.silent}/team/other:{i}" for i in range(5)]
    assert await warnings_for(preflight, deployment(images), budget=0.3) == []
    assert cache.runs == 1 and len(preflight.pending) == 2 and preflight.skipped == [5]
    preflight.cancel_pending()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not preflight.pending


# --- the HTTPS server and its certificate


def test_renewal_keeps_the_ca_and_covers_new_names() -> None:
    now = datetime.datetime.now(datetime.UTC)
    bundle = tlscerts.generate(["svc.ns.svc", "127.0.0.1"], now)
    assert tlscerts.renewed(bundle, ["svc.ns.svc", "127.0.0.1"], now) is None
    later = tlscerts.renewed(bundle, ["svc.ns.svc", "127.0.0.1"], now + datetime.timedelta(days=340))
    assert later is not None and later.ca_crt == bundle.ca_crt and later.tls_crt != bundle.tls_crt
    more = tlscerts.renewed(bundle, ["svc.ns.svc", "other.ns.svc"], now)
    assert more is not None and more.ca_crt == bundle.ca_crt
    ca_ending = tlscerts.renewed(bundle, ["svc.ns.svc"], now + datetime.timedelta(days=tlscerts.CA_DAYS - 100))
    assert ca_ending is not None and ca_ending.ca_crt != bundle.ca_crt
    assert tlscerts.Bundle.from_data(bundle.data()) == bundle
    assert tlscerts.Bundle.from_data({"ca.crt": "!!"}) is None
    cert = x509.load_pem_x509_certificate(bundle.tls_crt.encode())
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


async def test_https_server_answers_reviews_and_garbage(world: World, tmp_path: Path) -> None:
    bundle = tlscerts.generate(["localhost", "127.0.0.1"])
    (tmp_path / "tls.crt").write_text(bundle.tls_crt)
    (tmp_path / "tls.key").write_text(bundle.tls_key)
    (tmp_path / "ca.crt").write_text(bundle.ca_crt)
    preflight, _, _ = make_preflight(world, [AMD64])
    port = free_port()
    server = AdmissionServer(preflight, 2.0, TLSSource(str(tmp_path), "", (), "", None, None), "127.0.0.1", port)
    await server.start()
    try:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        async with httpx.AsyncClient(verify=ctx, timeout=5.0) as client:
            url = f"https://127.0.0.1:{port}/validate?timeout=3s"
            body = review(deployment([f"{world.anon}/team/app:v9"]))
            answer = (await client.post(url, json=body)).json()
            assert answer["kind"] == "AdmissionReview" and answer["response"]["uid"] == "u-1"
            assert answer["response"]["allowed"] is True and len(answer["response"]["warnings"]) == 1
            denied = (await client.post(url.replace("/validate", "/validate-deny"), json=body)).json()
            assert denied["response"]["allowed"] is False
            for garbage in (b"not json", b"[]", json.dumps({"request": "x"}).encode()):
                reply = await client.post(url, content=garbage)
                assert reply.status_code == 200 and reply.json()["response"]["allowed"] is True
    finally:
        await server.stop()


def test_secret_data_is_base64_of_pem() -> None:
    data = tlscerts.generate(["x"]).data()
    assert set(data) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert base64.b64decode(data["tls.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize("value", ["", "no-slash"])
def test_tls_secret_flag_needs_namespace_and_name(value: str) -> None:
    import argparse

    from pullhealth.runtime import settings

    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    args = parser.parse_args(["--admission-tls-secret", value] if value else [])
    if value:
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            settings.from_args(args)
    else:
        assert settings.from_args(args).admission_port == 0
