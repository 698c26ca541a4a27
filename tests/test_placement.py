"""Where a pod may run (pullhealth.domain.placement): nodeSelector and required node
affinity, as the scheduler reads them; the platforms a pull is checked for."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pullhealth.domain import placement


def node(name: str, arch: str, os_name: str = "linux", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/os": os_name, "kubernetes.io/arch": arch,
                                                  **labels}}}


NODES = [node("a", "amd64", pool="general", gen="3"), node("b", "arm64", pool="arm", gen="5"),
         node("w", "amd64", os_name="windows"), {"metadata": {"name": "bare", "labels": {}}}]


def required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": list(terms)}}}}


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": operator, **({"values": list(values)} if values else {})}]}


def test_node_selector() -> None:
    assert placement.node_platforms(NODES, {}, "x") == ("linux/amd64", "linux/arm64", "windows/amd64")
    assert placement.node_platforms(NODES, {"nodeSelector": {"kubernetes.io/arch": "arm64"}}, "x") == ("linux/arm64",)
    # A selector no node matches: every node's platform (the pod would not schedule anyway).
    assert placement.node_platforms(NODES, {"nodeSelector": {"pool": "gpu"}}, "x") == (
        "linux/amd64", "linux/arm64", "windows/amd64")
    assert placement.node_platforms([], {}, "linux/amd64") == ("linux/amd64",)


@pytest.mark.parametrize(
    ("spec", "platforms"),
    [
        # The common chart idiom: arch by affinity, not nodeSelector.
        (required(expr("kubernetes.io/arch", "In", "arm64")), ("linux/arm64",)),
        (required(expr("kubernetes.io/os", "NotIn", "windows")), ("linux/amd64", "linux/arm64")),
        (required(expr("pool", "Exists")), ("linux/amd64", "linux/arm64")),
        (required(expr("pool", "DoesNotExist")), ("windows/amd64",)),
        (required(expr("gen", "Gt", "4")), ("linux/arm64",)),
        (required(expr("gen", "Lt", "4")), ("linux/amd64",)),
        # Terms are ORed, a term's requirements ANDed.
        (required(expr("pool", "In", "arm"), expr("kubernetes.io/os", "In", "windows")),
         ("linux/arm64", "windows/amd64")),
        (required({"matchExpressions": [{"key": "pool", "operator": "Exists"},
                                        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}),
         ("linux/amd64",)),
        (required({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}), ("linux/arm64",)),
        # nodeSelector and affinity both hold.
        ({**required(expr("pool", "Exists")), "nodeSelector": {"kubernetes.io/arch": "amd64"}}, ("linux/amd64",)),
        # Preferred affinity is not a constraint.
        ({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": expr("pool", "In", "arm")}]}}},
         ("linux/amd64", "linux/arm64", "windows/amd64")),
    ],
)
def test_required_node_affinity(spec: dict[str, Any], platforms: tuple[str, ...]) -> None:
    assert placement.node_platforms(NODES, spec, "x") == platforms


@pytest.mark.parametrize(
    "term",
    [
        {},  # an empty term matches nothing
        expr("gen", "Gt", "four"),
        expr("gen", "Gt", "1", "2"),
        expr("pool", "Near", "arm"),
        {"matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["x"]}]},
        {"matchExpressions": [None]},
        {"matchExpressions": [{"key": "pool", "operator": "Exists"}] * (placement.MAX_REQUIREMENTS + 1)},
    ],
)
def test_malformed_or_hostile_terms_match_no_node(term: dict[str, Any]) -> None:
    assert not any(placement.allows(n, required(term)) for n in NODES)
    # No node allowed: every platform is still checked.
    assert placement.node_platforms(NODES, required(term), "x") == ("linux/amd64", "linux/arm64", "windows/amd64")


def test_hostile_shapes_are_read_defensively() -> None:
    for spec in ({"affinity": "x"}, {"affinity": {"nodeAffinity": []}}, required(),
                 {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                     "nodeSelectorTerms": "x"}}}}, {"nodeSelector": "x"}):
        assert placement.node_platforms(NODES, spec, "x") == ("linux/amd64", "linux/arm64", "windows/amd64")


def test_constraints_keep_only_what_placement_reads_and_inputs_change_with_it() -> None:
    spec = {**required(expr("pool", "In", "arm")), "nodeSelector": {"a": "b"}, "containers": [{"image": "x"}],
            "tolerations": [{"operator": "Exists"}]}
    kept = placement.constraints(spec)
    assert set(kept) == {"nodeSelector", "affinity", "tolerations"}
    assert placement.node_platforms(TAINTED, kept, "x") == placement.node_platforms(TAINTED, spec, "x")
    other = {**spec, **required(expr("pool", "In", "general"))}
    assert placement.placement_inputs(spec) != placement.placement_inputs(other)
    assert placement.placement_inputs(spec) != placement.placement_inputs({**spec, "tolerations": []})
    assert placement.placement_inputs({"containers": []}) == placement.placement_inputs({"tolerations": []})


def tainted(base: dict[str, Any], *taints: dict[str, str]) -> dict[str, Any]:
    return {**base, "spec": {"taints": list(taints)}}


WINDOWS_ONLY = {"key": "os", "value": "windows", "effect": "NoSchedule"}
ARM_ONLY = {"key": "arch", "value": "arm64", "effect": "NoExecute"}
# The AKS idiom: a Windows pool and an arm64 pool tainted so that only pods meant for them land there.
TAINTED = [NODES[0], tainted(NODES[1], ARM_ONLY), tainted(NODES[2], WINDOWS_ONLY)]


@pytest.mark.parametrize(
    ("tolerations", "platforms"),
    [
        ([], ("linux/amd64",)),
        ([{"key": "os", "operator": "Equal", "value": "windows", "effect": "NoSchedule"}],
         ("linux/amd64", "windows/amd64")),
        ([{"key": "os", "value": "windows"}], ("linux/amd64", "windows/amd64")),  # Equal, every effect
        ([{"key": "arch", "operator": "Exists"}], ("linux/amd64", "linux/arm64")),
        ([{"operator": "Exists"}], ("linux/amd64", "linux/arm64", "windows/amd64")),  # tolerates everything
        ([{"operator": "Exists", "effect": "NoSchedule"}], ("linux/amd64", "windows/amd64")),
        # Not tolerated: another value, another effect, a key without operator Exists, malformed.
        ([{"key": "os", "value": "linux"}], ("linux/amd64",)),
        ([{"key": "arch", "operator": "Exists", "effect": "NoSchedule"}], ("linux/amd64",)),
        ([{"value": "windows"}], ("linux/amd64",)),
        ([{"key": "os", "operator": "Near"}, "x", None], ("linux/amd64",)),
    ],
)
def test_taints_keep_pods_without_the_toleration_off_their_nodes(
    tolerations: list[Any], platforms: tuple[str, ...]
) -> None:
    assert placement.node_platforms(TAINTED, {"tolerations": tolerations}, "x") == platforms


def test_condition_and_preferring_taints_are_not_read() -> None:
    """A cordoned or not-ready node, or one that only prefers other pods, is still a platform
    the pod may land on; when every node is tainted away, every platform is checked."""
    nodes = [NODES[0], tainted(NODES[1], {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                               {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
                               {"key": "spot", "value": "true", "effect": "PreferNoSchedule"},
                               {"key": "node.cloudprovider.kubernetes.io/uninitialized", "value": "true",
                                "effect": "NoSchedule"})]
    assert placement.node_taints(nodes[1]) == []
    assert placement.node_platforms(nodes, {}, "x") == ("linux/amd64", "linux/arm64")
    # Every selected node tainted away (tolerations added after the template, as namespace
    # defaults are): the selected nodes' platforms, not every node's.
    all_tainted = [tainted(n, WINDOWS_ONLY) for n in NODES[:3]]
    assert placement.node_platforms(all_tainted, {}, "x") == ("linux/amd64", "linux/arm64", "windows/amd64")
    assert placement.node_platforms(all_tainted, {"nodeSelector": {"kubernetes.io/arch": "arm64"}}, "x") == (
        "linux/arm64",)
    assert not placement.allows(all_tainted[1], {"nodeSelector": {"kubernetes.io/arch": "arm64"}})
    # Hostile taint lists are bounded and read defensively.
    many = tainted(NODES[0], *([{"key": "k", "effect": "NoSchedule"}] * (placement.MAX_TAINTS + 5)))
    assert len(placement.node_taints(many)) == placement.MAX_TAINTS
    assert placement.node_taints({"spec": {"taints": "x"}}) == []
    assert placement.node_taints({"spec": {"taints": [None, {"effect": "NoSchedule"}]}}) == []


KEYS = st.sampled_from(["os", "arch", "spot", "node.kubernetes.io/not-ready", ""])
VALUES = st.sampled_from(["", "windows", "arm64", "true"])
EFFECTS = st.sampled_from(["", "NoSchedule", "NoExecute", "PreferNoSchedule", "Bogus"])
TAINTS = st.lists(st.fixed_dictionaries({"key": KEYS, "value": VALUES, "effect": EFFECTS}), max_size=4)
TOLERATIONS = st.lists(st.one_of(
    st.fixed_dictionaries({"key": KEYS, "operator": st.sampled_from(["Equal", "Exists", "", "Lt"]),
                           "value": VALUES, "effect": EFFECTS}),
    st.none(), st.text(max_size=3)), max_size=4)


@given(st.lists(TAINTS, min_size=1, max_size=4), TOLERATIONS, TOLERATIONS)
def test_tolerations_only_ever_widen_and_exists_tolerates_everything(
    taints: list[list[dict[str, str]]], some: list[Any], more: list[Any]
) -> None:
    """Properties of the scheduler's rule, whatever the (hostile) shapes: another
    toleration never takes a node away; ``operator: Exists`` with no key tolerates every
    taint; no taint keeps a pod off a node with no scheduling taint; no spec raises."""
    nodes = [tainted(node(f"n{i}", "amd64" if i % 2 else "arm64"), *t) for i, t in enumerate(taints)]
    for n in nodes:
        if placement.allows(n, {"tolerations": some}):
            assert placement.allows(n, {"tolerations": some + more})
        assert placement.allows(n, {"tolerations": [{"operator": "Exists"}]})
        if not placement.node_taints(n):
            assert placement.allows(n, {})
    assert set(placement.node_platforms(nodes, {"tolerations": some}, "x")) <= {"linux/amd64", "linux/arm64"}
