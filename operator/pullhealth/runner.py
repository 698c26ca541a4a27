"""``pullhealth run``: the operator with production settings."""

from __future__ import annotations

import kopf

from pullhealth.handlers import startup


def run(
    *, namespaces: list[str], metrics_port: int, liveness: str, log_format: str,
    peering: str | None, verbose: bool,
) -> int:
    """Start kopf with pullhealth's handlers; returns when the operator stops."""
    startup.OPTIONS.metrics_port = metrics_port
    startup.OPTIONS.peering = peering
    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
    )
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness or None,
        standalone=peering is None,
        peering_name=peering,
    )
    return 0
