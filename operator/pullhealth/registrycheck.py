"""RegistryCheck domain: spec -> credentials -> probe chain -> status. No kopf here.

The cluster is reached only through the :class:`ClusterReader` protocol (implemented by
``pullhealth.kube``), so this module is testable and never reads a secret outside the
RegistryCheck's own namespace: every read takes that namespace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from pullhealth import credentials as creds
from pullhealth import pullpath
from pullhealth.cluster import (
    ClusterReader,
    Environment,
    read_keyring,
    service_account_secret_names,
)
from pullhealth.coalesce import SingleFlight
from pullhealth.codes import Code
from pullhealth.diagnose import make, redacted
from pullhealth.model import AuthMode, Diagnosis, Phase, RegistryCheckSpec
from pullhealth.redact import Redactor, one_line
from pullhealth.reference import ImageReference, InvalidReference, check_host, parse

log = logging.getLogger(__name__)


class InvalidSpec(ValueError):
    """The spec cannot be checked; the message says what to fix."""


def parse_spec(raw: Mapping[str, Any]) -> tuple[RegistryCheckSpec, ImageReference | None]:
    """Parse the spec once at the boundary.

    Raises:
        InvalidSpec: with a readable message naming the fields.
    """
    try:
        spec = RegistryCheckSpec.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise InvalidSpec(problems) from None
    if "/" in spec.registry or "://" in spec.registry:
        raise InvalidSpec("spec.registry: a login server host[:port], without scheme or path")
    try:
        check_host(spec.registry)
    except InvalidReference as exc:
        raise InvalidSpec(f"spec.registry: {exc}") from None
    image = None
    if spec.image:
        try:
            image = parse(f"{spec.registry}/{spec.image}")
        except InvalidReference as exc:
            raise InvalidSpec(f"spec.image: {exc}") from None
    if spec.auth.mode is AuthMode.PULL_SECRETS and not spec.auth.pull_secrets:
        raise InvalidSpec("spec.auth.pullSecrets: mode pullSecrets needs at least one secret name")
    return spec, image


async def run_registry_check(
    spec: RegistryCheckSpec,
    image: ImageReference | None,
    namespace: str,
    reader: ClusterReader,
    env: Environment,
    cache: SingleFlight[Diagnosis] | None = None,
    on_request: Any = None,
) -> Diagnosis:
    """Resolve the credentials the spec asks for (in ``namespace`` only) and check.

    The spec chooses among the ways a pod of its namespace could pull; what the operator
    may do on its behalf (identities, destinations) is the admin's ``env.trust``.
    Never raises (cancellation aside): an unexpected error (an API read that fails, a bug)
    becomes UNKNOWN with a one-line masked message, the traceback goes to the log. The
    result is masked for secret-shaped text (the chain already masked the run's secrets).
    """
    try:
        diagnosis = await _run_registry_check(spec, image, namespace, reader, env, cache, on_request)
    except Exception as exc:
        log.error("unexpected error checking %s", spec.registry, exc_info=True)
        text = one_line(f"{type(exc).__name__}: {exc}")
        diagnosis = make(Code.UNKNOWN, {"registry": spec.registry, "namespace": namespace, "detail": text})
    return redacted(diagnosis, Redactor())


async def _run_registry_check(
    spec: RegistryCheckSpec,
    image: ImageReference | None,
    namespace: str,
    reader: ClusterReader,
    env: Environment,
    cache: SingleFlight[Diagnosis] | None,
    on_request: Any,
) -> Diagnosis:
    options = pullpath.chain_options(
        env,
        timeout=float(spec.timeout_seconds),
        platform=spec.platform,
        on_request=on_request,
        expect_private_endpoint=spec.network.expect_private_endpoint,
        data_endpoint=spec.network.data_endpoint,
    )
    registry = spec.registry.lower()
    mode = spec.auth.mode
    facts = {"registry": registry, "namespace": namespace}
    key = (image, options)

    if mode is AuthMode.ANONYMOUS:
        return await pullpath.anonymous(registry, image, options, key).run(cache, registry)

    if mode is AuthMode.MANAGED_IDENTITY:
        path = pullpath.managed_identity(registry, image, namespace, spec.auth.client_id, env, options, key)
        return path if isinstance(path, Diagnosis) else await path.run(cache, registry)

    if mode is AuthMode.WORKLOAD_IDENTITY:
        sa_name = spec.auth.service_account_name or "default"
        account = await reader.service_account(namespace, sa_name) if env.trust.workload_identity else None
        path = pullpath.workload_identity(
            registry, image, namespace, sa_name, account, spec.auth.client_id, reader, env, options, key
        )
        return path if isinstance(path, Diagnosis) else await path.run(cache, registry)

    secret_names: list[str] = []
    if spec.auth.pull_secrets and mode in (AuthMode.AUTO, AuthMode.PULL_SECRETS):
        secret_names = list(spec.auth.pull_secrets)
    else:
        sa_name = spec.auth.service_account_name or "default"
        account = await reader.service_account(namespace, sa_name)
        if account is None and mode is AuthMode.SERVICE_ACCOUNT:
            missing = f"(service account {sa_name} not found)"
            return make(Code.PULL_SECRET_MISSING, {**facts, "secret": missing})
        secret_names = service_account_secret_names(account)
    if not secret_names:
        return await pullpath.anonymous(registry, image, options, key).run(cache, registry)

    keyring = await read_keyring(reader, namespace, secret_names)
    if keyring.issues:
        # The spec names these secrets explicitly: one that cannot be used is the finding.
        issue = keyring.issues[0]
        return make(issue.code, {**facts, "secret": issue.name, "detail": issue.detail})
    matched = creds.for_target(list(keyring.entries), registry, image)
    no_match = {
        "namespace": namespace,
        "detail": f"secrets {', '.join(secret_names)} have no entry for {registry}",
    }
    path = pullpath.with_credentials(registry, image, namespace, matched, options, key, no_match)
    return await path.run(cache, registry)


# --- status: pure functions of (diagnosis, previous status)


def now_rfc3339(moment: datetime | None = None) -> str:
    """RFC 3339 UTC timestamp, seconds precision (as Kubernetes writes them)."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready_condition(
    status: str, reason: str, message: str, previous: Mapping[str, Any], generation: int, now: str
) -> dict[str, Any]:
    old = next((c for c in previous.get("conditions") or [] if c.get("type") == "Ready"), None)
    flipped = old is None or old.get("status") != status
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": now if flipped or old is None else old.get("lastTransitionTime", now),
        "observedGeneration": generation,
    }


def build_status(
    diagnosis: Diagnosis, previous: Mapping[str, Any], generation: int, now: str
) -> dict[str, Any]:
    """The status to write for a finished check."""
    healthy = diagnosis.healthy
    return {
        "phase": (Phase.HEALTHY if healthy else Phase.UNHEALTHY).value,
        "code": diagnosis.code.value,
        "summary": diagnosis.summary[:1024],
        "remediation": diagnosis.remediation,
        "checks": [
            {
                "name": c.name,
                "status": c.status.value,
                "code": c.code.value,
                "message": c.message[:1024],
                "durationMs": c.duration_ms,
            }
            for c in diagnosis.checks
        ],
        "lastCheckTime": now,
        "observedGeneration": generation,
        "conditions": [
            _ready_condition(
                "True" if healthy else "False",
                diagnosis.code.value,
                diagnosis.summary,
                previous,
                generation,
                now,
            )
        ],
    }


def invalid_status(message: str, previous: Mapping[str, Any], generation: int, now: str) -> dict[str, Any]:
    """The status for a spec that cannot be checked."""
    return {
        "phase": Phase.INVALID.value,
        "code": "",
        "summary": f"invalid spec: {message}"[:1024],
        "remediation": ["Fix the spec: kubectl explain registrycheck.spec"],
        "checks": [],
        "lastCheckTime": now,
        "observedGeneration": generation,
        "conditions": [_ready_condition("False", "InvalidSpec", message, previous, generation, now)],
    }


def is_due(status: Mapping[str, Any], generation: int, interval: int, now: datetime) -> bool:
    """A check is due on a new generation, when never run, or when the interval passed.

    A ``lastCheckTime`` in the future (clock skew between replicas, a hand-edited status)
    counts as due: waiting for it could pause checks for as long as the skew.
    """
    if status.get("observedGeneration") != generation or not status.get("lastCheckTime"):
        return True
    try:
        last = datetime.strptime(str(status["lastCheckTime"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return True
    elapsed = (now - last).total_seconds()
    return elapsed < 0 or elapsed >= interval


def result_changed(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether an Event is owed: the phase or the code differ from the last status."""
    return (previous.get("phase"), previous.get("code")) != (new.get("phase"), new.get("code"))
