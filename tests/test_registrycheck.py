"""RegistryCheck domain: spec parsing, due-ness and status building (pure parts)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import make
from pullhealth.domain.model import AuthMode, RegistryCheckSpec
from pullhealth.registrychecks import registrycheck as rc

CRD = Path(__file__).resolve().parents[1] / "crds" / "registrychecks.pullhealth.io.yaml"


def test_defaults_match_the_crd() -> None:
    crd = yaml.safe_load(CRD.read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    spec = RegistryCheckSpec(registry="r.io")
    assert spec.interval_seconds == props["intervalSeconds"]["default"]
    assert spec.timeout_seconds == props["timeoutSeconds"]["default"]
    assert spec.platform == props["platform"]["default"]
    assert spec.auth.mode.value == props["auth"]["properties"]["mode"]["default"]
    assert {m.value for m in AuthMode} == set(props["auth"]["properties"]["mode"]["enum"])
    # every spec field of the model exists in the CRD and the other way round
    assert set(RegistryCheckSpec.model_json_schema(by_alias=True)["properties"]) == set(props)


def test_every_crd_field_has_a_description() -> None:
    crd = yaml.safe_load(CRD.read_text())

    def walk(node: dict, path: str) -> None:  # type: ignore[type-arg]
        for name, child in (node.get("properties") or {}).items():
            if path == "" and name == "metadata":
                continue
            assert child.get("description"), f"{path}.{name} has no description"
            walk(child, f"{path}.{name}")
            if "items" in child:
                walk(child["items"], f"{path}.{name}[]")

    walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "spec.registry"),
        ({"registry": "r.io", "intervalSeconds": 5}, "spec.intervalSeconds"),
        ({"registry": "r.io", "timeoutSeconds": 0}, "spec.timeoutSeconds"),
        ({"registry": "https://r.io"}, "spec.registry"),
        ({"registry": "r.io", "image": "Bad/Name"}, "lowercase"),
        ({"registry": "r.io", "auth": {"mode": "pullSecrets"}}, "spec.auth.pullSecrets"),
        ({"registry": "r.io", "auth": {"mode": "magic"}}, "spec.auth.mode"),
        ({"registry": "r.io", "unknownField": 1}, "unknownField"),
    ],
)
def test_invalid_specs_say_what_is_wrong(raw: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(rc.InvalidSpec, match=message):
        rc.parse_spec(raw)


def test_image_is_joined_to_the_registry() -> None:
    spec, image = rc.parse_spec({"registry": "MyACR.azurecr.io", "image": "team/app@sha256:" + "a" * 64})
    assert image is not None and image.registry == "myacr.azurecr.io" and image.tag is None
    assert spec.registry == "MyACR.azurecr.io"


def test_due_on_new_generation_never_run_or_interval_passed() -> None:
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    status = {"observedGeneration": 2, "lastCheckTime": "2026-11-28T11:58:00Z"}
    assert rc.is_due({}, 1, 300, now)
    assert rc.is_due(status, 3, 300, now)
    assert not rc.is_due(status, 2, 300, now)
    assert rc.is_due(status, 2, 120, now)
    assert rc.is_due({**status, "lastCheckTime": "garbage"}, 2, 300, now)
    # Clock skew between replicas: a lastCheckTime in the future does not pause checks.
    assert rc.is_due({**status, "lastCheckTime": "2026-11-28T13:00:00Z"}, 2, 300, now)


@pytest.mark.parametrize("registry", ["h.test:99999", "a." + "x" * 64, "a..b", "régistry.test"])
def test_crd_invalid_hosts_are_invalid_specs(registry: str) -> None:
    with pytest.raises(rc.InvalidSpec, match=r"spec\.registry"):
        rc.parse_spec({"registry": registry})


def test_ready_transition_time_changes_only_when_status_flips() -> None:
    bad = make(Code.TAG_NOT_FOUND, {"registry": "r.io", "repository": "a", "tag": "1"})
    good = make(Code.OK, {"registry": "r.io", "image": "r.io/a:1"})
    first = rc.build_status(bad, {}, 1, "2026-11-28T10:00:00Z")
    assert first["phase"] == "Unhealthy" and first["conditions"][0]["status"] == "False"
    again = rc.build_status(bad, first, 1, "2026-11-28T10:05:00Z")
    assert again["conditions"][0]["lastTransitionTime"] == "2026-11-28T10:00:00Z"
    assert again["lastCheckTime"] == "2026-11-28T10:05:00Z"
    flipped = rc.build_status(good, again, 2, "2026-11-28T10:10:00Z")
    assert flipped["conditions"][0] == {
        "type": "Ready", "status": "True", "reason": "Healthy", "message": good.summary,
        "lastTransitionTime": "2026-11-28T10:10:00Z", "observedGeneration": 2,
    }
    assert rc.result_changed(again, flipped) and not rc.result_changed(first, again)
    # CamelCase reasons; the code stays in status.code.
    assert first["conditions"][0]["reason"] == "TagNotFound" and first["code"] == "TAG_NOT_FOUND"


def test_camel_case_reasons() -> None:
    from pullhealth.domain.codes import reason

    assert [reason(c) for c in (Code.TAG_NOT_FOUND, Code.DNS_NXDOMAIN, Code.TLS_UNTRUSTED, Code.OK)] == [
        "TagNotFound", "DNSNxdomain", "TLSUntrusted", "Healthy",
    ]
    pattern = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")  # metav1.Condition reason
    assert all(pattern.match(reason(c)) and "_" not in reason(c) for c in Code)


def test_skipped_steps_carry_no_code() -> None:
    from pullhealth.domain.model import CheckResult, StepStatus

    diag = make(Code.DNS_NXDOMAIN, {"registry": "r.io"}, checks=[
        CheckResult(name="dns", status=StepStatus.FAILED, code=Code.DNS_NXDOMAIN),
        CheckResult(name="tcp", status=StepStatus.SKIPPED),
    ])
    steps = rc.build_status(diag, {}, 1, "2026-11-28T10:00:00Z")["checks"]
    assert steps[0]["code"] == "DNS_NXDOMAIN" and "code" not in steps[1]


def test_claims_exclude_other_instances_until_they_expire() -> None:
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    claimed = rc.claim_status("op-a", {}, "2026-11-28T11:59:30Z")
    assert claimed["phase"] == "Pending" and claimed["claim"]["holder"] == "op-a"
    assert rc.foreign_claim(claimed, "op-b", now, 60) == "op-a"
    assert rc.foreign_claim(claimed, "op-a", now, 60) is None  # our own (a restart of this pod)
    assert rc.foreign_claim(claimed, "op-b", now, 20) is None  # expired
    assert "phase" not in rc.claim_status("op-a", {"phase": "Healthy"}, "t")
    assert rc.held_by("op-a")({"status": claimed}) and not rc.held_by("op-b")({"status": claimed})


def test_result_events_are_named_by_uid_and_result() -> None:
    body = {"apiVersion": "pullhealth.io/v1alpha1", "kind": "RegistryCheck",
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1"}}
    bad = make(Code.TAG_NOT_FOUND, {"registry": "r.io", "repository": "a", "tag": "1"})
    previous = {"lastCheckTime": "2026-11-28T10:00:00Z", "phase": "Healthy", "code": "OK"}
    one = rc.result_event(body, previous, bad)
    assert (one.reason, one.action, one.type) == ("CheckFailed", "Check", "Warning")
    assert one.name == rc.result_event(body, previous, bad).name  # a retry: same Event
    later = rc.result_event(body, {**previous, "lastCheckTime": "2026-11-28T11:00:00Z"}, bad)
    assert later.name == one.name and later.occurrence != one.occurrence  # a repeat
    good = rc.result_event(body, previous, make(Code.OK, {"registry": "r.io"}))
    assert good.name != one.name and good.reason == "CheckSucceeded"


def test_invalid_status() -> None:
    status = rc.invalid_status("spec.registry: required", {}, 4, "2026-11-28T10:00:00Z")
    assert status["phase"] == "Invalid" and status["observedGeneration"] == 4
    assert status["conditions"][0]["reason"] == "InvalidSpec"
    assert "spec.registry" in status["summary"]


def _failing(since: str, last: str) -> dict:  # type: ignore[type-arg]
    return {
        "phase": "Unhealthy",
        "observedGeneration": 1,
        "lastCheckTime": last,
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": since}],
    }


def test_failing_checks_back_off_from_30s_to_the_interval() -> None:
    # Retries after 30, 30, 60, 120, 240 s, then every interval.
    assert rc.retry_after(_failing("2026-11-28T12:00:00Z", "2026-11-28T12:00:00Z"), 300) == 30
    assert rc.retry_after(_failing("2026-11-28T12:00:00Z", "2026-11-28T12:00:30Z"), 300) == 30
    assert rc.retry_after(_failing("2026-11-28T12:00:00Z", "2026-11-28T12:01:00Z"), 300) == 60
    assert rc.retry_after(_failing("2026-11-28T12:00:00Z", "2026-11-28T12:04:00Z"), 300) == 240
    assert rc.retry_after(_failing("2026-11-28T12:00:00Z", "2026-11-28T12:08:00Z"), 300) == 300
    assert rc.retry_after(_failing("2026-11-28T12:00:00Z", "2026-11-28T13:00:00Z"), 3600) == 3600
    # Healthy (and invalid, pending) wait the interval.
    assert rc.retry_after({"phase": "Healthy", "lastCheckTime": "2026-11-28T12:00:00Z"}, 300) == 300
    failing = _failing("2026-11-28T12:00:00Z", "2026-11-28T12:00:00Z")
    assert rc.seconds_until_due(failing, 1, 300, datetime(2026, 11, 28, 12, 0, 20, tzinfo=UTC)) == 10
    assert rc.is_due(failing, 1, 300, datetime(2026, 11, 28, 12, 0, 30, tzinfo=UTC))


def test_recheck_annotation_asks_once() -> None:
    status = {"observedRecheck": "1700000000"}
    assert rc.recheck_requested({rc.RECHECK_ANNOTATION: "1700000001"}, status) == "1700000001"
    assert rc.recheck_requested({rc.RECHECK_ANNOTATION: "1700000000"}, status) is None
    assert rc.recheck_requested({}, status) is None
    assert rc.recheck_requested(None, {}) is None
    diagnosis = rc.make(rc.Code.OK, {"registry": "r.example"})
    assert rc.build_status(diagnosis, {}, 1, "2026-11-28T12:00:00Z", recheck="1")["observedRecheck"] == "1"
    assert "observedRecheck" not in rc.build_status(diagnosis, {}, 1, "2026-11-28T12:00:00Z")


def test_a_scheme_in_registry_reads_the_same_in_the_status_and_the_crd() -> None:
    from pathlib import Path

    import yaml

    with pytest.raises(rc.InvalidSpec) as err:
        rc.parse_spec({"registry": "https://myacr.azurecr.io"})
    assert rc.REGISTRY_FORM in str(err.value) and "https://myacr.azurecr.io" in str(err.value)
    root = Path(__file__).resolve().parents[1]
    for path in ("crds/registrychecks.pullhealth.io.yaml", "charts/pullhealth/crds/registrychecks.pullhealth.io.yaml"):
        crd = yaml.safe_load((root / path).read_text())
        registry = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["registry"]
        assert [v["message"] for v in registry["x-kubernetes-validations"]] == [rc.REGISTRY_FORM]
