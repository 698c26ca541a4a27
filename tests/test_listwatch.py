"""The list-and-watch reader without a cluster: a scripted lister answers lists and watches
the way the API server does (pages with ``continue``, watch lines, 410 Gone, 403), and the
reader's deliveries and state are checked. e2e/ runs the same reader against a real API
server; these pin the decisions that are hard to provoke there.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes.client.exceptions import ApiException

from pullhealth.kube import listwatch
from pullhealth.kube.listwatch import ListWatch


class Answer:
    """A raw (unparsed) answer as the client returns it with ``_preload_content=False``."""

    def __init__(self, body: bytes, lines: list[bytes] | None = None, hold: threading.Event | None = None) -> None:
        self._body, self._lines, self._hold = body, lines or [], hold

    def read(self) -> bytes:
        return self._body

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        yield from self._lines
        if self._hold is not None:
            self._hold.wait(5)  # a watch that stays open until the test lets it end

    def release_conn(self) -> None:
        pass


def pod(uid: str, failing: bool, version: str = "1", namespace: str = "team") -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": uid, "namespace": namespace, "resourceVersion": version},
            "status": {"failing": failing}}


def page(items: list[dict[str, Any]], version: str, cont: str = "") -> Answer:
    return Answer(json.dumps({"kind": "PodList", "apiVersion": "v1",
                              "metadata": {"resourceVersion": version, "continue": cont},
                              "items": items}).encode())


def watch_lines(*events: tuple[str, dict[str, Any]], hold: threading.Event | None = None) -> Answer:
    return Answer(b"", [json.dumps({"type": t, "object": o}).encode() + b"\n" for t, o in events], hold)


class Script:
    """The lister: each call takes the next scripted answer (or raises it)."""

    def __init__(self, answers: list[Answer | ApiException | Callable[[], Answer]]) -> None:
        self.answers = answers
        self.calls: list[dict[str, Any]] = []
        self.done = threading.Event()

    def __call__(self, scope: str | None, **kwargs: Any) -> Answer:
        self.calls.append({"scope": scope, "at": time.monotonic(), **kwargs})
        if not self.answers:
            self.done.set()
            time.sleep(0.05)
            raise ApiException(status=500, reason="script ended")
        answer = self.answers.pop(0)
        if isinstance(answer, ApiException):
            raise answer
        return answer() if callable(answer) else answer


def run(script: Script, relevant: Callable[[Any], bool] = lambda o: o["status"]["failing"],
        timeout: float = 20.0) -> tuple[ListWatch, list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    reader = ListWatch(script, (), lambda kind, obj: seen.append((kind, listwatch.uid_of(obj))),
                       relevant=relevant, what="pods", without="nothing")
    reader.start()
    assert script.done.wait(timeout), script.calls
    reader.stop()
    return reader, seen


def test_pages_are_followed_and_only_relevant_objects_delivered() -> None:
    script = Script([
        page([pod("a", True), pod("b", False)], "10", cont="next"),
        page([pod("c", True)], "11"),
        watch_lines(("MODIFIED", pod("b", True, "12"))),
    ])
    reader, seen = run(script)
    assert seen == [("LISTED", "a"), ("LISTED", "c"), ("MODIFIED", "b")]
    assert script.calls[1]["_continue"] == "next" and script.calls[0]["limit"] == listwatch.PAGE
    assert script.calls[2]["watch"] is True and script.calls[2]["resource_version"] == "11"
    assert reader.listed


def test_an_object_that_stops_mattering_is_delivered_once_more() -> None:
    script = Script([
        page([pod("a", True)], "10"),
        watch_lines(("MODIFIED", pod("a", False, "11")), ("MODIFIED", pod("a", False, "12"))),
    ])
    _, seen = run(script)
    assert seen == [("LISTED", "a"), ("MODIFIED", "a")]  # the recovery once, then nothing


def test_gone_relists_and_reports_what_vanished_meanwhile() -> None:
    """410 Gone: list again at once; objects missing from the new list are deleted by uid."""
    script = Script([
        page([pod("a", True), pod("b", True)], "10"),
        watch_lines(("ERROR", {"code": 410, "message": "too old resource version"})),
        page([pod("b", True, "20")], "20"),
    ])
    _, seen = run(script)
    assert seen == [("LISTED", "a"), ("LISTED", "b"), ("LISTED", "b"), ("DELETED", "a")]
    assert script.calls[2].get("watch") is None  # a list, not a watch from a stale version


def test_forbidden_then_granted() -> None:
    """403: refused (settled, not synced), retried with back-off; once granted it lists."""
    state: dict[str, Any] = {}

    def granted() -> Answer:
        state["settled_while_refused"] = reader_ref[0].settled and not reader_ref[0].listed
        return page([pod("a", True)], "30")

    reader_ref: list[ListWatch] = []
    script = Script([ApiException(status=403, reason="Forbidden"), granted, watch_lines()])
    seen: list[tuple[str, str]] = []
    reader = ListWatch(script, (), lambda kind, obj: seen.append((kind, listwatch.uid_of(obj))),
                       relevant=lambda o: True, what="pods", without="nothing")
    reader_ref.append(reader)
    reader.start()
    assert script.done.wait(20), script.calls
    reader.stop()
    assert state["settled_while_refused"] is True
    assert seen == [("LISTED", "a")] and reader.listed


def test_a_watch_that_ends_at_once_is_not_a_busy_loop() -> None:
    script = Script([page([], "10"), watch_lines(), watch_lines(), watch_lines()])
    run(script)
    # After each watch that ended at once the reader waits 1 s before the next request (a
    # lower bound: a loaded machine only makes the gaps longer).
    watches = [c["at"] for c in script.calls if c.get("watch")]
    assert len(watches) >= 3
    assert all(later - earlier >= 0.9 for earlier, later in itertools.pairwise(watches))


def test_deleted_objects_are_delivered_only_when_known() -> None:
    script = Script([
        page([pod("a", True)], "10"),
        watch_lines(("DELETED", pod("a", True, "11")), ("DELETED", pod("z", False, "12"))),
    ])
    _, seen = run(script)
    assert seen == [("LISTED", "a"), ("DELETED", "a")]
