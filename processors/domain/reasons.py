"""Suppression reason codes: the ``reasons`` of a decision on ``decision.log``.

A public contract (dashboards and consumers match on these strings): change a
value only with a new decision schema.
"""

from __future__ import annotations

# Any trigger.
EXPIRED = "expired"

# Marketing triggers, in the order the step and the contact policy check them.
STALE = "stale"
CONSENT = "consent"
PROFILE = "profile"
COOLDOWN = "cooldown"
PAUSED = "paused"
FREQUENCY_CAP = "frequency_cap"
QUIET_HOURS = "quiet_hours"
ARBITRATION = "arbitration"
#: The customer is held out of the rule's marketing (``OMNI_CONTROL_GROUP_SHARE``).
CONTROL_GROUP = "control_group"

__all__ = [
    "ARBITRATION",
    "CONSENT",
    "CONTROL_GROUP",
    "COOLDOWN",
    "EXPIRED",
    "FREQUENCY_CAP",
    "PAUSED",
    "PROFILE",
    "QUIET_HOURS",
    "STALE",
]
