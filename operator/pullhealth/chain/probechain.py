"""The probe chain: DNS -> TCP -> TLS -> challenge -> [identity] -> token -> manifest -> blob.

Each step yields a :class:`CheckResult`. The chain stops at the first failure that makes
later steps meaningless and marks the rest skipped; the diagnosis is the first failure's
code (or OK).

Bounded and total: ``ChainOptions.timeout`` is the budget of the whole chain (every step
and request included, and of all the credentials :func:`check_credentials` tries); each
request also has it as its total deadline (connect + TLS + headers + body). A chain that
runs out reports the step that was running. The chain never raises: an unexpected
exception becomes an UNKNOWN diagnosis with a one-line, masked message (the traceback goes
to the log). Every string of the result is masked with the secrets of the run (the
credential, the identity token, everything the HTTP client sent as a credential) before
it is returned.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pullhealth.domain.codes import SOURCE_DOCKER_CONFIG, Code, RegistryKind, acr_account, registry_kind
from pullhealth.domain.credentials import ANONYMOUS, Credential, CredentialKind
from pullhealth.domain.diagnose import from_checks, make, redacted
from pullhealth.domain.model import CheckResult, Diagnosis, StepStatus
from pullhealth.domain.redact import Redactor, one_line
from pullhealth.domain.reference import (
    ImageReference,
    InvalidReference,
    check_host,
    join_host_port,
    split_host_port,
)
from pullhealth.probes.blob import probe_blob
from pullhealth.probes.challenge import Challenge, probe_challenge
from pullhealth.probes.destinations import DestinationPolicy
from pullhealth.probes.dns import DnsFailure, Resolver, assess_routing, preferred
from pullhealth.probes.http import Http
from pullhealth.probes.identity import ACR_RESOURCE, AadToken
from pullhealth.probes.manifest import probe_manifest
from pullhealth.probes.net import (
    Opener,
    StepError,
    Stream,
    direct,
    make_ssl_context,
    tcp_connect,
    tls_handshake,
)
from pullhealth.probes.proxy import Proxy, bypasses, open_tunnel
from pullhealth.probes.token import Authorization, check_realm, probe_token, realm_elsewhere

log = logging.getLogger(__name__)

STEPS = ("dns", "tcp", "tls", "challenge", "identity", "token", "manifest", "blob")
# What an identity's token counts as for the realm rules, before one is asked for.
_IDENTITY = Credential(CredentialKind.AAD, "the identity")

# Gets an Azure AD token of the identity for a resource (audience).
IdentitySource = Callable[[str], Awaitable[AadToken]]


@dataclass(frozen=True)
class ChainOptions:
    """How to probe.

    Attributes:
        nameserver: ``ip[:port]`` to resolve with, or None for the system resolver.
        timeout: seconds for the whole check (the total of every step and request).
        ca_file: extra CA bundle trusted beside the system CAs.
        platform: ``os/arch[/variant]`` the image must provide.
        expect_private_endpoint: a public address is then a failure.
        data_endpoint: ACR data endpoint host to resolve too (``<reg>.<region>.data.azurecr.io``).
        on_request: called with (registry, probe step) before each HTTP request.
        proxy: the egress HTTP proxy the runtime uses (HTTPS_PROXY), if any.
        no_proxy: NO_PROXY entries: hosts reached directly.
        destinations: where the chain may connect (default: the operator's safe policy;
            the CLI passes :meth:`DestinationPolicy.unrestricted`).
        verify_tls: False checks the TLS handshake without verifying the certificate
            (containerd's ``skip_verify`` for a host, seen by the node agent).
        data_path: after the manifest, fetch the first KiB of one small blob through the
            registry's redirect (the data path: :mod:`pullhealth.probes.blob`).
    """

    nameserver: str | None = None
    timeout: float = 10.0
    ca_file: str | None = None
    platform: str = "linux/amd64"
    expect_private_endpoint: bool = False
    data_endpoint: str | None = None
    on_request: Callable[[str, str], None] | None = None
    proxy: Proxy | None = None
    no_proxy: tuple[str, ...] = ()
    destinations: DestinationPolicy = field(default_factory=DestinationPolicy)
    verify_tls: bool = True
    data_path: bool = True


@dataclass(frozen=True)
class Target:
    """What to check, and with which credential or identity.

    With an identity, a token is asked for each of ``audiences`` in order; the first one
    is used to pull, the others are exchanged too, to tell an audience the registry
    refuses (ACR can disable ARM-audience tokens).
    """

    registry: str
    image: ImageReference | None = None
    credential: Credential = ANONYMOUS
    identity: IdentitySource | None = field(default=None, compare=False)
    audiences: tuple[str, ...] = (ACR_RESOURCE,)


class Deadline:
    """A point in monotonic time shared by everything one check does.

    It also carries the check's one anonymous retry (after rejected credentials): every
    chain of the check shares it, so trying four stale secrets still asks anonymously once.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.anonymous_retry = True

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(self.at - time.monotonic(), 0.0)


# What a step that ran out of the chain's time is reported as.
_TIMEOUT_CODES = {"dns": Code.DNS_TIMEOUT, "identity": Code.IDENTITY_UNAVAILABLE}


class _Run:
    """Collects step results; knows which step is current for request counting."""

    def __init__(self) -> None:
        self.checks: list[CheckResult] = []
        self.facts: dict[str, str] = {}
        self.current = "dns"
        self.started = time.perf_counter()
        self.failed = False

    def begin(self, name: str) -> float:
        """Mark ``name`` as the running step; returns its start time."""
        self.current = name
        self.started = time.perf_counter()
        return self.started

    def passed(self, name: str, started: float, message: str, **details: str) -> None:
        self.checks.append(
            CheckResult(
                name=name,
                status=StepStatus.PASSED,
                code=Code.OK,
                message=message,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                details=details,
            )
        )

    def fail(self, name: str, started: float, code: Code, message: str, **details: str) -> None:
        self.failed = True
        self.facts.update({k: v for k, v in details.items() if v is not None})
        self.checks.append(
            CheckResult(
                name=name,
                status=StepStatus.FAILED,
                code=code,
                message=message,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                details=details,
            )
        )

    def skip(self, name: str, message: str) -> None:
        self.checks.append(CheckResult(name=name, status=StepStatus.SKIPPED, code=Code.OK, message=message))


async def run_chain(target: Target, options: ChainOptions, deadline: Deadline | None = None) -> Diagnosis:
    """Run every step that makes sense and diagnose the result, within the deadline.

    Args:
        target: what to check, with which credential or identity.
        options: how to probe; ``options.timeout`` is the total when no deadline is given.
        deadline: a deadline shared with other chains of the same check.

    Never raises (cancellation aside): network and registry problems become failed
    steps, running out of time fails the running step, anything unexpected becomes UNKNOWN.
    """
    deadline = deadline or Deadline(options.timeout)
    run = _Run()
    redactor = Redactor()
    credential = target.credential
    redactor.add(credential.secrets(), [(credential.username or "", s) for s in credential.secrets()])
    if options.proxy is not None and options.proxy.password:
        redactor.add([options.proxy.password], [(options.proxy.username or "", options.proxy.password)])
    run.facts.update(
        registry=target.registry,
        credential=credential.describe(),
        platform=options.platform,
    )
    run.facts.update(_account_facts(target.registry, credential))
    if target.image:
        run.facts.update(
            repository=target.image.repository,
            tag=target.image.manifest_ref,
            image=target.image.familiar,
            reference=target.image.familiar,
        )
    else:
        run.facts.update(image="the registry")
    try:
        api_host = target.image.api_host if target.image else target.registry
        check_host(api_host)
        host, port = split_host_port(api_host)
    except InvalidReference as exc:
        run.facts["host"] = target.registry
        run.fail("dns", run.started, Code.INVALID_IMAGE_NAME, str(exc), reference=target.registry,
                 detail=str(exc))
        return _finish(run, target, redactor)
    run.facts["host"] = host

    def count(_host: str) -> None:
        if options.on_request:
            options.on_request(target.registry, run.current)

    async def steps() -> None:
        resolver = Resolver(options.nameserver, options.timeout, options.destinations)
        # One verification context for the TLS step and every HTTP request (shared
        # by every chain while the CA bundle file is unchanged).
        ctx = make_ssl_context(options.ca_file, options.verify_tls)
        http = Http(resolver, ctx, options.timeout, count, options.proxy, options.no_proxy, redactor)
        try:
            await _steps(run, target, options, resolver, http, ctx, host, port, redactor, deadline)
        finally:
            await http.aclose()

    await _bounded(run, deadline, redactor, host, port, steps)
    return _finish(run, target, redactor)


async def _bounded(
    run: _Run, deadline: Deadline, redactor: Redactor, host: str, port: int,
    steps: Callable[[], Awaitable[None]],
) -> None:
    """Run the steps within the chain's total deadline. Running out of time fails the
    running step; anything unexpected fails it as UNKNOWN (a chain never raises)."""
    try:
        async with asyncio.timeout(deadline.remaining()):
            await steps()
    except TimeoutError:
        step = _running(run)
        run.fail(
            step,
            run.started,
            _TIMEOUT_CODES.get(step, Code.CONNECT_TIMEOUT),
            f"the check ran out of its {deadline.seconds:g}s total during the {step} step "
            f"({host} too slow to answer)",
            detail=f"no complete answer within {deadline.seconds:g}s (step {step})",
            address=run.facts.get("address", join_host_port(host, port)),
        )
    except Exception as exc:  # an unexpected error is a finding
        step = _running(run)
        where = run.facts.get("registry", host)
        log.error("unexpected error in the %s step of %s", step, where, exc_info=True)
        text = one_line(f"{type(exc).__name__}: {exc}", 300, redactor)
        run.fail(step, run.started, Code.UNKNOWN, f"{step} step failed unexpectedly: {text}",
                 detail=f"unexpected error in the {step} step: {text}")


async def _reach(
    run: _Run, options: ChainOptions, resolver: Resolver, ctx: ssl.SSLContext, host: str, port: int
) -> bool:
    """The destination policy, then dns, tcp and tls to the host, straight or through the
    proxy the environment names for it; False when a step failed."""
    started = run.begin("dns")
    try:
        options.destinations.check_host(host)
        options.destinations.check_peer_name(host, port)
    except StepError as exc:
        run.fail("dns", started, exc.code, exc.message, **exc.facts)
        return False
    via = options.proxy if options.proxy and not bypasses(host, port, options.no_proxy) else None
    if via is not None:
        return await _proxy_path(run, options, resolver, ctx, via, host, port)
    return await _direct_path(run, options, resolver, ctx, host, port)


def _account_facts(registry: str, credential: Credential) -> dict[str, str]:
    """The user name and, on ACR, which kind of account it is (admin, token, service
    principal, refresh token, an Azure AD identity): it decides which of the guide's
    remedies fits."""
    if credential.kind is CredentialKind.AAD:
        return {"acr_account": "identity"} if registry_kind(registry) is RegistryKind.ACR else {}
    if credential.kind not in (CredentialKind.BASIC, CredentialKind.REFRESH_TOKEN):
        return {}
    facts = {"username": credential.username} if credential.username else {}
    if registry_kind(registry) is RegistryKind.ACR:
        account = (
            "refresh-token"
            if credential.kind is CredentialKind.REFRESH_TOKEN
            else acr_account(credential.username, registry)
        )
        if account:
            facts["acr_account"] = account
    return facts


def _running(run: _Run) -> str:
    """The step that was running: the current one, or the next when it had finished."""
    done = {c.name for c in run.checks}
    if run.current not in done:
        return run.current
    later = STEPS[STEPS.index(run.current) + 1 :]
    return next((s for s in later if s not in done and s != "identity"), run.current)


def _finish(run: _Run, target: Target, redactor: Redactor) -> Diagnosis:
    """Skip what did not run, order the steps, diagnose and mask."""
    for name in STEPS:
        if (name == "identity" and target.identity is None) or name == "blob":
            continue  # the data path shows when it ran (after a manifest found)
        if not any(c.name == name for c in run.checks):
            run.skip(name, "skipped: an earlier step failed" if run.failed else "skipped")
    order = {n: i for i, n in enumerate(STEPS)}
    run.checks.sort(key=lambda c: order[c.name])
    run.facts.setdefault("verdict", _verdict(target, run.facts.get("credential", "anonymous")))
    return redacted(from_checks(run.checks, run.facts), redactor)


def _verdict(target: Target, credential: str) -> str:
    """What a healthy result proves, and no more (the OK summary's ending)."""
    if target.image is not None:
        how = "anonymously" if credential == "anonymous" else f"with {credential}"
        return f"{target.image.familiar} can be pulled {how}"
    if credential == "anonymous":
        return "answers anonymously (no credentials were used and no image was checked)"
    return f"accepts {credential} (no image was checked)"


async def _steps(
    run: _Run,
    target: Target,
    options: ChainOptions,
    resolver: Resolver,
    http: Http,
    ctx: ssl.SSLContext,
    host: str,
    port: int,
    redactor: Redactor,
    deadline: Deadline,
) -> None:
    if not await _reach(run, options, resolver, ctx, host, port):
        return
    registry_host = join_host_port(host, port)

    # challenge
    started = run.begin("challenge")
    try:
        challenge = await probe_challenge(http, registry_host)
    except StepError as exc:
        run.fail("challenge", started, exc.code, exc.message, **exc.facts)
        return
    shown = {"none": "anonymous access", "basic": "Basic"}.get(challenge.scheme, "Bearer")
    cdetails = {"scheme": challenge.scheme}
    if challenge.realm:
        cdetails.update(realm=challenge.realm, service=challenge.service)
    run.passed(
        "challenge", started, f"Challenge endpoint https://{target.registry}/v2/ ({shown}) : OK", **cdetails
    )

    credential = target.credential
    also: tuple[AadToken, ...] = ()
    # Only a Bearer realm is a URL the chain is sent to; Basic's realm is a label.
    bearer_realm = challenge.realm if challenge.scheme == "bearer" else ""
    elsewhere = realm_elsewhere(bearer_realm, registry_host) if bearer_realm else None
    if elsewhere is not None:
        # A realm on another host is a destination the registry's author chose: the admin's
        # registry host allow-list (when set) bounds it like a registry.
        started = run.begin("token")
        try:
            options.destinations.check_host(urlsplit(challenge.realm).hostname or elsewhere)
        except StepError as exc:
            run.fail("token", started, exc.code, f"the token realm's host: {exc.message}", host=elsewhere,
                     detail="the token realm's host is not in the admin's registry allow-list")
            return
    if target.identity is not None and challenge.scheme == "bearer":
        # Where an identity token would go is known now: refuse before asking for one.
        started = run.begin("token")
        try:
            check_realm(challenge.realm, registry_host, _IDENTITY)
        except StepError as exc:
            run.fail("token", started, exc.code, exc.message, **exc.facts)
            return
    if target.identity is not None:
        started = run.begin("identity")
        try:
            tokens = [await target.identity(audience) for audience in target.audiences or (ACR_RESOURCE,)]
        except StepError as exc:
            run.fail("identity", started, exc.code, exc.message, **exc.facts)
            return
        aad, also = tokens[0], tuple(tokens[1:])
        redactor.add([t.token for t in tokens])
        credential = Credential(CredentialKind.AAD, aad.source, None, aad.token)
        run.facts["credential"] = credential.describe()
        run.facts.update(_account_facts(target.registry, credential))
        shown = ", ".join(t.audience for t in tokens)
        run.passed("identity", started, f"Azure AD token for {aad.source} ({shown} audience) : OK")

    auth = await _token_step(run, http, target, challenge, credential, registry_host, deadline, also)
    if auth is None:
        return
    if target.image is None:
        run.skip("manifest", "skipped: no image given")
        return

    started = run.begin("manifest")
    try:
        found_manifest = await probe_manifest(
            http, target.image, auth, options.platform, credential.kind is CredentialKind.ANONYMOUS
        )
    except StepError as exc:
        run.fail("manifest", started, exc.code, exc.message, **exc.facts)
        return
    mdetails = {"mediaType": found_manifest.media_type, "digest": found_manifest.digest}
    if found_manifest.platforms:
        mdetails["platforms"] = ", ".join(found_manifest.platforms)
    limit, remaining = found_manifest.ratelimit
    if limit:
        mdetails["ratelimitLimit"] = limit
    if remaining:
        mdetails["ratelimitRemaining"] = remaining
    run.passed(
        "manifest",
        started,
        f"Fetch manifest {target.image.repository}:{target.image.manifest_ref} : OK",
        **mdetails,
    )
    if not options.data_path:
        return

    started = run.begin("blob")
    try:
        blob = await probe_blob(http, target.image, auth, found_manifest, options.destinations)
    except StepError as exc:
        run.fail("blob", started, exc.code, exc.message, **exc.facts)
        return
    if blob is None:
        run.skip("blob", "skipped: the manifest names no blob to fetch (not an OCI or Docker v2 manifest)")
        return
    bdetails = {"digest": blob.digest, "status": str(blob.status)}
    if blob.data_host:
        bdetails.update(dataHost=blob.data_host, redirects=" -> ".join(blob.hops))
        where = f"from the data endpoint {blob.data_host} (redirected by the registry)"
    else:
        where = "from the registry itself (no redirect)"
    run.passed("blob", started, f"Fetch the first KiB of blob {blob.digest} {where} : OK", **bdetails)


async def run_network_path(host_port: str, options: ChainOptions) -> Diagnosis:
    """dns, tcp and tls to one host, and no HTTP request: the node agent's check of a data
    host kubelet's message names (a blob redirect's host, whose URL carries a signature the
    agent must not replay). The same destination policy and host allow-list as a registry;
    the same total deadline. Never raises (cancellation aside)."""
    deadline = Deadline(options.timeout)
    run = _Run()
    redactor = Redactor()
    run.facts.update(registry=host_port, host=host_port)
    try:
        check_host(host_port)
        host, port = split_host_port(host_port)
    except InvalidReference as exc:
        run.fail("dns", run.started, Code.INVALID_IMAGE_NAME, str(exc), detail=str(exc))
        return redacted(from_checks(run.checks, run.facts), redactor)
    run.facts["host"] = host

    async def steps() -> None:
        resolver = Resolver(options.nameserver, options.timeout, options.destinations)
        ctx = make_ssl_context(options.ca_file, options.verify_tls)
        await _reach(run, options, resolver, ctx, host, port)

    await _bounded(run, deadline, redactor, host, port, steps)
    return redacted(from_checks(run.checks, run.facts), redactor)


async def _direct_path(
    run: _Run, options: ChainOptions, resolver: Resolver, ctx: ssl.SSLContext, host: str, port: int
) -> bool:
    """dns, tcp and tls straight to the registry; False when a step failed."""
    started = run.begin("dns")
    try:
        found = await resolver.lookup(host)
    except DnsFailure as exc:
        run.fail("dns", started, exc.code, exc.message)
        return False
    verdict = assess_routing(found, options.expect_private_endpoint)
    details = {"addresses": ", ".join(found.addresses)}
    if found.cnames:
        details["cnames"] = " -> ".join(found.cnames)
    if not verdict.ok:
        run.fail(
            "dns",
            started,
            Code.PRIVATE_ENDPOINT_DNS,
            verdict.message,
            address=verdict.address,
            detail=verdict.message.split(": ", 1)[-1],
            **details,
        )
        return False
    if options.data_endpoint:
        try:
            data = await resolver.lookup(options.data_endpoint)
        except DnsFailure as exc:
            # The login server resolved: behind a private endpoint, a data endpoint missing
            # from the zone is the guide's private-endpoint case, not a typo in a name.
            private = options.expect_private_endpoint or any("privatelink" in c for c in found.cnames)
            missing = private and exc.code is Code.DNS_NXDOMAIN
            run.fail(
                "dns",
                started,
                Code.PRIVATE_ENDPOINT_DNS if missing else exc.code,
                f"data endpoint: {exc.message}",
                host=options.data_endpoint,
                endpoint="data",
                detail=f"NXDOMAIN: {exc.message}" if exc.code is Code.DNS_NXDOMAIN else exc.message,
                **details,
            )
            return False
        data_verdict = assess_routing(data, options.expect_private_endpoint)
        details["dataEndpoint"] = f"{options.data_endpoint} -> {', '.join(data.addresses)}"
        if not data_verdict.ok:
            run.fail(
                "dns",
                started,
                Code.PRIVATE_ENDPOINT_DNS,
                f"data endpoint: {data_verdict.message}",
                host=options.data_endpoint,
                address=data_verdict.address,
                detail="the data endpoint resolves to a public address",
                **details,
            )
            return False
    address = preferred(found)
    run.facts["address"] = address
    literal = " (address literal)" if found.literal else ""
    run.passed("dns", started, f"DNS lookup to {host} at IP {address}{literal} : OK", **details)

    started = run.begin("tcp")
    try:
        address = await resolver.address(host, port)  # the destination policy decides here
        await tcp_connect(host, address, port, options.timeout)
    except StepError as exc:
        run.fail("tcp", started, exc.code, exc.message, **exc.facts)
        return False
    run.passed("tcp", started, f"TCP connect to {address}:{port} : OK", address=f"{address}:{port}")
    return await _tls(run, options, ctx, host, direct(address, port, options.timeout), f"{address}:{port}")


async def _proxy_path(
    run: _Run,
    options: ChainOptions,
    resolver: Resolver,
    ctx: ssl.SSLContext,
    via: Proxy,
    host: str,
    port: int,
) -> bool:
    """dns and tcp to the egress proxy, tls through its CONNECT tunnel; False on failure."""
    started = run.begin("dns")
    run.facts["proxy"] = via.shown
    try:
        found = await resolver.lookup(via.host)
    except DnsFailure as exc:
        # The proxy itself is unreachable: PROXY_ERROR (the resolver's code is in the message).
        run.fail(
            "dns",
            started,
            Code.PROXY_ERROR,
            f"proxy {via.shown}: {exc.message} ({exc.code.value})",
            detail=f"its name does not resolve: {exc.message}",
        )
        return False
    address = preferred(found)  # the admin configured the proxy: not a policy destination
    note = (
        "; the proxy resolves the registry, so private-endpoint routing is the proxy's"
        if options.expect_private_endpoint
        else ""
    )
    run.passed(
        "dns",
        started,
        f"DNS lookup to proxy {via.shown} at IP {address} : OK ({host} is resolved by the proxy{note})",
        addresses=", ".join(found.addresses),
        proxy=via.shown,
    )

    started = run.begin("tcp")
    try:
        await tcp_connect(via.host, address, via.port, options.timeout)
    except StepError as exc:
        details = {**exc.facts, "detail": f"{exc.message} ({exc.code.value})"}
        run.fail("tcp", started, Code.PROXY_ERROR, f"proxy {via.shown}: {exc.message}", **details)
        return False
    run.passed(
        "tcp",
        started,
        f"TCP connect to proxy {address}:{via.port} : OK",
        address=f"{address}:{via.port}",
        proxy=via.shown,
    )

    async def tunnel() -> Stream:
        return await open_tunnel(via, address, host, port, options.timeout)

    return await _tls(run, options, ctx, host, tunnel, f"via proxy {via.shown}")


async def _tls(
    run: _Run, options: ChainOptions, ctx: ssl.SSLContext, host: str, opener: Opener, where: str
) -> bool:
    started = run.begin("tls")
    try:
        cert = await tls_handshake(host, opener, ctx, options.timeout, where)
    except StepError as exc:
        run.fail("tls", started, exc.code, exc.message, **exc.facts)
        return False
    run.passed(
        "tls",
        started,
        f"TLS handshake with {host} ({cert.protocol}, issuer {cert.issuer}) : OK",
        issuer=cert.issuer,
        subject=cert.subject,
        notAfter=cert.not_after,
    )
    return True


async def _token_step(
    run: _Run,
    http: Http,
    target: Target,
    challenge: Challenge,
    credential: Credential,
    registry_host: str,
    deadline: Deadline,
    also: tuple[AadToken, ...] = (),
) -> Authorization | None:
    started = run.begin("token")
    repository = target.image.repository if target.image else None
    if credential.kind is CredentialKind.ANONYMOUS and challenge.scheme != "none" and not repository:
        run.skip("token", "skipped: no credentials and no image; nothing to authenticate")
        return None
    try:
        auth = await probe_token(http, registry_host, challenge, credential, repository, also)
    except StepError as exc:
        code = exc.code
        rejected = code in (Code.CREDENTIALS_REJECTED, Code.AAD_APP_NOT_REGISTERED)
        if rejected and repository and deadline.anonymous_retry:
            deadline.anonymous_retry = False
            anonymous = await _anonymous_pull(http, registry_host, challenge, repository)
            if anonymous is not None:
                run.fail("token", started, Code.PULL_SECRET_STALE,
                         f"{exc.message}; {anonymous}", **_stale_facts(credential), **exc.facts)
                return None
        run.fail("token", started, code, exc.message, **exc.facts)
        return None
    details = {"flow": auth.flow}
    if challenge.realm:
        details["realm"] = challenge.realm
    if auth.granted is not None:
        details["granted"] = ",".join(auth.granted)
    elsewhere = realm_elsewhere(challenge.realm, registry_host) if challenge.realm else None
    at = f" at the token service {elsewhere}" if elsewhere else ""
    run.passed(
        "token", started, f"Fetch access token ({auth.flow}) for {credential.describe()}{at} : OK", **details
    )
    return auth




async def _anonymous_pull(
    http: Http, registry_host: str, challenge: Challenge, repository: str
) -> str | None:
    """After credentials were rejected: may the repository be pulled anonymously?

    One extra request, inside the same chain (so the same deadline and the same single
    flight): an anonymous token for ``repository:<repo>:pull`` at the challenge's realm.
    Only a token whose access claim grants pull counts; an opaque token, a refusal or any
    error says nothing (None). Bearer registries only: a Basic registry has no anonymous
    token to ask for.
    """
    if challenge.scheme != "bearer":
        return None
    try:
        auth = await probe_token(http, registry_host, challenge, ANONYMOUS, repository)
    except StepError:
        return None
    if auth.granted is None or not ({"pull", "*"} & set(auth.granted)):
        return None
    return f"an anonymous token grants pull on {repository}: anonymous pull works without the credentials"


_DOCKER_CONFIG_SOURCE = "docker config "


def _stale_facts(credential: Credential) -> dict[str, str]:
    """What names the stale credential: the pull secret's name as the pod spec lists it, a
    docker config file (its own wording, ``pullhealth check --docker-config``), or where
    the credential came from."""
    source = credential.source
    if source.startswith("secret ") and "/" in source:
        return {"secret": source.rsplit("/", 1)[1]}
    if source.startswith(_DOCKER_CONFIG_SOURCE):
        return {"secret": source[len(_DOCKER_CONFIG_SOURCE) :], "source": SOURCE_DOCKER_CONFIG}
    return {"secret": source}


MAX_CREDENTIALS_TRIED = 4


async def check_credentials(
    registry: str,
    image: ImageReference | None,
    credentials: list[Credential] | None,
    options: ChainOptions,
    *,
    no_match_facts: dict[str, str] | None = None,
) -> Diagnosis:
    """Check like kubelet pulls: each matching credential in turn, else anonymously.

    Args:
        registry: registry host[:port].
        image: the image, or None to check the registry only.
        credentials: the credentials matched for the image, in kubelet's order; None when
            no credential source was given (anonymous). An empty list means a source was
            given but had nothing for this registry.
        options: chain options; ``options.timeout`` bounds all the chains together.
        no_match_facts: facts for the PULL_SECRET_NO_MATCH summary.

    Returns:
        The first healthy result, else the first credential's failure. With an empty
        list: OK when anonymous pull works, else PULL_SECRET_NO_MATCH with the checks.
    """
    deadline = Deadline(options.timeout)
    if not credentials:
        result = await run_chain(Target(registry, image), options, deadline)
        if credentials is None or result.healthy:
            return result
        if result.code not in (Code.AUTH_REQUIRED, Code.ACCESS_DENIED):
            return result  # a network or content problem comes first
        facts = {**result.facts, **(no_match_facts or {})}
        return make(Code.PULL_SECRET_NO_MATCH, facts, checks=result.checks)
    first: Diagnosis | None = None
    for credential in credentials[:MAX_CREDENTIALS_TRIED]:
        result = await run_chain(Target(registry, image, credential), options, deadline)
        if result.healthy:
            return result
        first = first or result
        if deadline.remaining() <= 0:
            break
    assert first is not None
    return first
