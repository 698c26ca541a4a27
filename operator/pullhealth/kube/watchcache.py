"""Shared reads for pod diagnosis: Nodes and ServiceAccounts from watches, Secrets by name.

A thousand failing pods in a hundred namespaces read one Node, a hundred ServiceAccounts
and a handful of pull Secrets; without a cache each pod reads them again. Nodes and
ServiceAccounts are mirrored from a list-and-watch (:class:`Mirror`, fed by the handlers'
readers): once listed, they are read without a request and a change is seen at once.
Until then, or for an object the mirror lacks, or without list/watch rights, each object
is read once per time-to-live, concurrent readers share the one request in flight.
Only what diagnosis uses is kept (a Node's labels; a ServiceAccount's pull secret names
and annotations). Secrets stay read by name (no list, no watch: the chart grants only
``get``), for a few seconds. Errors are not cached; "absent" is.

RegistryChecks read through the uncached client: a check asked for with
``pullhealth.io/recheck`` sees a Secret fixed a moment ago.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, TypeVar, cast

from pullhealth.bounded import BoundedDict
from pullhealth.chain.pullsources import ClusterReader
from pullhealth.chain.singleflight import SingleFlight
from pullhealth.domain import placement

NODE_TTL = 60.0  # os/arch labels of a node do not change while it runs
ACCOUNT_TTL = 10.0  # a ServiceAccount fixed by hand is seen within seconds
SECRET_TTL = 5.0
API_SERVER = "api-server"  # the one limiter key: reads are bounded by the API client's pool
UNLIMITED = 1 << 30
MAX_ENTRIES = 20_000

MAX_DERIVED = 4096  # answers Mirror.derived keeps (placement patterns: few in practice)
Read = Mapping[str, Any] | None
T = TypeVar("T")


def node_placement(node: Read) -> Read:
    """Only what diagnosis and placement use of a Node: its labels and the taints that keep
    pods off it (:func:`pullhealth.domain.placement.node_taints`: not its conditions' taints,
    which come and go with the node's conditions)."""
    if node is None:
        return None
    meta = node.get("metadata") or {}
    kept: dict[str, Any] = {"metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})}}
    taints = placement.node_taints(node)
    if taints:
        kept["spec"] = {"taints": taints}
    return kept


def account_pull_fields(account: Read) -> Read:
    """Only what diagnosis uses of a ServiceAccount: pull secret names and annotations."""
    if account is None:
        return None
    meta = account.get("metadata") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "annotations": dict(meta.get("annotations") or {}),
        },
        "imagePullSecrets": list(account.get("imagePullSecrets") or []),
    }


class Mirror:
    """One kind's objects as a watch delivered them, reduced by ``keep``.

    Fed on the reading thread (:meth:`deliver`: one dict assignment per event), read on the
    event loop. Bounded: past ``limit`` objects it stops answering (readers fall back to GETs).
    What is computed from all the objects (:meth:`derived`) is reused until the kept objects
    change: a Node's status heartbeat changes nothing kept, so it recomputes nothing.

    Args:
        keep: what is kept of an object.
        limit: objects kept at most.
    """

    def __init__(self, keep: Callable[[Read], Read], limit: int = MAX_ENTRIES) -> None:
        self._keep = keep
        self._limit = limit
        self._objects: dict[tuple[str, str], tuple[str, Read]] = {}  # key -> (uid, kept)
        self._keys: dict[str, tuple[str, str]] = {}  # uid -> key (a re-list reports deletions by uid)
        self._overflow = False
        self.listed: Callable[[], bool] = lambda: False  # set by who feeds it: first list done
        self._generation = 0  # bumped when what is kept changes (on the reading thread)
        self._derived: BoundedDict[Hashable, Any] = BoundedDict(MAX_DERIVED)
        self._derived_at: tuple[int, bool, bool] | None = None

    def deliver(self, kind: str, obj: Mapping[str, Any]) -> None:
        """A list or watch event."""
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if kind == "DELETED":
            key = self._keys.pop(uid, None)
            held = self._objects.get(key) if key is not None else None
            if key is not None and held is not None and held[0] == uid:  # not a successor's
                self._objects.pop(key, None)
                self._generation += 1
            return
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if key not in self._objects and len(self._objects) >= self._limit:
            self._overflow = True
            return
        kept = self._keep(obj)
        if self._objects.get(key) != (uid, kept):
            self._generation += 1
        self._objects[key] = (uid, kept)
        self._keys[uid] = key

    def get(self, namespace: str, name: str) -> Read:
        """The kept object; None when unknown (not listed yet, absent, or past the limit)."""
        if self._overflow or not self.listed():
            return None
        held = self._objects.get((namespace, name))
        return held[1] if held is not None else None

    def objects(self) -> list[Mapping[str, Any]]:
        """Every kept object; empty when not listed yet or past the limit (unknown)."""
        if self._overflow or not self.listed():
            return []
        return [held[1] for held in list(self._objects.values()) if held[1] is not None]

    def derived(self, key: Hashable, compute: Callable[[list[Mapping[str, Any]]], T]) -> T:
        """``compute(self.objects())``, remembered under ``key`` until the kept objects change
        (or the first listing completes, or the mirror overflows); at most ``MAX_DERIVED``
        answers. ``key`` must name everything ``compute`` depends on besides the objects."""
        # Read before the objects: a change while computing makes the answer stale under
        # an old version, which the next call does not use.
        version = (self._generation, self._overflow, self.listed())
        if version != self._derived_at:
            self._derived.clear()
            self._derived_at = version
        if key in self._derived:
            return cast(T, self._derived[key])
        answer = compute(self.objects())
        self._derived[key] = answer
        return answer

    def __len__(self) -> int:
        return len(self._objects)


def node_platforms(
    nodes: Mirror | None, spec: Mapping[str, Any], default: str, node: str = ""
) -> tuple[str, ...]:
    """:func:`pullhealth.domain.placement.node_platforms` over the mirrored Nodes, one pass over
    them per placement pattern (most specs share a few) until a Node's labels or taints
    change; workload checks and admission share the answers."""

    def compute(found: list[Mapping[str, Any]]) -> tuple[str, ...]:
        return placement.node_platforms(found, spec, default, node)

    if nodes is None:
        return compute([])
    return nodes.derived(("platforms", node, placement.placement_inputs(spec), default), compute)


class CachedReader:
    """A :class:`ClusterReader` whose reads are shared for a short time.

    Args:
        inner: the API client.
        node_ttl, account_ttl, secret_ttl: seconds a read is reused.
        limit: entries kept at most (least recently read out first).
        clock: monotonic seconds.
        nodes, accounts: watch-fed mirrors, asked first (an object they lack is read).
    """

    def __init__(
        self,
        inner: ClusterReader,
        *,
        node_ttl: float = NODE_TTL,
        account_ttl: float = ACCOUNT_TTL,
        secret_ttl: float = SECRET_TTL,
        limit: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        nodes: Mirror | None = None,
        accounts: Mirror | None = None,
    ) -> None:
        self.inner = inner
        self.nodes, self.accounts = nodes, accounts
        self.limit = limit
        # One single-flight cache per kind (its own TTL): concurrent reads of one object
        # share one request, a finished read is reused for the TTL, a failed one not at all.
        self._caches: dict[str, SingleFlight[Read]] = {
            kind: SingleFlight(ttl, per_registry=UNLIMITED, max_entries=limit, clock=clock, failure_ttl=0.0)
            for kind, ttl in (("node", node_ttl), ("account", account_ttl), ("secret", secret_ttl))
        }

    @property
    def reads(self) -> int:
        """Requests actually sent (for tests and benchmarks)."""
        return sum(cache.runs for cache in self._caches.values())

    def __len__(self) -> int:
        return sum(len(cache) for cache in self._caches.values())

    async def node(self, name: str) -> Read:
        """The Node's labels."""
        mirrored = self.nodes.get("", name) if self.nodes is not None else None
        if mirrored is not None:
            return mirrored
        return await self._get(("node", name), lambda: self.inner.node(name), node_placement)

    async def service_account(self, namespace: str, name: str) -> Read:
        """The ServiceAccount's pull secret names and annotations."""
        mirrored = self.accounts.get(namespace, name) if self.accounts is not None else None
        if mirrored is not None:
            return mirrored
        return await self._get(
            ("account", namespace, name),
            lambda: self.inner.service_account(namespace, name),
            account_pull_fields,
        )

    async def secret(self, namespace: str, name: str) -> Read:
        """The Secret, read by name."""
        return await self._get(("secret", namespace, name), lambda: self.inner.secret(namespace, name), None)

    async def service_account_token(self, namespace: str, name: str, audience: str) -> str:
        """Never cached: a fresh TokenRequest each time (the chain's cache shares its result)."""
        return await self.inner.service_account_token(namespace, name, audience)

    async def _get(
        self,
        key: tuple[str, ...],
        read: Callable[[], Awaitable[Read]],
        keep: Callable[[Read], Read] | None,
    ) -> Read:
        async def work() -> Read:
            value = await read()
            return keep(value) if keep is not None else value

        return await self._caches[key[0]].get(API_SERVER, key, work)
