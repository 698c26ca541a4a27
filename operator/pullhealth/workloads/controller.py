"""Workload image checks: every workload's images on its own pull path, before pods fail.

:class:`WorkloadController` is built by the composition root with the runtime (``--workloads``).
It reads the workload kinds and pods with the one list-and-watch reader
(:class:`pullhealth.kube.listwatch.ListWatch`, one per kind, scoped like pods); the reading
thread keeps only a compact :class:`~pullhealth.workloads.inventory.Workload` per object.
Each workload is checked when it first appears or changes (images, pull secrets, service
account, node selector, a running container's digest) and again every
``--workload-interval`` seconds (+-10 % jitter, so a pass is a trickle, not a burst), by at most
``--workload-workers`` checks at once.

A check is the failing pods' own: :func:`pullhealth.pods.podcheck.probe_pull_path` (pull
secrets, then the service account's, node or workload identity for ACR under the trust
policy) through the runtime's ``pod_cache`` (one chain per registry, credential, image and
interval, shared with failing pods and admission), then
:func:`~pullhealth.workloads.inventory.judge` and :func:`~pullhealth.workloads.inventory.plan`.
What it writes: Events on the workload when a container's result changes (never the
workload itself: GitOps tools would see drift) and the ``pullhealth_workload_image_problems``
gauge. With leader election, an outranked replica checks nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from pullhealth import metrics
from pullhealth.bounded import BoundedDict
from pullhealth.chain import singleflight
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import make, redacted
from pullhealth.domain.model import Diagnosis
from pullhealth.domain.redact import Redactor, one_line
from pullhealth.domain.reference import InvalidReference, parse
from pullhealth.kube import kubeapi, listwatch, watchcache
from pullhealth.pods import podcheck
from pullhealth.runtime.state import Runtime
from pullhealth.workloads import inventory, pacing

log = logging.getLogger(__name__)

MAX_WORKLOADS = 100_000  # compact records kept at most (the oldest dropped first)
JITTER = 0.1  # +-10 % of the interval
# A workload whose registry's next turn is further off than this, or whose registry another
# worker is checking a workload of, is parked per registry, not held in a worker: one
# registry's budget must not hold the workers while others' are free.
MAX_INLINE_WAIT = 0.5
# The first listing is checked in random order over this many seconds at most (the
# interval, if shorter): objects are listed namespace by namespace, and one namespace's
# images often all live in one registry, which the pacing would then serialize.
FIRST_PASS_SPREAD = 30.0
WITHOUT = "workloads of this kind are not checked until it is granted"


def _registry(image: str) -> str:
    try:
        return parse(image).registry
    except InvalidReference:
        return ""


class WorkloadController:
    """The workload image checks of one operator process."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._workloads: BoundedDict[str, inventory.Workload] = BoundedDict(MAX_WORKLOADS)
        self._reported: BoundedDict[str, Mapping[str, str]] = BoundedDict(MAX_WORKLOADS)
        self._due: list[tuple[float, int, str]] = []  # (when, tie-break, uid); stale entries skipped
        self._next: dict[str, float] = {}
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None
        self._streams: list[listwatch.ListWatch] = []
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._random = random.Random()
        self._kinds: dict[str, int] = {}
        self._busy: set[str] = set()  # registries a worker checks a workload of now
        self._held: dict[str, collections.deque[str]] = {}  # due workloads parked per registry
        self._timers: set[str] = set()  # registries with a release timer pending
        settings = runtime.settings
        rates = pacing.parse_rates(settings.workload_registry_rates)
        self.pacer = pacing.Pacer(settings.workload_rate, rates)
        self.checks = 0  # checks run (tests, benchmarks)

    def start(self) -> None:
        """Start reading the workload kinds and pods, and the workers (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        api = self.runtime.kube.api
        scopes, in_scope = self.runtime.settings.read_scopes()
        relevant = inventory.checked if in_scope is None else (lambda o: in_scope(o) and inventory.checked(o))
        for kind, (_, _, plural) in inventory.KINDS.items():
            lister = (
                listwatch.core_lister(api, plural) if kind == "Pod" else listwatch.group_lister(api, plural)
            )
            stream = listwatch.ListWatch(
                lister, scopes, self._deliver, relevant=relevant, what=plural, without=WITHOUT
            )
            stream.start()
            self._streams.append(stream)
        for index in range(self.runtime.settings.workload_workers):
            self._workers.append(asyncio.create_task(self._work(), name=f"pullhealth workloads {index}"))

    async def stop(self) -> None:
        """The reading threads end, the running checks are cancelled."""
        for stream in self._streams:
            stream.stop()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    # --- reading thread -> loop

    def _deliver(self, kind: str, obj: Mapping[str, Any]) -> None:
        """On a reading thread: keep the compact workload only, hand it to the loop."""
        uid = listwatch.uid_of(obj)
        work = None if kind == "DELETED" else inventory.workload(obj)
        if self._loop is not None and uid:
            self._loop.call_soon_threadsafe(self._put, uid, work, kind == "LISTED")

    def _put(self, uid: str, work: inventory.Workload | None, listed: bool = False) -> None:
        old = self._workloads.get(uid)
        if work is None:
            self._forget(uid)
            return
        self._workloads[uid] = work
        if old is None or old.inputs != work.inputs:
            # New or changed: now; found by a (re-)list: soon, in random order.
            spread = min(FIRST_PASS_SPREAD, self.runtime.settings.workload_interval)
            spread = spread if listed and old is None else 0.0
            self._schedule(uid, time.monotonic() + self._random.uniform(0.0, spread))
        if old is None or old.kind != work.kind:
            self._count(work.kind, +1)
            if old is not None:
                self._count(old.kind, -1)

    def _forget(self, uid: str) -> None:
        old = self._workloads.pop(uid, None)
        self._reported.pop(uid, None)
        self._next.pop(uid, None)
        metrics.WORKLOAD_PROBLEMS.forget(uid)
        if old is not None:
            self._count(old.kind, -1)

    def _count(self, kind: str, change: int) -> None:
        self._kinds[kind] = max(0, self._kinds.get(kind, 0) + change)
        metrics.WORKLOADS_KNOWN.labels(kind).set(self._kinds[kind])

    def _schedule(self, uid: str, when: float) -> None:
        self._next[uid] = when
        heapq.heappush(self._due, (when, next(self._seq), uid))
        if self._wake is not None:
            self._wake.set()

    # --- the workers

    async def _next_due(self) -> str:
        assert self._wake is not None
        while True:
            while self._due:
                when, _, uid = self._due[0]
                if self._next.get(uid) != when or uid not in self._workloads:
                    heapq.heappop(self._due)  # rescheduled or gone since
                    continue
                wait = when - time.monotonic()
                if wait <= 0:
                    heapq.heappop(self._due)
                    interval = self.runtime.settings.workload_interval
                    jitter = 1.0 + self._random.uniform(-JITTER, JITTER)
                    # The next check is due a jittered interval from now; a change before
                    # then reschedules it at once.
                    self._schedule(uid, time.monotonic() + interval * jitter)
                    return uid
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                break
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _work(self) -> None:
        # The chains this worker starts wait for their registry's turn (this task's context only).
        singleflight.PACE.set(self.pacer.wait)
        while True:
            uid = await self._next_due()
            work = self._workloads.get(uid)
            if work is None:
                continue
            registry = _registry(work.containers[0].image) if work.containers else ""
            if registry in self._busy or self.pacer.delay(registry) > MAX_INLINE_WAIT:
                self._hold(registry, uid)  # checked when its registry is free
                continue
            self._busy.add(registry)
            try:
                await self.check(work)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the worker
                log.exception("workload check of %s %s/%s failed: %s", work.kind, work.namespace, work.name,
                              exc)
            finally:
                self._busy.discard(registry)
                self._release(registry)

    def _hold(self, registry: str, uid: str) -> None:
        """Park a due workload until its (first image's) registry is free: one check per
        registry at a time, and none before the registry's next turn, without holding a
        worker; each parked workload is touched once per release (no busy loop)."""
        self._held.setdefault(registry, collections.deque()).append(uid)
        if registry not in self._busy and registry not in self._timers and self._loop is not None:
            self._timers.add(registry)
            self._loop.call_later(self.pacer.delay(registry), self._release, registry)

    def _release(self, registry: str) -> None:
        """The registry is free (a check ended, or its turn came): its next parked workload
        is due when the registry's next turn is."""
        self._timers.discard(registry)
        queue = self._held.get(registry)
        while queue:
            uid = queue.popleft()
            if uid in self._workloads:
                self._schedule(uid, time.monotonic() + self.pacer.delay(registry))
                break
        if queue is not None and not queue:
            del self._held[registry]

    # --- one check

    async def check(self, work: inventory.Workload) -> inventory.Plan | None:
        """Check one workload's images; post the Events of what changed; set the gauge."""
        runtime = self.runtime
        if await runtime.outranked(work.namespace):
            return None  # the leader checks it
        self.checks += 1
        metrics.WORKLOAD_CHECKS.inc()
        reader = runtime.pod_reader if runtime.pod_reader is not None else runtime.kube
        mirror = runtime.pod_reader.nodes if runtime.pod_reader is not None else None
        wanted = watchcache.node_platforms(
            mirror, work.pull_spec, runtime.pod_settings.platform, work.node
        )[: inventory.MAX_PLATFORMS]
        results: list[tuple[inventory.Container, Diagnosis]] = []
        for container in work.containers:
            results.append((container, await self._check_container(work, container, wanted, reader)))
        previous = self._reported.get(work.uid) or {}
        plan = inventory.plan(work, previous, results)
        state = dict(plan.state)
        for key, _code, spec in plan.events:
            posted = await runtime.kube.post(
                spec, runtime.instance, log, retried="retried at the workload's next check",
                refused="The gauge is set without it.",
            )
            if posted is kubeapi.Posted.REFUSED:
                metrics.PATCH_FORBIDDEN.labels("events").inc()
            elif posted is not kubeapi.Posted.POSTED:
                # Not reported: the next check compares with what was reported before.
                if key in previous:
                    state[key] = previous[key]
                else:
                    state.pop(key, None)
        if self._workloads.get(work.uid) is None:
            return plan  # deleted while it was checked: no series comes back
        self._reported[work.uid] = state
        names = {c.key: c.name for c in work.containers}
        metrics.WORKLOAD_PROBLEMS.set(
            work.uid, work.namespace, work.kind, work.name,
            [(names.get(key, key), code) for key, code in plan.findings],
        )
        for key, code, spec in plan.events:
            if state.get(key) == code:
                log.info("%s %s/%s container %s: %s (%s)", work.kind, work.namespace, work.name,
                         names.get(key, key), code, spec.reason)
        return plan

    async def _check_container(
        self, work: inventory.Workload, container: inventory.Container, wanted: tuple[str, ...], reader: Any
    ) -> Diagnosis:
        runtime = self.runtime
        redactor = Redactor()  # learns every pull secret the workload's pull path reads
        try:
            image = parse(container.image)
        except InvalidReference as exc:
            facts = {"reference": container.image, "detail": str(exc), "namespace": work.namespace,
                     "container": container.name}
            return make(Code.INVALID_IMAGE_NAME, facts)
        try:
            context = podcheck.PullContext(
                reader, runtime.env, runtime.pod_settings, runtime.pod_cache, metrics.count_probe_request
            )
            diagnosis = await podcheck.probe_pull_path(
                work.pull_spec, image, wanted[0], work.namespace, context, redactor
            )
        except Exception as exc:  # a check that cannot run reports nothing
            log.warning("workload check of %s/%s failed: %s", work.namespace, work.name,
                        one_line(f"{type(exc).__name__}: {exc}", redactor=redactor))
            return make(Code.UNKNOWN, {"detail": "the check failed"})
        self._observe(image.registry, diagnosis)
        return redacted(inventory.judge(container, image, diagnosis, wanted), redactor)

    def _observe(self, registry: str, diagnosis: Diagnosis) -> None:
        """The registry's budget as the answer tells it: 429 and Retry-After, RateLimit-*."""
        budget = inventory.budget(diagnosis)
        self.pacer.observe(registry, diagnosis.code is Code.RATE_LIMITED, budget.retry_after, budget.limit,
                           budget.remaining)
