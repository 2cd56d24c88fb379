"""Responses to offers: accepted, declined, or ignored until they expired (S6, S9, S11).

A response feeds the contact history (pauses), the offer counters, and the
channel she answers on (:func:`processors.domain.views.preferred_channel`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from processors.domain import contact as cp
from processors.domain import timers as tm
from processors.domain.model import CustomerState, Event, StepOutputs

if TYPE_CHECKING:
    from processors.domain.step import StepContext

#: Touchpoint channel of a response -> the messaging channel it tells us she prefers.
RESPONSE_CHANNEL_PREFERENCE = {"sms": "sms", "email": "email", "mobile": "push"}


def _note_control_conversion(state: CustomerState, event: Event, out: StepOutputs) -> None:
    """A held-out customer took this kind of offer anyway: the baseline for lift (S11)."""
    for held_id, offer in list(state.offers.items()):
        expires = offer.get("expires_at")
        if (
            offer.get("control")
            and offer["offer_type"] == event.payload.get("offer_type")
            and (expires is None or event.occurred_at <= expires)
        ):
            out.stats.append((offer["rule"], offer["channel"], "control_accepted", 1.0))
            del state.offers[held_id]
            return


def note_response(
    state: CustomerState,
    contact: cp.ContactState,
    event: Event,
    ctx: StepContext,
    out: StepOutputs,
) -> None:
    """An accepted or declined offer: response history, pause, learned channel."""
    if event.type not in ("offer.accepted", "offer.declined"):
        return
    payload = event.payload
    offer = state.offers.pop(payload.get("trigger_id") or "", None)
    if offer is not None:
        tm.cancel(
            state.timers, tm.timer_id(tm.IGNORED_CHECK, event.customer_id, payload["trigger_id"])
        )
        if event.type == "offer.accepted":
            out.stats.append((offer["rule"], offer["channel"], "accepted", 1.0))
            out.stats.append(
                (offer["rule"], offer["channel"], "accepted_value", float(offer.get("value", 0)))
            )
        else:
            out.stats.append((offer["rule"], offer["channel"], "declined", 1.0))
    elif event.type == "offer.accepted":
        _note_control_conversion(state, event, out)
    offer_type = offer["offer_type"] if offer else payload["offer_type"]
    if event.type == "offer.declined":
        cp.record_response(contact, offer_type, cp.DECLINED, event.occurred_at, ctx.contact)
    else:
        cp.record_accepted(contact, offer_type, event.occurred_at)
    learned = RESPONSE_CHANNEL_PREFERENCE.get(event.channel)
    if learned is not None:
        state.response_channels[learned] = state.response_channels.get(learned, 0) + 1


def note_ignored(
    state: CustomerState,
    contact: cp.ContactState,
    timer: tm.Timer,
    ctx: StepContext,
    out: StepOutputs,
) -> None:
    """An offer's watch came due: no response before it expired, so it was ignored."""
    offer = state.offers.pop(timer.data["trigger_id"], None)
    if offer is None or offer.get("control"):
        return  # answered already, or held out: nothing was sent, nothing to ignore
    out.stats.append((offer["rule"], offer["channel"], "ignored", 1.0))
    cp.record_response(contact, offer["offer_type"], cp.IGNORED, timer.due_at, ctx.contact)
