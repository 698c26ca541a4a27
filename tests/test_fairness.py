"""The operator-wide RegistryCheck limit: bounded in all, per namespace, round-robin.

Issue 21 measured 15 concurrent ``/v2/`` requests from one namespace's rechecks; here 15
chains of one namespace and 1 of another go through the limiter against a real registry,
counting the chains in flight.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from pullhealth.chain.probechain import ChainOptions, Target, run_chain
from pullhealth.domain.reference import parse_target
from pullhealth.registrychecks.fairness import FairLimiter
from support.world import TEST_DESTINATIONS


async def test_round_robin_over_namespaces_and_bounded_per_namespace() -> None:
    limiter = FairLimiter(lambda: 2)
    order: list[str] = []
    gate = asyncio.Event()

    async def job(ns: str, i: int) -> None:
        async with limiter.slot(ns):
            order.append(f"{ns}{i}")
            assert limiter.busy <= 2 and limiter.running[ns] <= 1  # half of 2
            await gate.wait()

    tasks = [asyncio.create_task(job("a", i)) for i in range(5)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(job("b", 0)))
    await asyncio.sleep(0.01)
    assert order == ["a0", "b0"]  # b's one job did not wait behind a's five
    gate.set()
    await asyncio.gather(*tasks)
    assert order[:2] == ["a0", "b0"] and sorted(order) == ["a0", "a1", "a2", "a3", "a4", "b0"]
    assert limiter.busy == 0 and limiter.waiting == 0


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    limiter = FairLimiter(lambda: 1, lambda: 1)
    hold = asyncio.Event()

    async def holder() -> None:
        async with limiter.slot("a"):
            await hold.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(holder())
    other = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiter.cancel()
    hold.set()
    await asyncio.gather(first, other)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.busy == 0 and limiter.waiting == 0


async def test_one_namespace_bursting_chains_stays_within_its_share(world: Any) -> None:
    limiter = FairLimiter(lambda: 4)
    in_flight = 0
    peak = 0
    lock = threading.Lock()
    registry, image = parse_target(f"{world.anon}/library/alpine:3.19")
    options = ChainOptions(nameserver=world.nameserver, ca_file=str(world.ca_bundle), timeout=3.0,
                           destinations=TEST_DESTINATIONS)
    finished: list[str] = []

    async def chain(ns: str) -> None:
        nonlocal in_flight, peak
        async with limiter.slot(ns):
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            try:
                await run_chain(Target(registry, image), options)
            finally:
                with lock:
                    in_flight -= 1
        finished.append(ns)

    burst = [asyncio.create_task(chain("noisy")) for _ in range(15)]
    await asyncio.sleep(0.05)
    quiet = asyncio.create_task(chain("quiet"))
    await asyncio.gather(*burst, quiet)
    assert peak <= 4, peak
    assert limiter.running == {} and len(finished) == 16
    # The quiet namespace's one chain did not wait for the noisy fifteen.
    assert finished.index("quiet") < 8, finished
