"""Workload image checks, pure: which objects and images, on which platforms, what to report.

No I/O, no kopf. The controller (:mod:`pullhealth.workloads.controller`) hands each object
it lists or watches to :func:`workload`, which keeps only what a check needs (a compact
:class:`Workload`: the pod template's pull fields and its containers, for pods the digest
each running container runs). :func:`judge` turns one container's probe result into what
is reported (platform coverage over every node platform, a running tag deleted or moved),
and :func:`plan` compares a workload's results with what was last reported and says which
Events to post (only on a change) and what the gauge holds.

Which objects: Deployments, StatefulSets, DaemonSets, CronJobs (suspended ones too); the
ReplicaSets and Jobs no controller owns (a Deployment's ReplicaSets and a CronJob's Jobs
are checked through their owner), Jobs not yet finished; pods: a bare pod (no controller)
that has not terminated is checked like a template, and every running container of any
pod whose image is a tag is checked for its tag still resolving to the digest it runs
(``imageID``). Objects are written by namespace users: every field is read defensively,
and the containers of one object are bounded (:data:`MAX_CONTAINERS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pullhealth.domain import placement
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import make, transient
from pullhealth.domain.model import Diagnosis
from pullhealth.domain.reference import ImageReference
from pullhealth.kube import events
from pullhealth.probes.manifest import platform_matches

MAX_CONTAINERS = 16
MAX_PLATFORMS = 8  # platforms one workload check is run for, at most
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")

# kind -> (apiVersion, the path to its pod spec, the list-and-watch plural)
KINDS: Mapping[str, tuple[str, tuple[str, ...], str]] = {
    "Deployment": ("apps/v1", ("spec", "template", "spec"), "deployments"),
    "StatefulSet": ("apps/v1", ("spec", "template", "spec"), "statefulsets"),
    "DaemonSet": ("apps/v1", ("spec", "template", "spec"), "daemonsets"),
    "ReplicaSet": ("apps/v1", ("spec", "template", "spec"), "replicasets"),
    "Job": ("batch/v1", ("spec", "template", "spec"), "jobs"),
    "CronJob": ("batch/v1", ("spec", "jobTemplate", "spec", "template", "spec"), "cronjobs"),
    "Pod": ("v1", ("spec",), "pods"),
}
# The Event's fieldPath prefix of a container, per kind (spec.template.spec.containers{app}).
FIELD_PREFIX = {kind: ".".join(path) for kind, (_, path, _) in KINDS.items()}
# Not a finding: the operator's own policy refused, or could not tell (admission's rule).
NOT_CHECKED = frozenset({Code.DESTINATION_REFUSED, Code.IDENTITY_NOT_ALLOWED, Code.UNKNOWN})
# What the tag of a running container answers when the tag is gone.
GONE = frozenset({Code.TAG_NOT_FOUND, Code.REPOSITORY_NOT_FOUND, Code.IMAGE_NOT_FOUND})
# Event reasons (CamelCase, Kubernetes API conventions).
UNPULLABLE, PULLABLE = "ImageUnpullable", "ImagePullable"
TAG_DELETED, TAG_MOVED = "ImageTagDeleted", "ImageTagMoved"


@dataclass(frozen=True)
class Container:
    """One container of a workload's pod template (or of a pod).

    Attributes:
        list: the pod spec list it is in (``containers``, ``initContainers``, ...).
        name: the container's name.
        image: its image reference, as written.
        image_id: for a running container, the digest it runs (``...@sha256:...`` from
            ``status.*ContainerStatuses[].imageID``); empty otherwise.
    """

    list: str
    name: str
    image: str
    image_id: str = ""

    @property
    def key(self) -> str:
        """``containers/app``: the container's key in a workload's state and series."""
        return f"{self.list}/{self.name}"


@dataclass(frozen=True)
class Workload:
    """What a check needs of one object (its body is not kept).

    Attributes:
        kind, namespace, name, uid: the object.
        pull_spec: the pod spec's pull fields (pull secrets, service account, nodeSelector).
        containers: the containers to check, init containers first.
        node: for a pod bound to a node, the node's name (its platform is the one pulled).
    """

    kind: str
    namespace: str
    name: str
    uid: str
    pull_spec: Mapping[str, Any] = field(default_factory=dict, compare=False)
    containers: tuple[Container, ...] = ()
    node: str = ""
    # What a result depends on (a change re-checks at once): images, digests, pull fields.
    inputs: tuple[Any, ...] = ()

    @property
    def api_version(self) -> str:
        """The kind's apiVersion."""
        return KINDS[self.kind][0]


def _get(obj: Any, path: Sequence[str]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj


def _controlled(meta: Mapping[str, Any]) -> bool:
    owners = meta.get("ownerReferences")
    return isinstance(owners, list) and any(isinstance(o, Mapping) and o.get("controller") for o in owners)


def _finished_job(obj: Mapping[str, Any]) -> bool:
    conditions = _get(obj, ("status", "conditions"))
    return isinstance(conditions, list) and any(
        isinstance(c, Mapping) and c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in conditions
    )


def _image_ids(pod: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """(spec list, name) -> the repo digest a running container runs."""
    found: dict[tuple[str, str], str] = {}
    status = pod.get("status")
    if not isinstance(status, Mapping):
        return found
    for status_key, list_key in (
        ("initContainerStatuses", "initContainers"),
        ("containerStatuses", "containers"),
        ("ephemeralContainerStatuses", "ephemeralContainers"),
    ):
        statuses = status.get(status_key)
        for cs in statuses if isinstance(statuses, list) else ():
            if not isinstance(cs, Mapping) or not isinstance(_get(cs, ("state", "running")), Mapping):
                continue
            image_id = cs.get("imageID")
            # Only a repo digest (name@sha256:...) says what the tag resolved to; a bare
            # sha256:... is the image's config digest, not comparable with the tag's.
            if isinstance(image_id, str) and "@sha256:" in image_id and len(image_id) < 600:
                found[(list_key, str(cs.get("name") or ""))] = image_id
    return found


def workload(obj: Mapping[str, Any]) -> Workload | None:
    """The compact workload of a listed or watched object; None when nothing is checked."""
    kind = str(obj.get("kind") or "")
    meta = obj.get("metadata")
    if kind not in KINDS or not isinstance(meta, Mapping):
        return None
    uid, namespace, name = (str(meta.get(k) or "") for k in ("uid", "namespace", "name"))
    if not uid or not namespace or not name:
        return None
    if meta.get("deletionTimestamp"):
        # Being deleted: a terminating pod starts no container, a deleted controller makes
        # no pod. (A pod on a node whose kubelet is gone can stay terminating for days.)
        return None
    if kind in ("ReplicaSet", "Job") and _controlled(meta):
        return None  # checked through its Deployment or CronJob
    if kind == "Job" and _finished_job(obj):
        return None  # it will not pull again
    spec = _get(obj, KINDS[kind][1])
    if not isinstance(spec, Mapping):
        return None
    running: dict[tuple[str, str], str] = {}
    every = True
    if kind == "Pod":
        phase = _get(obj, ("status", "phase"))
        running = _image_ids(obj)
        # A controller's pod: only the tags its running containers run (the template is
        # checked through the controller); a bare pod: all of it, until it terminates.
        every = not _controlled(meta) and phase not in ("Succeeded", "Failed")
    containers: list[Container] = []
    for list_key in CONTAINER_LISTS:
        if list_key == "ephemeralContainers" and kind != "Pod":
            continue
        items = spec.get(list_key)
        for item in items if isinstance(items, list) else ():
            if not isinstance(item, Mapping):
                continue
            image, cname = item.get("image"), str(item.get("name") or "")[:253]
            if not isinstance(image, str) or not image or len(image) > 1024:
                continue
            image_id = running.get((list_key, cname), "")
            if every or image_id:
                containers.append(Container(list_key, cname, image, image_id))
    if not containers:
        return None
    pull_spec = {
        key: spec[key] for key in ("imagePullSecrets", "serviceAccountName", "serviceAccount") if key in spec
    }
    pull_spec.update(placement.constraints(spec))
    node = str(spec.get("nodeName") or "") if kind == "Pod" else ""
    kept = tuple(containers[:MAX_CONTAINERS])
    inputs = (kept, repr(sorted(pull_spec.items())), node)
    return Workload(kind, namespace, name, uid, pull_spec, kept, node, inputs)


def checked(obj: Mapping[str, Any]) -> bool:
    """The reading thread's filter: whether the object has anything to check."""
    return workload(obj) is not None


def manifest_details(diagnosis: Diagnosis) -> Mapping[str, str]:
    """The manifest step's details (``digest``, ``platforms`` of an index), or empty."""
    for check in diagnosis.checks:
        if check.name == "manifest":
            return check.details
    return {}


@dataclass(frozen=True)
class Budget:
    """What a registry's answer said about its request budget."""

    limit: int | None = None  # RateLimit-Limit
    remaining: int | None = None  # RateLimit-Remaining
    retry_after: float | None = None  # a 429's Retry-After, in seconds


def _count(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and len(text) <= 12 else None


def budget(diagnosis: Diagnosis) -> Budget:
    """The RateLimit-* counts of the manifest answer and a 429's Retry-After (seconds; an
    HTTP date is not read), where the registry sent them."""
    details = manifest_details(diagnosis)
    retry = next((c.details["retry_after"] for c in diagnosis.checks if c.details.get("retry_after")), None)
    retry_after = None
    if retry:
        try:
            retry_after = float(retry)
        except ValueError:
            retry_after = None
    limit, remaining = _count(details.get("ratelimitLimit")), _count(details.get("ratelimitRemaining"))
    return Budget(limit, remaining, retry_after)


def _digest(image_id: str) -> str:
    return image_id.rpartition("@")[2]


def judge(
    container: Container, image: ImageReference, diagnosis: Diagnosis, wanted: Sequence[str]
) -> Diagnosis:
    """What one container's probe result (for ``wanted[0]``) means for the workload.

    A healthy index is also checked against every other node platform in ``wanted``; a
    running container's tag (not a digest reference) is compared with the digest it runs:
    gone is TAG_DELETED, another digest TAG_MOVED.
    """
    details = manifest_details(diagnosis)
    facts = {
        **diagnosis.facts,
        "container": container.name,
        "registry": image.registry,
        "repository": image.repository,
        "tag": image.manifest_ref,
        "image": image.familiar,
    }
    by_tag = image.digest is None
    if container.image_id and by_tag:
        running = _digest(container.image_id)
        if diagnosis.code in GONE:
            return make(Code.TAG_DELETED, {**facts, "digest": running}, checks=diagnosis.checks)
        current = details.get("digest", "")
        if diagnosis.healthy and current and current != running:
            moved = {**facts, "digest": running, "current": current}
            return make(Code.TAG_MOVED, moved, checks=diagnosis.checks)
    if diagnosis.healthy and details.get("platforms"):
        available = [p.strip() for p in details["platforms"].split(",") if p.strip()]
        for platform in wanted[1:]:
            if not any(platform_matches(a, platform) for a in available):
                return make(
                    Code.PLATFORM_NOT_FOUND,
                    {**facts, "platform": platform, "detail": ", ".join(available)},
                    checks=diagnosis.checks,
                )
    return diagnosis


@dataclass(frozen=True)
class Plan:
    """What to report after a workload's check.

    Attributes:
        state: container key -> code, what is reported now (the next check compares with it).
        events: the Events to post (one per container whose code changed).
        findings: (container key, code) of every non-OK container, for the gauge.
    """

    state: Mapping[str, str]
    events: tuple[tuple[str, str, events.EventSpec], ...] = ()
    findings: tuple[tuple[str, str], ...] = ()


def reportable(diagnosis: Diagnosis) -> bool:
    """Whether a result says something about the workload (not the operator's own network
    or policy: then what was reported before stands)."""
    return diagnosis.code not in NOT_CHECKED and not transient(diagnosis)


def event_note(diagnosis: Diagnosis, container: Container) -> str:
    """``<CODE> for container <name> (<image>): <summary>. Try: <first remediation>``."""
    text = f"{diagnosis.code.value} for container {container.name} ({container.image}): "
    text += f"{diagnosis.summary.rstrip('.')}."
    if diagnosis.remediation:
        text += f" Try: {diagnosis.remediation[0]}"
    return text[: events.MAX_NOTE]


def plan(work: Workload, previous: Mapping[str, str], results: Sequence[tuple[Container, Diagnosis]]) -> Plan:
    """The new state, the Events of the containers whose code changed, the findings.

    A container seen healthy for the first time posts nothing; a change to a problem posts
    a Warning (``ImageUnpullable``, ``ImageTagDeleted``) or, for a moved tag, a Normal
    ``ImageTagMoved``; a problem that is gone posts a Normal ``ImagePullable``. Each Event is
    named from the workload, container and code, with the replaced code as its occurrence
    marker: a retry (or a restarted operator) finds it instead of posting a second one.
    """
    state: dict[str, str] = {}
    out: list[tuple[str, str, events.EventSpec]] = []
    for container, diagnosis in results:
        before = previous.get(container.key)
        if not reportable(diagnosis):
            if before is not None:
                state[container.key] = before
            continue
        code = diagnosis.code.value
        state[container.key] = code
        if code == before or (before is None and diagnosis.healthy):
            continue
        if diagnosis.healthy:
            note = f"container {container.name} ({container.image}) can be pulled again (was {before})"
            kind, reason = "Normal", PULLABLE
        elif diagnosis.code is Code.TAG_MOVED:
            kind, reason, note = "Normal", TAG_MOVED, event_note(diagnosis, container)
        elif diagnosis.code is Code.TAG_DELETED:
            kind, reason, note = "Warning", TAG_DELETED, event_note(diagnosis, container)
        else:
            kind, reason, note = "Warning", UNPULLABLE, event_note(diagnosis, container)
        spec = events.EventSpec(
            regarding=events.Regarding(
                api_version=work.api_version,
                kind=work.kind,
                namespace=work.namespace,
                name=work.name,
                uid=work.uid,
                field_path=f"{FIELD_PREFIX[work.kind]}.{container.list}{{{container.name}}}",
            ),
            type=kind,
            reason=reason,
            action="CheckImage",
            note=note,
            key=(container.list, container.name, code),
            occurrence=events.fingerprint(before),
        )
        out.append((container.key, code, spec))
    findings = tuple((key, code) for key, code in state.items() if code != Code.OK.value)
    return Plan(state, tuple(out), findings)
