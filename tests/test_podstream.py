"""The pod stream's loop side: one handler at a time per pod, always with the newest event."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pullhealth.pods.podstream import PerPod


def pod(uid: str, version: int) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "resourceVersion": str(version)}}


def test_events_of_one_pod_are_handled_one_at_a_time_newest_first() -> None:
    async def main() -> list[tuple[str, str, str]]:
        seen: list[tuple[str, str, str]] = []
        running = 0
        most = 0
        gate = asyncio.Event()

        async def handle(kind: str, body: Mapping[str, Any]) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            seen.append((kind, body["metadata"]["uid"], body["metadata"]["resourceVersion"]))
            await gate.wait()
            running -= 1

        per_pod = PerPod(handle, asyncio.get_running_loop())
        per_pod.put("ADDED", pod("a", 1))
        await asyncio.sleep(0)
        for version in (2, 3, 4):  # arrive while a's handler runs: only the newest is kept
            per_pod.put("MODIFIED", pod("a", version))
        per_pod.put("ADDED", pod("b", 1))  # another pod runs alongside
        await asyncio.sleep(0.01)
        assert len(per_pod) == 2 and most == 2
        gate.set()
        await asyncio.sleep(0.01)
        assert len(per_pod) == 0
        return seen

    seen = asyncio.run(main())
    assert sorted(seen) == [("ADDED", "a", "1"), ("ADDED", "b", "1"), ("MODIFIED", "a", "4")]


def test_a_failing_handler_does_not_stop_the_pods_next_event(caplog: Any) -> None:
    async def main() -> list[str]:
        seen: list[str] = []

        async def handle(kind: str, body: Mapping[str, Any]) -> None:
            seen.append(body["metadata"]["resourceVersion"])
            if len(seen) == 1:
                raise RuntimeError("boom")

        per_pod = PerPod(handle, asyncio.get_running_loop())
        per_pod.deliver("ADDED", pod("a", 1))  # from another thread in the operator
        await asyncio.sleep(0.01)
        per_pod.put("MODIFIED", pod("a", 2))
        await asyncio.sleep(0.01)
        await per_pod.stop()
        return seen

    assert asyncio.run(main()) == ["1", "2"]
    assert "pod handler failed" in caplog.text


def test_a_recheck_nudge_never_replaces_a_newer_queued_event() -> None:
    async def main() -> list[str]:
        seen: list[str] = []
        gate = asyncio.Event()

        async def handle(kind: str, body: Mapping[str, Any]) -> None:
            seen.append(f"{kind}:{body['metadata']['resourceVersion']}")
            await gate.wait()

        per_pod = PerPod(handle, asyncio.get_running_loop())
        per_pod.put("ADDED", pod("a", 1))
        await asyncio.sleep(0)
        per_pod.put("MODIFIED", pod("a", 3))  # queued behind the running handler
        per_pod.nudge("MODIFIED", pod("a", 2))  # the recheck's older copy: dropped
        gate.set()
        await asyncio.sleep(0.01)
        per_pod.nudge("MODIFIED", pod("a", 3))  # nothing queued: handled again
        await asyncio.sleep(0.01)
        return seen

    assert asyncio.run(main()) == ["ADDED:1", "MODIFIED:3", "MODIFIED:3"]
