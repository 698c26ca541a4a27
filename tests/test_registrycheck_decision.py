"""The RegistryCheck decision without a cluster: what each event asks for (registrychecks/decision.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pullhealth.registrychecks import decision
from pullhealth.registrychecks.decision import (
    Export,
    ForeignClaim,
    LastRun,
    ReportInvalid,
    Run,
    StandBy,
    Wait,
)

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
SPEC = {"registry": "myacr.azurecr.io", "image": "team/app:v1", "intervalSeconds": 300}


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def body(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, generation: int = 2,
         annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "app", "namespace": "team", "uid": "u1", "generation": generation,
                         "annotations": annotations or {}},
            "spec": SPEC if spec is None else spec, "status": status or {}}


def checked(ago: float, phase: str = "Healthy", **extra: Any) -> dict[str, Any]:
    return {"observedGeneration": 2, "lastCheckTime": stamp(NOW - timedelta(seconds=ago)), "phase": phase,
            "code": "OK" if phase == "Healthy" else "TAG_NOT_FOUND", **extra}


def decide(obj: dict[str, Any], last: LastRun | None = None, outranked: bool = False) -> decision.Decision:
    return decision.decide(obj, NOW, last, outranked, "pullhealth-me")


def test_never_checked_runs_now() -> None:
    chosen = decide(body())
    assert isinstance(chosen, Run) and chosen.recheck is None
    assert chosen.export == Export("myacr.azurecr.io", 300)


def test_not_yet_due_waits_for_the_rest_of_the_interval() -> None:
    chosen = decide(body(status=checked(100)))
    assert isinstance(chosen, Wait) and chosen.seconds == 200.0
    assert chosen.export == Export("myacr.azurecr.io", 300)


def test_a_new_generation_is_due_at_once() -> None:
    assert isinstance(decide(body(status=checked(100), generation=3)), Run)


def test_a_recheck_request_runs_although_not_due() -> None:
    chosen = decide(body(status=checked(10), annotations={"pullhealth.io/recheck": "t1"}))
    assert isinstance(chosen, Run) and chosen.recheck == "t1"
    # Answered already (observedRecheck): not again.
    assert isinstance(decide(body(status=checked(10, observedRecheck="t1"),
                                  annotations={"pullhealth.io/recheck": "t1"})), Wait)


def test_our_own_recent_run_wins_over_an_older_status() -> None:
    """The event carries the status from before our run (or our write failed): no second probe."""
    chosen = decide(body(), last=LastRun(2, None, 42.0))
    assert chosen == Wait(42.0)  # and no export: the gauges keep the newer result
    assert isinstance(decide(body(), last=LastRun(1, None, 42.0)), Run)  # another generation
    assert isinstance(decide(body(), last=LastRun(2, None, -1.0)), Run)  # its time is up


def test_outranked_stands_by() -> None:
    assert decide(body(), outranked=True) == StandBy()


def test_suspended_waits_for_the_next_event_and_exports_no_schedule() -> None:
    chosen = decide(body({**SPEC, "suspend": True}))
    assert chosen == Wait(None, Export("myacr.azurecr.io", None))


def test_a_live_foreign_claim_is_left_alone_an_expired_one_taken_over() -> None:
    live = {"claim": {"holder": "pullhealth-other", "since": stamp(NOW - timedelta(seconds=5))}}
    chosen = decide(body(status=live))
    assert isinstance(chosen, ForeignClaim) and chosen.holder == "pullhealth-other" and chosen.ttl > 5
    expired = {"claim": {"holder": "pullhealth-other", "since": stamp(NOW - timedelta(hours=1))}}
    assert isinstance(decide(body(status=expired)), Run)
    ours = {"claim": {"holder": "pullhealth-me", "since": stamp(NOW - timedelta(seconds=5))}}
    assert isinstance(decide(body(status=ours)), Run)  # our own (a restart after a crash)


def test_an_invalid_spec_is_reported_once_per_generation() -> None:
    bad = {"registry": "https://myacr.azurecr.io/team", "image": "team/app:v1"}
    chosen = decide(body(bad))
    assert isinstance(chosen, ReportInvalid) and "registry" in chosen.message
    assert chosen.export == Export(None, None)
    reported = {"phase": "Invalid", "observedGeneration": 2}
    assert decide(body(bad, status=reported)) == Wait(None, Export(None, None))
    assert decide(body(bad), last=LastRun(2, None, 100.0)) == Wait(decision.INVALID_RETRY, Export(None, None))
    # The report of an invalid spec does not wait for leader election (nothing is probed).
    assert isinstance(decide(body(bad), outranked=True), ReportInvalid)
