"""Admission, pure: an AdmissionReview request -> what to check -> the review's answer.

No I/O, no kopf. :func:`plan` reads the request (a Pod, or a workload's pod template) and
says which images to check, with the pod spec whose pull path they take, or why nothing is
checked (a delete, an update that changed no image, pull secret, service account or node
selector, a pod or ReplicaSet/Job a controller created from a template checked already).
:func:`warning` turns one image's diagnosis into one short warning line;
:func:`response` builds the AdmissionReview answer, which always allows unless the
namespace opted in to deny mode and a definitive code was found.

The request is written by namespace users: every field is read defensively, the number
of images is bounded, and warnings hold only codes, image references and rendered
summaries (masked before they get here, clipped to printable ASCII here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import transient
from pullhealth.domain.model import Diagnosis
from pullhealth.domain.placement import placement_inputs

# Where each kind keeps its pod spec (the workload kinds' templates).
TEMPLATE_PATHS: Mapping[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
MAX_IMAGES = 16
MAX_WARNING = 240  # the API server may truncate longer warnings (KEP-1693 suggests < 256)
# Codes that say the operator could not or would not check, not that the pull fails:
# its own policy refused the destination or the identity. No warning for them.
NOT_CHECKED = frozenset({Code.DESTINATION_REFUSED, Code.IDENTITY_NOT_ALLOWED, Code.UNKNOWN})
# The namespace label (read by the webhook configuration's namespaceSelector).
LABEL = "pullhealth.io/admission"
OFF, DENY = "off", "deny"


@dataclass(frozen=True)
class Plan:
    """What one admission request asks to check.

    Attributes:
        namespace: the object's namespace (whose secrets and service account the pull uses).
        spec: the pod spec (a Pod's, or the template's).
        images: distinct image references, in container order, at most ``MAX_IMAGES``.
        skipped: why nothing is checked (empty when ``images`` are to be checked).
    """

    namespace: str
    spec: Mapping[str, Any]
    images: tuple[str, ...] = ()
    skipped: str = ""


def pod_spec(obj: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    """The pod spec of a Pod or a workload's template; None when absent or malformed."""
    path = TEMPLATE_PATHS.get(kind)
    node: Any = obj
    for key in path or ():
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) and path else None


def images(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """Distinct images of every container kind, init containers first (at most MAX_IMAGES)."""
    found: list[str] = []
    for key in CONTAINER_LISTS:
        containers = spec.get(key)
        for container in containers if isinstance(containers, list) else ():
            image = container.get("image") if isinstance(container, Mapping) else None
            if isinstance(image, str) and image and image not in found:
                found.append(image)
    return tuple(found[:MAX_IMAGES])


def pull_inputs(spec: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a pull's result depends on: images, pull secrets, service account, and where the
    pod may run (node selector, required node affinity)."""
    secrets = spec.get("imagePullSecrets")
    names = tuple(
        sorted(str(s.get("name")) for s in secrets if isinstance(s, Mapping))
        if isinstance(secrets, list)
        else ()
    )
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    return (images(spec), names, str(account), placement_inputs(spec))


def _controlled(obj: Mapping[str, Any]) -> bool:
    owners = (obj.get("metadata") or {}).get("ownerReferences")
    return isinstance(owners, list) and any(isinstance(o, Mapping) and o.get("controller") for o in owners)


def plan(request: Mapping[str, Any]) -> Plan:
    """Which images of the request to check, or why none."""
    kind = str((request.get("kind") or {}).get("kind") or "")
    namespace = str(request.get("namespace") or "")
    operation = str(request.get("operation") or "")
    obj = request.get("object")
    spec = pod_spec(obj, kind)
    if operation not in ("CREATE", "UPDATE"):
        return Plan(namespace, {}, skipped=f"operation {operation or 'unknown'}")
    if spec is None or not isinstance(obj, Mapping):
        return Plan(namespace, {}, skipped=f"no pod spec in {kind or 'the object'}")
    if _controlled(obj):
        # Created from a template checked when its owner was applied; a check here would
        # answer the controller-manager, who does not read warnings.
        return Plan(namespace, spec, skipped="created by a controller")
    if operation == "UPDATE":
        old = pod_spec(request.get("oldObject"), kind)
        if old is not None and pull_inputs(old) == pull_inputs(spec):
            return Plan(namespace, spec, skipped="no image, pull secret or service account changed")
    found = images(spec)
    if not found:
        return Plan(namespace, spec, skipped="no image")
    return Plan(namespace, spec, found)


def platform_found(diagnosis: Diagnosis, platforms: Sequence[str]) -> bool:
    """A PLATFORM_NOT_FOUND for the first platform, when another node platform is in the
    index's list (``facts["detail"]``): some node can pull it, no warning."""
    if diagnosis.code is not Code.PLATFORM_NOT_FOUND:
        return False
    available = [a.strip() for a in str(diagnosis.facts.get("detail", "")).split(",")]
    # A node's os/arch (no variant) matches any variant of it, as containerd does.
    return any(a == p or a.startswith(p + "/") for p in platforms[1:] for a in available)


def _ascii_line(text: str, limit: int) -> str:
    line = " ".join(text.split()).encode("ascii", "replace").decode("ascii")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def warning(image: str, diagnosis: Diagnosis) -> str | None:
    """``image <ref>: <CODE> (<summary>); try: <first remediation>`` for a failing pull, at
    most MAX_WARNING characters; None when it would pull (or the operator could not tell).
    Transient codes say that only the operator's attempt failed."""
    if diagnosis.healthy or diagnosis.code in NOT_CHECKED:
        return None
    summary = diagnosis.summary.rstrip(".")
    if transient(diagnosis):
        text = f"image {image}: {diagnosis.code.value} from the operator's network ({summary})"
    else:
        text = f"image {image}: {diagnosis.code.value} ({summary})"
    if diagnosis.remediation:  # what to do, as far as the line allows
        text += f"; try: {diagnosis.remediation[0].rstrip('.')}"
    return _ascii_line(text, MAX_WARNING)


def denies(diagnosis: Diagnosis) -> bool:
    """Whether deny mode refuses the object for this result (definitive failures only)."""
    return not diagnosis.healthy and diagnosis.code not in NOT_CHECKED and not transient(diagnosis)


def response(review: Mapping[str, Any], warnings: Sequence[str], deny: Sequence[str] = ()) -> dict[str, Any]:
    """The AdmissionReview answer: allowed with ``warnings``, or refused with ``deny``'s
    lines as the message (deny mode)."""
    request = review.get("request") if isinstance(review, Mapping) else None
    uid = str((request or {}).get("uid") or "") if isinstance(request, Mapping) else ""
    answer: dict[str, Any] = {"uid": uid, "allowed": not deny}
    if warnings:
        answer["warnings"] = list(warnings)
    if deny:
        message = "pullhealth: images that cannot be pulled (namespace label " + f"{LABEL}={DENY}): "
        answer["status"] = {"code": 403, "reason": "Forbidden", "message": message + "; ".join(deny)}
    return {
        "apiVersion": str(review.get("apiVersion") or "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": answer,
    }
