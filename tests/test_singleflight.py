"""SingleFlight: concurrent identical work runs once; results are reused for the TTL."""

from __future__ import annotations

import asyncio
import contextlib

from pullhealth.chain.singleflight import SingleFlight


async def test_concurrent_callers_share_one_run() -> None:
    flight: SingleFlight[int] = SingleFlight(ttl=60)
    started = asyncio.Event()

    async def work() -> int:
        started.set()
        await asyncio.sleep(0.05)
        return 42

    results = await asyncio.gather(*(flight.get("r", "k", work) for _ in range(200)))
    assert results == [42] * 200 and flight.runs == 1


async def test_ttl_expiry_reruns_and_keys_are_distinct() -> None:
    now = [0.0]
    flight: SingleFlight[str] = SingleFlight(ttl=10, clock=lambda: now[0])
    calls: list[str] = []

    async def work(tag: str) -> str:
        calls.append(tag)
        return tag

    assert await flight.get("r", "a", lambda: work("a")) == "a"
    assert await flight.get("r", "a", lambda: work("a2")) == "a"  # fresh: reused
    assert await flight.get("r", "b", lambda: work("b")) == "b"  # other key: runs
    now[0] = 11.0
    assert await flight.get("r", "a", lambda: work("a3")) == "a3"  # expired: runs again
    assert calls == ["a", "b", "a3"]


async def test_per_registry_limit_bounds_concurrency() -> None:
    flight: SingleFlight[int] = SingleFlight(ttl=60, per_registry=2)
    running = 0
    peak = 0

    async def work() -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return 1

    await asyncio.gather(*(flight.get("reg", i, work) for i in range(10)))
    assert peak == 2 and flight.runs == 10


async def test_max_entries_is_bounded() -> None:
    flight: SingleFlight[int] = SingleFlight(ttl=60, max_entries=5)

    async def work() -> int:
        return 1

    for i in range(50):
        await flight.get("r", i, work)
    assert len(flight._entries) == 5


async def test_failure_is_shared_not_cached_forever() -> None:
    now = [0.0]
    flight: SingleFlight[int] = SingleFlight(ttl=1, clock=lambda: now[0])

    async def boom() -> int:
        raise RuntimeError("x")

    for _ in range(2):
        with contextlib.suppress(RuntimeError):
            await flight.get("r", "k", boom)
    assert flight.runs == 1
    now[0] = 2.0

    async def ok() -> int:
        return 7

    assert await flight.get("r", "k", ok) == 7


async def test_ttl_zero_shares_nothing() -> None:
    flight: SingleFlight[int] = SingleFlight(ttl=0, per_registry=3)

    async def work() -> int:
        await asyncio.sleep(0.01)
        return 1

    await asyncio.gather(*(flight.get("r", "same", work) for _ in range(10)))
    assert flight.runs == 10


async def test_entry_expires_when_its_run_ends_even_if_the_starter_was_cancelled() -> None:
    now = [0.0]
    flight: SingleFlight[int] = SingleFlight(ttl=5, clock=lambda: now[0])
    release = asyncio.Event()

    async def work() -> int:
        await release.wait()
        return 1

    starter = asyncio.ensure_future(flight.get("r", "k", work))
    await asyncio.sleep(0)
    starter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starter
    release.set()
    assert await flight.get("r", "k", work) == 1  # the run went on and is shared
    now[0] = 6.0
    flight._prune()
    assert len(flight) == 0  # and it expired: nothing stays forever


async def test_failures_are_shared_for_the_short_failure_ttl_only() -> None:
    now = [0.0]
    flight: SingleFlight[int] = SingleFlight(ttl=60, clock=lambda: now[0], failure_ttl=5,
                                             is_failure=lambda v: v < 0)
    results = iter([-1, 2, 3])

    async def work() -> int:
        return next(results)

    assert await flight.get("r", "k", work) == -1
    now[0] = 4.0
    assert await flight.get("r", "k", work) == -1  # shared within the failure TTL
    now[0] = 6.0
    assert await flight.get("r", "k", work) == 2  # then checked again
    now[0] = 50.0
    assert await flight.get("r", "k", work) == 2  # a success lives for the full TTL
    assert flight.runs == 2


async def test_limiters_of_unused_registries_are_dropped() -> None:
    flight: SingleFlight[int] = SingleFlight(ttl=60)

    async def work() -> int:
        assert flight.registries >= 1
        return 1

    for i in range(100):
        await flight.get(f"registry-{i}", i, work)
    assert flight.registries == 0


async def test_a_slow_registry_holds_at_most_its_share_of_the_shared_slots() -> None:
    shared = asyncio.Semaphore(4)
    flight: SingleFlight[str] = SingleFlight(ttl=0, per_registry=2, shared_limit=shared)
    stuck = asyncio.Event()

    async def slow() -> str:
        await stuck.wait()
        return "slow"

    async def fast() -> str:
        return "fast"

    slow_callers = [asyncio.ensure_future(flight.get("slow", i, slow)) for i in range(16)]
    await asyncio.sleep(0.01)
    assert await asyncio.wait_for(flight.get("fast", "x", fast), 1) == "fast"
    stuck.set()
    assert await asyncio.gather(*slow_callers) == ["slow"] * 16


async def test_on_result_sees_each_fresh_answer_once() -> None:
    seen: list[tuple[str, int]] = []
    flight: SingleFlight[int] = SingleFlight(ttl=60, on_result=lambda registry, result: seen.append((registry, result)))

    async def work() -> int:
        await asyncio.sleep(0.01)
        return 7

    await asyncio.gather(*(flight.get("r.io", "k", work) for _ in range(20)))
    await flight.get("r.io", "k", work)  # shared from the cache: not a fresh answer
    await flight.get("other.io", "k2", work)
    assert seen == [("r.io", 7), ("other.io", 7)]


async def test_a_fresh_run_replaces_the_shared_result_and_is_observed() -> None:
    # A RegistryCheck's recheck: a new run although one is fresh, within the registry's bound.
    seen: list[int] = []
    flight: SingleFlight[int] = SingleFlight(
        ttl=60, per_registry=1, on_result=lambda _registry, result: seen.append(result)
    )
    answers = iter(range(1, 10))

    async def work() -> int:
        await asyncio.sleep(0.01)
        return next(answers)

    assert await flight.get("r.io", "k", work) == 1
    assert await flight.get("r.io", "k", work) == 1  # shared
    assert await flight.get("r.io", "k", work, fresh=True) == 2  # run anew
    assert await flight.get("r.io", "k", work) == 2  # the fresh result is the one shared now
    # Two fresh runs at once: each runs, one after the other (per_registry=1).
    assert sorted(await asyncio.gather(*(flight.get("r.io", "k", work, fresh=True) for _ in range(2)))) == [3, 4]
    assert seen == [1, 2, 3, 4] and flight.runs == 4
