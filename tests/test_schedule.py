"""The RegistryCheck scheduler: one sleeping task per object, woken only when due or changed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from pullhealth.registrychecks.schedule import Loops

LOG = logging.getLogger("test")


def test_a_step_runs_once_then_only_when_poked_or_due() -> None:
    async def main() -> tuple[list[str], int]:
        runs: list[str] = []
        wakes = 0

        def woke() -> None:
            nonlocal wakes
            wakes += 1

        async def step(body: Mapping[str, Any], _: Any) -> float | None:
            runs.append(str(body["v"]))
            return None if body["v"] != "due" else 0.01  # None: sleep until poked

        loops = Loops(step, woke)
        loops.poke("a", {"v": "1"}, LOG)
        loops.poke("b", {"v": "1"}, LOG)
        for _ in range(20):
            await asyncio.sleep(0)
        assert sorted(runs) == ["1", "1"]
        loops.poke("a", {"v": "2"}, LOG)  # the object changed: its task wakes with the new body
        for _ in range(20):
            await asyncio.sleep(0)
        assert runs[-1] == "2" and len(runs) == 3
        loops.poke("b", {"v": "due"}, LOG)
        await asyncio.sleep(0.1)  # due every 10 ms: it ran again without a poke
        assert runs.count("due") >= 2
        loops.stop("b")
        count = len(runs)
        await asyncio.sleep(0.05)
        assert len(runs) == count and len(loops) == 1
        await loops.stop_all()
        return runs, wakes

    runs, wakes = asyncio.run(main())
    assert wakes == len(runs)


def test_a_failing_step_is_retried_later_not_at_once(caplog: Any) -> None:
    async def main() -> int:
        calls = 0

        async def step(body: Mapping[str, Any], _: Any) -> float | None:
            nonlocal calls
            calls += 1
            raise RuntimeError("boom")

        loops = Loops(step)
        loops.poke("a", {}, LOG)
        await asyncio.sleep(0.05)
        await loops.stop_all()
        return calls

    assert asyncio.run(main()) == 1  # the next try is ERROR_DELAY (30 s) away
    assert "check failed unexpectedly" in caplog.text
