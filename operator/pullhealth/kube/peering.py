"""Leader election through kopf peering: is this replica outranked (a standby)? Pure.

kopf pauses its watch streams while a live peer with a higher priority exists, but the
RegistryCheck loops (registrychecks/schedule.py) are our own tasks: they ask this before each run,
from the peering object's status (one record per replica: priority, lifetime, lastseen),
judged the way kopf judges it (kopf/_core/engines/peering.py: a record is live until
lastseen + lifetime).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any


def outranked(status: Mapping[str, Any] | None, priority: int, now: datetime | None = None) -> bool:
    """Whether a live peer has a higher priority than ours (then we are the standby)."""
    moment = now or datetime.now(UTC)
    for record in (status or {}).values():
        if not isinstance(record, Mapping):
            continue
        try:
            peer_priority = int(record.get("priority") or 0)
            lifetime = int(record.get("lifetime") or 0)
            lastseen = datetime.fromisoformat(str(record.get("lastseen")))
        except (TypeError, ValueError):
            continue
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=UTC)
        if peer_priority > priority and lastseen + timedelta(seconds=lifetime) > moment:
            return True
    return False
