"""``pullhealth run``: the operator with production settings."""

from __future__ import annotations

import argparse
import importlib
import logging

import kopf

from pullhealth.agent.nodereport import read_key
from pullhealth.domain.redact import install_log_redaction
from pullhealth.probes import destinations
from pullhealth.runtime import startup


def run(args: argparse.Namespace) -> int:
    """Start kopf with pullhealth's handlers; returns when the operator stops."""
    options = startup.OPTIONS
    options.metrics_port = args.metrics_port
    options.metrics_bind_address = args.metrics_bind_address
    options.metrics_secure = args.metrics_secure
    options.metrics_registries = tuple(r.strip() for r in args.metrics_registries.split(",") if r.strip())
    options.peering = args.peering
    options.namespaces = tuple(args.namespace or ())
    options.pods = not args.no_pods
    options.node_agent = args.node_agent
    options.pod_interval = max(0.0, args.pod_interval)
    options.per_registry = max(1, args.per_registry)
    options.workers = max(1, args.workers)
    options.registry_check_workers = max(1, args.registry_check_workers)
    options.api_concurrency = max(1, min(args.api_concurrency, 256))
    options.acr_domains = args.acr_domains
    options.kubelet_client_id = args.kubelet_client_id
    options.managed_identities = tuple(args.allow_managed_identity)
    options.workload_identity = args.workload_identity
    options.arm_audience = args.arm_audience
    options.allow_cidrs = tuple(args.allow_cidr)
    options.deny_cidrs = tuple(args.deny_cidr)
    options.registry_hosts = tuple(args.registry_host)
    options.agent_report_key = read_key(args.agent_report_key_file)
    # Bad CIDRs stop the start, with the flag's value named.
    destinations.parse_networks([*options.allow_cidrs, *options.deny_cidrs])
    importlib.import_module("pullhealth.registrychecks.handlers")
    if options.pods:
        importlib.import_module("pullhealth.pods.handlers")
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    # kopf has configured its handlers now: mask secret-shaped text in everything logged.
    install_log_redaction()
    logging.getLogger("kopf.objects").addFilter(_no_success_lines)
    # httpx logs every request at INFO ("HTTP Request: GET ..."): one line per probe step.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
        standalone=args.peering is None,
        peering_name=args.peering,
    )
    return 0


def _no_success_lines(record: logging.LogRecord) -> bool:
    """Drop kopf's "Handler '...' succeeded." INFO line, written for every watch event.

    The handlers log one line per result change or error themselves; a success line per
    event would be most of the log volume (bench/log_volume.py measures it).
    """
    return not (record.levelno == logging.INFO and str(record.msg).endswith(" succeeded."))
