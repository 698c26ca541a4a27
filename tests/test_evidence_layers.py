"""Evidence layers: kubelet's message and the operator's probe compared by how far each got.

The probes run for real against the session `world` (dnsmasq, Debian's docker-registry);
the messages are kubelet/containerd texts. A probe that fails earlier than the node got is
a difference of vantage point: the message's cause stays, the probe's failure is evidence.
"""

from __future__ import annotations

from typing import Any

from pullhealth.chain.probechain import ChainOptions, Target, run_chain
from pullhealth.domain.classify import classify, reached
from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import VANTAGE_CHECK, Layer, combine, vantage_layer
from pullhealth.domain.model import Diagnosis, StepStatus
from pullhealth.domain.reference import parse_target
from support.world import TEST_DESTINATIONS


async def _probe(world: Any, ref: str) -> Diagnosis:
    registry, image = parse_target(ref)
    options = ChainOptions(nameserver=world.nameserver, ca_file=str(world.ca_bundle), timeout=2.0,
                           destinations=TEST_DESTINATIONS)
    return await run_chain(Target(registry, image), options)


def _kubelet(ref: str, tail: str) -> str:
    return (
        f'Failed to pull image "{ref}": failed to pull and unpack image "{ref}": failed to resolve '
        f'reference "{ref}": {tail}'
    )


def _diagnose(text: str, probed: Diagnosis) -> Diagnosis:
    return combine(classify(text), probed, reached(text))


async def test_node_got_a_401_the_operator_cannot_resolve_keeps_the_message(world: Any) -> None:
    ref = f"{world.missing}/team/app:v1"
    probed = await _probe(world, ref)
    assert probed.code is Code.DNS_NXDOMAIN
    text = _kubelet(ref, "failed to authorize: failed to fetch anonymous token: unexpected status: 401 Unauthorized")
    d = _diagnose(text, probed)
    assert d.code is Code.AUTH_REQUIRED
    assert d.summary.endswith("(the operator's own network could not reach missing.test)")
    vantage = d.checks[-1]
    assert vantage.name == VANTAGE_CHECK and vantage.status is StepStatus.FAILED
    assert vantage.code is Code.DNS_NXDOMAIN
    assert vantage.details == {"operatorFailedAt": "dns", "nodeReached": "token"}
    assert "NetworkPolicies" in vantage.message
    assert [c.name for c in d.checks][:1] == ["dns"]  # the probe's own steps stay as evidence
    assert vantage_layer(d) == "dns"
    # a wrong password seen by the node keeps the refined credential code the same way
    rejected = _diagnose(_kubelet(ref, "failed to authorize: failed to fetch oauth token: unexpected status: "
                                  "401 Unauthorized"), probed)
    assert rejected.code is Code.CREDENTIALS_REJECTED and vantage_layer(rejected) == "dns"


async def test_same_layer_the_probe_confirms(world: Any) -> None:
    ref = f"{world.missing}/team/app:v1"
    probed = await _probe(world, ref)
    text = _kubelet(ref, 'failed to do request: Head "https://missing.test/v2/team/app/manifests/v1": dial tcp: '
                    "lookup missing.test on 10.0.0.10:53: no such host")
    d = _diagnose(text, probed)
    assert d.code is Code.DNS_NXDOMAIN
    assert vantage_layer(d) is None and VANTAGE_CHECK not in [c.name for c in d.checks]


async def test_later_layer_the_probe_refines(world: Any) -> None:
    ref = f"{world.anon}/nosuch/repo:v1"
    probed = await _probe(world, ref)
    assert probed.code is Code.REPOSITORY_NOT_FOUND
    text = _kubelet(ref, "pull access denied, repository does not exist or may require authorization: "
                    "server message: insufficient_scope: authorization failed")
    assert reached(text) is Layer.TOKEN
    d = _diagnose(text, probed)
    assert d.code is Code.REPOSITORY_NOT_FOUND and vantage_layer(d) is None


async def test_message_without_a_layer_lets_the_probe_decide(world: Any) -> None:
    ref = f"{world.missing}/team/app:v1"
    probed = await _probe(world, ref)
    d = _diagnose('Back-off pulling image "missing.test/team/app:v1"', probed)
    assert d.code is Code.DNS_NXDOMAIN and vantage_layer(d) is None


def test_a_failing_egress_proxy_is_the_cause_not_a_vantage_difference() -> None:
    # Go reports a proxy's refused CONNECT as the bare status text; the probe went through
    # the same proxy the runtime uses and found it: the probe decides.
    from pullhealth.domain.diagnose import make
    from pullhealth.domain.model import CheckResult

    checks = [CheckResult(name="dns", status=StepStatus.PASSED), CheckResult(name="tcp", status=StepStatus.PASSED),
              CheckResult(name="tls", status=StepStatus.FAILED, code=Code.PROXY_ERROR, message="refused CONNECT")]
    probed = make(Code.PROXY_ERROR, {"proxy": "10.0.0.9:3128", "host": "r.io"}, checks=checks)
    text = 'failed to do request: Head "https://r.io/v2/a/manifests/1": Forbidden'
    assert classify(text).code is Code.PERMISSION_DENIED
    d = _diagnose(text, probed)
    assert d.code is Code.PROXY_ERROR and vantage_layer(d) is None


def test_an_unexpected_probe_failure_does_not_override_a_recognised_message() -> None:
    from pullhealth.domain.diagnose import make
    from pullhealth.domain.model import CheckResult

    checks = [CheckResult(name="dns", status=StepStatus.FAILED, code=Code.UNKNOWN, message="dns step failed unexpectedly")]
    probed = make(Code.UNKNOWN, {"detail": "dns step failed unexpectedly"}, checks=checks)
    text = "failed to fetch anonymous token: unexpected status: 401 Unauthorized"
    d = _diagnose(text, probed)
    assert d.code is Code.AUTH_REQUIRED and d.checks == checks
    assert _diagnose("something odd", probed).code is Code.UNKNOWN
