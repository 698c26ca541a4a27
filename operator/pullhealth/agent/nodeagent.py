"""``pullhealth agent``: the node's own pull path for the failing pods on that node.

No kopf, no credentials, no Secret reads. For each failing pod on its node (the runner
watches pods with a ``spec.nodeName`` field selector), the agent checks the registry the
way the node reaches it:

- the endpoints containerd would try, from ``certs.d/<host>/hosts.toml``
  (:mod:`pullhealth.agent.hoststoml`): mirrors in order, then the server;
- for each, the credential-free steps of the same probe chain the operator runs
  (:func:`pullhealth.chain.probechain.run_chain` without credential or image: dns with the node's
  resolver incl. the private-endpoint checks, tcp, tls with the node's CA bundle plus the
  endpoint's ``ca``/``skip_verify``, and the ``/v2/`` challenge), through the same
  destination policy (:class:`pullhealth.probes.destinations.DestinationPolicy`);
- the first endpoint that answers is the one containerd would use; when none does, the
  last failure (the server's) is reported;
- when the registry answers and kubelet's message names another host in a URL (the data
  host a blob download was redirected to: ``Get "https://<data host>/..."``), dns, tcp and
  tls to that host from the node, with no HTTP request (its URL carries the registry's
  signature): a failure there is DATA_ENDPOINT_UNREACHABLE, naming the host and the step.

One check per registry per interval however many pods fail (:class:`SingleFlight`);
the result becomes a ``NodePathChecked`` Event on each failing pod
(:func:`event_for`), named so that the same result is posted once per pod per hour.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import tempfile
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pullhealth.agent import hoststoml
from pullhealth.agent.nodereport import ACTION, REASON, REPORTING_CONTROLLER, NodeReport, summarize
from pullhealth.chain.probechain import ChainOptions, Target, run_chain, run_network_path
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import LAYER_OF_CODE, Layer
from pullhealth.domain.model import StepStatus
from pullhealth.domain.reference import InvalidReference, check_host, parse
from pullhealth.kube import events
from pullhealth.pods.podcheck import FailingContainer, failing_containers
from pullhealth.probes.destinations import DestinationPolicy

MAX_PODS_PER_PASS = 500
MAX_REGISTRIES_PER_POD = 8
MAX_CA_BYTES = 1024 * 1024
# An Event of the same result is posted again after this many seconds (Events expire
# after an hour by default: the evidence must outlive the failure).
REPOST_SECONDS = 3000


@dataclass(frozen=True)
class AgentSettings:
    """What the node is and where its configuration lives.

    Attributes:
        node: the node's name (``NODE_NAME`` from the downward API).
        nameserver: ``ip[:port]`` of the node's resolver; None: the system resolver
            (``dnsPolicy: Default`` gives the pod the node's ``resolv.conf``).
        certs_dir: containerd's ``config_path`` (``/etc/containerd/certs.d``), or None.
        timeout: seconds for one endpoint's check (the whole chain).
        interval: seconds a registry's result is reused.
        private_endpoints: registry host suffixes that must resolve to a private address.
        destinations: where the checks may connect.
        report_key: signs each note (the operator verifies it), or None.
    """

    node: str
    nameserver: str | None = None
    certs_dir: str | None = None
    timeout: float = 10.0
    interval: float = 300.0
    private_endpoints: tuple[str, ...] = ()
    destinations: DestinationPolicy = field(default_factory=DestinationPolicy)
    report_key: bytes | None = field(default=None, repr=False)


def expects_private(registry: str, suffixes: Sequence[str]) -> bool:
    """Whether the registry host is configured to be reached through a private endpoint."""
    host = registry.split(":")[0].lower()
    return any(host == s.lstrip(".") or host.endswith("." + s.lstrip(".")) for s in suffixes)


class CaBundles:
    """hosts.toml ``ca`` lists joined into one file each (the chain takes one extra bundle).

    Files live in a private temporary directory; at most :data:`MAX_CA_BYTES` are read
    per bundle.
    """

    def __init__(self, directory: str | None = None) -> None:
        self._dir = Path(directory or tempfile.mkdtemp(prefix="pullhealth-agent-ca-"))
        self._made: dict[tuple[str, ...], str] = {}

    def bundle(self, paths: Sequence[str]) -> str | None:
        """One file trusting every CA in ``paths``; None for none. Raises OSError."""
        if not paths:
            return None
        if len(paths) == 1:
            return paths[0]
        key = tuple(paths)
        if key in self._made:
            return self._made[key]
        data = b""
        for path in paths:
            with open(path, "rb") as handle:
                data += handle.read(MAX_CA_BYTES - len(data)) + b"\n"
        name = self._dir / (hashlib.sha256("\0".join(paths).encode()).hexdigest()[:16] + ".pem")
        name.write_bytes(data)
        self._made[key] = str(name)
        return str(name)


def describe(code: Code, step: str, host: str, address: str = "") -> str:
    """What a report says of one endpoint: code, step and layer, in our own words (and,
    for a private-endpoint miss, the public address the name ends on, parsed as one)."""
    if code is Code.OK:
        return f"GET /v2/ on {host} answered (dns, tcp, tls and challenge passed)"
    layer = LAYER_OF_CODE.get(code, Layer.HTTP)
    text = f"the {step or 'check'} step to {host} failed: {code.value} ({layer.name.lower()} layer)"
    if code is Code.PRIVATE_ENDPOINT_DNS:
        with contextlib.suppress(ValueError):
            text += f"; the name ends on public address {ipaddress.ip_address(address)}"
    return text


async def check_endpoint(
    endpoint: hoststoml.Endpoint, registry: str, settings: AgentSettings, bundles: CaBundles
) -> tuple[Code, str, str]:
    """(code, failed step, message) of the credential-free chain against one endpoint."""
    try:
        ca_file = bundles.bundle(endpoint.ca)
    except OSError as exc:
        return Code.TLS_UNTRUSTED, "tls", f"cannot read the CA file of {endpoint.url}: {exc.strerror or exc}"
    options = ChainOptions(
        nameserver=settings.nameserver,
        timeout=settings.timeout,
        ca_file=ca_file,
        expect_private_endpoint=expects_private(registry, settings.private_endpoints),
        destinations=settings.destinations,
        verify_tls=not endpoint.skip_verify,
    )
    result = await run_chain(Target(endpoint.host), options)
    code, step, message = summarize(result.checks)
    if endpoint.plain_http and code is Code.TLS_PROTOCOL_ERROR and "plain HTTP" in message:
        # hosts.toml says http://: a plain-HTTP answer is what containerd expects.
        return Code.OK, "", f"{endpoint.host} answers plain HTTP, as hosts.toml configures"
    # The report carries the code, the step and its layer, never the chain's message: that
    # quotes remote answers (OCI messages, certificate names), and the Event is readable by
    # the pod's owner while the agent probed from the node's network position.
    failed = next((c for c in result.checks if c.status is StepStatus.FAILED), None)
    address = failed.details.get("address", "") if failed is not None else ""
    return code, step, describe(code, step, endpoint.host, address)


async def check_registry(registry: str, settings: AgentSettings, bundles: CaBundles) -> NodeReport:
    """The node's path to ``registry``: the endpoint containerd would use, or why none works."""
    config = hoststoml.load(settings.certs_dir, registry)
    endpoints = config.pull_endpoints() or config.endpoints[-1:]
    order = hoststoml.describe(endpoints)
    failures: list[str] = []
    last = NodeReport(Code.UNKNOWN, settings.node, registry, summary="no endpoint to check")
    for endpoint in endpoints:
        code, step, message = await check_endpoint(endpoint, registry, settings, bundles)
        if code is Code.OK:
            via = f" through mirror {endpoint.url}" if endpoint.mirror else ""
            tried = f"; before it: {'; '.join(failures)}" if failures else ""
            summary = f"containerd reaches {registry}{via}: {message}{tried}"
            return NodeReport(Code.OK, settings.node, registry, "", endpoint.url, endpoint.mirror, summary)
        failures.append(f"{endpoint.url}: {code.value}")
        last = NodeReport(code, settings.node, registry, step, endpoint.url, endpoint.mirror, message)
    problem = f" ({config.problem})" if config.problem else ""
    if len(endpoints) > 1:
        return replace(last, summary=f"{last.summary.rstrip('.')}; containerd tries {order}{problem}")
    return replace(last, summary=last.summary + problem)


# A URL in kubelet's message: containerd names the blob URL it failed to fetch
# (`failed to do request: Get "https://<host>/<path>": dial tcp ...`).
_URL_HOST = re.compile(r"https?://([A-Za-z0-9._\-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?)/")
MAX_MESSAGE = 4096


def data_host(message: str, registry: str, endpoint: str = "") -> str | None:
    """The first ``host[:port]`` of a URL in kubelet's message that is neither the registry
    nor the endpoint containerd used for it (a mirror): the host a blob download was
    redirected to. None when the message names no other host."""
    own = {registry.lower()}
    if endpoint:
        own.add(endpoint.split("://", 1)[-1].split("/", 1)[0].lower())
    for match in _URL_HOST.finditer(message[:MAX_MESSAGE]):
        host = match.group(1).lower()
        bare = host if host.startswith("[") else host.split(":", 1)[0]
        if host in own or bare in own or f"{host}:443" in own:
            continue
        try:
            check_host(host)
        except InvalidReference:
            continue
        return host
    return None


async def check_data_host(
    registry: str, host: str, settings: AgentSettings, bundles: CaBundles
) -> NodeReport:
    """dns, tcp and tls from the node to ``host``, the data host kubelet's message names for
    ``registry``, trusting what containerd trusts for the registry (it follows the redirect
    with the registry's client). OK, DATA_ENDPOINT_UNREACHABLE naming the step, or the
    policy's DESTINATION_REFUSED (then nothing is said about the host)."""
    config = hoststoml.load(settings.certs_dir, registry)
    server = config.endpoints[-1] if config.endpoints else None
    try:
        ca_file = bundles.bundle(server.ca) if server else None
    except OSError:
        ca_file = None
    options = ChainOptions(
        nameserver=settings.nameserver,
        timeout=settings.timeout,
        ca_file=ca_file,
        destinations=settings.destinations,
        verify_tls=not (server and server.skip_verify),
    )
    result = await run_network_path(host, options)
    code, step, _ = summarize(result.checks)
    endpoint = f"https://{host}"
    if code is Code.OK:
        return NodeReport(Code.OK, settings.node, registry, "", endpoint, False,
                          f"the data host {host} answers from this node (dns, tcp and tls passed)")
    if code is Code.DESTINATION_REFUSED:
        return NodeReport(code, settings.node, registry, step, endpoint, False,
                          f"the data host {host} was not checked: the destination policy refuses it")
    layer = LAYER_OF_CODE.get(code, Layer.HTTP)
    summary = (f"{registry} answers from this node, but the data host its blob download was redirected to "
               f"(named in kubelet's message), {host}, fails at the {step} step: {code.value} "
               f"({layer.name.lower()} layer)")
    return NodeReport(Code.DATA_ENDPOINT_UNREACHABLE, settings.node, registry, step, endpoint, False, summary)


@dataclass(frozen=True)
class PodWork:
    """A failing pod on this node and the registries its failing containers pull from."""

    pod: Mapping[str, Any]
    containers: tuple[tuple[FailingContainer, str], ...]  # (container, registry)


def work_for(pod: Mapping[str, Any], node: str) -> PodWork | None:
    """The pod's failing containers with their registries; None when nothing to check.

    Pods of another node are ignored (the field selector already filters them).
    """
    if (pod.get("spec") or {}).get("nodeName") != node:
        return None
    found: list[tuple[FailingContainer, str]] = []
    for container in failing_containers(pod)[:MAX_REGISTRIES_PER_POD]:
        if container.reason in ("InvalidImageName", "ErrImageNeverPull"):
            continue
        try:
            found.append((container, parse(container.image).registry))
        except InvalidReference:
            continue
    return PodWork(pod, tuple(found)) if found else None


def event_for(
    pod: Mapping[str, Any],
    container: FailingContainer,
    report: NodeReport,
    now: float | None = None,
    key: bytes | None = None,
) -> events.EventSpec:
    """The ``NodePathChecked`` Event on the pod: one per result per pod per period."""
    meta = pod.get("metadata") or {}
    period = int((time.time() if now is None else now) // REPOST_SECONDS)
    return events.EventSpec(
        regarding=events.Regarding(
            api_version="v1",
            kind="Pod",
            namespace=str(meta.get("namespace") or "default"),
            name=str(meta.get("name") or ""),
            uid=str(meta.get("uid") or ""),
            field_path=container.field_path,
        ),
        type="Normal" if report.ok else "Warning",
        reason=REASON,
        action=ACTION,
        note=report.note(key, str(meta.get("uid") or "")),
        key=(report.node, report.registry, report.code.value, report.endpoint, str(period)),
        controller=REPORTING_CONTROLLER,
    )


async def _stamped(check: Awaitable[NodeReport]) -> NodeReport:
    """The report with the moment its check started (the state it shows is no older)."""
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return replace(await check, checked=started)


class Agent:
    """The agent's state: settings, the per-registry cache, the CA bundles."""

    def __init__(self, settings: AgentSettings, *, per_registry: int = 1) -> None:
        self.settings = settings
        self.bundles = CaBundles()
        self.cache: SingleFlight[NodeReport] = SingleFlight(
            settings.interval,
            per_registry=per_registry,
            failure_ttl=settings.interval,
        )

    async def report(self, registry: str) -> NodeReport:
        """The registry's node path, shared for the interval."""
        return await self.cache.get(
            registry, ("node", registry),
            lambda: _stamped(check_registry(registry, self.settings, self.bundles)),
        )

    async def data_report(self, registry: str, host: str) -> NodeReport:
        """The data host's node path, shared for the interval."""
        return await self.cache.get(
            registry, ("data", registry, host),
            lambda: _stamped(check_data_host(registry, host, self.settings, self.bundles)),
        )

    async def events_for(self, pod: Mapping[str, Any]) -> list[events.EventSpec]:
        """The Events to post for one pod (empty: nothing failing on this node)."""
        work = work_for(pod, self.settings.node)
        if work is None:
            return []
        key = self.settings.report_key
        out = []
        for container, registry in work.containers:
            report = await self.report(registry)
            host = data_host(container.message, registry, report.endpoint) if report.ok else None
            if host is not None:
                found = await self.data_report(registry, host)
                if found.code is Code.DATA_ENDPOINT_UNREACHABLE:
                    report = found
            out.append(event_for(pod, container, report, key=key))
        return out
