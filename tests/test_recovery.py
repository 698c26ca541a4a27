"""Recovery you can see (issue 24): when may a failing pod's cause be declared fixed, what is
written then, and which pods an admin's opt-in may delete.

The probe chains run for real against the session `world` (Debian's docker-registry,
dnsmasq); a tag pushed to the registry after kubelet's failure is the fix. The messages are
recorded containerd texts (tests/data/containerd_messages.jsonl).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pullhealth.agent import nodeagent, nodereport
from pullhealth.agent.nodereport import REPORTING_CONTROLLER
from pullhealth.chain.probechain import ChainOptions, Target, run_chain
from pullhealth.domain import recovery
from pullhealth.domain.classify import classify, reached
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import combine, make
from pullhealth.domain.model import CheckResult, Diagnosis, StepStatus
from pullhealth.domain.recovery import RestartMode, Verdict
from pullhealth.domain.reference import parse_target
from pullhealth.pods import podcheck
from pullhealth.pods.podcheck import FailingContainer, PodResult, plan_writeback
from pullhealth.probes.destinations import build_policy
from support.kubelet import kubelet_message
from support.world import TEST_DESTINATIONS


async def _probe(world: Any, ref: str) -> Diagnosis:
    registry, image = parse_target(ref)
    options = ChainOptions(nameserver=world.nameserver, ca_file=str(world.ca_bundle), timeout=3.0,
                           destinations=TEST_DESTINATIONS)
    return await run_chain(Target(registry, image), options)


def _diagnose(text: str, probed: Diagnosis) -> Diagnosis:
    return combine(classify(text), probed, reached(text))


def test_every_code_has_a_verdict() -> None:
    assert set(recovery.VERDICTS) == set(Code)
    for code in (Code.PULL_QPS_EXCEEDED, Code.NODE_DISK_FULL, Code.PULL_TIMED_OUT):
        assert recovery.VERDICTS[code] is Verdict.NODE_LOCAL
    # What the node agent checks from the node itself (dns to the /v2/ answer, no proxy).
    for code in (Code.DNS_NXDOMAIN, Code.CONNECT_TIMEOUT, Code.TLS_UNTRUSTED, Code.FIREWALL_FORBIDDEN,
                 Code.PRIVATE_ENDPOINT_DNS):
        assert recovery.VERDICTS[code] is Verdict.NODE_PATH
        assert recovery.may_recover(code.value)
    for code in (Code.RATE_LIMITED, Code.IDENTITY_UNAVAILABLE, Code.PROXY_ERROR, Code.DATA_ENDPOINT_UNREACHABLE,
                 Code.REGISTRY_ERROR):
        assert recovery.VERDICTS[code] is Verdict.VANTAGE
    for code in (Code.TAG_NOT_FOUND, Code.REPOSITORY_NOT_FOUND, Code.PLATFORM_NOT_FOUND, Code.CREDENTIALS_REJECTED,
                 Code.PULL_SECRET_MISSING, Code.PULL_SECRET_STALE, Code.PERMISSION_DENIED):
        assert recovery.VERDICTS[code] is Verdict.REVERIFIED
    assert not recovery.may_recover("PULL_QPS_EXCEEDED") and not recovery.may_recover("NOT_A_CODE")
    assert recovery.may_recover("TAG_NOT_FOUND")


async def test_a_tag_pushed_after_the_failure_makes_the_pod_recoverable(world: Any) -> None:
    tag = f"later-{uuid.uuid4().hex[:8]}"
    ref = f"{world.anon}/team/app:{tag}"
    text = kubelet_message("tag_not_found", ref)
    before = _diagnose(text, await _probe(world, ref))
    assert before.code in (Code.TAG_NOT_FOUND, Code.IMAGE_NOT_FOUND), before
    assert not recovery.path_verified(before) and not recovery.recoverable(before)

    world.registries["anon"].push_image("team/app", tag)
    after = _diagnose(text, await _probe(world, ref))
    # kubelet's message still names the cause (its coarse code: the chain no longer refines
    # it); the chain now passes every step on the pod's path.
    assert after.code in (Code.TAG_NOT_FOUND, Code.IMAGE_NOT_FOUND)
    assert recovery.path_verified(after) and recovery.recoverable(after)
    assert recovery.all_recoverable([after]) and not recovery.all_recoverable([after, before])
    assert not recovery.all_recoverable([])


async def test_node_local_and_network_causes_are_never_declared_recovered(world: Any) -> None:
    ref = f"{world.anon}/library/alpine:3.19"
    healthy = await _probe(world, ref)
    assert healthy.code is Code.OK and recovery.path_verified(healthy)
    # A pull cut off by its deadline (kubelet's text), a name the node could not resolve, a
    # reset on the node's path: the operator's healthy path says nothing about the node's.
    for tail in ("rpc error: code = DeadlineExceeded desc = context deadline exceeded",
                 f"failed to do request: Head \"https://{world.anon}/v2/library/alpine/manifests/3.19\": "
                 f"dial tcp: lookup {world.anon.split(':')[0]} on 10.0.0.10:53: no such host"):
        diagnosis = _diagnose(f'Failed to pull image "{ref}": {tail}', healthy)
        assert recovery.VERDICTS[diagnosis.code] is not Verdict.REVERIFIED, diagnosis.code
        assert not recovery.recoverable(diagnosis)
    # The operator could not reach the registry where the node got further: a vantage difference.
    missing = f"{world.missing}/team/app:v1"
    vantage = _diagnose(f'Failed to pull image "{missing}": failed to resolve reference "{missing}": '
                        "failed to authorize: failed to fetch anonymous token: unexpected status: 401",
                        await _probe(world, missing))
    assert vantage.code is Code.AUTH_REQUIRED and not recovery.recoverable(vantage)
    # containerd pulls through a mirror on the node, or the node agent's check failed there.
    found = _diagnose(kubelet_message("tag_not_found", ref), healthy)
    assert recovery.recoverable(found)
    assert not recovery.recoverable(found.model_copy(update={"facts": {**found.facts, "mirror": "https://m"}}))
    node_failed = CheckResult(name="node", status=StepStatus.FAILED, code=Code.TLS_UNTRUSTED, message="x")
    assert not recovery.recoverable(found.model_copy(update={"checks": [*found.checks, node_failed]}))
    # No chain ran (a message alone), or the chain stopped short of the manifest.
    assert not recovery.recoverable(classify(kubelet_message("tag_not_found", ref)))
    skipped = [c.model_copy(update={"status": StepStatus.SKIPPED}) if c.name == "manifest" else c
               for c in found.checks]
    assert not recovery.recoverable(found.model_copy(update={"checks": skipped}))


async def test_a_network_cause_is_declared_fixed_on_the_node_agents_signed_fresh_word(
    world: Any, tmp_path: Path
) -> None:
    """The node's CA bundle lacked the registry's CA (kubelet: x509 unknown authority); the
    admin adds it. The operator's own chain passed all along (it trusts the CA): only the
    node agent's check, from the node, signed, made after kubelet's last failure, says so."""
    ref = f"{world.anon}/library/alpine:3.19"
    # containerd's recorded text, with the URL of this registry (another host would be a data host).
    text = kubelet_message("tls_untrusted_ca", ref).replace("https://untrusted.test/", f"https://{world.anon}/")
    probed = await _probe(world, ref)
    assert probed.code is Code.OK
    key = b"k" * 24
    pod = {"metadata": {"name": "app-1", "namespace": "ns", "uid": "uid-app-1"},
           "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": ref}]},
           "status": {"containerStatuses": [{"name": "app", "image": ref, "state": {
               "waiting": {"reason": "ErrImagePull", "message": text}}}]}}

    async def node_says(certs: Path, report_key: bytes | None = key) -> Diagnosis:
        agent = nodeagent.Agent(nodeagent.AgentSettings(
            node="node-a", nameserver=world.nameserver, certs_dir=str(certs), timeout=5.0,
            destinations=build_policy(allow=["127.0.0.0/8"]), report_key=report_key))
        (spec,) = await agent.events_for(pod)
        event = {"note": spec.body("node-a")["note"], "controller": REPORTING_CONTROLLER, "instance": "node-a"}
        report = nodereport.pick([event], world.anon, "node-a", key, "uid-app-1")
        message = {**classify(text).facts, "reference": ref}
        combined = combine(classify(text).model_copy(update={"facts": message}), probed, reached(text))
        return nodereport.fold(combined, report, reached(text))

    failed_at = datetime.now(UTC) - timedelta(seconds=30)
    broken = await node_says(tmp_path / "none")  # no hosts.toml: the system CAs only
    assert broken.code is Code.TLS_UNTRUSTED and nodereport.node_specific(broken)
    assert not recovery.recoverable(broken, failed_at)

    fixed_certs = tmp_path / "fixed"
    (fixed_certs / world.anon).mkdir(parents=True)
    (fixed_certs / world.anon / "hosts.toml").write_text(f'ca = "{world.ca_bundle}"\n')
    fixed = await node_says(fixed_certs)
    assert fixed.code is Code.TLS_UNTRUSTED  # kubelet's message still names the cause
    assert recovery.recoverable(fixed, failed_at)
    assert recovery.all_recoverable([fixed], {ref: failed_at})
    # Not on the node's word alone when: kubelet failed after the check, the failure's time
    # is not known, the note is not signed with the operator's key, or the node pulls
    # through a mirror.
    assert not recovery.recoverable(fixed, datetime.now(UTC) + timedelta(seconds=5))
    assert not recovery.recoverable(fixed) and not recovery.all_recoverable([fixed], {})
    unsigned = await node_says(fixed_certs, report_key=None)
    assert not any(c.name == "node" for c in unsigned.checks) and not recovery.recoverable(unsigned, failed_at)
    assert not recovery.recoverable(fixed.model_copy(update={"facts": {**fixed.facts, "mirror": "https://m"}}),
                                    failed_at)
    # Nor when the operator's own chain stopped short of the manifest on the pod's path.
    short = [c.model_copy(update={"status": StepStatus.SKIPPED}) if c.name == "manifest" else c
             for c in fixed.checks]
    assert not recovery.recoverable(fixed.model_copy(update={"checks": short}), failed_at)


def _pod(annotations: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "annotations": annotations or {}, **meta},
            "spec": {"containers": [{"name": "app", "image": "r.io/app:1"}]},
            "status": {"containerStatuses": [{"name": "app", "restartCount": 0,
                                              "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}}


def _result(code: Code = Code.TAG_NOT_FOUND) -> PodResult:
    c = FailingContainer("app", "r.io/app:1", "ImagePullBackOff", "")
    return PodResult(c, make(code, {"registry": "r.io", "repository": "app", "tag": "1"}), "r.io")


def _applied(pod: dict[str, Any], patch: dict[str, str | None]) -> dict[str, Any]:
    current = {**pod["metadata"]["annotations"], **patch}
    return _pod({k: v for k, v in current.items() if v is not None})


def test_recoverable_is_announced_once_and_withdrawn_when_it_no_longer_holds() -> None:
    diagnosed = plan_writeback(_pod(), _result(), "2026-12-03T10:00:00Z")
    assert diagnosed.annotations is not None and not diagnosed.announces_recovery
    annotated = _applied(_pod(), diagnosed.annotations)
    failed = datetime(2026, 12, 3, 10, 1, 30, tzinfo=UTC)
    retry = recovery.retry_by(failed)
    assert retry == datetime(2026, 12, 3, 10, 6, 30, tzinfo=UTC)
    assert recovery.retry_by(None) is None

    plan = plan_writeback(annotated, _result(), "2026-12-03T10:02:00Z", recoverable=True, retry_by=retry)
    assert plan.announces_recovery and plan.event is not None and plan.annotations is not None
    assert plan.annotations == {podcheck.ANN_RECOVERABLE: "2026-12-03T10:02:00Z",
                                podcheck.ANN_RETRY_BY: "2026-12-03T10:06:30Z"}
    event = plan.event
    assert (event.type, event.reason, event.action) == ("Normal", "PullRecoverable", "Diagnose")
    assert event.regarding.field_path == "spec.containers{app}"
    assert event.note.startswith("was TAG_NOT_FOUND: ") and "retries by about 2026-12-03T10:06:30Z" in event.note
    # The diagnosis annotations are the plan's condition: nobody else may have changed them.
    assert plan.expected is not None and plan.expected[podcheck.ANN_DIAGNOSIS] == "TAG_NOT_FOUND"
    # A retry (crash before the annotation) plans the same Event: 409, nothing doubles.
    retried = plan_writeback(annotated, _result(), "2026-12-03T10:02:09Z", recoverable=True, retry_by=retry)
    assert retried.event is not None and (retried.event.name, retried.event.occurrence) == (
        event.name, event.occurrence)

    # The fixed path no longer refines kubelet's coarse code: still the recorded cause's recovery.
    coarse = plan_writeback(annotated, _result(Code.IMAGE_NOT_FOUND), "2026-12-03T10:02:00Z", recoverable=True,
                            retry_by=retry)
    assert coarse.event is not None and coarse.event.reason == "PullRecoverable"
    assert (coarse.event.name, coarse.annotations) == (event.name, plan.annotations)
    assert coarse.event.note.startswith("was TAG_NOT_FOUND: ")
    # A recorded cause the chain cannot re-verify is never announced recovered.
    node_local = _applied(_pod(), {**diagnosed.annotations, podcheck.ANN_DIAGNOSIS: "PULL_TIMED_OUT"})
    fresh = plan_writeback(node_local, _result(Code.IMAGE_NOT_FOUND), "t", recoverable=True, retry_by=retry)
    assert not fresh.announces_recovery and fresh.event is not None and fresh.event.reason == "PullDiagnosed"

    announced = _applied(annotated, plan.annotations)
    assert plan_writeback(announced, _result(), "t", recoverable=True, retry_by=retry).annotations is None
    # The cause came back (the chain fails again): the announcement goes, silently.
    withdrawn = plan_writeback(announced, _result(), "t", recoverable=False)
    assert withdrawn.annotations == dict.fromkeys(podcheck.RECOVERY_ANNOTATIONS) and withdrawn.event is None
    # Unknown retry time: the annotation is not written, the note says within 5 minutes.
    vague = plan_writeback(annotated, _result(), "t", recoverable=True)
    assert vague.annotations is not None and vague.annotations[podcheck.ANN_RETRY_BY] is None
    assert vague.event is not None and "within about 5 minutes of its last failed pull" in vague.event.note
    # Another cause: a new diagnosis that also removes the announcement.
    other = plan_writeback(announced, _result(Code.CREDENTIALS_REJECTED), "t")
    assert other.annotations is not None and other.annotations[podcheck.ANN_RECOVERABLE] is None
    assert other.event is not None and other.event.reason == "PullDiagnosed"
    # The pod runs: every annotation of ours goes, PullRecovered says so.
    cleared = plan_writeback(announced, None, "t")
    assert cleared.annotations == dict.fromkeys(podcheck.ALL_ANNOTATIONS)
    assert cleared.event is not None and cleared.event.reason == "PullRecovered"


def _owned(kind: str, api_version: str = "apps/v1", controller: Any = True) -> dict[str, Any]:
    return _pod(ownerReferences=[{"apiVersion": api_version, "kind": kind, "name": "w-1", "uid": "o",
                                  "controller": controller}])


def test_only_pods_of_replicasets_statefulsets_and_daemonsets_may_be_restarted() -> None:
    for kind in ("ReplicaSet", "StatefulSet", "DaemonSet"):
        assert recovery.restart_refusal(_owned(kind)) is None, kind
    assert recovery.owner_name(_owned("ReplicaSet")) == "ReplicaSet/w-1"
    assert "bare pod" in str(recovery.restart_refusal(_pod()))
    # A Job's pod deleted before it finished counts as failed toward backoffLimit.
    assert "Job" in str(recovery.restart_refusal(_owned("Job", "batch/v1")))
    assert recovery.restart_refusal(_owned("Node", "v1")) is not None  # a static pod's mirror
    assert recovery.restart_refusal(_owned("ReplicaSet", "example.com/v1")) is not None
    assert recovery.restart_refusal(_owned("ReplicaSet", controller="true")) is not None
    assert recovery.restart_refusal(_owned("ReplicaSet", controller=None)) is not None
    deleting = _owned("ReplicaSet")
    deleting["metadata"]["deletionTimestamp"] = "2026-12-03T10:00:00Z"
    assert recovery.restart_refusal(deleting) == "being deleted"


@pytest.mark.parametrize(("mode", "label", "allowed"), [
    (RestartMode.OFF, "true", False),  # a namespace label never widens what the admin enabled
    (RestartMode.OFF, None, False),
    (RestartMode.LABELLED, "true", True),
    (RestartMode.LABELLED, "True", True),
    (RestartMode.LABELLED, None, False),
    (RestartMode.LABELLED, "yes", False),
    (RestartMode.ALL, None, True),
    (RestartMode.ALL, "false", False),  # a namespace may opt out
])
def test_the_namespace_label_only_narrows_the_admins_mode(mode: RestartMode, label: str | None,
                                                          allowed: bool) -> None:
    labels = {recovery.NAMESPACE_LABEL: label} if label is not None else {"other": "x"}
    assert recovery.namespace_allows(mode, labels) is allowed


def test_restarts_are_bounded_per_minute() -> None:
    window = recovery.Window(2)
    assert window.take(0.0) and window.take(1.0)
    assert not window.take(30.0)
    assert window.take(60.0)  # the first one left the window
    assert not window.take(60.5)
    assert window.take(121.0)
