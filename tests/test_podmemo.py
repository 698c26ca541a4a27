"""The per-pod memory: unchanged failing pods (back-off churn) reuse the last diagnosis."""

from __future__ import annotations

from typing import Any

from pullhealth.domain.codes import Code
from pullhealth.domain.diagnose import make
from pullhealth.pods import podcheck
from pullhealth.pods.podcheck import PodResult
from pullhealth.pods.podmemo import PodMemo, failure_text

IMAGE = "r.io:5000/team/app:1"
ERROR = f'rpc error: code = NotFound desc = failed to pull and unpack image "{IMAGE}": not found'


def pod(
    reason: str, message: str, *, image: str = IMAGE, node: str = "n1", secrets: tuple[str, ...] = ()
) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": image}],
            "imagePullSecrets": [{"name": s} for s in secrets],
        },
        "status": {
            "containerStatuses": [
                {"name": "app", "image": image, "state": {"waiting": {"reason": reason, "message": message}}}
            ]
        },
    }


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def diagnosed(memo: PodMemo, body: dict[str, Any]) -> list[PodResult]:
    failing = podcheck.failing_containers(body)
    results = [PodResult(failing[0], make(Code.TAG_NOT_FOUND, {}), "r.io:5000")]
    memo.remember("u1", body, failing, results)
    return results


def recall(memo: PodMemo, body: dict[str, Any]) -> list[PodResult] | None:
    return memo.recall("u1", body, podcheck.failing_containers(body))


def test_backoff_transitions_with_the_same_text_reuse_the_diagnosis() -> None:
    memo = PodMemo(ttl=60.0, clock=Clock())
    diagnosed(memo, pod("ErrImagePull", ERROR))
    for body in (
        pod("ImagePullBackOff", ERROR),
        pod("ErrImagePull", ERROR),
        pod("ImagePullBackOff", f'Back-off pulling image "{IMAGE}"'),
        pod("ImagePullBackOff", f'Back-off pulling image "{IMAGE}": ErrImagePull: {ERROR}'),
    ):
        again = recall(memo, body)
        assert again is not None and again[0].diagnosis.code is Code.TAG_NOT_FOUND
        # The reused result names today's container state.
        assert again[0].container == podcheck.failing_containers(body)[0]


def test_any_change_the_diagnosis_depends_on_runs_it_again() -> None:
    memo = PodMemo(ttl=60.0, clock=Clock())
    diagnosed(memo, pod("ErrImagePull", ERROR))
    assert recall(memo, pod("ErrImagePull", ERROR.replace("not found", "unauthorized"))) is None
    assert recall(memo, pod("ErrImagePull", ERROR, image="r.io:5000/team/app:2")) is None
    assert recall(memo, pod("ErrImagePull", ERROR, node="n2")) is None
    assert recall(memo, pod("ErrImagePull", ERROR, secrets=("pull",))) is None
    assert recall(memo, pod("InvalidImageName", ERROR)) is None


def test_a_diagnosis_older_than_the_interval_is_not_reused() -> None:
    clock = Clock()
    memo = PodMemo(ttl=60.0, clock=clock)
    diagnosed(memo, pod("ErrImagePull", ERROR))
    clock.now += 59.0
    assert recall(memo, pod("ImagePullBackOff", ERROR)) is not None
    clock.now += 1.0
    assert recall(memo, pod("ImagePullBackOff", ERROR)) is None


def test_interval_zero_remembers_nothing() -> None:
    memo = PodMemo(ttl=0.0)
    diagnosed(memo, pod("ErrImagePull", ERROR))
    assert len(memo) == 0 and recall(memo, pod("ErrImagePull", ERROR)) is None


def test_memory_is_bounded_and_deleted_or_recovered_pods_are_forgotten() -> None:
    memo = PodMemo(ttl=60.0, limit=3)
    body = pod("ErrImagePull", ERROR)
    failing = podcheck.failing_containers(body)
    for i in range(10):
        memo.remember(f"u{i}", body, failing, [])
    assert len(memo) == 3
    assert memo.recall("u9", body, failing) == [] and memo.recall("u0", body, failing) is None
    memo.forget("u9")
    memo.remember("u8", body, [], [])
    assert len(memo) == 1


def test_failure_text_of_backoff_messages() -> None:
    assert (
        failure_text(podcheck.failing_containers(pod("ImagePullBackOff", "Back-off pulling image"))[0])
        is None
    )
    text = f'Back-off pulling image "{IMAGE}": ErrImagePull: {ERROR}'
    assert failure_text(podcheck.failing_containers(pod("ImagePullBackOff", text))[0]) == ERROR
