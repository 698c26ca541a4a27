"""``pullhealth workloads``: the workload image problems the operator reported, from its Events.

The operator posts an Event on a workload each time a container's result changes
(:mod:`pullhealth.workloads.inventory`): the newest of them per container is its state.
:func:`read` lists those Events (one field-selected list per reason, bounded), :func:`rows`
keeps the newest per (namespace, kind, name, container) and drops the ones whose newest
says ``ImagePullable``. Reading needs only ``list`` on events in the namespaces asked
about; the operator is not contacted. Events expire (the API server's ``--event-ttl``,
1 h by default): a problem reported longer ago than that is not listed, while the
operator's gauge (``pullhealth_workload_image_problems``) still has it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes

from pullhealth.kube.events import REPORTING_CONTROLLER, event_moment
from pullhealth.workloads.inventory import PULLABLE, TAG_DELETED, TAG_MOVED, UNPULLABLE

REASONS = (UNPULLABLE, TAG_DELETED, TAG_MOVED, PULLABLE)
PAGE = 500
MAX_PAGES = 20  # per reason: at most 10,000 Events read
REQUEST_TIMEOUT = 30
_CONTAINER = re.compile(r"\{([^}]{1,253})\}$")


@dataclass(frozen=True)
class Row:
    """One workload container's newest reported state."""

    namespace: str
    kind: str
    name: str
    container: str
    code: str
    reason: str
    when: datetime
    message: str


def read(api: kubernetes.client.ApiClient, namespace: str | None) -> list[Mapping[str, Any]]:
    """The operator's workload Events (core view) of one namespace or all, bounded."""
    core = kubernetes.client.CoreV1Api(api)
    found: list[Mapping[str, Any]] = []
    for reason in REASONS:
        token = ""
        for _ in range(MAX_PAGES):
            kwargs: dict[str, Any] = {"field_selector": f"reason={reason}", "limit": PAGE,
                                      "_preload_content": False, "_request_timeout": REQUEST_TIMEOUT}
            if token:
                kwargs["_continue"] = token
            response: Any = (
                core.list_namespaced_event(namespace, **kwargs)
                if namespace
                else core.list_event_for_all_namespaces(**kwargs)
            )
            try:
                page = json.loads(response.read())
            finally:
                response.release_conn()
            found.extend(page.get("items") or [])
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                break
    return found


def _moment(event: Mapping[str, Any]) -> datetime:
    series = event.get("series")
    observed = series.get("lastObservedTime") if isinstance(series, Mapping) else None
    moment = event_moment(event)
    if isinstance(observed, str):
        try:
            seen = datetime.fromisoformat(observed.replace("Z", "+00:00"))
        except ValueError:
            return moment
        seen = seen if seen.tzinfo else seen.replace(tzinfo=UTC)
        return max(moment, seen)
    return moment


def rows(events: Iterable[Mapping[str, Any]]) -> list[Row]:
    """The newest Event per workload container, unless it says the image pulls again;
    sorted by namespace, kind, name, container. Events not posted by the operator's
    controller name (``reportingComponent``) are ignored."""
    newest: dict[tuple[str, str, str, str], Row] = {}
    for event in events:
        if event.get("reportingComponent") != REPORTING_CONTROLLER or event.get("reason") not in REASONS:
            continue
        involved = event.get("involvedObject")
        if not isinstance(involved, Mapping):
            continue
        match = _CONTAINER.search(str(involved.get("fieldPath") or ""))
        message = " ".join(str(event.get("message") or "").split())
        code = message.split(" ", 1)[0] if event.get("reason") != PULLABLE else "OK"
        row = Row(
            namespace=str(involved.get("namespace") or ""),
            kind=str(involved.get("kind") or ""),
            name=str(involved.get("name") or ""),
            container=match.group(1) if match else "",
            code=code,
            reason=str(event.get("reason")),
            when=_moment(event),
            message=message,
        )
        key = (row.namespace, row.kind, row.name, row.container)
        if key not in newest or row.when >= newest[key].when:
            newest[key] = row
    kept = [r for r in newest.values() if r.reason != PULLABLE]
    return sorted(kept, key=lambda r: (r.namespace, r.kind, r.name, r.container))


def age(when: datetime, now: datetime | None = None) -> str:
    """kubectl-style age: 45s, 12m, 3h, 2d."""
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(found: list[Row], now: datetime | None = None) -> str:
    """The rows as a kubectl-style table."""
    head = ("NAMESPACE", "KIND", "NAME", "CONTAINER", "CODE", "AGE")
    lines = [head] + [(r.namespace, r.kind, r.name, r.container, r.code, age(r.when, now)) for r in found]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
