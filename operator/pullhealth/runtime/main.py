"""``pullhealth run``: the composition root of the operator.

The flags become one :class:`~pullhealth.runtime.settings.Settings`; kopf starts with it in
its ``memo``; the one start-up handler here builds the one
:class:`~pullhealth.runtime.state.Runtime` (:func:`pullhealth.runtime.startup.build`), then
the controllers that receive it: the RegistryCheck loops (kopf delivers their events),
the failing-pod stream (our own list-and-watch), with ``--workloads`` the workload image
checks and, with ``--admission-port``, the
admission webhook's server. The one clean-up handler stops them in
reverse order. Nothing else starts anything.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import kopf

from pullhealth.admission import server as admission_server
from pullhealth.domain.redact import install_log_redaction
from pullhealth.pods.handlers import PodController
from pullhealth.registrychecks import handlers as registrycheck_handlers
from pullhealth.registrychecks.handlers import RegistryCheckController
from pullhealth.runtime import settings as settings_module
from pullhealth.runtime import startup
from pullhealth.runtime.settings import Settings
from pullhealth.workloads.controller import WorkloadController

SETTINGS_KEY, RUNTIME_KEY, PODS_KEY, ADMISSION_KEY = "settings", "runtime", "pods", "admission"
WORKLOADS_KEY = "workloads"


def run(args: argparse.Namespace) -> int:
    """Start kopf with pullhealth's handlers; returns when the operator stops."""
    try:
        settings = settings_module.from_args(args)
    except ValueError as exc:  # a bad CIDR, an unreadable report key: say which, do not start
        print(f"pullhealth run: error: {exc}", file=sys.stderr)
        return 2
    kopf.configure(
        verbose=settings.verbose,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
    )
    # kopf has configured its handlers now: mask secret-shaped text in everything logged.
    install_log_redaction()
    logging.getLogger("kopf.objects").addFilter(_no_success_lines)
    # httpx logs every request at INFO ("HTTP Request: GET ..."): one line per probe step.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=settings.liveness or None,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        memo=kopf.Memo({SETTINGS_KEY: settings}),
    )
    return 0


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Build the runtime and start what runs on it, in order."""
    ours: Settings = memo[SETTINGS_KEY]
    startup.tune_kopf(settings, ours, logger)
    runtime = startup.build(ours, logger)
    memo[RUNTIME_KEY] = runtime
    checks = RegistryCheckController(runtime)
    checks.start()
    memo[registrycheck_handlers.MEMO_KEY] = checks
    if ours.pods:
        pods = PodController(runtime, settings)
        pods.start()
        memo[PODS_KEY] = pods
    if ours.workloads:
        workloads = WorkloadController(runtime)
        workloads.start()
        memo[WORKLOADS_KEY] = workloads
    if ours.admission_port:
        # Every replica serves the webhook (it only reads). Without its certificate the
        # operator still runs: the webhook's failurePolicy is Ignore, applies go through.
        admission = admission_server.build(runtime)
        try:
            await admission.start()
        except Exception as exc:
            logger.error("admission webhook not started: %s: %s", type(exc).__name__, exc)
        else:
            memo[ADMISSION_KEY] = admission


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    """Operator shut-down: the webhook, the pod stream, the check loops, then the readers."""
    if ADMISSION_KEY in memo:
        await memo[ADMISSION_KEY].stop()
    if WORKLOADS_KEY in memo:
        await memo[WORKLOADS_KEY].stop()
    if PODS_KEY in memo:
        await memo[PODS_KEY].stop()
    if registrycheck_handlers.MEMO_KEY in memo:
        await memo[registrycheck_handlers.MEMO_KEY].stop()
    if RUNTIME_KEY in memo:
        memo[RUNTIME_KEY].stop_readers()


def _no_success_lines(record: logging.LogRecord) -> bool:
    """Drop kopf's "Handler '...' succeeded." INFO line, written for every watch event.

    The handlers log one line per result change or error themselves; a success line per
    event would be most of the log volume (bench/log_volume.py measures it).
    """
    return not (record.levelno == logging.INFO and str(record.msg).endswith(" succeeded."))
