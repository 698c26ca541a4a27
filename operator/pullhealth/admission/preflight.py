"""Admission's checks: a planned request's images, each on the pod spec's own pull path.

The one resolver of failing pods (:func:`pullhealth.pods.podcheck.probe_pull_path`: pull
secrets of the spec, then the service account's, then node or workload identity for ACR
under the trust policy; destinations under the admin's policy) and the same single-flight
cache (the runtime's ``pod_cache``): a result a failing pod or an earlier apply left for
a (registry, credential, image) answers at once, a new one starts one chain that every
concurrent apply and pod joins. The cache key carries the namespace whenever the
namespace's secrets decide the result (:mod:`pullhealth.chain.pullpath`), so no
namespace learns from another's secrets.

Bounded: the whole answer waits at most ``budget`` seconds; a check still running then
goes on and answers the next apply, the request gets no warning for that image. At most
``max_pending`` such checks run at once: past it, an apply's new images are not checked
(no warning), so a flood of never-seen images (a slow registry, a loop of dry runs) cannot
grow a backlog without limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pullhealth.admission import decision
from pullhealth.chain.pullsources import ClusterReader, Environment
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import make, redacted
from pullhealth.domain.model import Diagnosis
from pullhealth.domain.redact import Redactor, one_line
from pullhealth.domain.reference import InvalidReference, parse
from pullhealth.pods import podcheck

log = logging.getLogger(__name__)

MAX_PENDING = 256


@dataclass(frozen=True)
class Preflight:
    """What an admission check runs on (all from the runtime, shared with failing pods).

    Attributes:
        reader: Secrets, ServiceAccounts (and Nodes) as pods read them.
        env: the operator's network settings and trust policy.
        cache: the failing pods' single-flight cache.
        settings: the chain's timeout and the default platform.
        platforms: ``(spec, default)`` -> the platforms of the nodes the spec's pods may land
            on (:func:`pullhealth.domain.placement.node_platforms` over the Nodes known now).
        on_request: called before each registry request (the probe-request metric).
    """

    reader: ClusterReader
    env: Environment
    cache: SingleFlight[Diagnosis]
    settings: podcheck.PodSettings
    platforms: Callable[[Mapping[str, Any], str], tuple[str, ...]] = lambda spec, default: (default,)
    on_request: Callable[[str, str], None] | None = None
    max_pending: int = MAX_PENDING
    # Checks that outlived their apply's budget, still running (they answer the next one).
    pending: set[asyncio.Task[Diagnosis]] = field(default_factory=set, compare=False)
    # Images left unchecked because max_pending checks were running (a one-item counter).
    skipped: list[int] = field(default_factory=lambda: [0], compare=False)

    async def diagnose(self, plan: decision.Plan, budget: float) -> list[tuple[str, Diagnosis]]:
        """(image, masked diagnosis) of each image answered within ``budget`` seconds, in
        the plan's order; an image whose check is still running, or was not started
        because ``max_pending`` checks are running, is left out."""
        if not plan.images:
            return []
        platforms = self.platforms(plan.spec, self.settings.platform)
        tasks: list[tuple[str, asyncio.Task[Diagnosis]]] = []
        for image in plan.images:
            if len(self.pending) >= self.max_pending:
                self.skipped[0] += 1
                continue
            task = asyncio.ensure_future(self._one(plan, image, platforms))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
            tasks.append((image, task))
        if not tasks:
            return []
        # Not cancelled at the budget: a check left running completes (its chain is the
        # shared one) and its result is cached for the next apply.
        done, _ = await asyncio.wait([t for _, t in tasks], timeout=max(budget, 0.0))
        return [(image, task.result()) for image, task in tasks if task in done]

    def cancel_pending(self) -> None:
        """At shut-down: the checks still running are dropped."""
        for task in list(self.pending):
            task.cancel()

    async def _one(self, plan: decision.Plan, reference: str, platforms: Sequence[str]) -> Diagnosis:
        redactor = Redactor()  # learns every pull secret the spec's path reads
        try:
            image = parse(reference)
        except InvalidReference as exc:
            facts = {"reference": reference, "detail": str(exc), "namespace": plan.namespace, "container": ""}
            return make(Code.INVALID_IMAGE_NAME, facts)
        try:
            context = podcheck.PullContext(self.reader, self.env, self.settings, self.cache, self.on_request)
            diagnosis = await podcheck.probe_pull_path(
                plan.spec, image, platforms[0], plan.namespace, context, redactor
            )
        except Exception as exc:  # a check that cannot run warns nothing
            log.warning(
                "admission check of an image in %s failed: %s",
                plan.namespace,
                one_line(f"{type(exc).__name__}: {exc}", redactor=redactor),
            )
            return make(Code.UNKNOWN, {"detail": "the check failed"})
        if decision.platform_found(diagnosis, platforms):
            return make(Code.OK, diagnosis.facts)
        return redacted(diagnosis, redactor)
