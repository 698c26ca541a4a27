"""The operator's settings: every ``pullhealth run`` flag, its default and its help, once.

:class:`Settings` is the one source: ``pullhealth run``'s arguments are generated from its
fields (:func:`add_arguments`) and parsed back into it (:func:`from_args`); the composition
root (:mod:`pullhealth.runtime.main`) builds the runtime from it. Kept free of kopf and of
the Kubernetes client so the CLI can build its parser without importing either.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pullhealth.agent.nodereport import read_key
from pullhealth.chain.trust import TrustPolicy
from pullhealth.domain.codes import ACR_SUFFIXES
from pullhealth.probes.destinations import build_policy, parse_networks
from pullhealth.workloads.pacing import parse_rates

API_CONCURRENCY_MAX = 256
ADMISSION_GROUP = ("admission webhook", "warnings at kubectl apply for images that cannot be pulled")
TRUST_GROUP = ("trust boundary", "what the operator may do for RegistryCheck authors (docs/security.md)")


def _flag(default: Any, help: str, *names: str, group: tuple[str, str] | None = None, **kwargs: Any) -> Any:
    """A settings field that is also a ``pullhealth run`` flag (``names``; default from the field name)."""
    return field(default=default, metadata={"names": names, "help": help, "group": group, "kwargs": kwargs})


@dataclass(frozen=True)
class Settings:
    """What the admin configured (flags; the chart sets them from its values)."""

    namespaces: tuple[str, ...] = _flag(
        (), "watch this namespace (repeatable; a glob such as 'team-*' matches names)",
        "--namespace", "-n", action="append", exclusive="scope", metavar="NAMESPACE",
    )
    all_namespaces: bool = _flag(
        False, "watch every namespace (the default without --namespace)",
        "--all-namespaces", "-A", action="store_true", exclusive="scope",
    )
    metrics_port: int = _flag(8080, "port of /metrics (0: off)", type=int)
    metrics_bind_address: str = _flag(
        "0.0.0.0",
        "address /metrics listens on (default 0.0.0.0, every interface: Prometheus scrapes the pod "
        "IP; 127.0.0.1 keeps it local, e.g. behind an authenticating proxy sidecar)",
    )
    metrics_registries: str = _flag(
        "",
        "comma-separated registries labelled by name in metrics besides those RegistryChecks name; "
        "any other registry is counted as 'other' (bounded labels)",
    )
    metrics_secure: bool = _flag(
        True,
        "serve /metrics over HTTPS (self-signed) to bearer tokens the API server authenticates "
        "(TokenReview) and authorizes for GET /metrics (SubjectAccessReview); --no-metrics-secure: "
        "plain HTTP to anyone (default: secure)",
        action=argparse.BooleanOptionalAction,
    )
    liveness: str = _flag(
        "http://0.0.0.0:8081/healthz", "liveness endpoint URL (default http://0.0.0.0:8081/healthz)"
    )
    log_format: str = _flag("text", "log format", choices=("text", "json"))
    peering: str | None = _flag(
        None, "KopfPeering name for HA (several replicas, one active)", metavar="NAME"
    )
    no_pods: bool = _flag(False, "do not watch failing pods", action="store_true")
    node_agent: bool = _flag(
        False,
        "fold the node agent's NodePathChecked Events into pod diagnoses (the chart sets it with "
        "agent.enabled; one extra Event list per diagnosed pod)",
        action="store_true",
    )
    pod_interval: float = _flag(
        60.0,
        "seconds a probe result is reused for pods sharing registry, credential and image "
        "(default 60; 0 = no sharing, for comparison only)",
        type=float,
    )
    restart_recovered_pods: str = _flag(
        "off",
        "delete a failing pod whose cause was verified fixed (PullRecoverable) so that its ReplicaSet, "
        "StatefulSet or DaemonSet creates one that pulls now, instead of waiting out kubelet's back-off: "
        "'off' (default), 'labelled' (only in namespaces labelled "
        "pullhealth.io/restart-recovered-pods=true), "
        "'all' (every watched namespace not labelled =false); never bare pods or Jobs' pods; needs "
        "delete on pods (and get on namespaces)",
        choices=("off", "labelled", "all"),
    )
    restarts_per_minute: int = _flag(
        10, "at most this many recoverable pods deleted per minute, over all namespaces (default 10)",
        type=int,
    )
    per_registry: int = _flag(
        4, "at most this many probe chains at once against one registry (default 4)", type=int
    )
    workers: int = _flag(16, "pods diagnosed at once (default 16)", type=int)
    workloads: bool = _flag(
        False,
        "check every workload's images before pods fail (Deployments, StatefulSets, DaemonSets, "
        "ReplicaSets and Jobs without an owner, CronJobs, bare pods; running pods' tags): Events on "
        "the workload and a gauge (docs/workloads.md; needs list/watch on those kinds)",
        action="store_true",
    )
    workload_interval: float = _flag(
        300.0,
        "seconds between two checks of one workload, each within +-10%% jitter (default 300); a "
        "changed workload is checked at once",
        type=float,
    )
    workload_workers: int = _flag(8, "workload checks running at once (default 8)", type=int)
    workload_rate: float = _flag(
        30.0,
        "probe chains a minute that workload checks start against one registry, jittered, halved "
        "on each 429 (default 30; Docker Hub 2: docs/workloads.md)",
        type=float,
    )
    workload_registry_rates: tuple[str, ...] = _flag(
        (), "a registry's own rate for workload checks, e.g. docker.io=1 (repeatable)",
        "--workload-registry-rate", action="append", metavar="HOST=PER_MINUTE",
    )
    registry_check_workers: int = _flag(
        8,
        "RegistryCheck chains running at once across the operator, shared round-robin by "
        "namespaces, at most half for one namespace (default 8)",
        type=int,
    )
    # API requests in flight at once (threads and pooled connections): what bounds how fast
    # a thousand pods are annotated is the API server's latency times this.
    api_concurrency: int = _flag(
        48,
        "API server requests in flight at once: worker threads and pooled connections "
        f"(default 48, at most {API_CONCURRENCY_MAX})",
        type=int,
    )
    acr_domains: str = _flag(
        ",".join(ACR_SUFFIXES),
        "registries for which kubelet uses the node identity when no secret matches",
    )
    kubelet_client_id: str | None = _flag(
        None,
        "client id of the kubelet managed identity (default: $PULLHEALTH_KUBELET_CLIENT_ID, or the "
        "node's only one)",
        env="PULLHEALTH_KUBELET_CLIENT_ID",
    )
    managed_identities: tuple[str, ...] = _flag(
        (), "a managed identity RegistryChecks may name besides the kubelet identity (repeatable)",
        "--allow-managed-identity", group=TRUST_GROUP, action="append", metavar="CLIENT_ID",
    )
    workload_identity: bool = _flag(
        False,
        "check workload identities (mints service-account tokens; needs serviceaccounts/token create)",
        group=TRUST_GROUP, action="store_true",
    )
    arm_audience: bool = _flag(
        False, "also ask for ARM-audience Azure AD tokens, to tell when a registry refuses them",
        group=TRUST_GROUP, action="store_true",
    )
    allow_cidrs: tuple[str, ...] = _flag(
        (), "addresses probes may reach although the policy refuses them (e.g. loopback; repeatable)",
        "--allow-cidr", group=TRUST_GROUP, action="append", metavar="CIDR",
    )
    deny_cidrs: tuple[str, ...] = _flag(
        (), "addresses probes never reach (repeatable)",
        "--deny-cidr", group=TRUST_GROUP, action="append", metavar="CIDR",
    )
    registry_hosts: tuple[str, ...] = _flag(
        (), "only registries matching these host patterns are probed, e.g. '*.azurecr.io' (repeatable)",
        "--registry-host", group=TRUST_GROUP, action="append", metavar="PATTERN",
    )
    agent_report_key_file: str = _flag(
        "",
        "key the node agent signs its NodePathChecked notes with: only notes that verify are taken "
        "(the chart mounts one when agent.enabled)",
        group=TRUST_GROUP, metavar="PATH",
    )
    admission_port: int = _flag(
        0, "port of the admission webhook (HTTPS; 0: off): warnings at kubectl apply (docs/admission.md)",
        group=ADMISSION_GROUP, type=int,
    )
    admission_bind_address: str = _flag(
        "0.0.0.0", "address the admission webhook listens on (default 0.0.0.0)", group=ADMISSION_GROUP
    )
    admission_budget: float = _flag(
        2.0,
        "seconds an admission answer waits for checks at most (default 2; a check still running "
        "goes on and answers the next apply); always kept inside the API server's timeout",
        group=ADMISSION_GROUP, type=float,
    )
    admission_cert_dir: str = _flag(
        "",
        "directory of the webhook's tls.crt and tls.key: read as is (cert-manager, your own) "
        "unless --admission-tls-secret is set, then where the generated pair is written",
        group=ADMISSION_GROUP,
    )
    admission_tls_secret: str = _flag(
        "",
        "NAMESPACE/NAME of the Secret the operator keeps its generated CA and serving "
        "certificate in (one for every replica); empty: --admission-cert-dir is used as is",
        group=ADMISSION_GROUP,
    )
    admission_hosts: tuple[str, ...] = _flag(
        (), "a DNS name or IP address the generated serving certificate covers (repeatable)",
        "--admission-host", group=ADMISSION_GROUP, action="append", metavar="HOST",
    )
    admission_webhook_name: str = _flag(
        "",
        "ValidatingWebhookConfiguration whose caBundle the operator keeps set to its generated CA",
        group=ADMISSION_GROUP,
    )
    verbose: bool = _flag(False, "debug logging", "--verbose", "-v", action="store_true")
    # Not flags. Leader election (kopf peering): the newest replica has the highest
    # priority, so a rolling update hands over at once and two replicas never share one
    # priority (kopf pauses *all* operators of equal priority).
    peering_priority: int = field(default_factory=lambda: int(time.time() * 1000))
    # Seconds a replica's keep-alive stays valid: a standby takes over at most this long
    # after the active replica died (kopf refreshes it every 1-5 s at this value).
    peering_lifetime: int = 10
    # The node agent's report key, read from --agent-report-key-file (only signed notes count).
    agent_report_key: bytes | None = None

    @property
    def pods(self) -> bool:
        """Whether failing pods are watched."""
        return not self.no_pods

    @property
    def metrics_registry_list(self) -> tuple[str, ...]:
        """The admin's registries for metric labels."""
        return tuple(r.strip() for r in self.metrics_registries.split(",") if r.strip())

    def trust(self, api_server_addresses: tuple[tuple[str, int | None], ...]) -> TrustPolicy:
        """The admin's trust policy from the flags."""
        return TrustPolicy(
            acr_domains=tuple(d.strip() for d in self.acr_domains.split(",") if d.strip()),
            kubelet_client_id=self.kubelet_client_id,
            managed_identity_client_ids=frozenset(self.managed_identities),
            workload_identity=self.workload_identity,
            arm_audience=self.arm_audience,
            destinations=build_policy(
                allow=self.allow_cidrs,
                deny=self.deny_cidrs,
                protected=api_server_addresses,
                hosts=self.registry_hosts,
            ),
        )

    def read_scopes(self) -> tuple[tuple[str, ...], Callable[[Mapping[str, Any]], bool] | None]:
        """Where the operator's own readers list and watch namespaced kinds: the watched
        namespaces, or all of them (empty) with a filter when ``--namespace`` has globs."""
        patterns = self.namespaces
        if any(c in ns for ns in patterns for c in "*?[!"):
            return (), in_namespaces(patterns)
        return patterns, None


def in_namespaces(patterns: tuple[str, ...]) -> Callable[[Mapping[str, Any]], bool]:
    """Whether an object's namespace matches one of the globs (``--namespace 'team-*'``)."""

    def matches(obj: Mapping[str, Any]) -> bool:
        namespace = str((obj.get("metadata") or {}).get("namespace") or "")
        return any(fnmatch.fnmatchcase(namespace, p) for p in patterns)

    return matches


def _flag_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(Settings) if "help" in f.metadata]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``pullhealth run``'s flags, generated from :class:`Settings`."""
    groups: dict[Any, Any] = {}
    for f in _flag_fields():
        meta = f.metadata
        kwargs = dict(meta["kwargs"])
        exclusive = kwargs.pop("exclusive", None)
        env = kwargs.pop("env", None)
        target: Any = parser
        if exclusive is not None:
            if ("x", exclusive) not in groups:
                groups[("x", exclusive)] = parser.add_mutually_exclusive_group()
            target = groups[("x", exclusive)]
        elif meta["group"] is not None:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(*meta["group"])
            target = groups[meta["group"]]
        names = meta["names"] or ("--" + f.name.replace("_", "-"),)
        default = f.default
        if kwargs.get("action") == "append":
            default = []
        elif env is not None:
            default = os.environ.get(env, default)
        target.add_argument(*names, dest=f.name, default=default, help=meta["help"], **kwargs)


def from_args(args: argparse.Namespace) -> Settings:
    """The settings ``pullhealth run`` was given, within their bounds.

    Raises:
        ValueError: a CIDR flag does not parse (the message names its value).
    """
    values: dict[str, Any] = {}
    for f in _flag_fields():
        value = getattr(args, f.name)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    values["pod_interval"] = max(0.0, values["pod_interval"])
    values["per_registry"] = max(1, values["per_registry"])
    values["restarts_per_minute"] = max(1, min(values["restarts_per_minute"], 600))
    values["workers"] = max(1, values["workers"])
    values["workload_interval"] = max(5.0, values["workload_interval"])
    values["workload_workers"] = max(1, min(values["workload_workers"], 64))
    values["workload_rate"] = max(0.1, min(values["workload_rate"], 6000.0))
    parse_rates(tuple(values["workload_registry_rates"]))  # a bad pair stops the start, named
    values["registry_check_workers"] = max(1, values["registry_check_workers"])
    values["api_concurrency"] = max(1, min(values["api_concurrency"], API_CONCURRENCY_MAX))
    # A missing or unreadable key file stops the start (not a start-up handler retried hot).
    values["agent_report_key"] = read_key(values["agent_report_key_file"])
    values["admission_budget"] = max(0.0, values["admission_budget"])
    if values["admission_tls_secret"] and "/" not in values["admission_tls_secret"]:
        raise ValueError(f"--admission-tls-secret {values['admission_tls_secret']}: expected NAMESPACE/NAME")
    settings = Settings(**values)
    # Bad CIDRs stop the start, with the flag's value named.
    parse_networks([*settings.allow_cidrs, *settings.deny_cidrs])
    return settings
