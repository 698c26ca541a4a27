"""Where a pod may run, as the scheduler's hard constraints say: its ``nodeSelector``, its
required node affinity (``affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution``)
and the nodes' ``NoSchedule`` / ``NoExecute`` taints its tolerations do not tolerate.

The pull is checked for the platforms (``kubernetes.io/os`` / ``kubernetes.io/arch``) of
the nodes those constraints allow: a Windows pool tainted ``os=windows:NoSchedule`` is not
a platform a Linux Deployment without that toleration pulls on. Preferred affinity and
``PreferNoSchedule`` only prefer, so they are not read. The taints nodes carry for their
conditions (``node.kubernetes.io/not-ready``, ``.../unschedulable``, the pressure taints) and
the cloud provider's ``node.cloudprovider.kubernetes.io/uninitialized`` come and go, and
DaemonSets tolerate the former: they are not read either, a node's platform stays one the
pod may land on while it is cordoned or starting. When the taints leave no node, or no known node
is selected, the check widens rather than skip the pull (see :func:`node_platforms`).

Pod specs are untrusted: every list is read up to a bound and anything malformed matches no
node (a malformed toleration tolerates nothing), as the API server's validation would refuse it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

OS_LABEL, ARCH_LABEL = "kubernetes.io/os", "kubernetes.io/arch"
MAX_TERMS = 32  # nodeSelectorTerms read (ORed)
MAX_REQUIREMENTS = 64  # matchExpressions + matchFields read per term (ANDed)
MAX_VALUES = 256  # values read per requirement
MAX_TAINTS = 32  # taints read per node
MAX_TOLERATIONS = 64  # tolerations read per pod spec
SCHEDULING_EFFECTS = ("NoSchedule", "NoExecute")  # PreferNoSchedule only prefers
# The node lifecycle's own taints (see the module docstring), and the cloud provider's
# "not initialised yet" taint that a new node carries for its first seconds.
CONDITION_TAINTS = ("node.kubernetes.io/", "node.cloudprovider.kubernetes.io/")


def _labels(node: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = node.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return labels if isinstance(labels, Mapping) else {}


def _name(node: Mapping[str, Any]) -> str:
    meta = node.get("metadata")
    return str(meta.get("name") or "") if isinstance(meta, Mapping) else ""


def _integer(text: Any) -> int | None:
    try:
        return int(str(text)) if len(str(text)) <= 20 else None
    except ValueError:
        return None


def _requirement(value: str | None, requirement: Mapping[str, Any]) -> bool:
    """One NodeSelectorRequirement against the node's value for its key (None: absent)."""
    operator = requirement.get("operator")
    raw = requirement.get("values")
    values = [str(v) for v in raw[:MAX_VALUES]] if isinstance(raw, list) else []
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and len(values) == 1:
        have, bound = _integer(value), _integer(values[0])
        if have is None or bound is None:
            return False
        return have > bound if operator == "Gt" else have < bound
    return False  # an unknown operator matches nothing


def _term(node: Mapping[str, Any], term: Any) -> bool:
    """A NodeSelectorTerm: every requirement holds; an empty or null term matches nothing."""
    if not isinstance(term, Mapping):
        return False
    labels = _labels(node)
    pairs: list[tuple[str | None, Mapping[str, Any]]] = []
    for list_key in ("matchExpressions", "matchFields"):
        items = term.get(list_key)
        for item in items if isinstance(items, list) else ():
            if not isinstance(item, Mapping) or len(pairs) == MAX_REQUIREMENTS:
                return False  # malformed, or more requirements than are read
            key = str(item.get("key") or "")
            if list_key == "matchFields":
                if key != "metadata.name":
                    return False  # the only field the scheduler supports
                pairs.append((_name(node), item))
            else:
                value = labels.get(key)
                pairs.append((None if value is None else str(value), item))
    if not pairs:
        return False
    return all(_requirement(value, item) for value, item in pairs)


def node_taints(node: Mapping[str, Any]) -> list[dict[str, str]]:
    """The node's taints that keep pods off it (``NoSchedule``, ``NoExecute``) and are not its
    conditions', bounded: what the Node mirror keeps and :func:`allows` reads."""
    spec = node.get("spec")
    taints = spec.get("taints") if isinstance(spec, Mapping) else None
    kept: list[dict[str, str]] = []
    for taint in taints[:MAX_TAINTS] if isinstance(taints, list) else ():
        if not isinstance(taint, Mapping) or taint.get("effect") not in SCHEDULING_EFFECTS:
            continue
        key = str(taint.get("key") or "")
        if key and not key.startswith(CONDITION_TAINTS):
            kept.append({"key": key, "value": str(taint.get("value") or ""), "effect": str(taint["effect"])})
    return kept


def _tolerated(taint: Mapping[str, str], tolerations: list[Any]) -> bool:
    """Whether one toleration matches the taint, as the scheduler matches them: the effect
    (empty: every effect), then ``Exists`` (empty key: every key) or ``Equal`` (the default)
    on key and value."""
    for toleration in tolerations:
        if not isinstance(toleration, Mapping):
            continue
        effect = toleration.get("effect") or ""
        if effect and effect != taint["effect"]:
            continue
        key = str(toleration.get("key") or "")
        operator = toleration.get("operator") or "Equal"
        if operator == "Exists" and (not key or key == taint["key"]):
            return True
        value = str(toleration.get("value") or "")
        if operator == "Equal" and key == taint["key"] and value == taint["value"]:
            return True
    return False


def tolerations(spec: Mapping[str, Any]) -> list[Any]:
    """The spec's tolerations, bounded (none when absent or malformed)."""
    raw = spec.get("tolerations")
    return raw[:MAX_TOLERATIONS] if isinstance(raw, list) else []


def required_terms(spec: Mapping[str, Any]) -> list[Any] | None:
    """The required node affinity's terms, or None when the spec has none."""
    affinity = spec.get("affinity")
    node_affinity = affinity.get("nodeAffinity") if isinstance(affinity, Mapping) else None
    required = (
        node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
        if isinstance(node_affinity, Mapping)
        else None
    )
    terms = required.get("nodeSelectorTerms") if isinstance(required, Mapping) else None
    return terms[:MAX_TERMS] if isinstance(terms, list) and terms else None


def allows(node: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """Whether the pod spec's nodeSelector, required node affinity and tolerations allow this node."""
    return _selected(node, spec.get("nodeSelector"), required_terms(spec)) and _tolerates_all(
        node, tolerations(spec)
    )


def _selected(node: Mapping[str, Any], selector: Any, terms: list[Any] | None) -> bool:
    """The nodeSelector and the required node affinity's terms hold for the node."""
    labels = _labels(node)
    if isinstance(selector, Mapping) and any(
        k not in labels or str(labels[k]) != str(v) for k, v in selector.items()
    ):
        return False
    return terms is None or any(_term(node, term) for term in terms)


def _tolerates_all(node: Mapping[str, Any], tolerated: list[Any]) -> bool:
    return all(_tolerated(taint, tolerated) for taint in node_taints(node))


def constraints(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a pod spec placement reads (its nodeSelector, required node affinity's
    terms and tolerations, bounded), to keep instead of the whole spec."""
    kept: dict[str, Any] = {}
    if isinstance(spec.get("nodeSelector"), Mapping):
        kept["nodeSelector"] = spec["nodeSelector"]
    tolerated = tolerations(spec)
    if tolerated:
        kept["tolerations"] = tolerated
    terms = required_terms(spec)
    if terms is not None:
        kept["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": terms}}}
    return kept


def placement_inputs(spec: Mapping[str, Any]) -> tuple[Any, ...]:
    """What placement depends on, comparable and hashable (a change means a re-check)."""
    selector = spec.get("nodeSelector")
    selected = (
        tuple(sorted((str(k), str(v)) for k, v in selector.items())) if isinstance(selector, Mapping) else ()
    )
    return (selected, repr(required_terms(spec)), repr(tolerations(spec)))


def node_platforms(
    nodes: Iterable[Mapping[str, Any]], spec: Mapping[str, Any], default: str, node: str = ""
) -> tuple[str, ...]:
    """``os/arch`` of the nodes the pod may land on, sorted; for a pod bound to ``node``, that
    node's (the one it pulls on), when it is known.

    When the taints leave no selected node, the selected nodes' platforms: tolerations can be
    added after the template (the PodTolerationRestriction admission plugin's namespace
    defaults, a mutating webhook), and a pod that could land nowhere is not what was meant.
    When no known node is selected either (a pool not created yet, a label not applied yet),
    every node's platform: the pull is still checked somewhere. ``(default,)`` when no node
    is known."""
    every: set[str] = set()
    selected: set[str] = set()
    allowed: set[str] = set()
    if node:
        nodes = [n for n in nodes if _name(n) == node] or list(nodes)
    selector, terms, tolerated = spec.get("nodeSelector"), required_terms(spec), tolerations(spec)  # once
    for candidate in nodes:
        labels = _labels(candidate)
        os_name, arch = labels.get(OS_LABEL), labels.get(ARCH_LABEL)
        if not os_name or not arch:
            continue
        platform = f"{os_name}/{arch}"
        every.add(platform)
        if _selected(candidate, selector, terms):
            selected.add(platform)
            if _tolerates_all(candidate, tolerated):
                allowed.add(platform)
    return tuple(sorted(allowed or selected or every)) or (default,)
