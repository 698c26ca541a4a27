"""The workload controller's queue (pullhealth.workloads.controller), on a real event loop:
one check per registry at a time, each registry's turns kept, no registry holding the
workers while another's are free, no busy loop while workloads wait for their registry.
The checks themselves are replaced by a recorder (the check path is e2e/test_workloads.py's)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from pullhealth.runtime.settings import Settings
from pullhealth.runtime.state import Runtime
from pullhealth.workloads import inventory
from pullhealth.workloads.controller import WorkloadController


class Recording(WorkloadController):
    """Each check takes its registry's turn (a cache miss) and records when it ran."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.ran: list[tuple[str, float, float]] = []  # (registry, start, end)
        self.holds = 0

    async def check(self, work: inventory.Workload) -> Any:
        registry = work.containers[0].image.split("/")[0]
        await self.pacer.wait(registry)
        start = time.monotonic()
        await asyncio.sleep(0.01)
        self.ran.append((registry, start, time.monotonic()))
        return None

    def _hold(self, registry: str, uid: str) -> None:
        self.holds += 1
        super()._hold(registry, uid)


def workload(i: int, registry: str) -> inventory.Workload:
    obj = {"kind": "Deployment", "metadata": {"uid": f"u{i}", "namespace": "ns", "name": f"w{i}"},
           "spec": {"template": {"spec": {"containers": [{"name": "c", "image": f"{registry}/app:{i}"}]}}}}
    work = inventory.workload(obj)
    assert work is not None
    return work


async def test_one_check_per_registry_at_a_time_and_no_registry_holds_the_others() -> None:
    settings = Settings(workload_interval=300.0, workload_workers=4, workload_rate=300.0)  # 0.2 s apart
    controller = Recording(Runtime(settings=settings, kube=None, status=None))  # type: ignore[arg-type]
    controller._loop = asyncio.get_running_loop()
    controller._wake = asyncio.Event()
    # Listed in order: every workload of slow.test first (its budget 30 a minute: 2 s apart),
    # then those of fast.test.
    controller.pacer.rates["slow.test"] = 30.0
    for i in range(6):
        controller._put(f"u{i}", workload(i, "slow.test"))
    for i in range(6, 16):
        controller._put(f"u{i}", workload(i, "fast.test"))
    workers = [asyncio.create_task(controller._work()) for _ in range(settings.workload_workers)]
    try:
        deadline = time.monotonic() + 30
        while sum(r == "fast.test" for r, _, _ in controller.ran) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    fast = [(s, e) for r, s, e in controller.ran if r == "fast.test"]
    slow = [(s, e) for r, s, e in controller.ran if r == "slow.test"]
    assert len(fast) == 10
    # Listed behind all of slow.test's, fast.test's went on while slow.test waited for its
    # turns (2 s apart): the first of fast.test ran before slow.test's second.
    assert slow and (len(slow) == 1 or fast[0][0] < slow[1][0]), (fast, slow)
    for runs, spacing in ((fast, 0.2), (slow, 2.0)):
        for (s0, e0), (s1, _) in itertools.pairwise(runs):
            assert s1 >= e0  # never two at once against one registry
            assert s1 - s0 >= spacing * 0.5 - 0.01  # its turns, jitter included
    # Parked workloads are touched once per release, not spun on.
    assert controller.holds < 60, controller.holds
