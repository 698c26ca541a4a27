"""The node agent against real local servers: containerd's endpoint choice, the node's
trust and resolver, the destination policy, and the Events it would post."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pullhealth.agent import nodeagent
from pullhealth.agent.nodereport import REASON, REPORTING_CONTROLLER, parse_note
from pullhealth.domain.codes import Code
from pullhealth.probes.destinations import build_policy
from support.world import World

LOOPBACK = build_policy(allow=["127.0.0.0/8"])


def settings(world: World, certs: Path, **kw: Any) -> nodeagent.AgentSettings:
    return nodeagent.AgentSettings(
        node="node-a", nameserver=world.nameserver, certs_dir=str(certs), timeout=5.0,
        destinations=kw.pop("destinations", LOOPBACK), **kw,
    )


def hosts(certs: Path, registry: str, text: str) -> None:
    (certs / registry).mkdir(parents=True, exist_ok=True)
    (certs / registry / "hosts.toml").write_text(text)


def check(world: World, certs: Path, registry: str, **kw: Any) -> Any:
    return asyncio.run(nodeagent.check_registry(registry, settings(world, certs, **kw), nodeagent.CaBundles(str(certs))))


def test_server_with_the_hosts_toml_ca_is_reached(world: World, tmp_path: Path) -> None:
    hosts(tmp_path, world.anon, f'server = "https://{world.anon}"\nca = "{world.ca_bundle}"\n')
    report = check(world, tmp_path, world.anon)
    assert report.code is Code.OK and report.endpoint == f"https://{world.anon}" and not report.mirror


def test_node_without_the_ca_is_untrusted(world: World, tmp_path: Path) -> None:
    report = check(world, tmp_path, world.anon)  # the system CAs only: the test CA is not there
    assert report.code is Code.TLS_UNTRUSTED and report.step == "tls"


def test_mirror_is_used_first_and_named(world: World, tmp_path: Path) -> None:
    hosts(tmp_path, world.anon, f'[host."https://{world.acr}"]\n  capabilities = ["pull", "resolve"]\n'
                                f'  ca = "{world.ca_bundle}"\n')
    report = check(world, tmp_path, world.anon)
    assert report.code is Code.OK and report.mirror and report.endpoint == f"https://{world.acr}"
    assert "through mirror" in report.summary


def test_failing_mirror_falls_through_to_the_server(world: World, tmp_path: Path) -> None:
    hosts(tmp_path, world.anon, f'server = "https://{world.anon}"\nca = "{world.ca_bundle}"\n'
                                f'[host."https://{world.untrusted}"]\n  ca = "{world.ca_bundle}"\n')
    report = check(world, tmp_path, world.anon)
    assert report.code is Code.OK and not report.mirror
    assert f"https://{world.untrusted}: TLS_UNTRUSTED" in report.summary


def test_skip_verify_is_honoured(world: World, tmp_path: Path) -> None:
    hosts(tmp_path, world.untrusted, f'server = "https://{world.untrusted}"\nskip_verify = true\n')
    report = check(world, tmp_path, world.untrusted)
    assert report.code is not Code.TLS_UNTRUSTED and report.step != "tls"


def test_private_endpoint_miss_is_found_with_the_nodes_resolver(world: World, tmp_path: Path) -> None:
    report = check(world, tmp_path, world.leak)
    assert report.code is Code.PRIVATE_ENDPOINT_DNS and report.step == "dns"


def test_default_policy_refuses_the_nodes_loopback(world: World, tmp_path: Path) -> None:
    hosts(tmp_path, world.anon, f'ca = "{world.ca_bundle}"\n')
    report = check(world, tmp_path, world.anon, destinations=build_policy())
    assert report.code is Code.DESTINATION_REFUSED


def test_one_check_per_registry_per_interval_and_one_event_per_result(world: World, tmp_path: Path) -> None:
    hosts(tmp_path, world.anon, f'ca = "{world.ca_bundle}"\n')
    node = nodeagent.Agent(settings(world, tmp_path, interval=60.0))

    def pod(name: str) -> dict[str, Any]:
        image = f"{world.anon}/team/app:v1"
        return {
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": image}]},
            "status": {"containerStatuses": [{"name": "app", "image": image, "state": {
                "waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]},
        }

    async def run() -> list[Any]:
        specs = []
        for i in range(20):
            specs += await node.events_for(pod(f"p{i}"))
        return specs

    specs = asyncio.run(run())
    assert node.cache.runs == 1 and len(specs) == 20
    first = specs[0]
    body = first.body("node-a")
    assert body["reason"] == REASON and body["reportingController"] == REPORTING_CONTROLLER
    assert body["regarding"]["fieldPath"] == "spec.containers{app}"
    report = parse_note(body["note"])
    assert report is not None and report.code is Code.OK and report.node == "node-a"
    # Deterministic: the same result for the same pod has the same name (posted once).
    again = nodeagent.event_for(pod("p0"), nodeagent.work_for(pod("p0"), "node-a").containers[0][0], report)  # type: ignore[union-attr]
    assert again.name == first.name
    # Pods of another node are not this agent's.
    assert asyncio.run(node.events_for({**pod("x"), "spec": {**pod("x")["spec"], "nodeName": "node-b"}})) == []


@pytest.mark.parametrize("text", ["", "not toml ["])
def test_no_or_broken_config_checks_the_server(world: World, tmp_path: Path, text: str) -> None:
    if text:
        hosts(tmp_path, world.missing, text)
    report = check(world, tmp_path, world.missing)
    assert report.code is Code.DNS_NXDOMAIN
    if text:
        assert "not valid TOML" in report.summary


def test_reports_carry_code_and_layer_not_remote_text(world: World, tmp_path: Path) -> None:
    """Issue 21: an answer's OCI message and a certificate's internal names stay out of the
    note the pod's owner can read (the agent probes from the node's network position)."""
    from support.httpfixtures import StatusServer

    secret = "INTERNAL-vault.prod.contoso.internal"
    body = {"errors": [{"code": "DENIED", "message": f"{secret} says no"}]}
    with StatusServer(403, body, cert=world.pki.issue(["internal.test"])) as answering, \
            StatusServer(200, {}, cert=world.pki.issue([secret.lower().removeprefix("internal-")])) as mismatched:
        for registry, code in ((f"internal.test:{answering.port}", Code.FIREWALL_FORBIDDEN),
                               (f"internal.test:{mismatched.port}", Code.TLS_HOSTNAME_MISMATCH)):
            hosts(tmp_path, registry, f'server = "https://{registry}"\nca = "{world.ca_bundle}"\n')
            report = check(world, tmp_path, registry)
            assert report.code is code, report
            note = report.note(b"k" * 32, "uid")
            assert "vault" not in note.lower() and "says no" not in note, note
            assert code.value in note and "layer" in note, note


# --- the data path from the node: the data host kubelet's message names -------------------

def _blob_failure(image: str, data_host: str, tail: str) -> str:
    """containerd's words through kubelet when a blob's redirect fails (the shape of the
    message e2e/test_real_node_datapath.py gets from a real kubelet + containerd 1.6)."""
    return (f'Failed to pull image "{image}": failed to pull and unpack image "{image}": failed to copy: '
            f'httpReadSeeker: failed open: failed to do request: Get "https://{data_host}/docker/registry/v2/'
            f'blobs/sha256/22/22fc6c61/data": {tail}')


def _failing_pod(image: str, message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "app-1", "namespace": "ns", "uid": "uid-app-1"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": image}]},
        "status": {"containerStatuses": [{"name": "app", "image": image, "state": {
            "waiting": {"reason": "ErrImagePull", "message": message}}}]},
    }


def test_data_host_is_the_other_host_in_kubelets_message(world: World) -> None:
    image = f"{world.datablocked}/team/app:v1"
    message = _blob_failure(image, world.blocked_data_host, "dial tcp 127.0.0.1:9: connect: connection refused")
    assert nodeagent.data_host(message, world.datablocked) == world.blocked_data_host
    # The registry's own URL, or a mirror's, is not a data host.
    own = f'Get "https://{world.datablocked}/v2/team/app/manifests/v1": EOF'
    assert nodeagent.data_host(own, world.datablocked) is None
    assert nodeagent.data_host('Get "https://mirror.test:5000/v2/x": EOF', "r.test", "https://mirror.test:5000") is None
    assert nodeagent.data_host("no url here", "r.test") is None


def test_agent_names_the_refused_data_host_from_the_node(world: World, tmp_path: Path) -> None:
    hosts(tmp_path, world.datablocked, f'ca = "{world.ca_bundle}"\n')
    node = nodeagent.Agent(settings(world, tmp_path))
    image = f"{world.datablocked}/team/app:v1"
    message = _blob_failure(image, world.blocked_data_host, "dial tcp 127.0.0.1:9: connect: connection refused")
    specs = asyncio.run(node.events_for(_failing_pod(image, message)))
    report = parse_note(specs[0].body("node-a")["note"])
    assert report is not None and report.code is Code.DATA_ENDPOINT_UNREACHABLE, report
    assert report.step == "tcp" and report.endpoint == f"https://{world.blocked_data_host}"
    assert world.blocked_data_host in report.summary and "/docker/registry" not in report.summary
    # The operator folds it: the node's evidence names the data host.
    from pullhealth.agent.nodereport import fold
    from pullhealth.domain.classify import classify, reached

    folded = fold(classify(message), report, reached(message))
    assert folded.code is Code.DATA_ENDPOINT_UNREACHABLE and folded.facts["data_host"] == world.blocked_data_host
    assert folded.summary.startswith("on node node-a: ")
    assert any(world.blocked_data_host in step for step in folded.remediation)


def test_a_reachable_data_host_keeps_the_registry_report(world: World, tmp_path: Path) -> None:
    hosts(tmp_path, world.datapath, f'ca = "{world.ca_bundle}"\n')
    node = nodeagent.Agent(settings(world, tmp_path))
    image = f"{world.datapath}/team/app:v1"
    message = _blob_failure(image, world.data_host, "unexpected EOF")
    report = parse_note(asyncio.run(node.events_for(_failing_pod(image, message)))[0].body("node-a")["note"])
    assert report is not None and report.code is Code.OK and report.endpoint == f"https://{world.datapath}"
    found = asyncio.run(nodeagent.check_data_host(world.datapath, world.data_host, settings(world, tmp_path),
                                                  nodeagent.CaBundles(str(tmp_path))))
    assert found.code is Code.OK and found.endpoint == f"https://{world.data_host}"


def test_a_data_host_the_policy_refuses_is_not_checked(world: World, tmp_path: Path) -> None:
    hosts(tmp_path, world.anon, f'ca = "{world.ca_bundle}"\n')
    node = nodeagent.Agent(settings(world, tmp_path, destinations=build_policy(allow=["127.0.0.1/32"])))
    image = f"{world.anon}/team/app:v1"
    for host in ("169.254.169.254", "127.0.0.2:443", "localhost:80"):
        message = _blob_failure(image, host, "i/o timeout")
        report = parse_note(asyncio.run(node.events_for(_failing_pod(image, message)))[0].body("node-a")["note"])
        assert report is not None and report.code is Code.OK, (host, report)
        found = asyncio.run(nodeagent.check_data_host(world.anon, host, node.settings, node.bundles))
        assert found.code is Code.DESTINATION_REFUSED, (host, found)
