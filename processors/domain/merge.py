"""Merging one profile into another, decided purely (identity stitching's last step).

When an identifier with an anonymous profile is linked to a customer (a device logs
in), or the CRM merges two customers (``identity.linked`` with ``merge_from``), the
source profile gets ``identity.merge_requested``: :func:`send_profile` puts its whole
record and timeline into an ``identity.profile_merged`` event for the target and
forgets the source (a tombstone, its read-model keys deleted). The target's step
applies it with :func:`merge_profile`:

* the cart built before login is hers when she has none, or when it is newer than hers;
* page views and other scored interactions count toward her lead score (lists joined);
* consents combine conservatively: a purpose withdrawn on either side stays withdrawn;
* her own traits, entitlements, offers, coupons and contact history win on conflict;
  the source's fill in what she lacks;
* the source's pending rule timers (the cart reminder) become hers; its deferred
  marketing triggers and "ignored" checks are dropped (they were for the source id);
* the dedup rings are joined, so a replay of the source's events is still a duplicate.

Both events' ids derive from the link's, so a replay merges nothing twice.
"""

from __future__ import annotations

from typing import Any

from processors.domain import timers as tm
from processors.domain.erasure import forgotten_keys
from processors.domain.identity import CRM, LINK, PROFILE_MERGED, Forward, link_command
from processors.domain.links import identifier_keys
from processors.domain.model import CustomerState, Event, StepOutputs, format_time
from processors.domain.policy import Policy


def send_profile(state: CustomerState, event: Event, out: StepOutputs) -> CustomerState:
    """The source's side: its profile to the target, then an empty (forgotten) record."""
    into = event.payload["into"]
    if into != state.customer_id and state.updated_at is not None:
        out.forwards.append(
            Forward(
                into,
                {
                    "event_id": f"{event.event_id}/state",
                    "type": PROFILE_MERGED,
                    "channel": event.channel,
                    "customer_id": into,
                    "occurred_at": format_time(event.occurred_at),
                    "payload": {
                        "from": state.customer_id,
                        # orjson writes the dataclass as the record does; this state
                        # object is dropped below (a new, empty one is returned).
                        "state": state,
                        "timeline": out.timeline or [],
                    },
                },
                event.produced_at,
            )
        )
        # A customer merged by the CRM: her identifiers now resolve to the target.
        command = link_command(
            into, CRM, event.event_id, event.occurred_at, event.channel, force=True
        )
        for key in identifier_keys(state):
            out.forwards.append(Forward(key, command, event.produced_at, LINK))
    out.erased_keys.extend(forgotten_keys(state))
    if out.timeline is not None:
        out.timeline = []
    out.changed = True
    out.forgotten = True
    return CustomerState.new(state.customer_id)


def merge_profile(
    state: CustomerState, event: Event, policy: Policy, timeline_length: int, out: StepOutputs
) -> None:
    """The target's side: fold the source's profile into hers."""
    source = CustomerState.from_dict(event.payload["state"])
    state.traits = {**source.traits, **state.traits}
    state.products = [*state.products, *(p for p in source.products if p not in state.products)]
    for key, theirs in source.consents.items():
        mine = state.consents.get(key)
        if mine is None:
            state.consents[key] = dict(theirs)
        else:
            state.consents[key] = {
                **mine,
                "granted": bool(mine["granted"]) and bool(theirs["granted"]),
                "at": max(mine["at"], theirs["at"]),
            }
    for channel, at in source.last_seen.items():
        state.last_seen[channel] = max(at, state.last_seen.get(channel, at))
    state.last_country = state.last_country or source.last_country
    state.entitlements = {**source.entitlements, **state.entitlements}
    for key, at in source.cooldowns.items():
        state.cooldowns[key] = max(at, state.cooldowns.get(key, at))
    _join_dedup(state, source, policy)
    if source.updated_at is not None:
        state.updated_at = max(source.updated_at, state.updated_at or source.updated_at)
    if not state.contact.get("sent") and source.contact:
        state.contact = source.contact
    _adopt_rule_timers(state, source, out)
    state.offers = {**source.offers, **state.offers}
    state.airport_withdrawals = sorted(
        [*state.airport_withdrawals, *source.airport_withdrawals], key=lambda w: w["at"]
    )
    for channel, count in source.response_channels.items():
        state.response_channels[channel] = state.response_channels.get(channel, 0) + count
    if source.cart is not None and (
        state.cart is None or source.cart["updated_at"] > state.cart["updated_at"]
    ):
        state.cart = source.cart
    state.coupons = {**source.coupons, **state.coupons}
    state.appointments = {**source.appointments, **state.appointments}
    state.lead = sorted([*state.lead, *source.lead], key=lambda entry: entry[0])
    if out.timeline is not None:
        entries = [e for e in event.payload.get("timeline", []) if isinstance(e, dict)]
        known = {entry["event_id"] for entry in out.timeline}
        fresh = [e for e in entries if e.get("event_id") not in known]
        out.timeline = sorted([*out.timeline, *fresh], key=lambda e: e["at"], reverse=True)[
            :timeline_length
        ]


def _join_dedup(state: CustomerState, source: CustomerState, policy: Policy) -> None:
    known = set(state.seen_ids)
    for fingerprint, day in zip(source.seen_ids, source.seen_days, strict=False):
        if fingerprint not in known:
            state.seen_ids.append(fingerprint)
            state.seen_days.append(day)
    excess = len(state.seen_ids) - policy.dedup_capacity
    if excess > 0:
        # The oldest days go first.
        order = sorted(range(len(state.seen_ids)), key=lambda i: state.seen_days[i])
        dropped = set(order[:excess])
        state.seen_ids = [f for i, f in enumerate(state.seen_ids) if i not in dropped]
        state.seen_days = [d for i, d in enumerate(state.seen_days) if i not in dropped]


def _adopt_rule_timers(state: CustomerState, source: CustomerState, out: StepOutputs) -> None:
    for entry in source.timers:
        if entry["kind"] != tm.RULE_TIMER:
            continue
        data: dict[str, Any] = entry["data"]
        timer = tm.Timer(
            tm.timer_id(tm.RULE_TIMER, state.customer_id, f"{data['rule']}|{data['key']}"),
            tm.RULE_TIMER,
            entry["due_at"],
            data,
        )
        if any(t["timer_id"] == timer.timer_id for t in state.timers):
            continue  # her own timer for the same thing wins
        if not tm.schedule(state.timers, timer):
            out.timers_refused += 1
