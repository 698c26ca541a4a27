"""A registry's pull budget, from Docker Hub's RateLimit-* headers to the operator's gauges.

The world's ``hub`` is the real anonymous registry behind a proxy that adds Docker Hub's
``ratelimit-limit: 100;w=21600`` / ``ratelimit-remaining: N;w=21600`` to manifest answers
(``support.httpfixtures.RateLimitProxy``). The real chain reads them on the manifest step,
HEAD or GET; the composition root's observer (``runtime.startup._observe_budget``) turns
each fresh result into ``pullhealth_registry_ratelimit_limit`` / ``_remaining``, a
RegistryCheck's recheck included. The alert itself: e2e/test_alerting.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pullhealth import metrics
from pullhealth.chain.probechain import ChainOptions, Target, run_chain
from pullhealth.chain.pullsources import Environment
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.chain.trust import TrustPolicy
from pullhealth.domain.codes import Code
from pullhealth.domain.model import Diagnosis
from pullhealth.domain.reference import parse_target
from pullhealth.probes import manifest
from pullhealth.registrychecks import registrycheck
from pullhealth.runtime.startup import _observe_budget
from support.net import make_client
from support.world import TEST_DESTINATIONS, World


@pytest.fixture
def hub(world: World) -> Iterator[World]:
    """The world, its hub's counts put back afterwards (the world is shared by the session)."""
    world.hub_limits.set(100)
    try:
        yield world
    finally:
        world.hub_limits.set(100)


async def _chain(world: World, ref: str) -> Diagnosis:
    registry, image = parse_target(ref)
    options = ChainOptions(nameserver=world.nameserver, ca_file=str(world.ca_bundle), timeout=5.0,
                           destinations=TEST_DESTINATIONS)
    return await run_chain(Target(registry, image), options)


def _manifest_details(diagnosis: Diagnosis) -> dict[str, str]:
    assert diagnosis.code is Code.OK, diagnosis.checks
    return dict(next(c for c in diagnosis.checks if c.name == "manifest").details)


def test_hub_answers_manifests_with_docker_hubs_headers(hub: World) -> None:
    # What the fixture sends, byte for byte as Docker Hub's documented answer; the rest is
    # the real registry's (same digest as the anonymous registry it fronts).
    hub.hub_limits.set(42)
    with make_client(hub.ca_bundle, nameserver=hub.nameserver) as client:
        head = client.head(f"https://{hub.hub}/v2/library/alpine/manifests/3.19",
                           headers={"Accept": manifest.ACCEPT})
        challenge = client.get(f"https://{hub.hub}/v2/")
        missing = client.get(f"https://{hub.hub}/v2/library/alpine/manifests/9.99")
    assert head.status_code == 200
    assert head.headers["ratelimit-limit"] == "100;w=21600"
    assert head.headers["ratelimit-remaining"] == "42;w=21600"
    assert head.headers["Docker-Content-Digest"] == hub.digests["hub.test/library/alpine:3.19"]
    assert int(head.headers["Content-Length"]) > 0  # the manifest's length, as on a HEAD
    assert challenge.status_code == 200 and "ratelimit-limit" not in challenge.headers
    assert challenge.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_the_chain_reads_the_counts_on_head_and_get(hub: World) -> None:
    # A single-platform manifest: HEAD only.
    hub.hub_limits.set(7)
    head = _manifest_details(await _chain(hub, f"{hub.hub}/library/alpine:3.19"))
    assert (head["ratelimitLimit"], head["ratelimitRemaining"]) == ("100", "7")

    # An index not seen before: HEAD, then GET for its body; the counts come from the GET.
    digest = hub.digests["hub.test/multi/amd:1"]
    manifest.INDEXES.pop(digest, None)
    hub.hub_limits.set(3, limit=200)
    hub.hub_limits.requests.clear()
    index = _manifest_details(await _chain(hub, f"{hub.hub}/multi/amd:1"))
    assert ("GET", "/v2/multi/amd/manifests/1") in hub.hub_limits.requests
    assert (index["ratelimitLimit"], index["ratelimitRemaining"]) == ("200", "3")

    # No headers (an account without a pull limit): no counts.
    hub.hub_limits.set(None)
    assert "ratelimitRemaining" not in _manifest_details(await _chain(hub, f"{hub.hub}/library/alpine:3.19"))


async def test_a_recheck_feeds_the_budget_gauges(hub: World) -> None:
    # The operator's RegistryCheck cache, observed as the composition root observes it.
    label = hub.hub
    metrics.set_admin_registries([label])
    remaining = metrics.REGISTRY_RATELIMIT_REMAINING.labels(label)
    limit = metrics.REGISTRY_RATELIMIT_LIMIT.labels(label)
    cache: SingleFlight[Diagnosis] = SingleFlight(ttl=20.0, on_result=_observe_budget)
    spec, image = registrycheck.parse_spec(
        {"registry": hub.hub, "image": "library/alpine:3.19", "auth": {"mode": "anonymous"}})
    env = Environment(nameserver=hub.nameserver, ca_file=str(hub.ca_bundle),
                      trust=TrustPolicy(destinations=TEST_DESTINATIONS))

    no_reader: Any = None  # anonymous: the check reads nothing from the API

    async def check(fresh: bool) -> Diagnosis:
        return await registrycheck.run_registry_check(spec, image, "team", no_reader, env, cache, fresh=fresh)

    try:
        hub.hub_limits.set(5)
        assert (await check(False)).code is Code.OK
        assert (limit._value.get(), remaining._value.get()) == (100, 5)
        hub.hub_limits.set(80)
        await check(False)  # within the cache's 20 s: the shared result, no new answer
        assert remaining._value.get() == 5 and cache.runs == 1
        await check(True)  # a recheck: a fresh chain, and its answer is the registry's budget now
        assert remaining._value.get() == 80 and cache.runs == 2
        await check(False)  # shared from then on
        assert cache.runs == 2
    finally:
        metrics.set_admin_registries([])
