"""Links learned on a customer's partition, decided purely.

An event that carries both a ``customer_id`` and ``identifiers`` (a login with the
web's device id, a ``profile.updated`` with a phone or an email, a card presented by
a known customer) tells the pipeline that those identifiers are hers. The customer
step keeps them in her record (bounded per type: ``OMNI_IDENTITY_LIMITS``) and
republishes each new one keyed by the identifier (a ``link`` command), so the
identifier's record (:mod:`processors.domain.identity`) resolves its events to her.

The CRM's ``identity.linked`` links with authority (``force``: it may move an
identifier from another known customer), and with ``merge_from`` merges another
customer's profile into this one; ``identity.unlinked`` undoes links for later events.
Anonymous profiles learn nothing: they are what links resolve *to* a customer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from processors.domain.identity import (
    CRM,
    IDENTIFIER_LIMIT,
    LEARNED,
    LINK,
    MERGED,
    REFUSED,
    UNLINK,
    Forward,
    is_anonymous,
    link_command,
    log_record,
    merge_request,
    unlink_command,
)
from processors.domain.model import CustomerState, Event, StepOutputs
from schemas.identity import IDENTIFIER_TYPES

if TYPE_CHECKING:
    from processors.domain.step import StepContext

#: The CRM's explicit link and unlink (event types of the contract, crm only).
LINK_EVENT = "identity.linked"
UNLINK_EVENT = "identity.unlinked"


def learn_links(state: CustomerState, event: Event, ctx: StepContext, out: StepOutputs) -> None:
    """Note the event's identifiers as the customer's; queue link/unlink commands."""
    if is_anonymous(state.customer_id):
        return
    identifiers = event.identifiers or {}
    at = event.occurred_at
    if event.type == UNLINK_EVENT:
        for identifier_type in IDENTIFIER_TYPES:
            value = identifiers.get(identifier_type)
            known = state.identifiers.get(identifier_type)
            if value is None or not known or value not in known:
                continue
            known.remove(value)
            if not known:
                del state.identifiers[identifier_type]
            out.forwards.append(
                Forward(
                    f"{identifier_type}:{value}",
                    unlink_command(state.customer_id, event.event_id, at),
                    event.produced_at,
                    UNLINK,
                )
            )
        return
    force = event.type == LINK_EVENT
    policy = ctx.identity
    for identifier_type in IDENTIFIER_TYPES:
        value = identifiers.get(identifier_type)
        if value is None:
            continue
        if policy.is_blocked(value):
            out.identity_blocked += 1
            continue
        key = f"{identifier_type}:{value}"
        known = state.identifiers.setdefault(identifier_type, [])
        if value not in known:
            if len(known) >= policy.limits.get(identifier_type, 0):
                if not known:
                    del state.identifiers[identifier_type]
                out.identity_log.append(
                    log_record(
                        REFUSED, state.customer_id, key, event.event_id, at, reason=IDENTIFIER_LIMIT
                    )
                )
                continue
            known.append(value)
        elif not force:
            continue  # hers already: nothing to republish
        out.forwards.append(
            Forward(
                key,
                link_command(
                    state.customer_id,
                    CRM if force else LEARNED,
                    event.event_id,
                    at,
                    event.channel,
                    force=force,
                ),
                event.produced_at,
                LINK,
            )
        )
    merge_from = event.payload.get("merge_from") if force else None
    if isinstance(merge_from, str) and merge_from != state.customer_id:
        out.forwards.append(
            merge_request(merge_from, state.customer_id, event.event_id, at, event.channel)
        )
        out.identity_log.append(
            log_record(MERGED, state.customer_id, None, event.event_id, at, merged_from=merge_from)
        )


def identifier_keys(state: CustomerState) -> Iterator[str]:
    """Her identifiers as record keys ``<type>:<value>``, in the contract's type order."""
    for identifier_type in IDENTIFIER_TYPES:
        for value in state.identifiers.get(identifier_type, ()):
            yield f"{identifier_type}:{value}"


def unlink_all(state: CustomerState, event: Event, out: StepOutputs) -> None:
    """An erasure: every identifier of hers forgets her (its record goes altogether)."""
    command = unlink_command(state.customer_id, event.event_id, event.occurred_at, erase=True)
    for key in identifier_keys(state):
        out.forwards.append(Forward(key, command, event.produced_at, UNLINK))
