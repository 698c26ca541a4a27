"""The dev cluster's API server audit log, read as the requests one namespace received.

``apiserver_request_total`` counts every client in every namespace: a restarted operator
re-diagnosing an earlier module's pods, or a controller, shows up in a test's count. The
audit log names the namespace, object and time of each request, so a test counts only
what was done to its own objects, and can say which requests they were when it fails.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Request:
    """One completed API request, as the audit log recorded it."""

    verb: str  # the API verb: get, list, watch, create, patch, update, delete
    resource: str  # "[group/]resource", e.g. "pods", "events.k8s.io/events"
    subresource: str
    namespace: str
    name: str
    user: str
    user_agent: str
    code: int
    received: float  # epoch seconds

    @property
    def key(self) -> tuple[str, str]:
        """(VERB, [group/]resource) as apiserver_request_total names them."""
        return {"create": "POST"}.get(self.verb, self.verb.upper()), self.resource

    def __str__(self) -> str:
        where = "/".join(p for p in (self.namespace, self.resource, self.name, self.subresource) if p)
        return f"{self.verb} {where} -> {self.code} by {self.user} ({self.user_agent[:40]})"


def _request(event: dict[str, object]) -> Request | None:
    ref = event.get("objectRef")
    if not isinstance(ref, dict) or not ref.get("resource"):
        return None
    group = str(ref.get("apiGroup") or "")
    user = event.get("user") if isinstance(event.get("user"), dict) else {}
    status = event.get("responseStatus") if isinstance(event.get("responseStatus"), dict) else {}
    received = str(event.get("requestReceivedTimestamp") or "")
    try:
        at = datetime.fromisoformat(received.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return Request(
        verb=str(event.get("verb") or ""),
        resource=(group + "/" if group else "") + str(ref["resource"]),
        subresource=str(ref.get("subresource") or ""),
        namespace=str(ref.get("namespace") or ""),
        name=str(ref.get("name") or ""),
        user=str(user.get("username") or "") if isinstance(user, dict) else "",
        user_agent=str(event.get("userAgent") or ""),
        code=int(status.get("code") or 0) if isinstance(status, dict) else 0,
        received=at,
    )


class AuditLog:
    """Requests appended to the API server's audit log after a mark.

    Args:
        path: the dev cluster's ``logs/audit.log``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """A position: :meth:`since` returns what was logged after it."""
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, mark: int) -> list[Request]:
        """Requests logged after ``mark`` (a request is logged when it completes)."""
        with self.path.open("rb") as log:
            log.seek(mark)
            data = log.read()
        out = []
        for line in data.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line still being written
            request = _request(event) if isinstance(event, dict) else None
            if request is not None:
                out.append(request)
        return out


def in_namespace(requests: Iterable[Request], namespace: str) -> list[Request]:
    """Requests on objects of ``namespace`` (not on its subresources such as pods/status)."""
    return [r for r in requests if r.namespace == namespace and not r.subresource]


def counted(requests: Iterable[Request]) -> Counter[tuple[str, str]]:
    """Requests by (VERB, [group/]resource)."""
    return Counter(r.key for r in requests)
