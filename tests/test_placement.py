"""Where a pod may run (pullhealth.domain.placement): nodeSelector and required node
affinity, as the scheduler reads them; the platforms a pull is checked for."""

from __future__ import annotations

from typing import Any

import pytest

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
    assert set(kept) == {"nodeSelector", "affinity"}
    assert placement.node_platforms(NODES, kept, "x") == placement.node_platforms(NODES, spec, "x")
    other = {**spec, **required(expr("pool", "In", "general"))}
    assert placement.placement_inputs(spec) != placement.placement_inputs(other)
    assert placement.placement_inputs({"containers": []}) == placement.placement_inputs({"tolerations": []})
