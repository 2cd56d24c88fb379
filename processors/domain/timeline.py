"""The customer's recent cross-channel history (S1 branch briefing, call center).

Kept beside the customer's state, not inside it (stored in the same changelog
record, :mod:`processors.domain.record_codec`, but parsed apart, and its own Redis
key ``omni:timeline:<customer_id>``), newest first and capped, so the state the
rules read stays small.

Bounded like the state: at most ``cap`` entries (``OMNI_TIMELINE_LENGTH``, at most
200) of at most :data:`MAX_ENTRY_BYTES` each (a summary is cut at
:data:`SUMMARY_CHARS`; the other fields are bounded by the contract), so the
timeline's JSON stays below the broker's 1 MiB message limit whatever the
input (200 x 2,104 bytes < 420 KB; a typical entry is about 150 bytes), also in
the rare record stored in the legacy layout (``timelines`` table).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

from processors.domain.model import Event, format_time

Entry = dict[str, Any]
_AT = itemgetter("at")
#: A summary is one line: longer ones (long ids in the payload) are cut.
SUMMARY_CHARS = 200
#: The largest encoded entry: "at" (24), channel (10), type (22), summary and event_id
#: (200 and 128 characters, at most 6 bytes each in JSON: a control character is
#: escaped as \u00XX), field names and punctuation.
MAX_ENTRY_BYTES = 24 + 10 + 22 + 6 * SUMMARY_CHARS + 6 * 128 + 80


def _profile(p: dict[str, Any]) -> str:
    return "profile updated: " + ", ".join(sorted(p)) if p else "profile updated"


_SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "profile.updated": _profile,
    "consent.updated": lambda p: (
        f"{'granted' if p['granted'] else 'withdrew'} {p['purpose']} consent for {p['channel']}"
    ),
    "offer.accepted": lambda p: f"accepted {p['offer_type']} offer {p['offer_id']}"
    + (f" (limit {p['limit']} {p.get('currency') or ''})".rstrip() if "limit" in p else ""),
    "offer.declined": lambda p: f"declined {p['offer_type']} offer",
    "telco.network_attached": lambda p: f"phone attached to a network in {p['country']}",
    "telco.call_started": lambda p: f"{p['call_type'].replace('_', ' ')} call to "
    f"{p['destination_country']}",
    "atm.withdrawal": lambda p: f"withdrew {p['amount']} {p['currency']} at ATM {p['atm_id']} "
    f"({p['location_type']}, {p['country']})",
    "branch.visit": lambda p: f"visited branch {p['branch_id']}",
    "campaign.requested": lambda p: f"campaign {p['campaign_id']} ({p['offer_type']}) requested",
}


def summarize(event: Event) -> str:
    """One line a branch advisor or call-center agent can read."""
    summary = _SUMMARIES.get(event.type)
    try:
        text = summary(event.payload) if summary else event.type
    except (KeyError, TypeError, AttributeError):
        return event.type
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def timeline_entry(event: Event) -> Entry:
    return {
        "at": format_time(event.occurred_at),
        "channel": event.channel,
        "type": event.type,
        "summary": summarize(event),
        "event_id": event.event_id,
    }


def add_to_timeline(timeline: list[Entry], events: Sequence[Event], cap: int) -> list[Entry]:
    """Newest (by event time) first, at most ``cap`` entries; a replayed event is not re-added."""
    known = {entry["event_id"] for entry in timeline}
    fresh = [timeline_entry(e) for e in events if e.event_id not in known]
    if not fresh:
        return timeline
    # RFC 3339 in UTC with fixed precision sorts as text; the sort is stable, so at
    # equal times the later arrival stays first.
    merged = sorted([*reversed(fresh), *timeline], key=_AT, reverse=True)
    return merged[:cap]
