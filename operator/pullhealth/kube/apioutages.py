"""API server (or etcd) outages: one WARNING when it starts, one when it ends, counted.

kopf's API client logs every retried request at ERROR ("Request attempt #2/9 failed;
will retry ..."): an ordinary 20-second API server restart made some twenty ERROR lines.
Retrying is the expected behaviour, not an error. :class:`RetryFilter` sits on the log
handlers and hands those records to an :class:`OutageTracker` instead of the log;
our own API calls report their connection failures to the same tracker. The tracker says
once that the API server is unreachable and once that it answers again (with how long and
how many requests were retried), and counts outages through a callback (the metric).

A request sent while the API server was coming back can still fail a few seconds after
the outage ended (a read that timed out on a server still syncing its caches). Such a
failure within :data:`SETTLE` seconds of the end is counted as the same outage's tail,
not logged as a new outage: one restart is one outage. A new outage that starts in that
window is logged by its first failure after it (kopf and urllib3 keep retrying).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

# kopf's API client (its retry messages are the ones folded into one line per outage).
KOPF_CLIENT_LOGGER = "kopf._cogs.clients.api"
# What a connection-level failure looks like in kopf's retry messages (aiohttp errors,
# timeouts, 5xx from an API server whose etcd is down).
_TRANSIENT = (
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientOSError",
    "ClientPayloadError",
    "ServerTimeoutError",
    "TimeoutError",
    "APIServerError",
    "Connection refused",
    "Connection reset",
    "NewConnectionError",
    "RemoteDisconnected",
    # 429 while the API server's storage (re)initialises after an etcd restart, or while
    # it sheds load: retried like the rest.
    "APITooManyRequestsError",
)
SETTLE = 15.0  # seconds after an outage's end in which a failure is still its tail


class OutageTracker:
    """Whether the API server is unreachable now; logs and counts each outage once.

    Thread-safe: our API calls run on worker threads, kopf's on the event loop.

    Args:
        logger: where the two lines of an outage go.
        on_outage: called once when an outage starts (increments the metric).
        settle: seconds after an outage's end in which failures are its tail.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        logger: logging.Logger,
        on_outage: Callable[[], None] = lambda: None,
        *,
        settle: float = SETTLE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._on_outage = on_outage
        self._settle = settle
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._ended: float | None = None
        self._failures = 0
        self.tail_failures = 0  # failures counted as the tail of the outage before

    @property
    def down(self) -> bool:
        """An outage is in progress."""
        return self._since is not None

    def failed(self, what: str) -> None:
        """A request failed at the connection level (it will be retried)."""
        with self._lock:
            now = self._clock()
            if self._since is None and self._ended is not None and now - self._ended < self._settle:
                self.tail_failures += 1
                return
            self._failures += 1
            if self._since is not None:
                return
            self._since = now
        self._on_outage()
        self._logger.warning(
            "API server unreachable (%s); requests are retried until it answers "
            "(one line per outage, see pullhealth_api_outages_total)",
            what[:300],
        )

    def recovered(self) -> None:
        """A request succeeded: end the outage, if any."""
        with self._lock:
            if self._since is None:
                return
            self._ended = self._clock()
            took, failures = self._ended - self._since, self._failures
            self._since, self._failures = None, 0
        self._logger.warning("API server reachable again after %.0fs (%d requests retried)", took, failures)


def is_transient(text: str) -> bool:
    """Whether an error text is a connection-level failure worth retrying quietly."""
    return any(marker in text for marker in _TRANSIENT)


class RetryFilter(logging.Filter):
    """Drops kopf's per-attempt retry records of connection failures; the tracker logs once."""

    def __init__(self, tracker: OutageTracker) -> None:
        super().__init__()
        self._tracker = tracker

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for a retried request that failed at the connection level."""
        if getattr(record, "pullhealth_outage", False):
            return False  # already counted by this filter on another handler
        message = record.getMessage()
        retried = (message.startswith("Request attempt") and " failed; " in message) or message.startswith(
            "Retrying (Retry("  # urllib3 under the kubernetes client (our own calls)
        )
        if retried and is_transient(message):
            record.pullhealth_outage = True
            self._tracker.failed(message.split(": ", 1)[-1] if ": " in message else message)
            return False
        return True


def install(tracker: OutageTracker) -> RetryFilter:
    """Attach the filter to the handlers of the root logger (where kopf's records end up:
    kopf's client logs through whichever logger its caller passes, per object or per
    watcher), replacing an earlier one."""
    flt = RetryFilter(tracker)
    root = logging.getLogger()
    for handler in root.handlers:
        for existing in list(handler.filters):
            if isinstance(existing, RetryFilter):
                handler.removeFilter(existing)
        handler.addFilter(flt)
    return flt
