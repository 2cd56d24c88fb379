"""The contact policy for marketing triggers: who may be contacted, when, and how often.

Service messages never come here. ``step`` collects the marketing candidates the
rules proposed for one event (it has already worked out consent and eligibility)
and calls :func:`decide`, which returns one :class:`Verdict` per candidate, in
the candidates' order. Each candidate goes through these checks, in this order;
the first one that fails is its only reason code:

1. ``consent``        -- ``consent_granted`` is false.
2. ``profile``        -- ``eligible`` is false.
3. ``cooldown``       -- the rule emitted for ``cooldown_key`` at event time ``last`` and
   ``event_time - last < cooldown_seconds``, or ``event_time < last`` (a late event
   never re-offers). No check when the key or the period is None.
4. ``paused``         -- the offer type is paused (``paused_until > event_time``) after
   repeated declines or ignores (:func:`record_response`).
5. ``frequency_cap``  -- sending at ``event_time`` would put more than
   ``frequency_cap_day`` marketing triggers in some rolling 24 h window, or more than
   ``frequency_cap_week`` in some rolling 7 d window (see "Caps" below).
6. ``quiet_hours``    -- only for channels in ``quiet_channels`` whose ``event_time`` falls
   in quiet hours in the customer's time zone: the verdict is ``deferred`` with
   ``release_at`` = end of quiet hours + a spread, unless the trigger expires at or
   before ``release_at``: then it is suppressed ``quiet_hours``.
7. ``arbitration``    -- among the candidates that passed 1-6 (emitted or deferred), only
   the best goes: highest ``priority``, then highest ``value``, then the smallest
   ``rule_id`` (then ``trigger_id``) so the choice is deterministic. The others are
   suppressed ``arbitration``.

So at most one marketing trigger leaves per call, and arbitration comes before
anything is counted: :func:`decide` changes nothing; the caller records the winner
with :func:`record_sent` (at the event time) when it is emitted, or at its release
time when a deferred one is released. Losers never consume cap. Because a call lets
at most one trigger through, "triggers emitted earlier in the same call" never
count toward the caps of the others: there are none.

Quiet hours are judged at the *event time*, like every other check, so a replay
decides the same. ``now`` (processing time) is used in one place only: when quiet
hours at the event time had already ended by ``now``, including the spread (a lagging
consumer), the trigger is emitted instead of deferred to a release time in the past.
Marketing older than ``max_event_age`` is stale and never gets here, so the lag is
bounded: a trigger for an event at 20:59 processed at 21:05 still goes at 21:05.

A deferred trigger is re-checked at its release time by :func:`check_release`:
consent, expiry (``expired``), pause and caps, in that order; the outcome is then
``released`` or ``suppressed``.

The caller's part: for the EMITTED verdict, send, :func:`record_sent` at the event
time and set ``cooldowns[cooldown_key]`` to the event time; for the DEFERRED one, set
the cooldown too (so the next event does not defer the same offer again) and
schedule a ``deferred_trigger`` timer (:mod:`processors.domain.timers`) at
``release_at`` carrying :meth:`Candidate.to_dict`. A deferred trigger does not hold a
place under the caps while it waits; the caps are checked again when it is released.

Caps. The record keeps the send times themselves (not day buckets), so the caps
are exact over rolling windows (a window is ``[a, a + length)``; a send exactly 24 h
after another is in a new day window). The check looks at every window that
contains the new send, not only the one ending at it, so a late event can never
overfill a window that later sends already occupy. Sends are kept for 7 days plus
``history_slack`` (at least the staleness limit), so late events still count
exactly. When the caps are honoured a 7 d + slack span (slack <= 7 d) holds at most
``2 * frequency_cap_week`` sends (20 floats by default, fewer than 24 hour buckets plus
7 day buckets, which would also be inexact); :func:`record_sent` keeps at most
``2 * frequency_cap_week + frequency_cap_day`` even when misused.

Pause. Declines and ignores of one offer type count together. When ``pause_after``
of them lie within ``pause_window`` of each other, the offer type is paused for
``pause_for`` from the latest of them, and those responses are consumed: pausing
again takes fresh responses.

State. :class:`ContactState` is a mutable slotted dataclass, like ``CustomerState``;
it lives in the customer record as the plain dict of :meth:`ContactState.to_dict`::

    {
      "sent": [[epoch, offer_type], ...],                 # sorted by time
      "responses": {offer_type: [[epoch, "declined" | "ignored"], ...]},  # sorted
      "paused_until": {offer_type: epoch},
    }

Load it with :meth:`ContactState.from_dict` (a copy; ``None`` or ``{}`` is empty),
apply :func:`record_sent` / :func:`record_response` / :func:`record_accepted` /
:func:`prune`, which change it in place, and store ``to_dict()`` back.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from functools import lru_cache
from hashlib import blake2b
from typing import Any
from zoneinfo import ZoneInfo

from processors.domain.model import DEFERRED, EMITTED, RELEASED, SUPPRESSED
from processors.domain.policy import DAY
from processors.domain.reasons import (
    ARBITRATION,
    CONSENT,
    COOLDOWN,
    EXPIRED,
    FREQUENCY_CAP,
    PAUSED,
    PROFILE,
    QUIET_HOURS,
)

WEEK = 7 * DAY
#: Times quiet hours are judged for: 1970-01-03 .. 9999-12-29 (datetime's range, with
#: room for any UTC offset and the day after); outside, never quiet.
_QUIET_MIN = 2 * DAY
_QUIET_MAX = 253402300799.0 - 3 * DAY

# Response kinds that count toward a pause.
DECLINED = "declined"
IGNORED = "ignored"
RESPONSE_KINDS = (DECLINED, IGNORED)

__all__ = [
    "DECLINED",
    "DEFERRED",
    "EMITTED",
    "IGNORED",
    "RELEASED",
    "SUPPRESSED",
    "Candidate",
    "ContactPolicy",
    "ContactState",
    "Verdict",
    "cap_exceeded",
    "check_release",
    "decide",
    "is_paused",
    "prune",
    "quiet_release_at",
    "record_accepted",
    "record_response",
    "record_sent",
    "release_spread",
]


@lru_cache(maxsize=8)
def _clock(value: str) -> time:
    """ "HH:MM" (or "HH:MM:SS") -> time; raises ValueError."""
    parsed = time.fromisoformat(value)
    if parsed.tzinfo is not None:
        raise ValueError(f"quiet hours are local clock times, got {value!r}")
    return parsed


@dataclass(slots=True, frozen=True)
class ContactPolicy:
    """The contact-policy knobs. Durations in seconds, clock times as local "HH:MM"."""

    #: Marketing triggers per customer in any rolling 24 h window.
    frequency_cap_day: int = 3
    #: ... and in any rolling 7-day window.
    frequency_cap_week: int = 10
    #: Declines/ignores of one offer type within ``pause_window`` that pause it ...
    pause_after: int = 2
    pause_window: float = 30 * DAY
    #: ... for this long after the last of them.
    pause_for: float = 60 * DAY
    #: Quiet hours in the customer's local time; may span midnight; equal = none.
    quiet_start: str = "21:00"
    quiet_end: str = "08:00"
    #: For customers without a (valid) ``timezone`` trait.
    default_timezone: str = "UTC"
    quiet_channels: tuple[str, ...] = ("sms", "push")
    #: Releases after quiet hours are spread over this many seconds, by trigger id.
    release_spread_seconds: int = 600
    #: History is kept this long past its window so late events still count exactly;
    #: must be at least the staleness limit (``Policy.max_event_age``) and at most 7 d.
    history_slack: float = DAY

    def __post_init__(self) -> None:
        _clock(self.quiet_start)
        _clock(self.quiet_end)
        if self.frequency_cap_day < 0 or self.frequency_cap_week < 0:
            raise ValueError("frequency caps must be >= 0")
        if self.pause_after < 1:
            raise ValueError("pause_after must be >= 1")
        if self.release_spread_seconds < 0:
            raise ValueError("release_spread_seconds must be >= 0")
        if not 0 <= self.history_slack <= WEEK:
            raise ValueError("history_slack must be within [0, 7 days]")


DEFAULT_POLICY = ContactPolicy()


@dataclass(slots=True)
class ContactState:
    """One customer's marketing contact history (see the module docstring for the layout)."""

    #: [epoch, offer_type] of every marketing trigger sent (emitted or released), by time.
    sent: list[list[Any]] = field(default_factory=list)
    #: offer_type -> [epoch, "declined" | "ignored"] not yet consumed by a pause, by time.
    responses: dict[str, list[list[Any]]] = field(default_factory=dict)
    #: offer_type -> epoch until which it is not offered.
    paused_until: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ContactState:
        """A copy of the stored dict; ``None`` or missing keys are empty."""
        data = data or {}
        return cls(
            sent=[[float(at), str(kind)] for at, kind in data.get("sent", ())],
            responses={
                offer: [[float(at), str(kind)] for at, kind in entries]
                for offer, entries in data.get("responses", {}).items()
            },
            paused_until={k: float(v) for k, v in data.get("paused_until", {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, dicts, floats and strings, for orjson (a copy)."""
        return {
            "sent": [list(entry) for entry in self.sent],
            "responses": {
                offer: [list(entry) for entry in entries]
                for offer, entries in self.responses.items()
            },
            "paused_until": dict(self.paused_until),
        }


@dataclass(slots=True, frozen=True)
class Candidate:
    """One marketing trigger a rule wants to send for the current event."""

    rule_id: str
    trigger_id: str
    #: The trigger type; pauses are per offer type.
    offer_type: str
    channel: str
    #: Higher wins arbitration.
    priority: int = 0
    #: Higher wins arbitration between equal priorities.
    value: float = 0.0
    expires_at: float | None = None
    cooldown_key: str | None = None
    cooldown_seconds: float | None = None
    #: Computed by the caller: the profile fits the offer.
    eligible: bool = True
    #: Computed by the caller: marketing consent on ``channel``.
    consent_granted: bool = True

    def to_dict(self) -> dict[str, Any]:
        """For a deferred trigger's timer payload."""
        return {
            "rule_id": self.rule_id,
            "trigger_id": self.trigger_id,
            "offer_type": self.offer_type,
            "channel": self.channel,
            "priority": self.priority,
            "value": self.value,
            "expires_at": self.expires_at,
            "cooldown_key": self.cooldown_key,
            "cooldown_seconds": self.cooldown_seconds,
            "eligible": self.eligible,
            "consent_granted": self.consent_granted,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(**data)


@dataclass(slots=True, frozen=True)
class Verdict:
    """What the contact policy decided for one candidate."""

    rule_id: str
    trigger_id: str
    #: EMITTED, SUPPRESSED, DEFERRED or (from check_release) RELEASED.
    outcome: str
    #: One reason code when suppressed, else empty.
    reasons: tuple[str, ...] = ()
    #: When a deferred trigger should be re-checked and sent (epoch).
    release_at: float | None = None

    @property
    def sends(self) -> bool:
        """True when the trigger goes out now (emitted or released)."""
        return self.outcome in (EMITTED, RELEASED)


# --- decisions -------------------------------------------------------------------------------


def decide(
    contact: ContactState,
    candidates: Sequence[Candidate],
    event_time: float,
    now: float,
    timezone: str | None,
    cooldowns: Mapping[str, float],
    policy: ContactPolicy = DEFAULT_POLICY,
) -> list[Verdict]:
    """One verdict per candidate, in the candidates' order; changes nothing.

    ``timezone`` is the customer's IANA zone (invalid or None: ``default_timezone``);
    ``cooldowns`` maps a cooldown key to the event time the rule last emitted for it.
    """
    verdicts: list[Verdict] = []
    contenders: list[int] = []
    for index, candidate in enumerate(candidates):
        reason = _blocked(contact, candidate, event_time, cooldowns, policy)
        if reason is None and candidate.channel in policy.quiet_channels:
            release_at = quiet_release_at(candidate.trigger_id, event_time, timezone, policy)
            if release_at is not None and release_at > now:
                if candidate.expires_at is not None and candidate.expires_at <= release_at:
                    reason = QUIET_HOURS
                else:
                    verdicts.append(_verdict(candidate, DEFERRED, release_at=release_at))
                    contenders.append(index)
                    continue
        if reason is None:
            verdicts.append(_verdict(candidate, EMITTED))
            contenders.append(index)
        else:
            verdicts.append(_verdict(candidate, SUPPRESSED, reason))
    if len(contenders) > 1:
        winner = min(contenders, key=lambda i: _rank(candidates[i]))
        for index in contenders:
            if index != winner:
                verdicts[index] = _verdict(candidates[index], SUPPRESSED, ARBITRATION)
    return verdicts


def check_release(
    contact: ContactState,
    candidate: Candidate,
    release_time: float,
    consent_granted: bool,
    policy: ContactPolicy = DEFAULT_POLICY,
) -> Verdict:
    """Re-check a deferred trigger at its release time: consent, expiry, pause, caps.

    ``consent_granted`` is the consent as it is now (it may have been withdrawn
    overnight). On RELEASED the caller sends it and calls :func:`record_sent` at
    ``release_time``.
    """
    reason: str | None = None
    if not consent_granted:
        reason = CONSENT
    elif candidate.expires_at is not None and candidate.expires_at <= release_time:
        reason = EXPIRED
    elif is_paused(contact, candidate.offer_type, release_time):
        reason = PAUSED
    elif cap_exceeded(contact, release_time, policy):
        reason = FREQUENCY_CAP
    if reason is not None:
        return _verdict(candidate, SUPPRESSED, reason)
    return _verdict(candidate, RELEASED)


def _blocked(
    contact: ContactState,
    candidate: Candidate,
    event_time: float,
    cooldowns: Mapping[str, float],
    policy: ContactPolicy,
) -> str | None:
    """The first of checks 1-5 that fails, or None."""
    if not candidate.consent_granted:
        return CONSENT
    if not candidate.eligible:
        return PROFILE
    if _in_cooldown(candidate, event_time, cooldowns):
        return COOLDOWN
    if is_paused(contact, candidate.offer_type, event_time):
        return PAUSED
    if cap_exceeded(contact, event_time, policy):
        return FREQUENCY_CAP
    return None


def _in_cooldown(candidate: Candidate, event_time: float, cooldowns: Mapping[str, float]) -> bool:
    if candidate.cooldown_key is None or candidate.cooldown_seconds is None:
        return False
    last = cooldowns.get(candidate.cooldown_key)
    if last is None:
        return False
    return event_time < last or event_time - last < candidate.cooldown_seconds


def _rank(candidate: Candidate) -> tuple[float, float, str, str]:
    return (-candidate.priority, -candidate.value, candidate.rule_id, candidate.trigger_id)


def _verdict(
    candidate: Candidate, outcome: str, reason: str | None = None, release_at: float | None = None
) -> Verdict:
    return Verdict(
        rule_id=candidate.rule_id,
        trigger_id=candidate.trigger_id,
        outcome=outcome,
        reasons=() if reason is None else (reason,),
        release_at=release_at,
    )


def is_paused(contact: ContactState, offer_type: str, at: float) -> bool:
    until = contact.paused_until.get(offer_type)
    return until is not None and until > at


def cap_exceeded(contact: ContactState, at: float, policy: ContactPolicy = DEFAULT_POLICY) -> bool:
    """True when one more send at ``at`` would overfill a rolling 24 h or 7 d window."""
    times = [entry[0] for entry in contact.sent]
    return _overfills(times, at, DAY, policy.frequency_cap_day) or _overfills(
        times, at, WEEK, policy.frequency_cap_week
    )


def _overfills(times: list[float], at: float, length: float, cap: int) -> bool:
    """Would adding ``at`` put more than ``cap`` of ``times`` in some ``[a, a + length)``?

    Only windows containing ``at`` change, i.e. ``a`` in ``(at - length, at]``; the
    fullest of them starts at ``at`` or at an existing time in that range (moving a
    window's start right up to its first element loses nothing).
    """
    starts = [t for t in times if at - length < t <= at]
    starts.append(at)
    for start in starts:
        inside = sum(1 for t in times if start <= t < start + length)
        if inside + 1 > cap:
            return True
    return False


# --- quiet hours -----------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _zone(name: str | None, default: str) -> ZoneInfo:
    """The customer's zone; an invalid or missing one falls back to ``default``, then UTC."""
    for candidate in (name, default):
        if isinstance(candidate, str) and candidate:
            try:
                return ZoneInfo(candidate)
            except (KeyError, ValueError, OSError):  # not found, malformed, a directory
                continue
    return ZoneInfo("UTC")


def release_spread(trigger_id: str, policy: ContactPolicy = DEFAULT_POLICY) -> int:
    """Whole seconds in ``[0, release_spread_seconds)``, fixed by the trigger id."""
    if policy.release_spread_seconds <= 0:
        return 0
    digest = blake2b(trigger_id.encode(), digest_size=8, person=b"release").digest()
    return int.from_bytes(digest, "big") % policy.release_spread_seconds


def quiet_release_at(
    trigger_id: str,
    at: float,
    timezone: str | None,
    policy: ContactPolicy = DEFAULT_POLICY,
) -> float | None:
    """None when ``at`` is outside quiet hours, else the end of those quiet hours + spread.

    Local clock times, so across a DST change the end is still e.g. 08:00 local. An
    end that falls in a DST gap resolves to the wall time read with the offset before
    the change (02:30 in a 02:00 -> 03:00 gap is 03:30).
    """
    start, end = _clock(policy.quiet_start), _clock(policy.quiet_end)
    if start == end:
        return None
    if not _QUIET_MIN <= at <= _QUIET_MAX:
        # Local dates near year 1 or 9999 overflow ``datetime``; event times are bounded
        # (schemas.bounds) far inside this range, so only a stored oddity gets here.
        return None
    # A trait read from JSON may be anything; only strings are zone names.
    zone = _zone(timezone if isinstance(timezone, str) else None, policy.default_timezone)
    local = datetime.fromtimestamp(at, zone)
    clock = local.time()
    if start < end:
        quiet = start <= clock < end
        end_day = local.date()
    else:  # spans midnight
        quiet = clock >= start or clock < end
        end_day = local.date() if clock < end else local.date() + timedelta(days=1)
    if not quiet:
        return None
    ends = datetime.combine(end_day, end, tzinfo=zone).timestamp()
    return ends + release_spread(trigger_id, policy)


# --- recording -------------------------------------------------------------------------------


def record_sent(
    contact: ContactState, offer_type: str, at: float, policy: ContactPolicy = DEFAULT_POLICY
) -> None:
    """Count a marketing trigger sent at ``at`` (the event time, or the release time)."""
    bisect.insort(contact.sent, [float(at), offer_type], key=lambda entry: entry[0])
    horizon = at - WEEK - policy.history_slack
    contact.sent = [entry for entry in contact.sent if entry[0] > horizon]
    limit = 2 * policy.frequency_cap_week + policy.frequency_cap_day
    if len(contact.sent) > limit:  # only when sends were recorded past the caps
        del contact.sent[: len(contact.sent) - limit]


def record_response(
    contact: ContactState,
    offer_type: str,
    kind: str,
    at: float,
    policy: ContactPolicy = DEFAULT_POLICY,
) -> bool:
    """Count a decline or an ignore; True when it paused the offer type (or extended a pause).

    When ``pause_after`` responses lie within ``pause_window`` of each other, the offer
    type is paused until the latest of them + ``pause_for`` (never shortened), and every
    response up to that one is consumed.
    """
    if kind not in RESPONSE_KINDS:
        raise ValueError(f"response kind must be one of {RESPONSE_KINDS}, got {kind!r}")
    entries = contact.responses.setdefault(offer_type, [])
    bisect.insort(entries, [float(at), kind], key=lambda entry: entry[0])
    horizon = at - policy.pause_window - policy.history_slack
    entries[:] = [entry for entry in entries if entry[0] > horizon]
    paused = False
    group = policy.pause_after
    index = group - 1
    while index < len(entries):
        if entries[index][0] - entries[index - group + 1][0] < policy.pause_window:
            until = entries[index][0] + policy.pause_for
            contact.paused_until[offer_type] = max(
                contact.paused_until.get(offer_type, until), until
            )
            paused = True
            del entries[: index + 1]
            index = group - 1
        else:
            index += 1
    if not entries:
        del contact.responses[offer_type]
    return paused


def record_accepted(contact: ContactState, offer_type: str, at: float) -> None:
    """An acceptance breaks the streak: responses up to ``at`` no longer count.

    A pause already in force stays (the customer just took an offer of this type).
    """
    entries = contact.responses.get(offer_type)
    if entries is None:
        return
    entries[:] = [entry for entry in entries if entry[0] > at]
    if not entries:
        del contact.responses[offer_type]


def prune(contact: ContactState, now: float, policy: ContactPolicy = DEFAULT_POLICY) -> bool:
    """Drop history no check can need any more; True when something was dropped.

    Everything is kept ``history_slack`` past its window, so an event up to that late
    is still judged on exact history.
    """
    before = (len(contact.sent), sum(map(len, contact.responses.values())))
    before_paused = len(contact.paused_until)
    sent_horizon = now - WEEK - policy.history_slack
    contact.sent = [entry for entry in contact.sent if entry[0] > sent_horizon]
    response_horizon = now - policy.pause_window - policy.history_slack
    for offer_type in list(contact.responses):
        kept = [e for e in contact.responses[offer_type] if e[0] > response_horizon]
        if kept:
            contact.responses[offer_type] = kept
        else:
            del contact.responses[offer_type]
    pause_horizon = now - policy.history_slack
    contact.paused_until = {k: v for k, v in contact.paused_until.items() if v > pause_horizon}
    after = (len(contact.sent), sum(map(len, contact.responses.values())))
    return after != before or len(contact.paused_until) != before_paused
