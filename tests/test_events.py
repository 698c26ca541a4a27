"""Event names, bodies and series patches (events.k8s.io/v1), pure."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from pullhealth.kube import events

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def spec(occurrence: str = "o1") -> events.EventSpec:
    regarding = events.Regarding("v1", "Pod", "ns", "web-1", "uid-1", "spec.initContainers{init}")
    return events.EventSpec(regarding, "Warning", "PullDiagnosed", "Diagnose", "TAG_NOT_FOUND: x" * 200,
                            ("initContainers", "init", "TAG_NOT_FOUND"), occurrence)


def test_body_carries_the_reporting_fields_action_and_field_path() -> None:
    body = spec().body("pullhealth-7d9f-abcde", datetime(2026, 11, 28, 10, 0, 0, 5, tzinfo=UTC))
    assert body["reportingController"] == "pullhealth.io/operator"
    assert body["reportingInstance"] == "pullhealth-7d9f-abcde"
    assert (body["action"], body["reason"], body["type"]) == ("Diagnose", "PullDiagnosed", "Warning")
    assert body["regarding"]["fieldPath"] == "spec.initContainers{init}"
    assert body["eventTime"] == "2026-11-28T10:00:00.000005Z"
    assert len(body["note"]) == 1024 and "series" not in body
    assert body["metadata"]["annotations"] == {events.OCCURRENCE: "o1"}


def test_names_are_deterministic_valid_and_bounded() -> None:
    assert spec().name == spec("o2").name  # the occurrence does not change the name
    long = events.event_name("a" * 250 + "-", "k")
    assert len(long) <= 253 and DNS_SUBDOMAIN.match(long)
    assert DNS_SUBDOMAIN.match(events.event_name("web.v1-", "x"))
    assert events.event_name("web", "a") != events.event_name("web", "b")


def test_retry_versus_repeat() -> None:
    existing = {"metadata": {"resourceVersion": "7", "annotations": {events.OCCURRENCE: "o1"}}}
    assert events.is_retry(existing, "o1") and not events.is_retry(existing, "o2")
    patch = events.repeat_patch(existing, "o2", datetime(2026, 11, 28, tzinfo=UTC))
    assert patch["series"]["count"] == 2 and patch["metadata"]["resourceVersion"] == "7"
    again = events.repeat_patch({**existing, "series": {"count": 2}}, "o3")
    assert again["series"]["count"] == 3


def test_reporting_instance_is_the_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "pullhealth-abc")
    assert events.reporting_instance() == "pullhealth-abc"
    monkeypatch.delenv("POD_NAME")
    assert events.reporting_instance()  # the host name otherwise
