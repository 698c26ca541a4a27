"""Where a pod may run, as the scheduler's hard constraints say: its ``nodeSelector`` and
its required node affinity (``affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution``).

The pull is checked for the platforms (``kubernetes.io/os`` / ``kubernetes.io/arch``) of
the nodes those constraints allow. Preferred affinity, taints and tolerations are not read:
they do not decide which platforms a pod can land on as often, and reading them wrong would
hide a platform the pod does pull on. Pod specs are untrusted: every list is read up to a
bound and anything malformed matches no node, as the API server's validation would refuse it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

OS_LABEL, ARCH_LABEL = "kubernetes.io/os", "kubernetes.io/arch"
MAX_TERMS = 32  # nodeSelectorTerms read (ORed)
MAX_REQUIREMENTS = 64  # matchExpressions + matchFields read per term (ANDed)
MAX_VALUES = 256  # values read per requirement


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
    """Whether the pod spec's nodeSelector and required node affinity allow this node."""
    return _allowed(node, spec.get("nodeSelector"), required_terms(spec))


def _allowed(node: Mapping[str, Any], selector: Any, terms: list[Any] | None) -> bool:
    labels = _labels(node)
    if isinstance(selector, Mapping) and any(
        k not in labels or str(labels[k]) != str(v) for k, v in selector.items()
    ):
        return False
    return terms is None or any(_term(node, term) for term in terms)


def constraints(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a pod spec placement reads (its nodeSelector and required node
    affinity's terms, bounded), to keep instead of the whole spec."""
    kept: dict[str, Any] = {}
    if isinstance(spec.get("nodeSelector"), Mapping):
        kept["nodeSelector"] = spec["nodeSelector"]
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
    return (selected, repr(required_terms(spec)))


def node_platforms(
    nodes: Iterable[Mapping[str, Any]], spec: Mapping[str, Any], default: str
) -> tuple[str, ...]:
    """``os/arch`` of the nodes the pod may land on, sorted. When no known node is allowed
    (a pool not created yet, a label not applied yet), every node's platform: the pull is
    still checked somewhere. ``(default,)`` when no node is known."""
    every: set[str] = set()
    allowed: set[str] = set()
    selector, terms = spec.get("nodeSelector"), required_terms(spec)  # read once, not per node
    for node in nodes:
        labels = _labels(node)
        os_name, arch = labels.get(OS_LABEL), labels.get(ARCH_LABEL)
        if not os_name or not arch:
            continue
        platform = f"{os_name}/{arch}"
        every.add(platform)
        if _allowed(node, selector, terms):
            allowed.add(platform)
    return tuple(sorted(allowed or every)) or (default,)
