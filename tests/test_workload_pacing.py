"""Each registry's budget for workload checks (pullhealth.workloads.pacing), the cache's
pacing hook (only runs a paced caller starts wait), and the RateLimit-* headers."""

from __future__ import annotations

import asyncio
import itertools
import random

import httpx
import pytest

from pullhealth.chain import singleflight
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import make
from pullhealth.domain.model import CheckResult, StepStatus
from pullhealth.probes.manifest import ratelimit_headers
from pullhealth.workloads import inventory, pacing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pacer(per_minute: float = 30.0, **rates: float) -> tuple[pacing.Pacer, Clock]:
    clock = Clock()
    return pacing.Pacer(per_minute, rates, clock=clock, rng=random.Random(7)), clock


def test_turns_are_spaced_per_registry_with_jitter() -> None:
    pace, clock = pacer(30.0)
    waits = [pace.reserve("reg.test") for _ in range(100)]
    assert waits[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    # 30 a minute: 2 s apart on average, each gap within +-50 %.
    assert all(1.0 <= g <= 3.0 for g in gaps)
    assert 1.8 < sum(gaps) / len(gaps) < 2.2
    assert len(set(round(g, 6) for g in gaps)) > 50  # jittered, not a fixed beat
    # Another registry has its own turns.
    assert pace.reserve("other.test") == 0.0
    # Time passing frees the turns.
    clock.now += 1000
    assert pace.reserve("reg.test") == 0.0


def test_docker_hub_is_slower_by_default_and_overrides_win() -> None:
    pace, _ = pacer(30.0)
    assert pace.spacing("docker.io") == 30.0 and pace.spacing("reg.test") == 2.0
    pace, _ = pacer(30.0, **{"docker.io": 1.0, "reg.test": 60.0})
    assert pace.spacing("docker.io") == 60.0 and pace.spacing("reg.test") == 1.0


def test_429_backs_off_doubling_and_recovers_halving() -> None:
    pace, _clock = pacer(60.0)
    for expected in (2.0, 4.0, 8.0):
        pace.observe("reg.test", rate_limited=True)
        assert pace.spacing("reg.test") == expected
    for _ in range(10):
        pace.observe("reg.test", rate_limited=True)
    assert pace.spacing("reg.test") == pacing.MAX_BACKOFF
    pace.observe("reg.test", rate_limited=False)
    assert pace.spacing("reg.test") == pacing.MAX_BACKOFF / 2
    # Retry-After pushes the next turn out (bounded).
    pace.observe("reg.test", rate_limited=True, retry_after=30.0)
    assert pace.reserve("reg.test") >= 30.0
    pace.observe("slow.test", rate_limited=True, retry_after=10**9)
    assert pace.reserve("slow.test") <= pacing.MAX_RETRY_AFTER


def test_low_remaining_slows_down() -> None:
    pace, _ = pacer(60.0)
    pace.observe("hub", rate_limited=False, limit=100, remaining=5)
    assert pace.spacing("hub") == 1.0 * pacing.LOW_REMAINING_FACTOR
    pace.observe("hub", rate_limited=False, limit=100, remaining=50)
    assert pace.spacing("hub") == 1.0


def test_rates_parse_or_fail_with_the_value_named() -> None:
    assert pacing.parse_rates(("Docker.io=1", "reg.test:5000=0.5")) == {"docker.io": 1.0, "reg.test:5000": 0.5}
    for bad in ("docker.io", "=3", "docker.io=0", "docker.io=x", "docker.io=-1"):
        with pytest.raises(ValueError, match="workload-registry-rate"):
            pacing.parse_rates((bad,))


async def test_only_runs_a_paced_caller_starts_wait() -> None:
    cache: SingleFlight[str] = SingleFlight(ttl=60.0)
    paced: list[str] = []

    async def pace(registry: str) -> None:
        paced.append(registry)

    async def work() -> str:
        return "result"

    assert await cache.get("reg.test", "k1", work) == "result"  # not paced: no hook set
    assert paced == []

    async def paced_caller() -> str:
        singleflight.PACE.set(pace)
        first = await cache.get("reg.test", "k2", work)  # a miss: waits for its turn
        again = await cache.get("reg.test", "k2", work)  # cached: no wait
        shared = await cache.get("reg.test", "k1", work)  # another caller's result: no wait
        return first + again + shared

    assert await asyncio.create_task(paced_caller()) == "result" * 3
    assert paced == ["reg.test"]
    assert singleflight.PACE.get() is None  # the hook stayed in that task's context


def test_ratelimit_headers_as_docker_hub_sends_them() -> None:
    # https://docs.docker.com/docker-hub/usage/pulls/ : "ratelimit-limit: 100;w=21600"
    headers = httpx.Headers({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"})
    assert ratelimit_headers(headers) == ("100", "76")
    assert ratelimit_headers(httpx.Headers({"RateLimit-Remaining": "0"})) == ("", "0")
    assert ratelimit_headers(httpx.Headers({"ratelimit-limit": "lots", "ratelimit-remaining": "9" * 40})) == ("", "")


def test_budget_from_a_diagnosis() -> None:
    manifest = CheckResult(name="manifest", status=StepStatus.PASSED,
                           details={"digest": "sha256:x", "ratelimitLimit": "100", "ratelimitRemaining": "3"})
    got = inventory.budget(make(Code.OK, {}, checks=[manifest]))
    assert (got.limit, got.remaining, got.retry_after) == (100, 3, None)
    limited = CheckResult(name="challenge", status=StepStatus.FAILED, code=Code.RATE_LIMITED,
                          details={"retry_after": "30"})
    assert inventory.budget(make(Code.RATE_LIMITED, {}, checks=[limited])).retry_after == 30.0
    dated = CheckResult(name="challenge", status=StepStatus.FAILED, details={"retry_after": "Wed, 21 Oct 2015"})
    assert inventory.budget(make(Code.RATE_LIMITED, {}, checks=[dated])).retry_after is None


def test_every_chains_budget_is_exported() -> None:
    # The composition root observes each fresh chain result (pods, RegistryChecks, workloads).
    from pullhealth import metrics
    from pullhealth.runtime.startup import _observe_budget

    metrics.set_admin_registries(["budget.example"])
    try:
        manifest = CheckResult(name="manifest", status=StepStatus.PASSED,
                               details={"digest": "sha256:x", "ratelimitLimit": "100", "ratelimitRemaining": "3"})
        _observe_budget("budget.example", make(Code.OK, {}, checks=[manifest]))
        assert metrics.REGISTRY_RATELIMIT_LIMIT.labels("budget.example")._value.get() == 100
        assert metrics.REGISTRY_RATELIMIT_REMAINING.labels("budget.example")._value.get() == 3
        _observe_budget("budget.example", make(Code.OK, {}, checks=[]))  # no headers: kept as they were
        assert metrics.REGISTRY_RATELIMIT_REMAINING.labels("budget.example")._value.get() == 3
    finally:
        metrics.set_admin_registries([])
