"""Operator start-up: settings, collaborators and the metrics endpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf

from pullhealth import kube, metrics, registrycheck
from pullhealth.handlers.registrychecks import State


@dataclass
class Options:
    """Set by ``pullhealth run`` before kopf starts."""

    metrics_port: int = 8080
    peering: str | None = None


OPTIONS = Options()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """Tune kopf and wire the domain's collaborators."""
    # kopf turns log lines into Events; only our explicit events are wanted (the reasons
    # promised in the docs), so no log level is high enough to be posted.
    settings.posting.level = logging.CRITICAL + 10
    settings.peering.standalone = OPTIONS.peering is None
    if OPTIONS.peering:
        settings.peering.name = OPTIONS.peering
        settings.peering.mandatory = True
    # Every API call is bounded; watches reconnect rather than hang.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 30
    settings.batching.error_delays = [1, 5, 15, 30, 60]
    State.reader = kube.KubeReader()
    State.env = registrycheck.Environment.from_env()
    if OPTIONS.metrics_port:
        metrics.serve(OPTIONS.metrics_port)
        logger.info("metrics on :%d/metrics", OPTIONS.metrics_port)
