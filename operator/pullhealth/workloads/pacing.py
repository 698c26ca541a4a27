"""Each registry's budget for workload checks: a steady, jittered trickle, slower on 429.

A :class:`Pacer` spaces the probe chains workload checks *start* against one registry (a
cached result costs nothing and is not paced): at most ``per_minute`` chains a minute per
registry, each spacing jittered by +-50 % so replicas and restarts do not line up, and
multiplied by a back-off factor that doubles on each 429 (``RATE_LIMITED``) up to
``MAX_BACKOFF`` and halves on each answer that is not one; while a registry's
``RateLimit-Remaining`` is under a tenth of its ``RateLimit-Limit`` the spacing is
multiplied by ``LOW_REMAINING_FACTOR`` too. A ``Retry-After`` of a 429 is honoured (at most
``MAX_RETRY_AFTER`` s). The wait happens before the chain takes any slot of the shared cache
(:data:`pullhealth.chain.singleflight.PACE`): failing pods are never queued behind it.

Defaults (:data:`DEFAULT_PER_MINUTE`, :data:`DOCKER_HUB_PER_MINUTE`) and why: docs/workloads.md.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping

from pullhealth.bounded import BoundedDict

DEFAULT_PER_MINUTE = 30.0
# Docker Hub counts manifest GETs as pulls (HEADs are free): an index's platform check GETs
# it. 2 a minute keeps a full pass well inside an authenticated account's limit per hour
# when most images are cached by the shared cache; see docs/workloads.md.
DOCKER_HUB_PER_MINUTE = 2.0
DOCKER_HUB = ("docker.io", "registry-1.docker.io", "index.docker.io")
JITTER = 0.5
MAX_BACKOFF = 64.0
LOW_REMAINING_FACTOR = 4.0
MAX_RETRY_AFTER = 3600.0
MAX_REGISTRIES = 1024


def parse_rates(values: tuple[str, ...]) -> dict[str, float]:
    """``HOST=PER_MINUTE`` pairs (``--workload-registry-rate``).

    Raises:
        ValueError: a pair that does not parse or a rate not above 0 (the message names it).
    """
    rates: dict[str, float] = {}
    for value in values:
        host, sep, rate = value.partition("=")
        try:
            number = float(rate)
        except ValueError:
            number = 0.0
        if not sep or not host.strip() or not number > 0 or number > 6000:
            raise ValueError(
                f"--workload-registry-rate {value}: expected HOST=CHAINS_PER_MINUTE (0 < n <= 6000)"
            )
        rates[host.strip().lower()] = number
    return rates


class Pacer:
    """Per-registry spacing of new probe chains.

    Args:
        per_minute: chains a minute per registry by default.
        rates: per-registry overrides (host[:port] -> chains a minute).
        clock: monotonic seconds; sleep: how to wait (injectable for tests).
    """

    def __init__(
        self,
        per_minute: float = DEFAULT_PER_MINUTE,
        rates: Mapping[str, float] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.per_minute = per_minute
        self.rates = {**dict.fromkeys(DOCKER_HUB, DOCKER_HUB_PER_MINUTE), **(rates or {})}
        self._clock = clock
        self._sleep = sleep
        self._random = rng or random.Random()
        self._next: BoundedDict[str, float] = BoundedDict(MAX_REGISTRIES)
        self._backoff: BoundedDict[str, float] = BoundedDict(MAX_REGISTRIES)
        self._low: BoundedDict[str, bool] = BoundedDict(MAX_REGISTRIES)
        self.waited = 0.0  # seconds waited in all (benchmarks)

    def spacing(self, registry: str) -> float:
        """Seconds between two chains to ``registry`` now, before jitter."""
        rate = self.rates.get(registry.lower(), self.per_minute)
        factor = self._backoff.get(registry, 1.0)
        if self._low.get(registry):
            factor *= LOW_REMAINING_FACTOR
        return 60.0 / rate * factor

    def delay(self, registry: str) -> float:
        """Seconds until the registry's next turn is free (0: now), without taking it."""
        return max(0.0, self._next.get(registry, 0.0) - self._clock())

    def reserve(self, registry: str) -> float:
        """Take the registry's next turn: seconds to wait for it (0: now)."""
        now = self._clock()
        at = max(now, self._next.get(registry, now))
        jitter = self._random.uniform(1.0 - JITTER, 1.0 + JITTER)
        self._next[registry] = at + self.spacing(registry) * jitter
        return at - now

    async def wait(self, registry: str) -> None:
        """Wait for the registry's next turn (:data:`pullhealth.chain.singleflight.PACE`)."""
        delay = self.reserve(registry)
        if delay > 0:
            self.waited += delay
            await self._sleep(delay)

    def observe(self, registry: str, rate_limited: bool, retry_after: float | None = None,
                limit: int | None = None, remaining: int | None = None) -> None:
        """What a chain's answer says about the registry's budget."""
        factor = self._backoff.get(registry, 1.0)
        if rate_limited:
            self._backoff[registry] = min(factor * 2.0, MAX_BACKOFF)
            if retry_after:
                later = self._clock() + min(max(retry_after, 0.0), MAX_RETRY_AFTER)
                self._next[registry] = max(self._next.get(registry, 0.0), later)
        elif factor > 1.0:
            self._backoff[registry] = max(factor / 2.0, 1.0)
        if limit and remaining is not None:
            self._low[registry] = remaining < limit / 10
