"""The knobs the domain needs, and the contact-policy checks for marketing triggers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from processors.domain.model import CustomerState

if TYPE_CHECKING:
    from processors.settings import Settings

DAY = 86400.0

#: Channels where a customer accepts an offer herself (S1: the app; also the web, and
#: staff on her behalf in a branch or on a call), so an acceptance there may grant an
#: entitlement. Not atm, pos, tv, ...: nothing there offers credit.
DEFAULT_ENTITLEMENT_CHANNELS: tuple[str, ...] = ("mobile", "web", "branch", "callcenter")
#: The largest overdraft an acceptance may grant, per currency; other currencies grant none.
DEFAULT_OVERDRAFT_MAX_LIMIT: dict[str, float] = {"EUR": 5000.0, "GBP": 5000.0, "USD": 5000.0}


@dataclass(slots=True, frozen=True)
class Policy:
    """Domain settings, copied once from :class:`Settings` so ``step`` stays pure."""

    max_event_age: float = 3600.0
    marketing_consent_default: bool = True
    overdraft_default_valid_hours: int = 24
    dedup_capacity: int = 512
    dedup_days: int = 7
    #: Event times are clamped to now + this (the validator dead-letters further ones).
    max_future_skew: float = 300.0
    #: A customer's encoded record never exceeds this (processors.domain.caps).
    max_state_bytes: int = 256 * 1024
    #: Channels whose acceptances may grant an entitlement (processors.domain.grants).
    entitlement_channels: frozenset[str] = frozenset(DEFAULT_ENTITLEMENT_CHANNELS)
    #: Currency -> the largest overdraft limit an acceptance may grant in it.
    overdraft_max_limit: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_OVERDRAFT_MAX_LIMIT)
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            max_event_age=settings.max_event_age_seconds,
            marketing_consent_default=settings.marketing_consent_default,
            overdraft_default_valid_hours=settings.overdraft_default_valid_hours,
            dedup_capacity=settings.dedup_capacity,
            dedup_days=settings.dedup_days,
            max_future_skew=settings.max_future_skew_seconds,
            max_state_bytes=settings.max_state_bytes,
            entitlement_channels=frozenset(settings.entitlement_channels),
            overdraft_max_limit=dict(settings.overdraft_max_limit),
        )


def has_marketing_consent(state: CustomerState, channel: str, policy: Policy) -> bool:
    """Consent from any channel holds on all: it is stored per messaging channel."""
    consent = state.consents.get(f"{channel}:marketing")
    return policy.marketing_consent_default if consent is None else bool(consent["granted"])


def is_stale(event_time: float, now: float, policy: Policy) -> bool:
    """Marketing is never sent for old events, so draining a backlog sends nothing stale."""
    return now - event_time > policy.max_event_age
