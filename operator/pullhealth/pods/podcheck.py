"""Failing pods: which container fails, why (message + the pod's own pull path), what to write.

No kopf here. The flow for one pod:

1. :func:`failing_containers` finds containers (init, regular, ephemeral) waiting in a
   pull failure; the rest of the cluster's pods are ignored cheaply.
2. :func:`diagnose_pod` classifies kubelet's text, then confirms with the credentials
   kubelet would use (``spec.imagePullSecrets``, then the service account's), or, for
   ACR with no matching secret, the node's managed identity (IMDS) or the service
   account's workload identity; the probe result refines the coarse message codes.
   Chains are shared per (registry, credential, image) for the cache's interval.
3. :func:`plan_writeback` turns the result and the pod's current annotations into the
   patch and the Event to emit, idempotently (same diagnosis: nothing to do). The Event
   is posted first, under a name derived from the pod, container and code, then the
   annotations are written only if they still read what the plan saw
   (``Writeback.expected``): exactly one Event per diagnosis, across crashes and writers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pullhealth.agent import nodereport
from pullhealth.chain import pullpath
from pullhealth.chain.pullsources import (
    WORKLOAD_CLIENT_ID,
    ClusterReader,
    Environment,
    read_keyring,
    service_account_secret_names,
)
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.chain.trust import is_acr
from pullhealth.domain import classify, credentials, recovery
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import combine, make, redacted
from pullhealth.domain.model import Diagnosis
from pullhealth.domain.redact import Redactor, one_line
from pullhealth.domain.reference import ImageReference, InvalidReference, parse
from pullhealth.kube import events

log = logging.getLogger(__name__)

# SignatureValidationFailed: kubelet 1.28+ for the runtime's signature policy (kubernetes#117717).
PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable",
     "SignatureValidationFailed"}
)
PREFIX = "pullhealth.io/"
ANN_DIAGNOSIS = PREFIX + "diagnosis"
ANN_CAUSE = PREFIX + "probable-cause"
ANN_CONTAINER = PREFIX + "container"
ANN_AT = PREFIX + "diagnosed-at"
ANNOTATIONS = (ANN_DIAGNOSIS, ANN_CAUSE, ANN_CONTAINER, ANN_AT)
# Recovery you can see: the diagnosed cause is fixed, kubelet's back-off not over yet.
ANN_RECOVERABLE = PREFIX + "recoverable-since"
ANN_RETRY_BY = PREFIX + "retry-by"
RECOVERY_ANNOTATIONS = (ANN_RECOVERABLE, ANN_RETRY_BY)
ALL_ANNOTATIONS = ANNOTATIONS + RECOVERY_ANNOTATIONS
MAX_CAUSE = 256
MAX_CONTAINERS = 8
# Probe results that only say "not allowed": a referenced secret kubelet had to skip is
# then the probable cause.
_AUTH_FAILURES = frozenset({Code.AUTH_REQUIRED, Code.ACCESS_DENIED, Code.PULL_SECRET_NO_MATCH})
_STATUS_KINDS = (
    ("initContainerStatuses", "initContainers"),
    ("containerStatuses", "containers"),
    ("ephemeralContainerStatuses", "ephemeralContainers"),
)


@dataclass(frozen=True)
class FailingContainer:
    """A container waiting on a failed pull."""

    name: str
    image: str
    reason: str
    message: str
    # The pod spec list it is in: containers, initContainers or ephemeralContainers.
    kind: str = "containers"

    @property
    def field_path(self) -> str:
        """``spec.containers{app}`` and friends, for the Event's ``regarding.fieldPath``."""
        return events.container_field_path(self.kind, self.name)


def failing_containers(pod: Mapping[str, Any]) -> list[FailingContainer]:
    """Containers of any kind waiting in a pull failure, init containers first."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    out: list[FailingContainer] = []
    for status_key, spec_key in _STATUS_KINDS:
        images = {c.get("name"): c.get("image", "") for c in spec.get(spec_key) or []}
        for cs in status.get(status_key) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in PULL_REASONS:
                name = str(cs.get("name", ""))
                out.append(
                    FailingContainer(
                        name=name,
                        image=str(images.get(name) or cs.get("image") or ""),
                        reason=str(waiting["reason"]),
                        message=str(waiting.get("message") or ""),
                        kind=spec_key,
                    )
                )
    return out


def has_our_annotations(pod: Mapping[str, Any]) -> bool:
    """Whether an earlier diagnosis is recorded on the pod."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return ANN_DIAGNOSIS in annotations


def is_relevant(pod: Mapping[str, Any]) -> bool:
    """The cheap filter: failing now, or annotated before (it may have recovered)."""
    return bool(failing_containers(pod)) or has_our_annotations(pod)


def pick_message(container: FailingContainer, kubelet_messages: Sequence[str]) -> str:
    """The most informative text: the newest kubelet ``Failed`` event for this image, else
    the waiting message (which is only ``Back-off pulling image`` during back-off)."""
    wanted = f'"{container.image}"'
    for message in kubelet_messages:
        if wanted in message or container.image in message:
            return message
    return container.message


@dataclass(frozen=True)
class PodSettings:
    """Operator-wide knobs for pod diagnosis (identities and ACR domains are the admin's
    trust policy: ``Environment.trust``)."""

    platform: str = "linux/amd64"
    timeout: float = 10.0
    # The node agent's report key: its NodePathChecked notes count only when they verify.
    agent_report_key: bytes | None = field(default=None, repr=False)


async def node_platform(reader: ClusterReader, node_name: object, default: str) -> str:
    """``os/arch`` of the pod's node from its well-known labels, else the default."""
    if not node_name:
        return default
    node = await reader.node(str(node_name))
    labels = ((node or {}).get("metadata") or {}).get("labels") or {}
    os_name, arch = labels.get("kubernetes.io/os"), labels.get("kubernetes.io/arch")
    return f"{os_name}/{arch}" if os_name and arch else default


@dataclass(frozen=True)
class PodResult:
    """The outcome for one pod: the container diagnosed and the diagnosis."""

    container: FailingContainer
    diagnosis: Diagnosis
    registry: str


@dataclass(frozen=True)
class PullContext:
    """How the operator probes a pull path, whoever asks (failing pods, workload checks,
    admission): what it reads the cluster with, its network settings and trust policy, its
    knobs, the shared single-flight cache and the request counter."""

    reader: ClusterReader
    env: Environment
    settings: PodSettings
    cache: SingleFlight[Diagnosis]
    on_request: Callable[[str, str], None] | None = None


@dataclass(frozen=True)
class KubeletEvidence:
    """What kubelet and the node said about a pod's pulls.

    Attributes:
        messages: kubelet's ``Failed`` Event texts for the pod (newest first).
        node_events: the pod's ``NodePathChecked`` Events (the node agent's evidence,
            newest first; see :mod:`pullhealth.agent.nodereport`).
        pull_seconds: per image, how long its failed pull ran (kubelet's Pulling Event to
            its Failed Event), where known.
    """

    messages: Sequence[str] = ()
    node_events: Sequence[Mapping[str, str]] = ()
    pull_seconds: Mapping[str, float] = field(default_factory=dict)


async def diagnose_pod(
    pod: Mapping[str, Any], evidence: KubeletEvidence, ctx: PullContext
) -> list[PodResult]:
    """Diagnose every failing container of a pod (at most 8), the first one first."""
    return [await diagnose_container(pod, container, evidence, ctx)
            for container in failing_containers(pod)[:MAX_CONTAINERS]]


async def diagnose_container(
    pod: Mapping[str, Any], container: FailingContainer, evidence: KubeletEvidence, ctx: PullContext
) -> PodResult:
    """Classify the container's pull error, then confirm it on the pod's own pull path.

    Never raises (cancellation aside): an unexpected error becomes UNKNOWN with a one-line
    masked message (traceback to the log). The diagnosis is masked for secret-shaped text.
    """
    redactor = Redactor()  # learns every pull secret read for the pod
    try:
        result = await _diagnose_container(pod, container, evidence, ctx, redactor)
    except Exception as exc:
        log.error("unexpected error diagnosing container %s", container.name, exc_info=True)
        text = one_line(f"{type(exc).__name__}: {exc}", redactor=redactor)
        result = PodResult(container, make(Code.UNKNOWN, {"container": container.name, "detail": text}), "")
    # Masked with every secret the pod's pull path holds, not only the one a chain used:
    # kubelet's message or a registry may echo any of them.
    return PodResult(result.container, redacted(result.diagnosis, redactor), result.registry)


async def _diagnose_container(
    pod: Mapping[str, Any],
    container: FailingContainer,
    evidence: KubeletEvidence,
    ctx: PullContext,
    redactor: Redactor,
) -> PodResult:
    meta = pod.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    text = pick_message(container, evidence.messages)
    # A bare deadline: how long the pull ran tells a long pull from a network timeout.
    message = classify.refine_by_timeline(classify.classify(text), evidence.pull_seconds.get(container.image))
    facts = {**message.facts, "namespace": namespace, "container": container.name}

    try:
        image = parse(container.image)
    except InvalidReference as exc:
        diag = make(Code.INVALID_IMAGE_NAME, {**facts, "reference": container.image, "detail": str(exc)})
        return PodResult(container, diag, "")
    facts.update(
        registry=image.registry,
        repository=image.repository,
        tag=image.manifest_ref,
        image=image.familiar,
        reference=container.image,
    )
    if container.reason == "ErrImageNeverPull":
        diag = make(Code.IMAGE_NOT_FOUND, {**facts, "registry": "the node (imagePullPolicy: Never)"})
        return PodResult(container, diag, image.registry)
    if container.reason == "InvalidImageName":
        return PodResult(container, make(Code.INVALID_IMAGE_NAME, facts), image.registry)
    platform = await node_platform(ctx.reader, (pod.get("spec") or {}).get("nodeName"), ctx.settings.platform)
    facts["platform"] = platform
    message = make(message.code, facts, candidates=message.candidates)

    probed = await probe_pull_path(pod.get("spec") or {}, image, platform, namespace, ctx, redactor)
    # How far the node got decides whether an earlier probe failure is the operator's own
    # network (a vantage difference) or the cause (diagnose.combine). The node agent's
    # evidence is the node's own vantage point: its path answering over HTTP is how far
    # the node got too, and a failing node path is folded in as the cause
    # (nodereport.fold) unless kubelet's message shows the pull got further.
    reached = classify.reached(text)
    node = nodereport.pick(
        evidence.node_events,
        image.registry,
        (pod.get("spec") or {}).get("nodeName"),
        ctx.settings.agent_report_key,
        str((pod.get("metadata") or {}).get("uid") or ""),
    )
    layer = max((r for r in (reached, nodereport.reached(node)) if r is not None), default=None)
    combined = combine(message, probed, layer)
    return PodResult(container, nodereport.fold(combined, node, reached), image.registry)


async def probe_pull_path(
    spec: Mapping[str, Any],
    image: ImageReference,
    platform: str,
    namespace: str,
    ctx: PullContext,
    redactor: Redactor,
) -> Diagnosis:
    """Run a pod spec's own pull path for one image (coalesced) and fold in unusable secrets.

    kubelet's order: the pod's and its service account's pull secrets that match the
    image; for an ACR image with none, the workload identity (when the admin enabled it
    and the account is annotated) or the node's kubelet identity; else anonymous. The one
    resolver for failing pods, workload checks and admission (a workload's pod template):
    every secret read is taught to ``redactor``.
    """
    reader, env = ctx.reader, ctx.env
    sa_name = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")
    account = await reader.service_account(namespace, sa_name)
    names = [str(r.get("name")) for r in spec.get("imagePullSecrets") or [] if r.get("name")]
    names += service_account_secret_names(account)
    keyring = await read_keyring(reader, namespace, names)
    credentials.teach(redactor, (e.credential for e in keyring.entries))
    matched = credentials.lookup(list(keyring.entries), image)
    options = pullpath.chain_options(
        env, timeout=ctx.settings.timeout, platform=platform, on_request=ctx.on_request
    )
    registry = image.registry
    key = (image.registry, image.repository, image.manifest_ref, platform)

    path: pullpath.PullPath | Diagnosis
    if matched:
        path = pullpath.with_credentials(registry, image, namespace, matched, options, key)
    elif is_acr(registry, env.trust.acr_domains):
        annotations = ((account or {}).get("metadata") or {}).get("annotations") or {}
        if env.trust.workload_identity and annotations.get(WORKLOAD_CLIENT_ID):
            path = pullpath.workload_identity(
                registry, image, namespace, sa_name, account, None, reader, env, options, key
            )
        else:
            path = pullpath.managed_identity(registry, image, namespace, None, env, options, key)
    elif names:
        detail = f"pull secrets {', '.join(names)} have no entry for {registry}"
        path = pullpath.with_credentials(registry, image, namespace, [], options, key, {"detail": detail})
    else:
        path = pullpath.anonymous(registry, image, options, key)
    result = path if isinstance(path, Diagnosis) else await path.run(ctx.cache, registry)

    if result.code in _AUTH_FAILURES and keyring.issues:
        issue = keyring.issues[0]
        return make(
            issue.code,
            {**result.facts, "secret": issue.name, "namespace": namespace, "detail": issue.detail},
            checks=result.checks,
        )
    return result


# --- write-back: pure


@dataclass(frozen=True)
class Writeback:
    """What to change on the pod: annotation patch (None = nothing) and Event (or None).

    In ``annotations`` a value of None removes the key (JSON merge patch). ``expected``
    holds our annotations as the plan saw them: the patch is written only while they
    still read so (another writer may have reported first).
    """

    annotations: dict[str, str | None] | None = None
    event: events.EventSpec | None = None
    expected: dict[str, str | None] | None = None
    # The write announces that the cause is fixed (``PullRecoverable``).
    announces_recovery: bool = False


def probable_cause(diagnosis: Diagnosis) -> str:
    """One line, at most 256 characters."""
    line = " ".join(diagnosis.summary.split())
    return line if len(line) <= MAX_CAUSE else line[: MAX_CAUSE - 1] + "…"


def event_message(diagnosis: Diagnosis) -> str:
    """``<CODE>: <summary>. Try: <first remediation>``."""
    text = f"{diagnosis.code.value}: {diagnosis.summary.rstrip('.')}."
    if diagnosis.remediation:
        text += f" Try: {diagnosis.remediation[0]}"
    return text[:1024]


def recorded_failures(pod: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(namespace, registry, code) of the diagnosis annotated on a pod that still fails.

    What an operator that just restarted knows before re-diagnosing the pod: the
    annotated container, if it still waits on a pull, with the recorded code.
    """
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    code, name = annotations.get(ANN_DIAGNOSIS), annotations.get(ANN_CONTAINER)
    if code not in {c.value for c in Code}:
        return []
    for container in failing_containers(pod):
        if container.name == name:
            try:
                registry = parse(container.image).registry
            except InvalidReference:
                registry = "unknown"
            return [(str(meta.get("namespace") or ""), registry, str(code))]
    return []


def plan_writeback(
    pod: Mapping[str, Any],
    result: PodResult | None,
    now: str,
    *,
    recoverable: bool = False,
    retry_by: datetime | None = None,
) -> Writeback:
    """Idempotent: the same diagnosis on the same container changes nothing.

    ``recoverable``: the diagnosed cause was just verified fixed on the pod's own pull
    path (:func:`pullhealth.domain.recovery.all_recoverable`); the same diagnosis then gets
    ``pullhealth.io/recoverable-since`` and one ``PullRecoverable`` Event saying when
    kubelet retries (``retry_by``, when known), and loses them when it no longer is.
    """
    meta = pod.get("metadata") or {}
    current = meta.get("annotations") or {}
    expected = {key: current.get(key) for key in ALL_ANNOTATIONS}
    # The report replaces this state: a retry sees it unchanged, a repeat does not.
    occurrence = events.fingerprint(*(expected[key] for key in ANNOTATIONS))
    if result is None:
        if not any(key in current for key in ALL_ANNOTATIONS):
            return Writeback()
        previous = current.get(ANN_DIAGNOSIS, "unknown")
        recovered = events.EventSpec(
            regarding=_regarding(pod, ""),
            type="Normal",
            reason="PullRecovered",
            action="Diagnose",
            note=f"no container waits on an image pull any more (was {previous})",
            key=(str(current.get(ANN_CONTAINER, "")), str(previous)),
            occurrence=occurrence,
        )
        return Writeback(annotations=dict.fromkeys(ALL_ANNOTATIONS), event=recovered, expected=expected)
    code = result.diagnosis.code.value
    # The node agent's evidence may name the node (or containerd's mirror on it) after the
    # code was written: that is news too, once (the summary starts with it).
    node = nodereport.named_node(result.diagnosis)
    cause = str(current.get(ANN_CAUSE, ""))[:160]
    node_news = node is not None and not any(f"node {node}{end}" in cause for end in (" ", ":"))
    same = current.get(ANN_DIAGNOSIS) == code and current.get(ANN_CONTAINER) == result.container.name
    # Fixed: the chain no longer refines kubelet's message (TAG_NOT_FOUND was refined from
    # its coarse IMAGE_NOT_FOUND), so the code may differ; the recorded cause is what recovered.
    fixed = (
        recoverable
        and current.get(ANN_CONTAINER) == result.container.name
        and recovery.may_recover(str(current.get(ANN_DIAGNOSIS) or ""))
    )
    if (same or fixed) and not node_news:
        return _plan_recovery(pod, result, current, expected, occurrence, now, recoverable, retry_by)
    # A failure after a recovery replaces the same (empty) annotations as the first one;
    # the container's restart count tells them apart (kubelet counts each restart).
    occurrence = events.fingerprint(occurrence, restart_count(pod, result.container))
    diagnosed = events.EventSpec(
        regarding=_regarding(pod, result.container.field_path),
        type="Warning",
        reason="PullDiagnosed",
        action="Diagnose",
        note=event_message(result.diagnosis),
        key=(result.container.kind, result.container.name, code, *((node,) if node else ())),
        occurrence=occurrence,
    )
    return Writeback(
        annotations={
            ANN_DIAGNOSIS: code,
            ANN_CAUSE: probable_cause(result.diagnosis),
            ANN_CONTAINER: result.container.name,
            ANN_AT: now,
            # A new diagnosis: whatever was announced recoverable was another cause.
            **dict.fromkeys(key for key in RECOVERY_ANNOTATIONS if key in current),
        },
        event=diagnosed,
        expected=expected,
    )


def _plan_recovery(
    pod: Mapping[str, Any],
    result: PodResult,
    current: Mapping[str, Any],
    expected: dict[str, str | None],
    occurrence: str,
    now: str,
    recoverable: bool,
    retry_by: datetime | None,
) -> Writeback:
    """The same diagnosis as annotated: announce that its cause is fixed, once, or withdraw
    an announcement that no longer holds (the cause came back: no Event, the diagnosis stands)."""
    announced = ANN_RECOVERABLE in current
    if announced and not recoverable:
        return Writeback(annotations=dict.fromkeys(RECOVERY_ANNOTATIONS), expected=expected)
    if announced or not recoverable:
        return Writeback()
    code = str(current.get(ANN_DIAGNOSIS) or result.diagnosis.code.value)  # the cause recorded
    event = events.EventSpec(
        regarding=_regarding(pod, result.container.field_path),
        type="Normal",
        reason="PullRecoverable",
        action="Diagnose",
        note=recovery.note(code, result.container.name, retry_by),
        key=(result.container.kind, result.container.name, code),
        # Replaces the diagnosis as annotated: announcing the same diagnosis again (after
        # a withdrawal) is a retry, a recovery of a later diagnosis a repeat.
        occurrence=events.fingerprint(occurrence, "recoverable"),
    )
    return Writeback(
        annotations={
            ANN_RECOVERABLE: now,
            ANN_RETRY_BY: recovery.rfc3339(retry_by) if retry_by is not None else None,
        },
        event=event,
        expected=expected,
        announces_recovery=True,
    )


def restart_count(pod: Mapping[str, Any], container: FailingContainer) -> int:
    """kubelet's ``restartCount`` of the container (0 when not reported)."""
    status = pod.get("status") or {}
    for status_key, spec_key in _STATUS_KINDS:
        if spec_key != container.kind:
            continue
        for cs in status.get(status_key) or []:
            if cs.get("name") == container.name:
                try:
                    return int(cs.get("restartCount") or 0)
                except (TypeError, ValueError):
                    return 0
    return 0


def _regarding(pod: Mapping[str, Any], field_path: str) -> events.Regarding:
    meta = pod.get("metadata") or {}
    return events.Regarding(
        api_version="v1",
        kind="Pod",
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        field_path=field_path,
    )
