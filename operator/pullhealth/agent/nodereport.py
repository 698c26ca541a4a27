"""Evidence from the failing pod's node (``pullhealth agent``): the Event note and the rule.

Pure. The agent runs the credential-free steps (dns, tcp, tls, challenge) from the node,
with the node's resolver, CA bundle and containerd's hosts.toml, and reports each result
as a ``NodePathChecked`` Event on the failing pod. The note is short and machine-readable::

    code=PRIVATE_ENDPOINT_DNS node=aks-b-1 registry=myacr.azurecr.io step=dns
    endpoint=https://myacr.azurecr.io mirror=false | <the agent's one-line summary>

The operator reads those Events with the pod's other Events and folds them into the pod's
diagnosis with the evidence-layer rule (:func:`fold`): the node's path is where kubelet
pulls from, so it outranks the operator's own network.

Anyone who may create Events in a namespace can write a note of this shape on their own
pods. With a report key (a Secret the chart mounts into the agent and the operator only),
the agent signs each note with an HMAC over the pod's uid and the note (``sig=``), and the
operator takes only notes that verify: a forged Event then neither changes a diagnosis
nor raises the cluster-wide per-pool metric. The summary is the agent's own words for
the code, step and layer, never remote text.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from pullhealth.domain import codes
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import LAYER_OF_CODE, Layer
from pullhealth.domain.model import CheckResult, Diagnosis, StepStatus

REASON = "NodePathChecked"
ACTION = "CheckNodePath"
REPORTING_CONTROLLER = "pullhealth.io/agent"
NODE_CHECK = "node"
MAX_SUMMARY = 600
_KEYS = ("code", "node", "registry", "step", "endpoint", "mirror", "checked")
SIG = "sig"
_PRINTABLE = re.compile(r"[^\x20-\x7e]")
_CHECKED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@dataclass(frozen=True)
class NodeReport:
    """What the agent on one node found for one registry.

    Attributes:
        code: OK or the failure's code (a network-path code: dns to challenge; or
            DATA_ENDPOINT_UNREACHABLE for the data host kubelet's message names).
        node: the node's name.
        registry: the image's registry (``host[:port]``).
        step: the step that failed ("" when OK).
        endpoint: the URL containerd would use (the answering mirror, else the server);
            on failure the last endpoint tried.
        mirror: ``endpoint`` is a hosts.toml mirror, not the registry's server.
        summary: one line for people.
        checked: when the node's check ran (RFC 3339, UTC, seconds; "" when not known):
            signed with the rest, it tells a pass after kubelet's last failure from an
            older one (:func:`pullhealth.domain.recovery.node_verified`).
    """

    code: Code
    node: str
    registry: str
    step: str = ""
    endpoint: str = ""
    mirror: bool = False
    summary: str = ""
    verified: bool = False  # the note's signature verified with the report key
    checked: str = ""

    @property
    def ok(self) -> bool:
        """The node's path reached the registry's ``/v2/`` (through ``endpoint``)."""
        return self.code is Code.OK

    @property
    def layer(self) -> Layer | None:
        """The layer the node's path failed at (None when OK)."""
        return None if self.ok else LAYER_OF_CODE.get(self.code, Layer.HTTP)

    def note(self, key: bytes | None = None, pod_uid: str = "") -> str:
        """The Event's note: ``key=value`` pairs, `` | ``, the summary (at most 1 KiB),
        signed for ``pod_uid`` with the report key when one is given (``sig=`` last)."""
        values = {
            "code": self.code.value,
            "node": self.node,
            "registry": self.registry,
            "step": self.step or "-",
            "endpoint": self.endpoint or "-",
            "mirror": "true" if self.mirror else "false",
            "checked": self.checked or "-",
        }
        head = " ".join(f"{k}={quote(values[k], safe=':/@.,[]-_')}" for k in _KEYS)
        summary = _PRINTABLE.sub(" ", self.summary)[:MAX_SUMMARY]
        unsigned = f"{head} | {summary}"[:940]
        if key is None:
            return unsigned
        return f"{unsigned} {SIG}={signature(key, pod_uid, unsigned)}"


def read_key(path: str) -> bytes | None:
    """The report key from a file (a mounted Secret), or None when no path is given.

    Raises:
        ValueError: the file is unreadable or holds fewer than 16 bytes.
    """
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            key = handle.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the report key {path}: {exc.strerror}") from None
    if len(key) < 16:
        raise ValueError(f"the report key in {path} is shorter than 16 bytes")
    return key


def signature(key: bytes, pod_uid: str, unsigned: str) -> str:
    """HMAC-SHA256 of the pod's uid and the unsigned note (hex): bound to one pod, so a
    signed note copied onto another pod does not verify."""
    return hmac.new(key, f"{pod_uid}\n{unsigned}".encode(), hashlib.sha256).hexdigest()


def _verified(note: str, key: bytes, pod_uid: str) -> str | None:
    """The unsigned note when its signature verifies, else None."""
    unsigned, sep, sig = note.rpartition(f" {SIG}=")
    if not sep or not pod_uid:
        return None
    return unsigned if hmac.compare_digest(sig.strip(), signature(key, pod_uid, unsigned)) else None


def parse_note(note: str, key: bytes | None = None, pod_uid: str = "") -> NodeReport | None:
    """The report in an Event's note, or None when it is not one of ours (with ``key``:
    not signed with it for ``pod_uid``)."""
    signed = key is not None
    if key is not None:
        checked = _verified(note, key, pod_uid)
        if checked is None:
            return None
        note = checked
    else:
        note = note.rpartition(f" {SIG}=")[0] or note
    head, _, summary = note.partition(" | ")
    values: dict[str, str] = {}
    for pair in head.split():
        name, sep, value = pair.partition("=")
        if sep and name in _KEYS:
            values[name] = unquote(value)
    try:
        code = Code(values.get("code", ""))
    except ValueError:
        return None
    if not values.get("node") or not values.get("registry"):
        return None
    return NodeReport(
        code=code,
        node=values["node"],
        registry=values["registry"],
        step="" if values.get("step") in (None, "-") else values["step"],
        endpoint="" if values.get("endpoint") in (None, "-") else values["endpoint"],
        mirror=values.get("mirror") == "true",
        summary=_PRINTABLE.sub(" ", summary)[:MAX_SUMMARY],
        verified=signed,
        checked=_checked(values.get("checked", "")),
    )


def _checked(text: str) -> str:
    """An RFC 3339 UTC time as the agent writes it (``2026-12-03T10:00:00Z``), else ""."""
    return text if _CHECKED.fullmatch(text) else ""


def pick(
    events: Iterable[Mapping[str, str]],
    registry: str,
    node: str | None,
    key: bytes | None = None,
    pod_uid: str = "",
) -> NodeReport | None:
    """The newest report for ``registry`` from the agent of the pod's own node.

    Args:
        events: the pod's events, newest first, each with ``note``, ``controller`` and
            ``instance`` (reporting controller and instance).
        registry: the failing container's registry.
        node: the pod's ``spec.nodeName``; reports from another node are ignored.
        key: the report key: only notes signed with it for ``pod_uid`` count.
        pod_uid: the pod's uid.
    """
    if not node:
        return None
    for event in events:
        if event.get("controller") != REPORTING_CONTROLLER or event.get("instance") != node:
            continue
        report = parse_note(event.get("note", ""), key, pod_uid)
        if report is not None and report.node == node and report.registry == registry:
            return report
    return None


def reached(report: NodeReport | None) -> Layer | None:
    """How far the node got: the HTTP layer when its path answered, else None."""
    return Layer.HTTP if report is not None and report.ok else None


def applies(report: NodeReport, message_reached: Layer | None) -> bool:
    """Whether the node's failure is the cause.

    It is, unless kubelet's message shows the pull got further on the network path than
    the agent did (a failure after the HTTP answer: credentials or content, checked
    centrally). A private-endpoint miss explains later answers too (the public endpoint
    answered), so it applies whatever the message says.
    """
    if report.ok:
        return False
    if report.code is Code.PRIVATE_ENDPOINT_DNS or message_reached is None:
        return True
    layer = report.layer
    return layer is not None and layer >= min(message_reached, Layer.HTTP)


def fold(diagnosis: Diagnosis, report: NodeReport | None, message_reached: Layer | None) -> Diagnosis:
    """Fold the node's evidence into a pod diagnosis (see :func:`applies`).

    A failing node path that applies becomes the diagnosis, naming the node; otherwise the
    diagnosis stands, with a ``node`` check as evidence and, when containerd pulls through
    a mirror, the mirror named in the summary.
    """
    if report is None:
        return diagnosis
    check = CheckResult(
        name=NODE_CHECK,
        status=StepStatus.PASSED if report.ok else StepStatus.FAILED,
        code=report.code,
        message=f"node {report.node}: {report.summary}",
        details={
            k: v
            for k, v in {
                "node": report.node,
                "endpoint": report.endpoint,
                "mirror": "true" if report.mirror else "false",
                "step": report.step,
                "signed": "true" if report.verified else "",
                "checkedAt": report.checked,
            }.items()
            if v
        },
    )
    checks = [*diagnosis.checks, check]
    facts = {**diagnosis.facts, "node": report.node}
    via = ""
    if report.mirror:
        facts["mirror"] = report.endpoint
        via = f"containerd on node {report.node} pulls through mirror {report.endpoint}; "
    if not applies(report, message_reached):
        return diagnosis.model_copy(
            update={"checks": checks, "summary": via + diagnosis.summary, "facts": facts}
        )
    facts["nodeEndpoint"] = report.endpoint
    if report.code is Code.DATA_ENDPOINT_UNREACHABLE:
        facts.update(data_host=report.endpoint.split("://", 1)[-1], data_step=report.step)
    return Diagnosis(
        code=report.code,
        summary=f"on node {report.node}: {via}{report.summary}",
        remediation=codes.remediation(report.code, facts),
        candidates=[c for c in (diagnosis.code, *diagnosis.candidates) if c is not report.code][:8],
        checks=checks,
        facts=facts,
    )


def named_node(diagnosis: Diagnosis) -> str | None:
    """The node the diagnosis' summary names (its cause is node-specific, or containerd on
    that node pulls through a mirror), else None."""
    node = node_of(diagnosis)
    if node is not None and (node_specific(diagnosis) or "mirror" in diagnosis.facts):
        return node
    return None


def node_specific(diagnosis: Diagnosis, *, verified_only: bool = False) -> bool:
    """The diagnosis' cause was found on the pod's node (the agent's evidence decided);
    ``verified_only``: and the agent's note carried a signature that verified (what the
    cluster-wide per-pool metric counts)."""
    return any(
        c.name == NODE_CHECK
        and c.status is StepStatus.FAILED
        and c.code is diagnosis.code
        and (not verified_only or c.details.get("signed") == "true")
        for c in diagnosis.checks
    )


def node_of(diagnosis: Diagnosis) -> str | None:
    """The node whose evidence the diagnosis carries, if any."""
    return next((c.details.get("node") for c in diagnosis.checks if c.name == NODE_CHECK), None)


def summarize(checks: Sequence[CheckResult]) -> tuple[Code, str, str]:
    """(code, failed step, message) of a chain's checks: the first failure, else OK."""
    failed = next((c for c in checks if c.status is StepStatus.FAILED), None)
    if failed is None:
        return Code.OK, "", ""
    return failed.code, failed.name, failed.message
