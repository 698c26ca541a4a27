"""The Events pullhealth posts (events.k8s.io/v1): what they say and how they are named.

Pure: no API calls here (``pullhealth.kube.kubeapi.KubeWriter.emit`` posts them).

Exactly one Event per report, even across crashes: the Event's name is derived from what
it reports (the pod's UID + container + code, the RegistryCheck's UID + result), and it
is created, and awaited, *before* the annotation or status that marks the report as done.
A retry after a crash, or a second operator racing this one, computes the same name and
gets 409 AlreadyExists instead of posting a second Event.

A name alone cannot tell a retry of the same report from a *repeat* of it (the pod went
from TAG_NOT_FOUND to CREDENTIALS_REJECTED and back): each Event carries an occurrence
marker, a hash of the state the report replaces (the previous annotations or status). The
same marker is a retry (nothing to do); a different one is a repeat, counted in the
Event's ``series`` like kubelet's repeated Events (``series.count``, ``lastObservedTime``).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

REPORTING_CONTROLLER = "pullhealth.io/operator"
# Metadata annotation on our Events: the state the report replaced (see module docstring).
OCCURRENCE = "pullhealth.io/occurrence"
MAX_NOTE = 1024
_INVALID_NAME = re.compile(r"[^a-z0-9.-]")


def reporting_instance() -> str:
    """The operator's pod name (``POD_NAME``, from the chart's downward API), else the host name."""
    return (os.environ.get("POD_NAME") or socket.gethostname() or "pullhealth")[:128]


def fingerprint(*parts: object) -> str:
    """A short stable hash of ``parts`` (names and markers)."""
    text = "\x00".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def event_name(object_name: str, *key: object) -> str:
    """``<object>.<hash of key>``: a valid DNS subdomain, the same for the same report."""
    prefix = _INVALID_NAME.sub("-", object_name.lower())[:200].rstrip(".-") or "object"
    return f"{prefix}.{fingerprint(*key)}"


@dataclass(frozen=True)
class Regarding:
    """The object an Event is about; ``field_path`` names a container of a pod."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    field_path: str = ""

    def wire(self) -> dict[str, str]:
        """The ``regarding`` object reference."""
        ref = {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
        }
        if self.field_path:
            ref["fieldPath"] = self.field_path
        return ref


def container_field_path(kind: str, name: str) -> str:
    """``spec.containers{app}`` / ``spec.initContainers{x}`` / ``spec.ephemeralContainers{x}``.

    Args:
        kind: the pod spec list the container is in (``containers``, ``initContainers``,
            ``ephemeralContainers``).
        name: the container's name.
    """
    return f"spec.{kind or 'containers'}{{{name}}}"


@dataclass(frozen=True)
class EventSpec:
    """One report to post exactly once.

    Attributes:
        regarding: the object reported on.
        type: ``Normal`` or ``Warning``.
        reason: CamelCase reason (``PullDiagnosed``, ``CheckFailed``, ...).
        action: what the operator did (``Diagnose``, ``Check``).
        note: the human-readable message (at most 1 KiB).
        key: what the report is; with the object name it makes the Event's name.
        occurrence: marker of the state the report replaces (retry vs repeat).
        controller: the reporting controller (the node agent reports as itself).
    """

    regarding: Regarding
    type: str
    reason: str
    action: str
    note: str
    key: tuple[str, ...] = field(default_factory=tuple)
    occurrence: str = ""
    controller: str = REPORTING_CONTROLLER

    @property
    def name(self) -> str:
        """The deterministic Event name."""
        return event_name(self.regarding.name, self.regarding.uid, self.reason, *self.key)

    def body(self, instance: str, now: datetime | None = None) -> dict[str, Any]:
        """The events.k8s.io/v1 Event to create."""
        return {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": self.name,
                "namespace": self.regarding.namespace,
                "annotations": {OCCURRENCE: self.occurrence},
            },
            "eventTime": micro_time(now),
            "reportingController": self.controller,
            "reportingInstance": instance,
            "action": self.action,
            "reason": self.reason,
            "type": self.type,
            "note": self.note[:MAX_NOTE],
            "regarding": self.regarding.wire(),
        }


def micro_time(now: datetime | None = None) -> str:
    """RFC 3339 with microseconds, as ``MicroTime`` fields want it."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def repeat_patch(existing: Mapping[str, Any], occurrence: str, now: datetime | None = None) -> dict[str, Any]:
    """The patch that counts one more occurrence of an existing Event (kubelet-style series).

    The first occurrence has no ``series``; the second sets ``count: 2``.
    """
    series = existing.get("series") or {}
    count = int(series.get("count") or 1) + 1
    return {
        "metadata": {
            "annotations": {OCCURRENCE: occurrence},
            "resourceVersion": (existing.get("metadata") or {}).get("resourceVersion"),
        },
        "series": {"count": count, "lastObservedTime": micro_time(now)},
    }


def is_retry(existing: Mapping[str, Any], occurrence: str) -> bool:
    """The existing Event already reports this occurrence (a retry, or a racing writer)."""
    annotations = (existing.get("metadata") or {}).get("annotations") or {}
    return annotations.get(OCCURRENCE) == occurrence


# --- kubelet's Events, read back: which ones count, and in which order

KUBELET = "kubelet"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_moment(event: Mapping[str, Any]) -> datetime:
    """When an Event (its JSON) last happened: ``lastTimestamp``, else ``eventTime``, else
    ``firstTimestamp``, parsed (seconds and microseconds precisions compare right); the
    epoch when none parses. The one ordering rule of every reader of kubelet's Events."""
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        value = event.get(key)
        if isinstance(value, str) and value:
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return _EPOCH


def kubelet_pull_failure(event: Mapping[str, Any]) -> bool:
    """An Event kubelet posted about one of its own namespace's pods' pulls.

    Only these are a pod's kubelet message: the source (or reporting controller) is
    kubelet, the pod named is in the Event's own namespace (an Event in namespace A cannot
    speak for a pod of B), the pod has a uid, and the message is about pulling (kubelet's
    ``Failed`` Events also say ``Error: ...`` for other failures). A namespace user can
    still post such an Event about their own pods: it then speaks only for those pods.
    """
    involved = event.get("involvedObject") or {}
    metadata = event.get("metadata") or {}
    if not isinstance(involved, Mapping) or not isinstance(metadata, Mapping):
        return False
    source = event.get("source") or {}
    component = source.get("component") if isinstance(source, Mapping) else None
    if KUBELET not in (component, event.get("reportingComponent")):
        return False
    namespace = metadata.get("namespace")
    if namespace and involved.get("namespace") != namespace:
        return False
    return bool(involved.get("uid")) and "pull" in str(event.get("message") or "").lower()


def newest_pull_messages(events: list[Mapping[str, Any]]) -> list[str]:
    """The messages of kubelet's pull-failure Events among ``events``, newest first."""
    chosen = [e for e in events if kubelet_pull_failure(e)]
    chosen.sort(key=lambda e: (event_moment(e), str((e.get("metadata") or {}).get("uid") or "")),
                reverse=True)
    return [str(e.get("message")) for e in chosen]


# kubelet's Pulled Event (pkg/kubelet/images/image_manager.go):
#   Successfully pulled image "x" in 74ms (74ms including waiting). Image size: 1028659 bytes.
# kubelet before 1.28 said only ``... in 28.688209447s``; before 1.29 without the size.
_PULLED = re.compile(
    r'^Successfully pulled image "(?P<image>[^"\s]{1,512})" in (?P<pulled>[0-9.hmsuµn]{1,40})'
    r"(?: \((?P<total>[0-9.hmsuµn]{1,40}) including waiting\))?"
    r"(?:\. Image size: (?P<size>\d{1,15}) bytes)?\.?\s*$"
)
_GO_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?)(h|ms|m|s|us|µs|ns)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def go_duration(text: str) -> float | None:
    """Seconds of a Go ``time.Duration`` string (``1h2m3.5s``, ``74ms``, ``0s``), else None."""
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNIT[unit] for number, unit in parts)


@dataclass(frozen=True)
class PulledImage:
    """What kubelet's ``Pulled`` Event says about one successful pull."""

    image: str
    seconds: float  # the pull itself
    waiting: float | None  # queued before it started (serialized pulls, QPS); None: not said
    size: int | None  # bytes; None: not said (kubelet before 1.29)


def pulled_image(message: str) -> PulledImage | None:
    """Parse kubelet's ``Successfully pulled image`` message; None for any other text
    (``Container image "x" already present on machine`` is a Pulled Event with no pull)."""
    match = _PULLED.match(message)
    if not match:
        return None
    seconds = go_duration(match["pulled"])
    if seconds is None:
        return None
    total = go_duration(match["total"]) if match["total"] else None
    waiting = max(total - seconds, 0.0) if total is not None else None
    size = int(match["size"]) if match["size"] else None
    return PulledImage(match["image"], seconds, waiting, size)


def occurrences(event: Mapping[str, Any]) -> int:
    """How many times an Event happened: ``series.count`` or ``count`` (kubelet's repeats
    of one message update one Event), at least 1."""
    series = event.get("series") or {}
    counts = [event.get("count"), series.get("count") if isinstance(series, Mapping) else None]
    return max([c for c in counts if isinstance(c, int) and not isinstance(c, bool)] + [1])
