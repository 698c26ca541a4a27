"""Per-step timing of a healthy probe chain on loopback, against the real local servers.

Starts the test world (docker-registry, token service, dnsmasq), runs N healthy checks for
each registry mode, and prints p50 / p95 / max per step and for the whole chain.

    .venv/bin/python bench/chain_timing.py [N]
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests")]

from pullhealth.chain.probechain import ChainOptions, Target, run_chain  # noqa: E402
from pullhealth.domain.credentials import Credential, CredentialKind  # noqa: E402
from pullhealth.domain.reference import parse_target  # noqa: E402
from support import guard  # noqa: E402
from support.world import TEST_DESTINATIONS, start_world  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(world, n: int) -> None:  # type: ignore[no-untyped-def]
    options = ChainOptions(nameserver=world.nameserver, ca_file=str(world.ca_bundle), timeout=5,
                           destinations=TEST_DESTINATIONS)
    cases = {
        "anonymous": (f"{world.anon}/library/alpine:3.19", None),
        "htpasswd": (f"{world.basic}/team/app:v1", world.basic_user),
        "token": (f"{world.acr}/team/app:v1", world.acr_puller),
    }
    print(f"{'mode':<10} {'step':<10} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}   (n={n})")
    for mode, (ref, user) in cases.items():
        registry, image = parse_target(ref)
        cred = Credential(CredentialKind.BASIC, "bench", *user) if user else None
        target = Target(registry, image, cred) if cred else Target(registry, image)
        per_step: dict[str, list[float]] = {}
        totals: list[float] = []
        for _ in range(n):
            started = time.perf_counter()
            result = await run_chain(target, options)
            totals.append((time.perf_counter() - started) * 1000)
            assert result.healthy, result.code
            for check in result.checks:
                per_step.setdefault(check.name, []).append(check.duration_ms)
        for step, values in per_step.items():
            print(f"{mode:<10} {step:<10} {pct(values, .5):8.2f} {pct(values, .95):8.2f} {max(values):8.2f}")
        print(f"{mode:<10} {'TOTAL':<10} {pct(totals, .5):8.2f} {pct(totals, .95):8.2f} {max(totals):8.2f}"
              f"   mean {statistics.mean(totals):.2f}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    n = max(1, min(n, 1000))  # bounded: this hits only loopback servers, but never unbounded
    guard.install()
    with tempfile.TemporaryDirectory(prefix="pullhealth-bench-") as tmp, contextlib.ExitStack() as stack:
        world = start_world(stack, Path(tmp))
        asyncio.run(measure(world, n))


if __name__ == "__main__":
    main()
