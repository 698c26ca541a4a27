"""API server outages are one WARNING line each (start and end), counted, not an ERROR per retry."""

from __future__ import annotations

import logging

import pytest

from pullhealth.kube import apioutages


def test_kopf_retry_errors_become_one_warning_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    outages: list[int] = []
    now = [100.0]
    tracker = apioutages.OutageTracker(logging.getLogger("pullhealth.api"), lambda: outages.append(1),
                                      settle=15.0, clock=lambda: now[0])
    apioutages.install(tracker)
    kopf_client = logging.getLogger(apioutages.KOPF_CLIENT_LOGGER)
    caplog.set_level(logging.DEBUG)
    for attempt in range(1, 22):  # what a 20 s API server restart produced before
        kopf_client.error(
            f"Request attempt #{attempt}/9 failed; will retry: GET https://127.0.0.1:6443/api/v1/pods -> "
            "ClientConnectorError(ConnectionKey(host='127.0.0.1'), ConnectionRefusedError(111, 'Connect call failed'))"
        )
    # urllib3's own retries under the kubernetes client (the operator's own calls).
    logging.getLogger("urllib3.connectionpool").warning(
        "Retrying (Retry(total=2, connect=None, read=None, redirect=None, status=None)) after connection "
        "broken by 'NewConnectionError(\"HTTPSConnection(host='127.0.0.1', port=6443): Failed to establish "
        "a new connection: [Errno 111] Connection refused\")': /readyz"
    )
    now[0] += 20.0
    tracker.recovered()
    tracker.recovered()  # no outage now: nothing more
    now[0] += 5.0
    tracker.failed("ReadTimeoutError")  # a request sent while it came back: the same outage
    assert not tracker.down and tracker.tail_failures == 1
    now[0] += 11.0
    tracker.failed("HTTP 503")  # a second outage (etcd down behind the API server)
    records = [r for r in caplog.records if r.name in ("pullhealth.api", apioutages.KOPF_CLIENT_LOGGER)]
    assert [r.levelno for r in records] == [logging.WARNING] * 3, [r.getMessage() for r in records]
    assert "unreachable" in records[0].getMessage() and "reachable again" in records[1].getMessage()
    assert "22 requests retried" in records[1].getMessage() and "after 20s" in records[1].getMessage()
    assert len(outages) == 2 and tracker.down


def test_other_kopf_errors_pass(caplog: pytest.LogCaptureFixture) -> None:
    tracker = apioutages.OutageTracker(logging.getLogger("pullhealth.api"))
    apioutages.install(tracker)
    caplog.set_level(logging.DEBUG)
    logging.getLogger(apioutages.KOPF_CLIENT_LOGGER).error(
        "Request attempt #1/9 failed; escalating: PATCH /x -> APIForbiddenError('forbidden')"
    )
    assert [r.levelno for r in caplog.records] == [logging.ERROR] and not tracker.down
