"""Typed results shared by the probes, the classifier, the CLI and the operator.

Field names are snake_case in Python and camelCase on the wire (JSON output, CR status),
through pydantic aliases.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from pullhealth.codes import Code


class Wire(BaseModel):
    """Base: camelCase aliases, accept either spelling, forbid unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def wire(self) -> dict[str, Any]:
        """The JSON-ready camelCase form."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StepStatus(StrEnum):
    """Outcome of one probe step."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


class CheckResult(Wire):
    """The result of one probe step.

    ``details`` holds facts for humans and for the diagnosis (addresses, issuer, client
    IP, platforms); it never holds a credential.
    """

    name: str
    status: StepStatus
    code: Code = Code.OK
    message: str = ""
    duration_ms: float = 0.0
    details: dict[str, str] = Field(default_factory=dict)


class Diagnosis(Wire):
    """What is wrong (or that nothing is), with the evidence.

    Attributes:
        code: the most specific code the evidence supports.
        summary: one line for people.
        remediation: concrete steps.
        candidates: other codes the evidence cannot rule out (for coarse codes).
        checks: the probe steps run, if any.
        facts: the values used to render summary and remediation.
    """

    code: Code
    summary: str
    remediation: list[str] = Field(default_factory=list)
    candidates: list[Code] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    facts: dict[str, str] = Field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """True when the code is OK."""
        return self.code is Code.OK
