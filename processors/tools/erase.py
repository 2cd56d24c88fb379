"""`omni erase <customer_id>`: ask the pipeline to forget a customer.

It publishes one ``privacy.erasure_requested`` event on ``touchpoint.crm`` through the
SDK (validated, keyed by the customer, so it lands on her partition after everything
already published for her). The worker does the erasing (README "Erasure and
retention"); its ``decision.log`` record (outcome ``erased``) carries the request id.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from processors.domain.erasure import ERASURE_EVENT
from processors.settings import Settings
from producers.sdk import TouchpointProducer

#: The channel that asks (the schema registry allows no other).
ERASURE_CHANNEL = "crm"


def erasure_event(customer_id: str, request_id: str, now: datetime | None = None) -> dict[str, Any]:
    """The event asking to forget ``customer_id``; its event id derives from the request,
    so publishing the same request twice is one event to the worker's readers."""
    occurred_at = (now or datetime.now(UTC)).isoformat(timespec="milliseconds")
    return {
        "event_id": f"erasure-{uuid.uuid5(uuid.NAMESPACE_URL, f'{customer_id}|{request_id}').hex}",
        "type": ERASURE_EVENT,
        "occurred_at": occurred_at.replace("+00:00", "Z"),
        "channel": ERASURE_CHANNEL,
        "customer_id": customer_id,
        "payload": {"request_id": request_id},
    }


def request_erasure(settings: Settings, customer_id: str, request_id: str) -> dict[str, Any]:
    """Publish the erasure request and wait for the broker; returns the event sent.

    Raises ``producers.sdk.EventRejected`` when it breaks the contract (an id over 128
    characters), RuntimeError when Kafka did not take it.
    """
    event = erasure_event(customer_id, request_id)
    with TouchpointProducer(settings) as producer:
        producer.publish(event)
    if producer.failed:
        raise RuntimeError(
            f"the erasure request was not delivered ({producer.failed[0]}); check Kafka at "
            f"{settings.kafka_bootstrap} and run `omni erase` again (it is safe to repeat)"
        )
    return event
