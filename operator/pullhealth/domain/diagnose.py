"""Pure diagnosis: probe results and kubelet messages -> :class:`Diagnosis`.

No I/O here. The probe chain's first failure is the most specific evidence; a message
classification is used when no probe ran, and is refined by probes when both exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum

from pullhealth.domain import codes
from pullhealth.domain.codes import Code
from pullhealth.domain.model import CheckResult, Diagnosis, StepStatus
from pullhealth.domain.redact import Redactor


class Layer(IntEnum):
    """How far a pull got on the path to the registry, in path order."""

    DNS = 0
    TCP = 1
    TLS = 2
    HTTP = 3
    TOKEN = 4
    MANIFEST = 5
    BLOB = 6  # the data path: the blob download the registry redirects to another host


# The layer at which each code's failure happens (codes with no network meaning: absent).
# A few message texts decide otherwise (a reset during the handshake is FIREWALL_FORBIDDEN
# at the TLS layer): the classifier's rules carry their own layer for those.
LAYER_OF_CODE: Mapping[Code, Layer] = {
    Code.DNS_NXDOMAIN: Layer.DNS,
    Code.DNS_TIMEOUT: Layer.DNS,
    Code.PRIVATE_ENDPOINT_DNS: Layer.TCP,
    Code.CONNECT_REFUSED: Layer.TCP,
    Code.CONNECT_TIMEOUT: Layer.TCP,
    Code.PROXY_ERROR: Layer.TCP,
    Code.TLS_UNTRUSTED: Layer.TLS,
    Code.TLS_HOSTNAME_MISMATCH: Layer.TLS,
    Code.TLS_PROTOCOL_ERROR: Layer.TLS,
    Code.FIREWALL_FORBIDDEN: Layer.HTTP,
    Code.CHALLENGE_ERROR: Layer.HTTP,
    Code.RATE_LIMITED: Layer.HTTP,
    Code.REGISTRY_ERROR: Layer.HTTP,
    Code.AUTH_REQUIRED: Layer.TOKEN,
    Code.CREDENTIALS_REJECTED: Layer.TOKEN,
    Code.AAD_APP_NOT_REGISTERED: Layer.TOKEN,
    Code.PULL_SECRET_STALE: Layer.TOKEN,
    Code.TOKEN_EXCHANGE_DENIED: Layer.TOKEN,
    Code.PERMISSION_DENIED: Layer.TOKEN,
    Code.ACCESS_DENIED: Layer.TOKEN,
    Code.IMAGE_NOT_FOUND: Layer.MANIFEST,
    Code.REPOSITORY_NOT_FOUND: Layer.MANIFEST,
    Code.TAG_NOT_FOUND: Layer.MANIFEST,
    Code.PLATFORM_NOT_FOUND: Layer.MANIFEST,
    Code.DATA_ENDPOINT_UNREACHABLE: Layer.BLOB,
}

# The layer of each probe step (the chain's step names).
LAYER_OF_STEP: Mapping[str, Layer] = {
    "dns": Layer.DNS,
    "tcp": Layer.TCP,
    "tls": Layer.TLS,
    "challenge": Layer.HTTP,
    "identity": Layer.TOKEN,
    "token": Layer.TOKEN,
    "manifest": Layer.MANIFEST,
    "blob": Layer.BLOB,
}
VANTAGE_CHECK = "vantage"


def make(
    code: Code,
    facts: Mapping[str, str],
    *,
    checks: Sequence[CheckResult] = (),
    candidates: Sequence[Code] = (),
) -> Diagnosis:
    """Build a diagnosis with the catalog's rendered summary and remediation (the ACR
    case's when the facts single one out; its name is kept in ``facts["case"]``)."""
    case = codes.acr_case(code, facts)
    all_facts = {**facts, "case": case.name} if case else dict(facts)
    if not case:
        all_facts.pop("case", None)
    return Diagnosis(
        code=code,
        summary=codes.summary(code, facts),
        remediation=codes.remediation(code, facts),
        candidates=[c for c in candidates if c is not code],
        checks=list(checks),
        facts=all_facts,
    )


def from_checks(checks: Sequence[CheckResult], facts: Mapping[str, str]) -> Diagnosis:
    """The first failed step decides; no failure means OK."""
    failed = next((c for c in checks if c.status is StepStatus.FAILED), None)
    all_facts = dict(facts)
    if failed is None:
        return make(Code.OK, all_facts, checks=checks)
    all_facts.setdefault("detail", failed.message)
    return make(failed.code, all_facts, checks=checks)


def failed_layer(checks: Sequence[CheckResult]) -> tuple[CheckResult, Layer] | None:
    """The first failed probe step and its layer, if a step with a layer failed."""
    failed = next((c for c in checks if c.status is StepStatus.FAILED), None)
    if failed is None or failed.name not in LAYER_OF_STEP:
        return None
    return failed, LAYER_OF_STEP[failed.name]


def combine(message: Diagnosis, probed: Diagnosis | None, reached: Layer | None = None) -> Diagnosis:
    """Merge what the kubelet message says with what the probes found.

    The probe result wins when it is a failure at the layer the node reached or a later
    one: it was observed on the pod's own path now. A probe that could not reach the
    registry (DNS, TCP or TLS failed) where the node got further (``reached``: the layer of
    the message's failure) shows a difference of vantage point, not the cause: the
    operator probes from its own pod network, kubelet pulls from the node's. A probe that
    got an HTTP answer reached the registry; its answer refines the message as usual.
    On a vantage difference the message's code is kept, the probe's checks are kept as
    evidence and a ``vantage`` check says what the operator could not
    reach. A healthy probe result keeps the message's code (the failure may be node-local
    or transient) but carries the checks as evidence.
    """
    if probed is None:
        return message
    if probed.code is Code.OK or (probed.code is Code.UNKNOWN and message.code is not Code.UNKNOWN):
        # An unexpected probe failure (UNKNOWN) says nothing against a recognised message.
        return message.model_copy(update={"checks": probed.checks})
    failed = failed_layer(probed.checks)
    # The egress proxy is on the runtime's path too (--proxy mirrors it): its failure is
    # the cause, not the operator's vantage point.
    own_network = probed.code is not Code.PROXY_ERROR
    if own_network and reached is not None and failed is not None and failed[1] < min(reached, Layer.HTTP):
        return _vantage(message, probed, failed[0], failed[1], reached)
    facts = {**message.facts, **probed.facts}
    candidates = [c for c in message.candidates if c is not probed.code]
    return make(probed.code, facts, checks=probed.checks, candidates=candidates)


def _vantage(
    message: Diagnosis, probed: Diagnosis, step: CheckResult, at: Layer, reached: Layer
) -> Diagnosis:
    """The message's cause, with the operator's own failure as evidence beside it."""
    facts = {**probed.facts, **message.facts}
    host = facts.get("host") or facts.get("registry") or "the registry"
    note = (
        f"the operator's own network could not reach {host} ({step.name} failed: "
        f"{probed.code.value}) though the node got as far as {reached.name}; the cause above "
        "comes from kubelet's message. Check NetworkPolicies, DNS (CoreDNS) settings and "
        "routes that apply to the operator's pod but not to the node"
    )
    check = CheckResult(
        name=VANTAGE_CHECK,
        status=StepStatus.FAILED,
        code=probed.code,
        message=note,
        details={"operatorFailedAt": at.name.lower(), "nodeReached": reached.name.lower()},
    )
    kept = make(message.code, facts, checks=[*probed.checks, check], candidates=message.candidates)
    summary = f"{kept.summary.rstrip('.')} (the operator's own network could not reach {host})"
    return kept.model_copy(update={"summary": summary})


def vantage_layer(diagnosis: Diagnosis) -> str | None:
    """The layer the operator's probe failed at when it was a vantage difference, else None."""
    for check in diagnosis.checks:
        if check.name == VANTAGE_CHECK:
            return check.details.get("operatorFailedAt")
    return None


# Results that may well differ a few seconds later (time-outs, refused or broken
# connections, 429, 5xx, an identity endpoint down, anything unexpected): shared for a
# short time only. A registry's definite answer (no such tag, credentials rejected) is
# shared for the whole interval.
TRANSIENT = frozenset(
    {
        Code.DNS_TIMEOUT,
        Code.CONNECT_TIMEOUT,
        Code.CONNECT_REFUSED,
        Code.TLS_PROTOCOL_ERROR,
        Code.RATE_LIMITED,
        Code.REGISTRY_ERROR,
        Code.IDENTITY_UNAVAILABLE,
        Code.PROXY_ERROR,
        Code.UNKNOWN,
    }
)


def transient(diagnosis: Diagnosis) -> bool:
    """Whether a result is a transient failure (see :data:`TRANSIENT`)."""
    return diagnosis.code in TRANSIENT


def redacted(diagnosis: Diagnosis, redactor: Redactor) -> Diagnosis:
    """The diagnosis with every human-readable value masked (summary, remediation, step
    messages and details, facts): what every surface shows is built from this, before
    any serialization or truncation."""
    return diagnosis.model_copy(
        update={
            "summary": redactor(diagnosis.summary),
            "remediation": redactor.value(list(diagnosis.remediation)),
            "facts": redactor.value(dict(diagnosis.facts)),
            "checks": [
                c.model_copy(
                    update={"message": redactor(c.message), "details": redactor.value(dict(c.details))}
                )
                for c in diagnosis.checks
            ],
        }
    )
