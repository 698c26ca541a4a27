"""Pure parts of the pod handler: which containers fail, and what to write back."""

from __future__ import annotations

from typing import Any

from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import make
from pullhealth.pods import podcheck
from pullhealth.pods.podcheck import FailingContainer, PodResult, plan_writeback


def pod(statuses: dict[str, list[dict[str, Any]]], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec = {
        "containers": [{"name": "app", "image": "r.io/app:1"}, {"name": "side", "image": "r.io/side:1"}],
        "initContainers": [{"name": "init", "image": "r.io/init:1"}],
        "ephemeralContainers": [{"name": "debug", "image": "r.io/debug:1"}],
    }
    return {"metadata": {"name": "p", "namespace": "ns", "annotations": annotations or {}}, "spec": spec,
            "status": statuses}


def waiting(name: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"name": name, "state": {"waiting": {"reason": reason, "message": message}}}


def test_all_container_kinds_and_reasons_count_init_first() -> None:
    p = pod({
        "containerStatuses": [waiting("app", "ImagePullBackOff", "Back-off pulling image"),
                              waiting("side", "SignatureValidationFailed")],
        "initContainerStatuses": [waiting("init", "ErrImagePull", "boom")],
        "ephemeralContainerStatuses": [waiting("debug", "InvalidImageName")],
    })
    found = podcheck.failing_containers(p)
    assert [(c.name, c.image, c.reason) for c in found] == [
        ("init", "r.io/init:1", "ErrImagePull"),
        ("app", "r.io/app:1", "ImagePullBackOff"),
        ("side", "r.io/side:1", "SignatureValidationFailed"),  # kubelet 1.28+: the runtime's policy
        ("debug", "r.io/debug:1", "InvalidImageName"),
    ]
    assert not podcheck.failing_containers(pod({"containerStatuses": [waiting("app", "ContainerCreating")]}))
    # The Event's regarding.fieldPath names the container in its own spec list.
    assert [c.field_path for c in found] == [
        "spec.initContainers{init}", "spec.containers{app}", "spec.containers{side}",
        "spec.ephemeralContainers{debug}",
    ]


def test_healthy_pods_are_ignored_cheaply() -> None:
    running = pod({"containerStatuses": [{"name": "app", "state": {"running": {}}}]})
    assert not podcheck.is_relevant(running)
    assert podcheck.is_relevant(pod({}, {"pullhealth.io/diagnosis": "TAG_NOT_FOUND"}))


def test_kubelet_event_wins_over_backoff_text() -> None:
    c = FailingContainer("app", "r.io/app:1", "ImagePullBackOff", 'Back-off pulling image "r.io/app:1"')
    events = ['Failed to pull image "r.io/other:2": x', 'Failed to pull image "r.io/app:1": not found']
    assert podcheck.pick_message(c, events).endswith("not found")
    assert podcheck.pick_message(c, []) == c.message


def _result(code: Code, summary_facts: dict[str, str] | None = None) -> PodResult:
    c = FailingContainer("app", "r.io/app:1", "ErrImagePull", "")
    return PodResult(c, make(code, summary_facts or {"registry": "r.io", "repository": "app", "tag": "1"}), "r.io")


def test_writeback_is_idempotent_and_posts_one_event_per_diagnosis() -> None:
    first = plan_writeback(pod({}), _result(Code.TAG_NOT_FOUND), "2026-11-28T10:00:00Z")
    assert first.annotations is not None and first.event is not None
    assert first.event.reason == "PullDiagnosed" and first.event.action == "Diagnose"
    assert first.event.note.startswith("TAG_NOT_FOUND: ") and ". Try: " in first.event.note
    assert first.event.regarding.field_path == "spec.containers{app}"
    assert first.expected == dict.fromkeys(podcheck.ALL_ANNOTATIONS)
    annotated = pod({}, {k: v for k, v in first.annotations.items() if v is not None})
    again = plan_writeback(annotated, _result(Code.TAG_NOT_FOUND), "2026-11-28T10:05:00Z")
    assert again.annotations is None and again.event is None
    changed = plan_writeback(annotated, _result(Code.RATE_LIMITED), "2026-11-28T10:06:00Z")
    assert changed.annotations is not None and changed.annotations["pullhealth.io/diagnosis"] == "RATE_LIMITED"
    assert changed.expected is not None and changed.expected["pullhealth.io/diagnosis"] == "TAG_NOT_FOUND"


def test_event_name_is_the_same_on_retry_and_the_occurrence_tells_repeats() -> None:
    # A crash between the Event and the annotation: the retry plans the same Event.
    first = plan_writeback(pod({}), _result(Code.TAG_NOT_FOUND), "2026-11-28T10:00:00Z")
    retry = plan_writeback(pod({}), _result(Code.TAG_NOT_FOUND), "2026-11-28T10:00:07Z")
    assert first.event is not None and retry.event is not None
    assert (first.event.name, first.event.occurrence) == (retry.event.name, retry.event.occurrence)
    assert first.event.name.startswith("p.") and len(first.event.name) <= 253
    # TAG_NOT_FOUND -> RATE_LIMITED -> TAG_NOT_FOUND: same name, another occurrence (a repeat).
    assert first.annotations is not None
    limited = pod({}, {k: v for k, v in first.annotations.items() if v is not None})
    second = plan_writeback(limited, _result(Code.RATE_LIMITED), "2026-11-28T10:01:00Z")
    assert second.annotations is not None and second.event is not None
    back = plan_writeback(pod({}, {k: v for k, v in second.annotations.items() if v is not None}),
                          _result(Code.TAG_NOT_FOUND), "2026-11-28T10:02:00Z")
    assert back.event is not None and back.event.name == first.event.name
    assert back.event.occurrence != first.event.occurrence
    # Recovered (annotations removed), restarted, failing again: a repeat, not a retry.
    restarted = pod({"containerStatuses": [{**waiting("app", "ErrImagePull"), "restartCount": 1}]})
    again = plan_writeback(restarted, _result(Code.TAG_NOT_FOUND), "2026-11-28T10:09:00Z")
    assert again.event is not None and again.event.name == first.event.name
    assert again.event.occurrence != first.event.occurrence


def test_recovery_removes_every_annotation_once() -> None:
    annotated = pod({}, {"pullhealth.io/diagnosis": "TAG_NOT_FOUND", "pullhealth.io/container": "app",
                         "other": "kept"})
    plan = plan_writeback(annotated, None, "2026-11-28T10:00:00Z")
    assert plan.annotations == dict.fromkeys(podcheck.ALL_ANNOTATIONS)
    assert plan.event is not None and (plan.event.reason, plan.event.type) == ("PullRecovered", "Normal")
    assert plan.event.regarding.field_path == ""
    assert plan_writeback(pod({}), None, "t").annotations is None


def test_probable_cause_is_one_line_of_at_most_256() -> None:
    long = _result(Code.UNKNOWN, {"detail": "x\n" * 400})
    cause = podcheck.probable_cause(long.diagnosis)
    assert len(cause) <= 256 and "\n" not in cause


def test_acr_domain_matching() -> None:
    domains = (".azurecr.io",)
    assert podcheck.is_acr("myacr.azurecr.io", domains)
    assert podcheck.is_acr("myacr.azurecr.io:443", domains)
    assert not podcheck.is_acr("azurecr.io.evil.com", domains)
    assert podcheck.is_acr("acr.test", ("acr.test",))
