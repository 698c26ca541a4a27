"""Recovery you can see: may a failing pod's cause be declared fixed, and may it be restarted?

Pure: no I/O. kubelet keeps a pod in image-pull back-off for up to 5 minutes after the cause
is fixed (its back-off doubles from 10 s to 300 s; kubernetes/kubernetes#119891); nobody
tells the user. A pod is *recoverable* when the cause recorded for it is one the probe chain
checks on the pod's own pull path (the same image, platform, pull secrets or identity) and
that path was just verified healthy there. What the chain cannot re-verify from where the
operator stands is never declared recovered:

- node-local causes (kubelet's pull QPS, the node's disk, a pull cut off by its deadline):
  nothing the operator probes says they are gone;
- network causes (DNS, TCP, TLS, proxy, private endpoint, an ACR firewall or a registry's
  rate limit keyed by client address): the operator's network is not the node's, so the
  operator reaching the registry proves nothing about the node (a vantage difference).
  Those the node agent checks from the pod's own node (DNS to the ``/v2/`` answer: the
  ``NODE_PATH`` verdict) are declared fixed only on the agent's signed word that the node's
  path passes, checked after kubelet's last failed pull;
- evidence that the node's path differs (a ``vantage`` check, a failing ``node`` check of
  the node agent, containerd pulling through a mirror);
- causes the chain does not check (an invalid name, ``imagePullPolicy: Never``, an identity
  the admin did not allow, UNKNOWN).

:data:`VERDICTS` is the table, one entry per code (a test keeps it complete).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pullhealth.domain.codes import Code
from pullhealth.domain.model import Diagnosis, StepStatus

# kubelet's image pull back-off grows "until it reaches a compiled-in limit, which is 300
# seconds (5 minutes)" (https://kubernetes.io/docs/concepts/containers/images/#imagepullbackoff);
# kubelet retries at the pod's next sync after it ends, hence "about" in the note.
# kubernetes/kubernetes#119891 asks for a way to cut it short.
MAX_PULL_BACKOFF = timedelta(seconds=300)


class Verdict(StrEnum):
    """Whether a recorded cause can be declared fixed from the probe chain's result."""

    REVERIFIED = "reverified"  # the registry's answer on the pod's own path: the chain re-checks it
    NODE_LOCAL = "node-local"  # kubelet's or the node's own state: the operator cannot see it
    VANTAGE = "vantage"  # the network between node and registry: the operator's is another one
    # The network between node and registry, which the node agent checks from the node
    # itself (dns, tcp, tls, the /v2/ answer; not through a proxy): fixed on its signed,
    # fresh word only.
    NODE_PATH = "node-path"
    NOT_CHECKED = "not-checked"  # the chain does not check it (or it is not a pull failure)


VERDICTS: Mapping[Code, Verdict] = {
    Code.OK: Verdict.NOT_CHECKED,
    Code.DNS_NXDOMAIN: Verdict.NODE_PATH,
    Code.DNS_TIMEOUT: Verdict.NODE_PATH,
    Code.PRIVATE_ENDPOINT_DNS: Verdict.NODE_PATH,
    Code.CONNECT_REFUSED: Verdict.NODE_PATH,
    Code.CONNECT_TIMEOUT: Verdict.NODE_PATH,
    Code.PROXY_ERROR: Verdict.VANTAGE,  # the node agent does not check through containerd's proxy
    Code.TLS_UNTRUSTED: Verdict.NODE_PATH,  # the node's CA bundle is not the operator's
    Code.TLS_HOSTNAME_MISMATCH: Verdict.NODE_PATH,  # an interception on the node's path shows so too
    Code.TLS_PROTOCOL_ERROR: Verdict.NODE_PATH,
    Code.DESTINATION_REFUSED: Verdict.NOT_CHECKED,  # the operator's own policy refused the probe
    Code.FIREWALL_FORBIDDEN: Verdict.NODE_PATH,  # ACR's firewall decides by the client's address
    Code.DATA_ENDPOINT_UNREACHABLE: Verdict.VANTAGE,  # the node's egress to the data host, not ours
    Code.CHALLENGE_ERROR: Verdict.VANTAGE,  # something between answered /v2/ wrongly
    Code.RATE_LIMITED: Verdict.VANTAGE,  # limits are per client address
    Code.REGISTRY_ERROR: Verdict.VANTAGE,  # one 5xx from one edge says little about another
    Code.PULL_SECRET_MISSING: Verdict.REVERIFIED,
    Code.PULL_SECRET_INVALID: Verdict.REVERIFIED,
    Code.PULL_SECRET_NO_MATCH: Verdict.REVERIFIED,
    Code.PULL_SECRET_STALE: Verdict.REVERIFIED,
    Code.AUTH_REQUIRED: Verdict.REVERIFIED,
    Code.CREDENTIALS_REJECTED: Verdict.REVERIFIED,
    Code.AAD_APP_NOT_REGISTERED: Verdict.REVERIFIED,
    Code.IDENTITY_UNAVAILABLE: Verdict.VANTAGE,  # IMDS of the operator's node, not the pod's
    Code.IDENTITY_NOT_ALLOWED: Verdict.NOT_CHECKED,  # the admin's trust policy, not the pull
    Code.TOKEN_REALM_REFUSED: Verdict.NOT_CHECKED,
    Code.TOKEN_EXCHANGE_DENIED: Verdict.REVERIFIED,
    Code.AAD_AUDIENCE_REJECTED: Verdict.NOT_CHECKED,
    Code.PERMISSION_DENIED: Verdict.REVERIFIED,
    Code.ACCESS_DENIED: Verdict.REVERIFIED,
    Code.IMAGE_NOT_FOUND: Verdict.REVERIFIED,
    Code.REPOSITORY_NOT_FOUND: Verdict.REVERIFIED,
    Code.TAG_NOT_FOUND: Verdict.REVERIFIED,
    Code.PLATFORM_NOT_FOUND: Verdict.REVERIFIED,  # checked for the pod's node's platform
    Code.INVALID_IMAGE_NAME: Verdict.NOT_CHECKED,  # the spec must change: a new pod anyway
    Code.PULL_QPS_EXCEEDED: Verdict.NODE_LOCAL,
    Code.PULL_TIMED_OUT: Verdict.NODE_LOCAL,
    Code.NODE_DISK_FULL: Verdict.NODE_LOCAL,
    # The node runtime's signature policy: the chain does not verify signatures.
    Code.IMAGE_SIGNATURE_REJECTED: Verdict.NODE_LOCAL,
    # Workload checks' findings on running containers, not a failed pull.
    Code.TAG_DELETED: Verdict.NOT_CHECKED,
    Code.TAG_MOVED: Verdict.NOT_CHECKED,
    Code.UNKNOWN: Verdict.NOT_CHECKED,
}

# The checks that say the node's path is not the operator's (diagnose.VANTAGE_CHECK and
# the node agent's nodereport.NODE_CHECK; named here, the domain imports no agent code).
_NODE_CHECK = "node"
_VANTAGE_CHECKS = frozenset({"vantage", _NODE_CHECK})


def path_verified(diagnosis: Diagnosis) -> bool:
    """The probe chain ran on the pod's pull path and every step passed, the manifest of
    the image (for the node's platform) included."""
    steps = {c.name: c.status for c in diagnosis.checks}
    if StepStatus.FAILED in steps.values():
        return False
    return steps.get("manifest") is StepStatus.PASSED


def _moment(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


def node_verified(diagnosis: Diagnosis, last_failure: datetime | None) -> bool:
    """The node agent's signed check from the pod's own node passed, directly (no mirror),
    and was made after kubelet's last failed pull (an older pass says nothing about it)."""
    if last_failure is None or diagnosis.facts.get("mirror"):
        return False
    for check in diagnosis.checks:
        if check.name != _NODE_CHECK:
            continue
        if check.status is not StepStatus.PASSED or check.details.get("signed") != "true":
            return False
        checked = _moment(check.details.get("checkedAt", ""))
        return checked is not None and checked > last_failure
    return False


def recoverable(diagnosis: Diagnosis, last_failure: datetime | None = None) -> bool:
    """Whether the cause of this diagnosis is fixed, as far as the operator can verify.

    The diagnosis is a failing pod's (kubelet's message still names the cause, see
    :func:`pullhealth.domain.diagnose.combine`), and the chain must have passed every step
    to the manifest on the pod's own path. A ``REVERIFIED`` code: nothing may say the
    node's path differs from the operator's (a vantage or node check, a mirror). A
    ``NODE_PATH`` code: the node agent's signed check from the pod's node must have passed
    after ``last_failure``, kubelet's last failed pull of the image (:func:`node_verified`).
    """
    verdict = VERDICTS.get(diagnosis.code)
    if verdict is Verdict.NODE_PATH:
        return node_verified(diagnosis, last_failure) and path_verified(diagnosis)
    if verdict is not Verdict.REVERIFIED:
        return False
    if any(c.name in _VANTAGE_CHECKS for c in diagnosis.checks) or diagnosis.facts.get("mirror"):
        return False
    return path_verified(diagnosis)


def all_recoverable(diagnoses: Iterable[Diagnosis], failures: Mapping[str, datetime] | None = None) -> bool:
    """A pod is recoverable when every failing container's cause is (at least one).
    ``failures``: kubelet's last failed pull per image reference, where known."""
    listed = list(diagnoses)
    known = failures or {}
    return bool(listed) and all(recoverable(d, known.get(d.facts.get("reference", ""))) for d in listed)


def may_recover(code: str) -> bool:
    """Whether a recorded code is one that can ever be declared recovered (worth re-checking)."""
    try:
        return VERDICTS.get(Code(code)) in (Verdict.REVERIFIED, Verdict.NODE_PATH)
    except ValueError:
        return False


def retry_by(last_failure: datetime | None) -> datetime | None:
    """When kubelet retries the pull at the latest, give or take its next pod sync: its
    back-off ends at most 300 s after its last failed pull. None when that failure's time
    is not known."""
    return None if last_failure is None else last_failure + MAX_PULL_BACKOFF


def rfc3339(moment: datetime) -> str:
    """Seconds precision, UTC (``2026-01-02T03:04:05Z``)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def note(previous: str, container: str, retry: datetime | None) -> str:
    """The ``PullRecoverable`` Event's note: what was wrong, that the path works, when kubelet retries."""
    text = (
        f"was {previous}: the pull of container {container} works again on the pod's own pull path "
        "(checked by pullhealth); "
    )
    if retry is not None:
        text += (
            f"kubelet retries by about {rfc3339(retry)} (its back-off ends at most 5 minutes after "
            "its last failed pull)"
        )
    else:
        text += "kubelet retries within about 5 minutes of its last failed pull (its back-off's limit)"
    return text


# --- restarting a recoverable pod (opt-in)


class RestartMode(StrEnum):
    """``--restart-recovered-pods``: which namespaces' recoverable pods may be deleted."""

    OFF = "off"
    LABELLED = "labelled"  # only namespaces labelled NAMESPACE_LABEL=true (by the admin)
    ALL = "all"  # every watched namespace, unless labelled NAMESPACE_LABEL=false


NAMESPACE_LABEL = "pullhealth.io/restart-recovered-pods"
# The controllers that create a replacement at once and count nothing against the
# workload. Jobs are not here: a Job's pod deleted before it finished counts as failed
# toward the Job's backoffLimit (job tracking with finalizers).
RESTARTABLE_OWNERS = frozenset({("apps", "ReplicaSet"), ("apps", "StatefulSet"), ("apps", "DaemonSet")})


def namespace_allows(mode: RestartMode, labels: Mapping[str, Any] | None) -> bool:
    """Whether the admin's mode and the namespace's label allow restarts there.

    The label only narrows what the admin enabled: with ``off`` no label turns restarts on;
    with ``labelled`` only ``true`` does; with ``all`` only ``false`` turns them off.
    """
    value = str((labels or {}).get(NAMESPACE_LABEL, "")).strip().lower()
    if mode is RestartMode.LABELLED:
        return value == "true"
    if mode is RestartMode.ALL:
        return value != "false"
    return False


def restart_refusal(pod: Mapping[str, Any]) -> str | None:
    """Why this pod may not be deleted to retry now (None: it may).

    Only a pod that a ReplicaSet, StatefulSet or DaemonSet controls (``ownerReferences``
    with ``controller: true``) and that is not already being deleted: its controller
    creates the replacement. Never a bare pod, a Job's pod (deleting counts as a failure
    toward ``backoffLimit``) or a static pod (its mirror pod is owned by the Node).
    """
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return "being deleted"
    owners = [
        o for o in meta.get("ownerReferences") or [] if isinstance(o, Mapping) and o.get("controller") is True
    ]
    if not owners:
        return "no controller (a bare pod is never deleted)"
    api_version = str(owners[0].get("apiVersion") or "")
    group = api_version.partition("/")[0] if "/" in api_version else ""  # "v1": the core group
    kind = str(owners[0].get("kind") or "")
    if (group, kind) not in RESTARTABLE_OWNERS:
        return f"controlled by a {kind or 'resource'} (only ReplicaSet, StatefulSet, DaemonSet pods)"
    return None


def owner_name(pod: Mapping[str, Any]) -> str:
    """``Kind/name`` of the pod's controller, for the Event (empty without one)."""
    for owner in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(owner, Mapping) and owner.get("controller") is True:
            return f"{owner.get('kind')}/{owner.get('name')}"
    return ""


class Window:
    """At most ``per_minute`` takes in any 60 seconds (a sliding window, bounded memory)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = max(1, per_minute)
        self._taken: deque[float] = deque(maxlen=self.per_minute)

    def take(self, now: float) -> bool:
        """Take one at ``now`` (monotonic seconds) if the last minute has room."""
        while self._taken and now - self._taken[0] >= 60.0:
            self._taken.popleft()
        if len(self._taken) >= self.per_minute:
            return False
        self._taken.append(now)
        return True
