"""Evidence from the failing pod's node (``pullhealth agent``): the Event note and the rule.

Pure. The agent runs the credential-free steps (dns, tcp, tls, challenge) from the node,
with the node's resolver, CA bundle and containerd's hosts.toml, and reports each result
as a ``NodePathChecked`` Event on the failing pod. The note is short and machine-readable::

    code=PRIVATE_ENDPOINT_DNS node=aks-b-1 registry=myacr.azurecr.io step=dns
    endpoint=https://myacr.azurecr.io mirror=false | <the agent's one-line summary>

The operator reads those Events with the pod's other Events and folds them into the pod's
diagnosis with the evidence-layer rule (:func:`fold`): the node's path is where kubelet
pulls from, so it outranks the operator's own network.
"""

from __future__ import annotations

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
_KEYS = ("code", "node", "registry", "step", "endpoint", "mirror")
_PRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True)
class NodeReport:
    """What the agent on one node found for one registry.

    Attributes:
        code: OK or the failure's code (a network-path code: dns to challenge).
        node: the node's name.
        registry: the image's registry (``host[:port]``).
        step: the step that failed ("" when OK).
        endpoint: the URL containerd would use (the answering mirror, else the server);
            on failure the last endpoint tried.
        mirror: ``endpoint`` is a hosts.toml mirror, not the registry's server.
        summary: one line for people.
    """

    code: Code
    node: str
    registry: str
    step: str = ""
    endpoint: str = ""
    mirror: bool = False
    summary: str = ""

    @property
    def ok(self) -> bool:
        """The node's path reached the registry's ``/v2/`` (through ``endpoint``)."""
        return self.code is Code.OK

    @property
    def layer(self) -> Layer | None:
        """The layer the node's path failed at (None when OK)."""
        return None if self.ok else LAYER_OF_CODE.get(self.code, Layer.HTTP)

    def note(self) -> str:
        """The Event's note: ``key=value`` pairs, `` | ``, the summary (at most 1 KiB)."""
        values = {
            "code": self.code.value,
            "node": self.node,
            "registry": self.registry,
            "step": self.step or "-",
            "endpoint": self.endpoint or "-",
            "mirror": "true" if self.mirror else "false",
        }
        head = " ".join(f"{k}={quote(values[k], safe=':/@.,[]-_')}" for k in _KEYS)
        summary = _PRINTABLE.sub(" ", self.summary)[:MAX_SUMMARY]
        return f"{head} | {summary}"[:1024]


def parse_note(note: str) -> NodeReport | None:
    """The report in an Event's note, or None when it is not one of ours."""
    head, _, summary = note.partition(" | ")
    values: dict[str, str] = {}
    for pair in head.split():
        key, sep, value = pair.partition("=")
        if sep and key in _KEYS:
            values[key] = unquote(value)
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
    )


def pick(
    events: Iterable[Mapping[str, str]], registry: str, node: str | None
) -> NodeReport | None:
    """The newest report for ``registry`` from the agent of the pod's own node.

    Args:
        events: the pod's events, newest first, each with ``note``, ``controller`` and
            ``instance`` (reporting controller and instance).
        registry: the failing container's registry.
        node: the pod's ``spec.nodeName``; reports from another node are ignored.
    """
    if not node:
        return None
    for event in events:
        if event.get("controller") != REPORTING_CONTROLLER or event.get("instance") != node:
            continue
        report = parse_note(event.get("note", ""))
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


def node_specific(diagnosis: Diagnosis) -> bool:
    """The diagnosis' cause was found on the pod's node (the agent's evidence decided)."""
    return any(
        c.name == NODE_CHECK and c.status is StepStatus.FAILED and c.code is diagnosis.code
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
