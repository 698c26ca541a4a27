"""Leader election: whether a live peer outranks this replica, for one watched scope.

kopf pauses its own watches on a replica that is outranked; the RegistryCheck loops and the
pod stream are our own tasks, so they ask here before acting (the answer is read from the
peering object at most every ``STANDBY_RECHECK`` seconds per scope).
"""

from __future__ import annotations

import time

from pullhealth import peering
from pullhealth.handlers.state import State

STANDBY_RECHECK = 2.0
MAX_SCOPES = 10000


async def outranked(namespace: str) -> bool:
    """With leader election: whether a live peer outranks this replica (read every 2 s)."""
    if State.peering is None or State.status is None:
        return False
    name, clusterwide, priority = State.peering
    where = None if clusterwide else namespace
    seen = State.standby_seen.get(where)
    if seen is not None and time.monotonic() - seen[0] < STANDBY_RECHECK:
        return seen[1]
    standby = peering.outranked(await State.status.peering_status(name, where), priority)
    if len(State.standby_seen) > MAX_SCOPES:
        State.standby_seen.clear()
    State.standby_seen[where] = (time.monotonic(), standby)
    return standby
