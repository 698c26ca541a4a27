"""Command line: argument parsing and printing only.

``pullhealth check REFERENCE``   probe a registry pull path (exit 0 healthy, 1 problem, 2 usage)
``pullhealth explain MESSAGE``   classify pasted pull-error text (no network)
``pullhealth recheck NAME...``   check RegistryChecks now and print the results
``pullhealth workloads``         workload image problems the operator reported (its Events)
``pullhealth codes [CODE]``      the diagnosis codes reference (docs/codes.md)
``pullhealth run``               the operator (flags: :mod:`pullhealth.runtime.settings`)
``pullhealth agent``             the per-node agent (:mod:`pullhealth.agent.agentrun`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pullhealth import __version__
from pullhealth.agent.nodeagent import AgentSettings
from pullhealth.chain import probechain
from pullhealth.domain import classify, codedocs, credentials
from pullhealth.domain.codes import SOURCE_DOCKER_CONFIG, Code
from pullhealth.domain.diagnose import make, redacted
from pullhealth.domain.model import Diagnosis, StepStatus
from pullhealth.domain.redact import Redactor
from pullhealth.domain.reference import ImageReference, InvalidReference, parse_target
from pullhealth.probes import identity
from pullhealth.probes.destinations import DestinationPolicy
from pullhealth.probes.proxy import Proxy, from_setting
from pullhealth.runtime import settings as run_settings

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or unreadable input files: exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pullhealth", description="Tell why an image pull fails, and what to do about it."
    )
    parser.add_argument("--version", action="version", version=f"pullhealth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="probe a registry pull path: DNS, TCP, TLS, auth, manifest")
    check.add_argument("reference", help="registry host (myacr.azurecr.io) or image reference")
    creds = check.add_mutually_exclusive_group()
    creds.add_argument(
        "--docker-config",
        metavar="PATH",
        help=".dockerconfigjson or ~/.docker/config.json to take credentials from",
    )
    creds.add_argument("--username", help="user name; the password is read with --password-stdin")
    creds.add_argument("--anonymous", action="store_true", help="send no credentials")
    creds.add_argument(
        "--managed-identity", action="store_true", help="use the node's Azure managed identity (IMDS)"
    )
    creds.add_argument(
        "--workload-identity",
        action="store_true",
        help="use Azure workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE)",
    )
    check.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    check.add_argument("--client-id", help="managed/workload identity client id")
    check.add_argument("--tenant-id", help="workload identity tenant id")
    check.add_argument(
        "--arm-audience",
        action="store_true",
        help="also exchange an ARM-audience token (ACR audience is always used first)",
    )
    check.add_argument("--imds-endpoint", default=identity.IMDS_ENDPOINT, help=argparse.SUPPRESS)
    check.add_argument("--authority-host", default=None, help=argparse.SUPPRESS)
    check.add_argument("--ca-file", help="extra CA bundle to trust (PEM)")
    check.add_argument(
        "--nameserver", metavar="HOST[:PORT]", help="DNS server to ask instead of the system's"
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds the whole check may take, all steps included (default 10)",
    )
    check.add_argument("--platform", default="linux/amd64", help="os/arch[/variant] (default linux/amd64)")
    check.add_argument(
        "--expect-private-endpoint",
        action="store_true",
        help="fail when the registry resolves to a public address",
    )
    check.add_argument("--data-endpoint", help="ACR data endpoint host to resolve as well")
    check.add_argument(
        "--proxy",
        metavar="URL|env",
        help="egress HTTP proxy the runtime uses (http://[user:pass@]host:port), or 'env' for "
        "HTTPS_PROXY/NO_PROXY",
    )
    check.add_argument(
        "--no-proxy", metavar="LIST", help="NO_PROXY entries reached directly (comma-separated)"
    )
    check.add_argument("--output", "-o", choices=("text", "json"), default="text")

    explain = sub.add_parser("explain", help="classify a pull-error message (no network)")
    explain.add_argument("message", help="the message text, or - to read stdin")
    explain.add_argument("--output", "-o", choices=("text", "json"), default="text")

    codes = sub.add_parser("codes", help="print the diagnosis codes reference, or one code's (Markdown)")
    codes.add_argument("code", nargs="?", help="one code, e.g. TAG_NOT_FOUND (any case)")

    recheck = sub.add_parser(
        "recheck", help="check RegistryChecks now (sets pullhealth.io/recheck) and print the results"
    )
    recheck.add_argument("names", nargs="+", metavar="NAME", help="RegistryCheck names")
    recheck.add_argument("--namespace", "-n", default=None, help="their namespace (default: kubeconfig's)")
    recheck.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for each result (default 60; 0: no wait)"
    )

    workloads = sub.add_parser(
        "workloads", help="list the workload image problems the operator reported (--workloads; its Events)"
    )
    workloads.add_argument("--namespace", "-n", default=None, help="one namespace (default: all)")
    workloads.add_argument("--output", "-o", choices=("text", "json"), default="text")

    run = sub.add_parser("run", help="run the operator (RegistryChecks and failing pods)")
    run_settings.add_arguments(run)  # every flag, default and help from the Settings fields

    agent = sub.add_parser(
        "agent",
        help="the node agent: check failing pods' pull path from their node (no credentials)",
    )
    agent.add_argument(
        "--node", default="", help="this node's name (default: $NODE_NAME, from the downward API)"
    )
    agent.add_argument(
        "--nameserver", default="", help="the node's resolver, ip[:port] (default: resolv.conf)"
    )
    agent.add_argument(
        "--certs-dir",
        default="/etc/containerd/certs.d",
        help="containerd's config_path with <registry>/hosts.toml (default /etc/containerd/certs.d)",
    )
    agent.add_argument(
        "--ca-bundle",
        default="",
        help="the node's CA bundle (PEM); trusted instead of the agent image's CAs",
    )
    agent.add_argument(
        "--interval", type=float, default=AgentSettings.interval,
        help="seconds a registry's result is reused, and between checks of a pod that keeps "
        f"failing (default {AgentSettings.interval:g})",
    )
    agent.add_argument(
        "--timeout", type=float, default=AgentSettings.timeout,
        help=f"seconds for one endpoint's check (default {AgentSettings.timeout:g})",
    )
    agent.add_argument(
        "--private-endpoints",
        default="",
        help="comma-separated registry hosts (suffixes) that must resolve to a private address",
    )
    agent.add_argument(
        "--allow-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="addresses the checks may reach although the policy refuses them (repeatable)",
    )
    agent.add_argument(
        "--deny-cidr", action="append", default=[], metavar="CIDR", help="addresses never checked"
    )
    agent.add_argument(
        "--registry-host",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only registries matching these host patterns are checked (repeatable)",
    )
    agent.add_argument(
        "--report-key-file",
        default="",
        metavar="PATH",
        help="sign each NodePathChecked note with this key (the operator's --agent-report-key-file)",
    )
    agent.add_argument("--verbose", "-v", action="store_true")

    return parser


def _read_password(args: argparse.Namespace) -> str:
    if not args.password_stdin:
        raise UsageError("--username needs --password-stdin (passwords are never taken as arguments)")
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("--password-stdin read an empty password")
    return password


def _credentials(
    args: argparse.Namespace, registry: str, image: ImageReference | None, secrets: list[str]
) -> tuple[list[credentials.Credential] | None, Diagnosis | None]:
    """Credentials to try, or a diagnosis when the docker config itself is unusable."""
    if args.username:
        password = _read_password(args)
        secrets.append(password)
        return [
            credentials.Credential(credentials.CredentialKind.BASIC, "--username", args.username, password)
        ], None
    if args.password_stdin:
        raise UsageError("--password-stdin goes with --username")
    if not args.docker_config:
        return None, None
    path = Path(args.docker_config).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        entries = credentials.parse_docker_config(raw, f"docker config {path}")
    except credentials.SecretProblem as exc:
        return None, make(
            exc.code,
            {"secret": str(path), "detail": exc.detail, "registry": registry, "source": SOURCE_DOCKER_CONFIG},
        )
    secrets.extend(s for e in entries for s in e.credential.secrets())
    return credentials.for_target(entries, registry, image), None


async def _identity_source(args: argparse.Namespace, secrets: list[str]) -> probechain.IdentitySource | None:
    if args.managed_identity:

        async def imds(resource: str) -> identity.AadToken:
            token = await identity.managed_identity_token(
                client_id=args.client_id, endpoint=args.imds_endpoint, resource=resource, timeout=args.timeout
            )
            secrets.append(token.token)
            return token

        return imds
    if args.workload_identity:
        client_id = args.client_id or os.environ.get("AZURE_CLIENT_ID")
        tenant_id = args.tenant_id or os.environ.get("AZURE_TENANT_ID")
        token_file = os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
        authority = args.authority_host or os.environ.get("AZURE_AUTHORITY_HOST") or identity.AAD_AUTHORITY
        if not (client_id and tenant_id and token_file):
            raise UsageError(
                "--workload-identity needs AZURE_CLIENT_ID (or --client-id), "
                "AZURE_TENANT_ID (or --tenant-id) and AZURE_FEDERATED_TOKEN_FILE"
            )
        try:
            federated = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read AZURE_FEDERATED_TOKEN_FILE: {exc.strerror}") from None
        secrets.append(federated)

        async def wi(resource: str) -> identity.AadToken:
            token = await identity.workload_identity_token(
                client_id=client_id,
                tenant_id=tenant_id,
                federated_token=federated,
                authority=authority,
                resource=resource,
                timeout=args.timeout,
            )
            secrets.append(token.token)
            return token

        return wi
    return None


def _proxy(args: argparse.Namespace, secrets: list[str]) -> tuple[Proxy | None, tuple[str, ...]]:
    """The proxy to probe through, like the runtime would use it."""
    try:
        proxy, no_proxy = from_setting(args.proxy, args.no_proxy)
    except ValueError as exc:
        raise UsageError(f"--proxy: {exc}") from None
    if proxy is not None and proxy.password:
        secrets.append(proxy.password)
    return proxy, no_proxy


async def _check(args: argparse.Namespace, secrets: list[str]) -> Diagnosis:
    try:
        registry, image = parse_target(args.reference)
    except InvalidReference as exc:
        return make(Code.INVALID_IMAGE_NAME, {"reference": args.reference, "detail": str(exc)})
    proxy, no_proxy = _proxy(args, secrets)
    options = probechain.ChainOptions(
        proxy=proxy,
        no_proxy=no_proxy,
        nameserver=args.nameserver,
        timeout=args.timeout,
        ca_file=args.ca_file,
        platform=args.platform,
        expect_private_endpoint=args.expect_private_endpoint,
        data_endpoint=args.data_endpoint,
        # The CLI's user probes with their own identity and network: no destination policy.
        destinations=DestinationPolicy.unrestricted(),
    )
    if args.ca_file and not Path(args.ca_file).is_file():
        raise UsageError(f"--ca-file {args.ca_file}: no such file")
    source = await _identity_source(args, secrets)
    if source is not None:
        audiences = (identity.ACR_RESOURCE,) + ((identity.ARM_RESOURCE,) if args.arm_audience else ())
        target = probechain.Target(registry, image, identity=source, audiences=audiences)
        return await probechain.run_chain(target, options)
    if args.anonymous:
        return await probechain.run_chain(probechain.Target(registry, image), options)
    matched, problem = _credentials(args, registry, image, secrets)
    if problem is not None:
        return problem
    return await probechain.check_credentials(
        registry,
        image,
        matched,
        options,
        no_match_facts={
            "detail": f"{args.docker_config} has no entry for {registry}",
            "secret": str(args.docker_config),
            "source": SOURCE_DOCKER_CONFIG,
        },
    )


def _print_check(diagnosis: Diagnosis, reference: str, output: str, redactor: Redactor) -> None:
    # Mask values first, then serialize: escaping cannot hide a secret, masking cannot
    # break the JSON.
    diagnosis = redacted(diagnosis, redactor)
    reference = redactor(reference)
    if output == "json":
        doc = {
            "reference": reference,
            "registry": diagnosis.facts.get("registry", ""),
            "code": diagnosis.code.value,
            "summary": diagnosis.summary,
            "remediation": diagnosis.remediation,
            "checks": [
                {
                    "name": c.name,
                    "status": c.status.value,
                    "code": c.code.value,
                    "message": c.message,
                    "durationMs": c.duration_ms,
                }
                for c in diagnosis.checks
            ],
        }
        print(json.dumps(doc, indent=2))
        return
    lines = [f"Checking {reference} ({diagnosis.facts.get('credential', 'anonymous')})"]
    for check in diagnosis.checks:
        if check.status is StepStatus.PASSED:
            lines.append(f"  {check.message}  [{check.duration_ms:.1f} ms]")
        elif check.status is StepStatus.FAILED:
            lines.append(
                f"  {check.name}: FAILED {check.code.value}: {check.message}  [{check.duration_ms:.1f} ms]"
            )
        else:
            lines.append(f"  {check.name}: {check.message}")
    lines.append("")
    lines.append(f"{diagnosis.code.value}: {diagnosis.summary}")
    for i, step in enumerate(diagnosis.remediation, 1):
        lines.append(f"  {i}. {step}")
    print("\n".join(lines))


def _print_explain(diagnosis: Diagnosis, output: str) -> None:
    diagnosis = redacted(diagnosis, Redactor())
    if output == "json":
        doc = {
            "code": diagnosis.code.value,
            "summary": diagnosis.summary,
            "remediation": diagnosis.remediation,
            "candidates": [c.value for c in diagnosis.candidates],
        }
        print(json.dumps(doc, indent=2))
        return
    lines = [f"{diagnosis.code.value}: {diagnosis.summary}"]
    if diagnosis.candidates:
        lines.append("  could also be: " + ", ".join(c.value for c in diagnosis.candidates))
    lines.extend(f"  {i}. {step}" for i, step in enumerate(diagnosis.remediation, 1))
    print("\n".join(lines))


def _recheck(args: argparse.Namespace) -> int:
    """Annotate each RegistryCheck, wait for its answer, print one line each."""
    from pullhealth.kube import kubeapi
    from pullhealth.registrychecks import recheck  # the kubernetes client only for this command

    api = kubeapi.load_config()
    namespace = args.namespace or _kubeconfig_namespace()
    worst = EXIT_OK
    for name in args.names:
        try:
            token = recheck.request(api, namespace, name)
            status = recheck.wait(api, namespace, name, token, args.wait) if args.wait > 0 else None
        except recheck.RecheckError as exc:
            print(f"pullhealth: error: {exc}", file=sys.stderr)
            worst = EXIT_USAGE
            continue
        if args.wait <= 0:
            print(f"{namespace}/{name}: recheck requested")
        elif status is None:
            print(f"{namespace}/{name}: no answer within {args.wait:.0f}s (is the operator running?)")
            worst = max(worst, EXIT_PROBLEM)
        else:
            print(f"{namespace}/{name}: {status.get('phase')} {status.get('code')}: {status.get('summary')}")
            if status.get("phase") != "Healthy":
                worst = max(worst, EXIT_PROBLEM)
    return worst


def _workloads(args: argparse.Namespace) -> int:
    """Print the problems the operator's workload Events report now; exit 1 when any."""
    from kubernetes.client.exceptions import ApiException

    from pullhealth.kube import kubeapi
    from pullhealth.workloads import report  # the kubernetes client only for this command

    api = kubeapi.load_config()
    try:
        found = report.rows(report.read(api, args.namespace))
    except ApiException as exc:
        where = f"namespace {args.namespace}" if args.namespace else "all namespaces"
        print(f"pullhealth: error: cannot list events in {where}: HTTP {exc.status}", file=sys.stderr)
        return EXIT_USAGE
    if args.output == "json":
        rows = [{"namespace": r.namespace, "kind": r.kind, "name": r.name, "container": r.container,
                 "code": r.code, "reason": r.reason, "time": r.when.isoformat(), "message": r.message}
                for r in found]
        print(json.dumps(rows, indent=2))
    elif found:
        print(report.table(found))
    else:
        print("no workload image problems reported (is the operator running with --workloads?)")
    return EXIT_PROBLEM if found else EXIT_OK


def _kubeconfig_namespace() -> str:
    import kubernetes

    try:
        _, context = kubernetes.config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        return str((context or {}).get("context", {}).get("namespace") or "default")
    except (kubernetes.config.ConfigException, OSError):
        return "default"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pullhealth`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            # An unexpected error is an UNKNOWN diagnosis with a one-line message; the
            # command prints no traceback (the operator logs it). Logging configured by an
            # embedding program is left alone.
            if not logging.getLogger().handlers:
                logging.getLogger("pullhealth").addHandler(logging.NullHandler())
                logging.getLogger("pullhealth").propagate = False
            secrets: list[str] = []
            diagnosis = asyncio.run(_check(args, secrets))
            _print_check(diagnosis, args.reference, args.output, Redactor(secrets))
            return EXIT_OK if diagnosis.healthy else EXIT_PROBLEM
        if args.command == "explain":
            text = sys.stdin.read() if args.message == "-" else args.message
            diagnosis = classify.classify(text)
            _print_explain(diagnosis, args.output)
            return EXIT_OK
        if args.command == "recheck":
            return _recheck(args)
        if args.command == "workloads":
            return _workloads(args)
        if args.command == "run":
            from pullhealth.runtime import main  # imports kopf only when running the operator

            return main.run(args)
        if args.command == "agent":
            from pullhealth.agent import agentrun  # the node agent's runner (kubernetes client)

            return agentrun.run(args)
        if args.command == "codes":
            if args.code:
                try:
                    code = Code(args.code.upper())
                except ValueError:
                    raise UsageError(
                        f"no code {args.code}; the codes are: {', '.join(c.value for c in Code)}"
                    ) from None
                print(codedocs.code_markdown(code), end="")
                return EXIT_OK
            print(codedocs.codes_markdown(), end="")
            return EXIT_OK
    except UsageError as exc:
        print(f"pullhealth: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
