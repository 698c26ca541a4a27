"""Who may read ``/metrics``: the API server decides, as kube-rbac-proxy and
controller-runtime's secure metrics serving do.

A scrape carries a bearer token (Prometheus' service account token). The token is checked
with a ``TokenReview`` (who is it?), then a ``SubjectAccessReview`` asks whether that user
may ``get`` the non-resource URL ``/metrics``: the admin grants it with a ClusterRole (the
chart's ``<release>-metrics-reader``) bound to Prometheus' service account. Answers are
kept a minute per token (by its hash; bounded), so a scrape every 30 s costs one pair of
reviews a minute. An API error is a 503, never cached.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

REVIEW_TIMEOUT = 5
PATH = "/metrics"


class MetricsAuthorizer:
    """``check(Authorization header) -> HTTP status`` (200, 401, 403 or 503).

    Args:
        api: the operator's API client (needs ``create`` on tokenreviews and
            subjectaccessreviews).
        ttl: seconds a decision is reused for the same token.
        limit: decisions kept at most.
    """

    def __init__(self, api: kubernetes.client.ApiClient, ttl: float = 60.0, limit: int = 256) -> None:
        self._authn = kubernetes.client.AuthenticationV1Api(api)
        self._authz = kubernetes.client.AuthorizationV1Api(api)
        self.ttl = ttl
        self.limit = limit
        self._lock = threading.Lock()
        self._decisions: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def check(self, authorization: str | None) -> int:
        """The status to answer a request carrying this ``Authorization`` header with."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return 401
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            found = self._decisions.get(key)
            if found is not None and found[1] > now:
                return found[0]
        try:
            status = self._review(token)
        except (ApiException, OSError, ValueError):
            return 503
        with self._lock:
            self._decisions[key] = (status, now + self.ttl)
            self._decisions.move_to_end(key)
            while len(self._decisions) > self.limit:
                self._decisions.popitem(last=False)
        return status

    def _review(self, token: str) -> int:
        body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                     "spec": {"token": token}}
        review: Any = self._authn.create_token_review(body, _request_timeout=REVIEW_TIMEOUT)
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            return 401
        user = status.user
        question: Any = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user.username,
                "uid": user.uid,
                "groups": user.groups or [],
                "extra": user.extra or {},
                "nonResourceAttributes": {"path": PATH, "verb": "get"},
            },
        }
        access: Any = self._authz.create_subject_access_review(question, _request_timeout=REVIEW_TIMEOUT)
        return 200 if access.status is not None and access.status.allowed else 403
