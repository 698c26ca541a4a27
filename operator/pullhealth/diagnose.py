"""Pure diagnosis: probe results and kubelet messages -> :class:`Diagnosis`.

No I/O here. The probe chain's first failure is the most specific evidence; a message
classification is used when no probe ran, and is refined by probes when both exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pullhealth import codes
from pullhealth.codes import Code
from pullhealth.model import CheckResult, Diagnosis, StepStatus
from pullhealth.redact import Redactor


def make(
    code: Code,
    facts: Mapping[str, str],
    *,
    checks: Sequence[CheckResult] = (),
    candidates: Sequence[Code] = (),
) -> Diagnosis:
    """Build a diagnosis with the catalog's rendered summary and remediation."""
    return Diagnosis(
        code=code,
        summary=codes.summary(code, facts),
        remediation=codes.remediation(code, facts),
        candidates=[c for c in candidates if c is not code],
        checks=list(checks),
        facts=dict(facts),
    )


def from_checks(checks: Sequence[CheckResult], facts: Mapping[str, str]) -> Diagnosis:
    """The first failed step decides; no failure means OK."""
    failed = next((c for c in checks if c.status is StepStatus.FAILED), None)
    all_facts = dict(facts)
    if failed is None:
        return make(Code.OK, all_facts, checks=checks)
    all_facts.setdefault("detail", failed.message)
    return make(failed.code, all_facts, checks=checks)


def combine(message: Diagnosis, probed: Diagnosis | None) -> Diagnosis:
    """Merge what the kubelet message says with what the probes found.

    The probe result wins when it is a failure: it was observed on the pod's own path now.
    A healthy probe result keeps the message's code (the failure may be node-local or
    transient) but carries the checks as evidence.
    """
    if probed is None:
        return message
    if probed.code is Code.OK:
        return message.model_copy(update={"checks": probed.checks})
    facts = {**message.facts, **probed.facts}
    candidates = [c for c in message.candidates if c is not probed.code]
    return make(probed.code, facts, checks=probed.checks, candidates=candidates)


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
