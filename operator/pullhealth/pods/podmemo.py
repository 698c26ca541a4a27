"""What was last diagnosed per pod: an unchanged failing pod costs no API request, no chain.

kubelet rewrites a failing pod's status on every back-off step (``ErrImagePull`` <->
``ImagePullBackOff``), and our own annotation patch comes back as one more event. None of
them changes what the diagnosis depends on: the failing containers, their images and
kubelet's text, the node, the service account and the pull secrets named. While those
are equal to the last diagnosed ones, and that diagnosis is younger than the pod
interval, the last results are reused. Bounded: at most ``limit`` pods, oldest first out;
a deleted or recovered pod is forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pullhealth.pods.podcheck import FailingContainer, PodResult

BACKOFF = "Back-off pulling image"
# kubelet's back-off and pull-error states are one failure seen at two moments.
_PULL_STATES = frozenset({"ErrImagePull", "ImagePullBackOff"})
DEFAULT_LIMIT = 10_000  # failing pods remembered; beyond, the oldest are diagnosed afresh


def failure_text(container: FailingContainer) -> str | None:
    """The failure's own text; None for a back-off message that carries none.

    ``Back-off pulling image "x"`` (kubelet < 1.30) says nothing new;
    ``Back-off pulling image "x": ErrImagePull: <text>`` carries the pull error's text.
    """
    text = " ".join(container.message.split())
    if not text.startswith(BACKOFF):
        return text
    closing = text.find('"', text.find('"') + 1) if '"' in text else len(BACKOFF) - 1
    rest = text[closing + 1 :].lstrip(": ").strip()
    for state in _PULL_STATES:
        if rest.startswith(state + ":"):
            rest = rest[len(state) + 1 :].strip()
    return rest or None


@dataclass(frozen=True)
class Inputs:
    """What a pod's diagnosis depends on, back-off state folded into the pull error."""

    shape: tuple[Any, ...]
    texts: tuple[str | None, ...]

    @classmethod
    def of(cls, pod: Mapping[str, Any], failing: Sequence[FailingContainer]) -> Inputs:
        spec = pod.get("spec") or {}
        secrets = tuple(
            str(r.get("name")) for r in spec.get("imagePullSecrets") or [] if isinstance(r, Mapping)
        )
        containers = tuple(
            (c.kind, c.name, c.image, "pull" if c.reason in _PULL_STATES else c.reason) for c in failing
        )
        account = spec.get("serviceAccountName") or spec.get("serviceAccount")
        return cls(
            (spec.get("nodeName"), account, secrets, containers), tuple(failure_text(c) for c in failing)
        )

    def matches(self, last: Inputs) -> bool:
        """Same shape, and every text equal to the last one (a bare back-off matches any)."""
        return self.shape == last.shape and all(
            text is None or text == old for text, old in zip(self.texts, last.texts, strict=True)
        )


@dataclass(frozen=True)
class _Entry:
    inputs: Inputs
    results: tuple[PodResult, ...]
    at: float


class PodMemo:
    """Per pod uid: the inputs and results of its last diagnosis.

    Args:
        ttl: seconds a diagnosis is reused (the pod interval); 0 disables reuse.
        limit: pods remembered at most (the least recently diagnosed are forgotten first).
        clock: monotonic seconds (a test may pass its own).
    """

    def __init__(
        self, ttl: float, limit: int = DEFAULT_LIMIT, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.limit = limit
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def recall(
        self, uid: str, pod: Mapping[str, Any], failing: Sequence[FailingContainer]
    ) -> list[PodResult] | None:
        """The last results when nothing they depend on changed and they are fresh; else None."""
        entry = self._entries.get(uid)
        if entry is None or self.ttl <= 0 or self._clock() - entry.at >= self.ttl:
            return None
        if not Inputs.of(pod, failing).matches(entry.inputs):
            return None
        # The reused results describe today's containers (the back-off reason, say).
        by_name = {(c.kind, c.name): c for c in failing}
        return [
            PodResult(by_name.get((r.container.kind, r.container.name), r.container), r.diagnosis, r.registry)
            for r in entry.results
        ]

    def remember(
        self,
        uid: str,
        pod: Mapping[str, Any],
        failing: Sequence[FailingContainer],
        results: Sequence[PodResult],
    ) -> None:
        """Record a fresh diagnosis (a pod with no failing container is forgotten)."""
        if self.ttl <= 0 or not uid:
            return
        if not failing:
            self.forget(uid)
            return
        self._entries.pop(uid, None)
        self._entries[uid] = _Entry(Inputs.of(pod, failing), tuple(results), self._clock())
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def forget(self, uid: str) -> None:
        """A deleted or recovered pod."""
        self._entries.pop(uid, None)
