"""The node agent's evidence: its Event note round-trips, and the evidence-layer rule."""

from __future__ import annotations

from pullhealth.agent import nodereport as ne
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import Layer, make
from pullhealth.domain.model import CheckResult, StepStatus

PE = ne.NodeReport(
    Code.PRIVATE_ENDPOINT_DNS,
    "aks-pool-b-1",
    "myacr.azurecr.io",
    "dns",
    "https://myacr.azurecr.io",
    False,
    "myacr.azurecr.io resolves to public address 20.1.2.3 but a private endpoint is expected",
)


def event(report: ne.NodeReport, instance: str | None = None) -> dict[str, str]:
    return {"note": report.note(), "controller": ne.REPORTING_CONTROLLER, "instance": instance or report.node}


def test_note_round_trips_and_is_bounded() -> None:
    assert ne.parse_note(PE.note()) == PE
    odd = ne.NodeReport(Code.OK, "n 1", "r.test:5000", "", "https://m.test/v2 x", True, "ok\nnewline" * 500)
    parsed = ne.parse_note(odd.note())
    assert parsed is not None and parsed.node == "n 1" and parsed.endpoint == "https://m.test/v2 x"
    assert len(odd.note()) <= 1024 and "\n" not in odd.note()
    assert ne.parse_note("not ours") is None
    assert ne.parse_note("code=NOPE node=a registry=b | x") is None
    # The check's time travels in the (signed) note; anything but the agent's format is dropped.
    stamped = ne.NodeReport(Code.OK, "n1", "r.test", checked="2026-12-03T10:00:00Z")
    assert ne.parse_note(stamped.note()) == stamped
    assert "checked=2026-12-03T10:00:00Z" in stamped.note()
    for odd_time in ("2026-12-03 10:00:00", "2026-12-03T10:00:00+05:00", "x" * 40):
        assert ne.parse_note(ne.NodeReport(Code.OK, "n1", "r.test", checked=odd_time).note()).checked == ""  # type: ignore[union-attr]


def test_pick_takes_the_pods_node_and_registry_only() -> None:
    other_node = ne.NodeReport(Code.OK, "aks-pool-a-1", "myacr.azurecr.io")
    forged = {**event(PE), "controller": "someone-else"}
    events = [event(other_node), forged, event(PE, instance="aks-pool-a-1"), event(PE)]
    assert ne.pick(events, "myacr.azurecr.io", "aks-pool-b-1") == PE
    assert ne.pick(events, "other.azurecr.io", "aks-pool-b-1") is None
    assert ne.pick(events, "myacr.azurecr.io", None) is None


def test_failing_node_path_outranks_and_names_the_node() -> None:
    message = make(Code.FIREWALL_FORBIDDEN, {"host": "myacr.azurecr.io", "registry": "myacr.azurecr.io"})
    folded = ne.fold(message, PE, Layer.HTTP)
    assert folded.code is Code.PRIVATE_ENDPOINT_DNS
    assert folded.summary.startswith("on node aks-pool-b-1: ")
    assert ne.named_node(folded) == "aks-pool-b-1"
    assert Code.FIREWALL_FORBIDDEN in folded.candidates
    assert ne.node_specific(folded) and ne.node_of(folded) == "aks-pool-b-1"


def test_node_failure_before_a_later_answer_does_not_override() -> None:
    tls = ne.NodeReport(Code.TLS_UNTRUSTED, "n1", "r.test", "tls", "https://r.test", False, "untrusted")
    creds = make(Code.CREDENTIALS_REJECTED, {"registry": "r.test"})
    kept = ne.fold(creds, tls, Layer.TOKEN)
    assert kept.code is Code.CREDENTIALS_REJECTED and not ne.node_specific(kept)
    assert kept.checks[-1].name == ne.NODE_CHECK and kept.checks[-1].status is StepStatus.FAILED
    # the same node failure with a TLS message (or no message layer): the node's cause
    assert ne.fold(creds, tls, Layer.TLS).code is Code.TLS_UNTRUSTED
    assert ne.fold(creds, tls, None).code is Code.TLS_UNTRUSTED


def test_healthy_node_keeps_the_cause_and_names_the_mirror() -> None:
    mirror = ne.NodeReport(Code.OK, "n1", "r.test", "", "https://mirror.test", True, "reaches r.test")
    probe = CheckResult(name="manifest", status=StepStatus.FAILED, code=Code.TAG_NOT_FOUND)
    diagnosis = make(Code.TAG_NOT_FOUND, {"registry": "r.test"}, checks=[probe])
    folded = ne.fold(diagnosis, mirror, Layer.MANIFEST)
    assert folded.code is Code.TAG_NOT_FOUND
    assert folded.summary.startswith("containerd on node n1 pulls through mirror https://mirror.test; ")
    assert folded.facts["mirror"] == "https://mirror.test" and not ne.node_specific(folded)
    assert ne.reached(mirror) is Layer.HTTP and ne.reached(PE) is None
    assert ne.fold(diagnosis, None, None) == diagnosis


# --- issue 21: signed notes; forged ones count nowhere


def _signed_pair() -> tuple[bytes, str, str]:
    from pullhealth.agent.nodereport import NodeReport

    key = b"k" * 32
    report = NodeReport(Code.PRIVATE_ENDPOINT_DNS, "n1", "myacr.azurecr.io", "dns", "https://myacr.azurecr.io")
    return key, report.note(key, "uid-1"), report.note()


def test_only_a_note_signed_for_this_pod_is_taken() -> None:
    from pullhealth.agent.nodereport import parse_note, pick

    key, signed, unsigned = _signed_pair()
    assert parse_note(signed, key, "uid-1") is not None and parse_note(signed, key, "uid-1").verified  # type: ignore[union-attr]
    assert parse_note(unsigned, key, "uid-1") is None  # forged: no signature
    assert parse_note(signed, key, "uid-2") is None  # copied onto another pod
    assert parse_note(signed.replace("n1", "n2"), key, "uid-1") is None  # altered
    assert parse_note(signed, b"x" * 32, "uid-1") is None  # another key
    event = {"note": unsigned, "controller": "pullhealth.io/agent", "instance": "n1"}
    assert pick([event], "myacr.azurecr.io", "n1", key, "uid-1") is None
    assert pick([{**event, "note": signed}], "myacr.azurecr.io", "n1", key, "uid-1") is not None


def test_the_per_pool_metric_counts_only_verified_evidence() -> None:
    from pullhealth.agent.nodereport import fold, node_specific, parse_note
    from pullhealth.domain.diagnose import make

    key, signed, unsigned = _signed_pair()
    base = make(Code.FIREWALL_FORBIDDEN, {"host": "myacr.azurecr.io", "registry": "myacr.azurecr.io"})
    unverified = fold(base, parse_note(unsigned), None)  # no key configured: taken, not attributed
    verified = fold(base, parse_note(signed, key, "uid-1"), None)
    assert node_specific(unverified) and not node_specific(unverified, verified_only=True)
    assert node_specific(verified, verified_only=True)
