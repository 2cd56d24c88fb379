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

# An event that would grant something (an overdraft entitlement, a coupon) and may not:
# every match of it is suppressed with UNAUTHORIZED and then the one rule that refused
# it (processors.domain.grants), and nothing is granted.
UNAUTHORIZED = "unauthorized"
#: Sent from a channel that may not grant it (``OMNI_ENTITLEMENT_CHANNELS``; coupons: tv, sms).
CHANNEL_NOT_ALLOWED = "channel_not_allowed"
#: The overdraft's limit is above ``OMNI_OVERDRAFT_MAX_LIMIT`` for its currency.
LIMIT_TOO_HIGH = "limit_too_high"
#: The overdraft's currency is missing or not in ``OMNI_OVERDRAFT_MAX_LIMIT``.
UNKNOWN_CURRENCY = "unknown_currency"
#: It names a ``trigger_id`` that is not an offer we sent this customer.
TRIGGER_NOT_OURS = "trigger_not_ours"
#: The rules that refuse a grant, in the order they are checked.
GRANT_REFUSALS = (CHANNEL_NOT_ALLOWED, TRIGGER_NOT_OURS, UNKNOWN_CURRENCY, LIMIT_TOO_HIGH)

__all__ = [
    "ARBITRATION",
    "CHANNEL_NOT_ALLOWED",
    "CONSENT",
    "CONTROL_GROUP",
    "COOLDOWN",
    "EXPIRED",
    "FREQUENCY_CAP",
    "LIMIT_TOO_HIGH",
    "PAUSED",
    "PROFILE",
    "QUIET_HOURS",
    "STALE",
    "TRIGGER_NOT_OURS",
    "UNAUTHORIZED",
    "UNKNOWN_CURRENCY",
]
