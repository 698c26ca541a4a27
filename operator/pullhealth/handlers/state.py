"""Process-wide collaborators of the handlers, set once by the start-up handler."""

from __future__ import annotations

import asyncio

from pullhealth import kube as kubeapi
from pullhealth import podcheck
from pullhealth.cluster import Environment
from pullhealth.coalesce import SingleFlight
from pullhealth.diagnose import transient
from pullhealth.model import Diagnosis


class State:
    """The API client, settings and the shared probe caches."""

    kube: kubeapi.KubeWriter | None = None
    status: kubeapi.StatusWriter | None = None
    env: Environment = Environment()
    pod_settings: podcheck.PodSettings = podcheck.PodSettings()
    # Identical RegistryChecks (same registry, credentials, image) share one chain run.
    registry_check_cache: SingleFlight[Diagnosis] = SingleFlight(ttl=20.0, is_failure=transient)
    # Failing pods: one chain per (registry, credential, image) per interval.
    pod_cache: SingleFlight[Diagnosis] = SingleFlight(ttl=60.0, per_registry=4)
    pod_pool: asyncio.Semaphore | None = None
    forbidden_until: dict[str, float] = {}
    # RegistryCheck uid -> (generation, recheck request, monotonic time before which it is
    # not run again) of the last check run here: a status write that failed (RBAC,
    # conflict), or an event carrying an older status, must not cause a retry storm
    # against the registry.
    last_run: dict[str, tuple[int, str | None, float]] = {}
