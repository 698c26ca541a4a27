"""Typed results shared by the probes, the classifier, the CLI and the operator.

Field names are snake_case in Python and camelCase on the wire (JSON output, CR status),
through pydantic aliases.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from pullhealth.domain.codes import Code


class Wire(BaseModel):
    """Base: camelCase aliases, accept either spelling, forbid unknown fields."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

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


# --- RegistryCheck (pullhealth.io/v1alpha1); the CRD YAML in crds/ is the schema's source,
# --- these models parse it once at the boundary (tests keep both in step).


class AuthMode(StrEnum):
    """spec.auth.mode."""

    AUTO = "auto"
    PULL_SECRETS = "pullSecrets"
    SERVICE_ACCOUNT = "serviceAccount"
    ANONYMOUS = "anonymous"
    MANAGED_IDENTITY = "managedIdentity"
    WORKLOAD_IDENTITY = "workloadIdentity"


# A DNS-1123 subdomain (Secret and ServiceAccount names): the CRD's pattern, checked again
# here for objects written before it (".", ".." or "a/b" would name other API paths).
OBJECT_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[str, StringConstraints(pattern=OBJECT_NAME, max_length=253)]


class AuthSpec(Wire):
    """spec.auth."""

    mode: AuthMode = AuthMode.AUTO
    pull_secrets: list[ObjectName] = Field(default_factory=list, max_length=16)
    service_account_name: ObjectName | None = None
    client_id: str | None = None


class NetworkSpec(Wire):
    """spec.network."""

    expect_private_endpoint: bool = False
    data_endpoint: str | None = None


class RegistryCheckSpec(Wire):
    """spec of a RegistryCheck."""

    registry: str = Field(min_length=1, max_length=253)
    image: str | None = None
    auth: AuthSpec = Field(default_factory=AuthSpec)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    platform: str = "linux/amd64"
    interval_seconds: int = Field(default=300, ge=30, le=86400)
    timeout_seconds: int = Field(default=10, ge=1, le=60)
    suspend: bool = False


class Phase(StrEnum):
    """status.phase."""

    PENDING = "Pending"
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    INVALID = "Invalid"
