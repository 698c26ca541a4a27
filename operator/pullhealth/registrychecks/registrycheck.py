"""RegistryCheck domain: spec -> credentials -> probe chain -> status. No kopf here.

The cluster is reached only through the :class:`ClusterReader` protocol (implemented by
``pullhealth.kube.kubeapi``), so this module is testable and never reads a secret outside the
RegistryCheck's own namespace: every read takes that namespace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from pullhealth.chain import pullpath
from pullhealth.chain.pullsources import (
    ClusterReader,
    Environment,
    read_keyring,
    service_account_secret_names,
)
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.domain import credentials as creds
from pullhealth.domain.codes import Code, reason
from pullhealth.domain.diagnose import make, redacted
from pullhealth.domain.model import AuthMode, CheckResult, Diagnosis, Phase, RegistryCheckSpec, StepStatus
from pullhealth.domain.redact import Redactor, one_line
from pullhealth.domain.reference import ImageReference, InvalidReference, check_host, parse
from pullhealth.kube import events

log = logging.getLogger(__name__)


# The readable rule for spec.registry; the CRD's x-kubernetes-validations message is the
# same text (a test keeps them equal), so kubectl apply and the status say the same.
REGISTRY_FORM = (
    "registry is the login server host[:port] alone, without https:// or a path "
    "(e.g. myacr.azurecr.io, not https://myacr.azurecr.io/team)"
)


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
    if "/" in spec.registry:
        raise InvalidSpec(f"spec.registry: {REGISTRY_FORM} (got {spec.registry[:100]!r})")
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
    fresh: bool = False,
) -> Diagnosis:
    """Resolve the credentials the spec asks for (in ``namespace`` only) and check.

    The spec chooses among the ways a pod of its namespace could pull; what the operator
    may do on its behalf (identities, destinations) is the admin's ``env.trust``.
    Never raises (cancellation aside): an unexpected error (an API read that fails, a bug)
    becomes UNKNOWN with a one-line masked message, the traceback goes to the log. The
    result is masked for secret-shaped text (the chain already masked the run's secrets).
    ``fresh`` (a recheck): a new chain, not one shared from ``cache``; it still goes
    through ``cache`` (its per-registry bound, and what it observes of each result).
    """
    redactor = Redactor()  # learns every pull secret read for the check
    try:
        diagnosis = await _run_registry_check(
            spec, image, namespace, reader, env, cache, on_request, redactor, fresh
        )
    except Exception as exc:
        log.error("unexpected error checking %s", spec.registry, exc_info=True)
        text = one_line(f"{type(exc).__name__}: {exc}", redactor=redactor)
        diagnosis = make(Code.UNKNOWN, {"registry": spec.registry, "namespace": namespace, "detail": text})
    return redacted(diagnosis, redactor)


async def _run_registry_check(
    spec: RegistryCheckSpec,
    image: ImageReference | None,
    namespace: str,
    reader: ClusterReader,
    env: Environment,
    cache: SingleFlight[Diagnosis] | None,
    on_request: Any,
    redactor: Redactor,
    fresh: bool,
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
        return await pullpath.anonymous(registry, image, options, key).run(cache, registry, fresh)

    if mode is AuthMode.MANAGED_IDENTITY:
        path = pullpath.managed_identity(registry, image, namespace, spec.auth.client_id, env, options, key)
        return path if isinstance(path, Diagnosis) else await path.run(cache, registry, fresh)

    if mode is AuthMode.WORKLOAD_IDENTITY:
        sa_name = spec.auth.service_account_name or "default"
        account = await reader.service_account(namespace, sa_name) if env.trust.workload_identity else None
        path = pullpath.workload_identity(
            registry, image, namespace, sa_name, account, spec.auth.client_id, reader, env, options, key
        )
        return path if isinstance(path, Diagnosis) else await path.run(cache, registry, fresh)

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
        return await pullpath.anonymous(registry, image, options, key).run(cache, registry, fresh)

    keyring = await read_keyring(reader, namespace, secret_names)
    creds.teach(redactor, (e.credential for e in keyring.entries))
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
    return await path.run(cache, registry, fresh)


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
    diagnosis: Diagnosis,
    previous: Mapping[str, Any],
    generation: int,
    now: str,
    recheck: str | None = None,
) -> dict[str, Any]:
    """The status to write for a finished check (``recheck``: the request it answers)."""
    healthy = diagnosis.healthy
    extra = {"observedRecheck": recheck} if recheck else {}
    return {
        **extra,
        "phase": (Phase.HEALTHY if healthy else Phase.UNHEALTHY).value,
        "code": diagnosis.code.value,
        "summary": diagnosis.summary[:1024],
        "remediation": diagnosis.remediation,
        "checks": [_step(c) for c in diagnosis.checks],
        "lastCheckTime": now,
        "observedGeneration": generation,
        "conditions": [
            _ready_condition(
                "True" if healthy else "False",
                reason(diagnosis.code),
                diagnosis.summary,
                previous,
                generation,
                now,
            )
        ],
    }


def _step(check: CheckResult) -> dict[str, Any]:
    """One step of ``status.checks``; a skipped step carries no code (it found nothing)."""
    step: dict[str, Any] = {
        "name": check.name,
        "status": check.status.value,
        "message": check.message[:1024],
        "durationMs": check.duration_ms,
    }
    if check.status is not StepStatus.SKIPPED:
        step["code"] = check.code.value
    return step


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


RECHECK_ANNOTATION = "pullhealth.io/recheck"
FIRST_RETRY_SECONDS = 30


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def retry_after(status: Mapping[str, Any], interval: int) -> int:
    """Seconds from one finished check to the next.

    A healthy check waits ``interval``. A failing one waits as long as it has been failing
    (its Ready condition's lastTransitionTime to lastCheckTime), at least 30 s and at most
    ``interval``: retries come after 30, 30, 60, 120, 240 s ... so a fix shows up quickly,
    while a lasting failure costs the registry no more than a healthy check. Everything is
    read from the status, so the back-off survives an operator restart.
    """
    if status.get("phase") != Phase.UNHEALTHY.value:
        return interval
    ready: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
    )
    last, since = _parse_time(status.get("lastCheckTime")), _parse_time(ready.get("lastTransitionTime"))
    failing_for = (last - since).total_seconds() if last and since else 0.0
    return int(min(interval, max(FIRST_RETRY_SECONDS, failing_for)))


def recheck_requested(annotations: Mapping[str, Any] | None, status: Mapping[str, Any]) -> str | None:
    """The ``pullhealth.io/recheck`` value when it asks for a check not yet run, else None."""
    token = (annotations or {}).get(RECHECK_ANNOTATION)
    if not token or str(token) == str(status.get("observedRecheck") or ""):
        return None
    return str(token)[:64]


def seconds_until_due(status: Mapping[str, Any], generation: int, interval: int, now: datetime) -> float:
    """0 when a check is due (new generation, never run), else the seconds left (see retry_after).

    A ``lastCheckTime`` in the future (clock skew between replicas, a hand-edited status)
    counts as due: waiting for it could pause checks for as long as the skew.
    """
    if status.get("observedGeneration") != generation or not status.get("lastCheckTime"):
        return 0.0
    last = _parse_time(status["lastCheckTime"])
    if last is None:
        return 0.0
    elapsed = (now - last).total_seconds()
    if elapsed < 0:
        return 0.0
    return max(0.0, retry_after(status, interval) - elapsed)


def is_due(status: Mapping[str, Any], generation: int, interval: int, now: datetime) -> bool:
    """A check is due on a new generation, when never run, or when its retry time came."""
    return seconds_until_due(status, generation, interval, now) <= 0


def result_changed(previous: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether an Event is owed: the phase or the code differ from the last status."""
    return (previous.get("phase"), previous.get("code")) != (new.get("phase"), new.get("code"))


# --- one writer per run: the claim, and the Events (pure)

CLAIM = "claim"


def claim_ttl(spec: RegistryCheckSpec | None) -> int:
    """Seconds a claim holds: longer than any run (each step is bounded by the timeout)."""
    timeout = spec.timeout_seconds if spec is not None else 10
    return 30 + 8 * timeout


def foreign_claim(status: Mapping[str, Any], holder: str, now: datetime, ttl: int) -> str | None:
    """The holder of a live claim by another operator instance, else None.

    A claim by our own instance name is ours (a restart of this pod after a crash takes
    its run over at once); an expired claim is nobody's.
    """
    claim = status.get(CLAIM) or {}
    other = str(claim.get("holder") or "")
    if not other or other == holder:
        return None
    try:
        since = datetime.strptime(str(claim.get("since")), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return other if (now - since).total_seconds() < ttl else None


def claim_status(holder: str, previous: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The status patch claiming a run (Pending too while the first check runs)."""
    patch: dict[str, Any] = {CLAIM: {"holder": holder, "since": now}}
    if not previous.get("phase"):
        patch.update(phase=Phase.PENDING.value, summary="first check running")
    return patch


def held_by(holder: str) -> Any:
    """``still_ours`` for conditional status writes: our claim is still in place."""

    def check(obj: Mapping[str, Any]) -> bool:
        claim = (obj.get("status") or {}).get(CLAIM) or {}
        return bool(claim.get("holder") == holder)

    return check


def _regarding(body: Mapping[str, Any]) -> events.Regarding:
    meta = body.get("metadata") or {}
    return events.Regarding(
        api_version=str(body.get("apiVersion") or "pullhealth.io/v1alpha1"),
        kind=str(body.get("kind") or "RegistryCheck"),
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
    )


def result_event(
    body: Mapping[str, Any], previous: Mapping[str, Any], diagnosis: Diagnosis
) -> events.EventSpec:
    """``CheckSucceeded`` / ``CheckFailed`` for a changed result, named by UID + result.

    The occurrence is the result it replaces (its ``lastCheckTime``): a retry after a
    crash replaces the same one, a later repeat of the same result another one.
    """
    healthy = diagnosis.healthy
    return events.EventSpec(
        regarding=_regarding(body),
        type="Normal" if healthy else "Warning",
        reason="CheckSucceeded" if healthy else "CheckFailed",
        action="Check",
        note=diagnosis.summary if healthy else f"{diagnosis.code.value}: {diagnosis.summary}",
        key=(Phase.HEALTHY.value if healthy else Phase.UNHEALTHY.value, diagnosis.code.value),
        occurrence=events.fingerprint(previous.get("lastCheckTime")),
    )


def invalid_event(
    body: Mapping[str, Any], previous: Mapping[str, Any], generation: int, message: str
) -> events.EventSpec:
    """``InvalidSpec``, once per generation."""
    return events.EventSpec(
        regarding=_regarding(body),
        type="Warning",
        reason="InvalidSpec",
        action="Check",
        note=message,
        key=(str(generation),),
        occurrence=events.fingerprint(previous.get("lastCheckTime")),
    )
