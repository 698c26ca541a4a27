"""`pullhealth workloads`: the newest reported state per workload container, from Events
as the API server returns them (core view of the operator's events.k8s.io Events)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pullhealth.workloads import report


def event(reason: str, message: str, at: str, *, name: str = "web", container: str = "app",
          controller: str = "pullhealth.io/operator", series_at: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {
        "reason": reason, "message": message, "eventTime": at, "reportingComponent": controller,
        "involvedObject": {"kind": "Deployment", "namespace": "shop", "name": name,
                           "fieldPath": f"spec.template.spec.containers{{{container}}}"},
    }
    if series_at:
        body["series"] = {"count": 2, "lastObservedTime": series_at}
    return body


def test_newest_state_per_container_and_recovered_ones_dropped() -> None:
    events = [
        event("ImageUnpullable", "TAG_NOT_FOUND for container app (r/a:1): ...", "2026-01-01T10:00:00.000000Z"),
        event("ImagePullable", "container app (r/a:1) can be pulled again", "2026-01-01T11:00:00.000000Z"),
        event("ImageUnpullable", "CREDENTIALS_REJECTED for container side (r/b:1): ...",
              "2026-01-01T10:00:00.000000Z", container="side"),
        event("ImageTagDeleted", "TAG_DELETED for container app (r/c:1): ...", "2026-01-01T09:00:00.000000Z",
              name="api"),
        # The same code again later (a repeat counted in the series) is still the newest.
        event("ImageUnpullable", "TAG_NOT_FOUND for container app (r/d:1): ...", "2026-01-01T08:00:00.000000Z",
              name="db", series_at="2026-01-01T12:00:00.000000Z"),
        event("ImagePullable", "container app can be pulled again", "2026-01-01T11:00:00.000000Z", name="db"),
        # Posted by someone else under our reason: ignored.
        event("ImageUnpullable", "TAG_NOT_FOUND fake", "2026-01-01T13:00:00.000000Z", name="fake",
              controller="someone"),
    ]
    rows = report.rows(events)
    assert [(r.name, r.container, r.code, r.reason) for r in rows] == [
        ("api", "app", "TAG_DELETED", "ImageTagDeleted"),
        ("db", "app", "TAG_NOT_FOUND", "ImageUnpullable"),
        ("web", "side", "CREDENTIALS_REJECTED", "ImageUnpullable"),
    ]
    now = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
    text = report.table(rows, now)
    assert text.splitlines()[0].split() == ["NAMESPACE", "KIND", "NAME", "CONTAINER", "CODE", "AGE"]
    assert text.splitlines()[1].split() == ["shop", "Deployment", "api", "app", "TAG_DELETED", "3h"]
    assert report.age(datetime(2026, 1, 1, 12, 29, 15, tzinfo=UTC), now) == "45s"
